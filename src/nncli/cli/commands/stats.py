"""stats: layer health over every row, streamed (nncli.lib.inside.stats, views/inside.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import emit, idle_threads_sleep, progress
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    TARGETS,
    Data,
    InspectMode,
    Loss,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RunMode,
    RuntimeGroup,
    Spec,
    TargetsGroup,
    choice,
    finite_non_negative,
    load_model,
    output_target,
    read_options,
    with_options,
)
from nncli.lib.inside import DEFAULT_LR, EXPLODING, VANISHING  # the library's defaults (no torch at import)

StatsBatch = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        metavar="N",
        min=1,
        help=(
            "Rows per batch (default: 16384); memory stays that of one batch. Train-mode BatchNorm and Dropout (p > "
            "0) see every row in one batch."
        ),
    ),
]
StatsLr = Annotated[
    float,
    typer.Option(
        "--lr",
        metavar="LR",
        help="The SGD learning rate for the update/weight ratio: lr × ‖grad‖ / ‖weight‖.",
        callback=finite_non_negative,
    ),
]
Vanishing = Annotated[
    float,
    typer.Option(
        "--vanishing",
        metavar="X",
        help="Flag a parameter whose gradient norm is below this as vanishing.",
        callback=finite_non_negative,
    ),
]
Exploding = Annotated[
    float,
    typer.Option(
        "--exploding",
        metavar="X",
        help="Flag a parameter whose gradient norm is above this as exploding.",
        callback=finite_non_negative,
    ),
]
Html = Annotated[
    str | None,
    typer.Option(
        "--html",
        metavar="FILE",
        help=(
            "Also write a self-contained HTML page (inline CSS and SVG, nothing fetched): histograms and gradient "
            "norms."
        ),
    ),
]


@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def stats(
    spec: Spec,
    data: Data,
    mode: InspectMode = "eval",
    loss: Loss = None,
    batch_size: StatsBatch = None,
    lr: StatsLr = DEFAULT_LR,
    vanishing: Vanishing = VANISHING,
    exploding: Exploding = EXPLODING,
    html: Html = None,
    targets: TargetsGroup = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """Layer health over every row, batch by batch: each layer's activations (mean, std, min, max,
    distribution), dead ReLU units, saturated Sigmoid/Tanh units; with --target, each parameter's
    gradient norm, lr × ‖grad‖ / ‖weight‖ and vanishing (norm < 1e-7) or exploding (norm > 1e3) flags.

    dead: a ReLU output that is 0, a LeakyReLU one on its negative slope (input ≤ 0); a unit is dead
    when it is so for every row. saturated: a Sigmoid output ≤ 0.01 or ≥ 0.99, a Tanh one ≤ -0.99
    or ≥ 0.99. std is the population standard deviation (ddof=0), combined across batches in float64."""
    from nncli.lib import inside
    from nncli.views.inside import stats_report
    from nncli.views.render import fmt, rows_text

    mode = choice(mode, RunMode, "--mode")
    if html == "-":
        from nncli.errors import UsageError

        raise UsageError("--html takes a file name (standard output carries the statistics)")
    m = load_model(spec, model, runtime)
    target = output_target(output, inputs=[spec, data, targets.targets, model.weights], extra={"--html": html})
    idle_threads_sleep()  # reads while it computes
    result = inside.stats(
        m,
        data,
        loss=loss,
        mode=mode,
        batch_size=batch_size,
        lr=lr,
        vanishing=vanishing,
        exploding=exploding,
        read=read_options(read, targets),
        progress=progress(target),
    )
    batches = f"{result.batches:,} batch{'es' if result.batches != 1 else ''}"
    text = f"{m.caption}; {mode} mode; {rows_text(result.rows)} in {batches}"
    if result.params is not None:
        text += f"; {result.loss_fn} = {fmt(float(result.loss), target.precision)}"
    if html:
        from nncli.io.output import output_file
        from nncli.views.report_html import stats_page

        page = stats_page(result, f"nncli stats: {m.spec.display_name}", text)
        with output_file(html, "--html") as f:
            f.write(page.encode("utf-8"))
    emit(target, stats_report(result, text, target.precision, lr, vanishing, exploding, html))
