"""explain: each row's attributions to its columns by Captum (nncli.lib.explain), streamed as tidy rows,
or --summary: mean |attribution| per column, ranked (views/explain.py)."""

from __future__ import annotations

from nncli.cli.commands.common import emit, note, progress
from nncli.cli.explain_options import (
    HTML_ROWS,
    Baseline,
    ClassChoice,
    ExplainBatch,
    Html,
    IgMethod,
    Method,
    Metric,
    Repeats,
    Samples,
    Stdevs,
    Steps,
    SummaryOnly,
)
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
from nncli.errors import UsageError


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
    metric: Metric = None,
    repeats: Repeats = 5,
    html: Html = None,
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
    from nncli.lib.explain import PERMUTATION, ExplainRun, Options, captum_attr
    from nncli.views.render import Frame, RowWriter

    captum_attr()  # before any work: say how to install it
    if html == "-":
        raise UsageError("--html takes a file name (standard output carries the attributions)")
    # --seed seeds gradient-shap's draws and permutation's shuffles (and, without -w, the model's
    # initial weights as everywhere)
    options = Options(method, class_, baseline, steps, ig_method, samples, stdevs, model.seed or 0)
    options.check()
    given = {"--class": class_ is not None, "--baseline": baseline != "zeros", "--summary": summary}
    given |= {"--steps": steps != 50, "--ig-method": ig_method != "gausslegendre", "--samples": samples != 5}
    check_method_options(method, given | {"--stdevs": stdevs != 0.0}, metric is not None or repeats != 5)
    m = load_model(spec, model, runtime)
    inputs = [spec, data, model.weights] + ([baseline] if baseline not in ("zeros", "mean") else [])
    out = output_target(output, inputs=inputs, extra={"--html": html})
    reading = read_options(read, TargetsGroup(target=target), id_column)
    title = f"nncli explain: {m.spec.display_name}"
    if method == PERMUTATION:
        permutation(m, data, metric, repeats, options.seed, reading, batch_size, out, html, title)
        return
    run = ExplainRun(m, data, options, reading, batch_size, progress(out))
    run.keep = HTML_ROWS if html else 0
    for line in run.notes:
        note(line)
    text = f"{run.built.caption}; {method} (Captum)"
    if summary:
        from nncli.views.explain import summary_report

        result = run.summary()
        write_html(html, lambda: page(run, title, text))
        emit(out, summary_report(result, f"{text}; mean |attribution| over {result.rows} rows", out.precision))
        return
    from nncli.views.explain import with_bars

    with out.stream() as stream:
        writer = RowWriter(out.format, stream, out.precision, caption=text, keys=2 if run.source.id_name else 1)
        for names, columns in run.frames():
            frame = Frame(names, columns)
            writer.write(with_bars(frame, len(run.groups)) if out.format == "table" else frame)
        write_html(html, lambda: page(run, title, text))  # before the output is committed: all or nothing
        writer.close()


def check_method_options(method: str, per_row: dict[str, bool], permutation_given: bool) -> None:
    """An option the chosen method would ignore is a usage error, not a silent no-op."""
    from nncli.lib.explain import PERMUTATION

    ignored = [name for name, on in per_row.items() if on]
    if method == PERMUTATION and ignored:
        raise UsageError(f"{', '.join(ignored)}: not for --method permutation (one importance per column over DATA)")
    if method != PERMUTATION and permutation_given:
        raise UsageError("--metric and --repeats are for --method permutation")


def permutation(m, data, metric, repeats, seed, reading, batch_size, out, html, title) -> None:
    from nncli.lib.explain_permutation import PermutationRun
    from nncli.views.explain import importance_report
    from nncli.views.explain_html import importance_page

    run = PermutationRun(
        m, data, metric=metric, repeats=repeats, seed=seed, read=reading, batch_size=batch_size, progress=progress(out)
    )
    result = run.importance()
    for line in result.notes:
        note(line)
    text = (
        f"{run.built.caption}; permutation (Captum's FeaturePermutation): {result.metric} {result.value:.6g} over "
        f"{result.rows:,} rows, importance = its score's drop when a column is shuffled, {repeats} repeats, seed {seed}"
    )
    write_html(html, lambda: importance_page(result, title, text))
    emit(out, importance_report(result, text, out.precision))


def page(run, title: str, text: str) -> str:
    from nncli.views.explain_html import explain_page

    return explain_page(run.ranked(), run.kept, [g.name for g in run.groups], title, text)


def write_html(path: str | None, make) -> None:
    """The page, written atomically (a failed run leaves no file)."""
    if path:
        from nncli.io.output import output_file

        text = make()
        with output_file(path, "--html") as f:
            f.write(text.encode("utf-8"))
