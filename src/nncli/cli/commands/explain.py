"""explain: each row's attributions to its columns by Captum (nncli.lib.explain), streamed as tidy rows,
or --summary: mean |attribution| per column, ranked (views/explain.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import emit, note, progress
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    Data,
    IdColumn,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RuntimeGroup,
    Spec,
    Target,
    TargetsGroup,
    load_model,
    output_target,
    read_options,
    with_options,
)

Method = Annotated[
    str,
    typer.Option(
        "--method",
        "-m",
        metavar="NAME",
        help=(
            "integrated-gradients, saliency, input-x-gradient, deeplift, gradient-shap or feature-ablation, "
            "each Captum's own class."
        ),
    ),
]
ClassChoice = Annotated[
    str | None,
    typer.Option(
        "--class",
        metavar="LABEL|INDEX",
        help="The class or output to explain (default: each row's predicted class; a regression's output).",
    ),
]
Baseline = Annotated[
    str,
    typer.Option(
        "--baseline",
        metavar="zeros|mean|FILE",
        help=(
            "The reference input: zeros, the mean of DATA's rows, or a file of one row "
            "(saliency and input-x-gradient take none)."
        ),
    ),
]
Steps = Annotated[
    int, typer.Option("--steps", metavar="N", help="integrated-gradients: the steps of the path integral.")
]
IgMethod = Annotated[
    str,
    typer.Option(
        "--ig-method",
        metavar="NAME",
        help=(
            "integrated-gradients: the rule, as Captum names it (gausslegendre, riemann_trapezoid, "
            "riemann_left, riemann_right, riemann_middle)."
        ),
    ),
]
Samples = Annotated[int, typer.Option("--samples", metavar="N", help="gradient-shap: samples per row.")]
Stdevs = Annotated[float, typer.Option("--stdevs", metavar="S", help="gradient-shap: the noise's standard deviation.")]
SummaryOnly = Annotated[
    bool, typer.Option("--summary", help="Only the mean |attribution| per column over DATA, ranked.")
]


ExplainBatch = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        metavar="N",
        min=1,
        help=(
            "Rows per batch (default: 2048, fewer than forward's: integrated gradients and gradient SHAP run "
            "steps x rows at once). A float32 result's last digit can depend on the batch's shape, as in PyTorch."
        ),
    ),
]


@with_options(MODEL, READ, OUTPUT, RUNTIME)
def explain(
    spec: Spec,
    data: Data,
    method: Method = "integrated-gradients",
    class_: ClassChoice = None,
    baseline: Baseline = "zeros",
    steps: Steps = 50,
    ig_method: IgMethod = "gausslegendre",
    samples: Samples = 5,
    stdevs: Stdevs = 0.0,
    summary: SummaryOnly = False,
    target: Target = None,
    id_column: IdColumn = None,
    batch_size: ExplainBatch = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """Which columns drove each prediction: attributions by Captum's methods, row by row.

    Tidy rows (CSV, JSON): row, feature, value, attribution (and delta, integrated gradients'
    convergence delta per row). What is attributed: the model's output as its last layer gives it
    (the logits for CrossEntropyLoss), at each row's predicted class unless --class. With an input
    schema, a category's one-hot inputs (and a number's missing indicator) are summed to its column."""
    from nncli.lib.explain import ExplainRun, Options, captum_attr
    from nncli.views.explain import summary_report
    from nncli.views.render import Frame, RowWriter

    captum_attr()  # before any work: say how to install it
    # --seed seeds gradient-shap's draws (and, without -w, the model's initial weights as everywhere)
    options = Options(method, class_, baseline, steps, ig_method, samples, stdevs, model.seed or 0)
    options.check()
    m = load_model(spec, model, runtime)
    inputs = [spec, data, model.weights] + ([baseline] if baseline not in ("zeros", "mean") else [])
    out = output_target(output, inputs=inputs)
    run = ExplainRun(
        m, data, options, read_options(read, TargetsGroup(target=target), id_column), batch_size, progress(out)
    )
    for line in run.notes:
        note(line)
    text = f"{run.built.caption}; {method} (Captum)"
    if summary:
        result = run.summary()
        emit(out, summary_report(result, f"{text}; mean |attribution| over {result.rows} rows", out.precision))
        return
    with out.stream() as stream:
        writer = RowWriter(out.format, stream, out.precision, caption=text, keys=2 if run.source.id_name else 1)
        for names, columns in run.frames():
            writer.write(Frame(names, columns))
        writer.close()
