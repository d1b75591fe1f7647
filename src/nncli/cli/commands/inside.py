"""Seeing inside the network: trace (each layer's values for chosen rows), stats (layer health over
all rows, streamed) and gradcheck (autograd beside finite differences). Each calls nncli.lib.inside,
then renders what it returns."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from nncli.cli.commands.common import caption, emit, idle_threads_sleep, rows_text
from nncli.cli.options import (
    MODEL,
    MODES,
    OUTPUT,
    READ,
    RUNTIME,
    TARGETS,
    Data,
    Full,
    Loss,
    Seed,
    Spec,
    Weights,
    choice,
    finite_non_negative,
    load_model,
    output_options,
    read_options,
    with_options,
)
from nncli.lib.inside import (
    ATOL,
    DEFAULT_LR,
    EPS,
    EXPLODING,
    RTOL,
    VANISHING,
)  # the library's defaults (no torch at import)
from nncli.views.render import Frame, Report, RowWriter, fmt

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 16

Rows = Annotated[
    str,
    typer.Option(
        "--rows",
        "-r",
        metavar="ROWS",
        help="0-based data rows to trace, as in 0,3,5-9 (they run as one batch, in file order).",
    ),
]
TraceLayer = Annotated[
    int | None,
    typer.Option("--layer", metavar="I", help="Show only layer I's input and output (0-based; negative from the end)."),
]
InspectMode = Annotated[
    str,
    typer.Option(
        "--mode", metavar="MODE", help="eval or train (train: Dropout drops and BatchNorm uses the batch's statistics)."
    ),
]
Grad = Annotated[
    bool,
    typer.Option(
        "--grad",
        help="Also each value's gradient of the loss over the traced rows (needs --target): the backward pass.",
    ),
]
StatsBatch = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        metavar="N",
        min=1,
        help=(
            "Rows per batch (default: 16384); memory stays that of one batch. Train-mode BatchNorm and Dropout (p > 0) see every row in one batch."
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
        help="Also write a self-contained HTML page (inline CSS and SVG, nothing fetched): histograms and gradient norms.",
    ),
]
Eps = Annotated[
    float,
    typer.Option(
        "--eps", metavar="EPS", help="The finite-difference step: (f(p + eps) - f(p - eps)) / (2 eps), in float64."
    ),
]
Atol = Annotated[
    float,
    typer.Option(
        "--atol",
        metavar="X",
        help="Absolute tolerance (torch.autograd.gradcheck's default).",
        callback=finite_non_negative,
    ),
]
Rtol = Annotated[
    float,
    typer.Option(
        "--rtol",
        metavar="X",
        help="Relative tolerance (torch.autograd.gradcheck's default).",
        callback=finite_non_negative,
    ),
]
MaxChecks = Annotated[
    int | None,
    typer.Option(
        "--max-checks",
        metavar="N",
        min=1,
        help=(
            "Check N parameter values drawn at random with the seed (needed above 10,000 parameters; each check runs the model twice)."
        ),
    ),
]
CheckLayer = Annotated[
    int | None,
    typer.Option("--layer", metavar="I", help="Show only layer I's parameters (all are checked; 0-based)."),
]


# -- shared rendering ------------------------------------------------------------------------------


def sparkline(hist, width: int = SPARK_WIDTH) -> str:
    """A histogram as one line of block characters: adjacent bins summed into at most `width` cells,
    an empty cell blank, the fullest █."""
    if hist.counts is None or not len(hist.counts):
        return ""
    counts = [int(c) for c in hist.counts]
    group = math.ceil(len(counts) / width)
    cells = [sum(counts[i : i + group]) for i in range(0, len(counts), group)]
    top = max(cells)
    return "".join(" " if c == 0 else SPARK[min(len(SPARK) - 1, math.ceil(c / top * len(SPARK)) - 1)] for c in cells)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value, precision) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt(float(value), precision)


def _emit(oopts, frame: Frame, tables, doc=None) -> None:
    """A document (doc) goes out as JSON as it is; rows without one as a JSON list of records, as forward's."""
    fmt_ = oopts.resolved_format
    if fmt_ == "json" and doc is None:
        with oopts.stream() as out:
            writer = RowWriter("json", out, oopts.precision)
            writer.write(frame)
            writer.close()
        return
    emit(oopts, oopts.inputs, Report(doc, frame, tables))


def _layer_index(layer: int | None, count: int) -> int | None:
    from nncli.errors import UsageError

    if layer is None:
        return None
    if not -count <= layer < count:
        raise UsageError(
            f"--layer {layer}: the model has layers 0 to {count - 1}"
            if count
            else f"--layer {layer}: the model has no layers"
        )
    return layer % count


# -- trace -----------------------------------------------------------------------------------------


@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def trace(
    spec: Spec,
    data: Data,
    rows: Rows = "0",
    layer: TraceLayer = None,
    mode: InspectMode = "eval",
    grad: Grad = False,
    loss: Loss = None,
    full: Full = False,
    targets: dict = None,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """Each layer's input and output for chosen rows, layer by layer, as running the layers one by one gives them.

    Tidy rows (CSV, JSON): row, layer, type, index, value (and grad); layer is empty for the
    network's input, and layer i's input is layer i-1's output. Eval mode unless --mode train."""
    from nncli.lib import inside

    choice(mode, MODES, "--mode")
    m = load_model(spec, model, runtime)
    oopts = output_options(output, inputs=[spec, data, targets["targets"], model["weights"]])
    oopts.check()
    inside.parse_rows(rows)  # a bad --rows is refused before any work
    result = inside.trace(m, data, rows=rows, mode=mode, grad=grad, loss=loss, read=read_options(read, targets))
    chosen = _layer_index(layer, len(result.layers))
    stages = result.stages if chosen is None else result.stages[chosen : chosen + 2]
    frame = _trace_frame(result, stages, grad)
    p = oopts.precision
    text = f"{m.caption}; {mode} mode; {rows_text(len(result.rows))} ({_rows_label(result.rows)}) as one batch"
    if grad:
        text += f"; {result.loss_fn} = {fmt(float(result.loss), p)} over them (mean)"

    def tables():
        items = []
        for part in ["values", "grad"] if grad else ["values"]:
            for n, r in enumerate(result.rows):
                title = f"row {r}" + (": d loss / d value" if part == "grad" else "")
                items.append(_trace_table(title, stages, part, n, p, full))
            items.append(
                _stages_table(
                    "distribution over the traced rows" + (" (gradients)" if part == "grad" else ""), stages, part, p
                )
            )
        return items + [caption(text)]

    _emit(oopts, frame, tables)


def _rows_label(rows: list) -> str:
    """`0`, `0, 3`, `5-9`: the traced rows, ranges shortened."""
    parts, start = [], None
    for i, r in enumerate(rows):
        if start is None:
            start = r
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            parts.append(str(start) if start == r else f"{start}-{r}")
            start = None
    text = ", ".join(parts)
    return text if len(text) <= 60 else text[:57] + "..."


def _trace_frame(result, stages, grad: bool) -> Frame:
    import numpy as np

    rows, layers, types, index, values, grads = [], [], [], [], [], []
    picked = np.asarray(result.rows, dtype=np.int64)
    for stage in stages:
        v = stage.values.cpu().numpy()
        n, units = v.shape[0], v.shape[1] if v.ndim > 1 else 1
        rows.append(np.repeat(picked, units))
        index.append(np.tile(np.arange(units, dtype=np.int64), n))
        layers += [stage.index] * (n * units)
        types += [stage.type] * (n * units)
        values.append(v.reshape(-1))
        if grad:
            grads.append(stage.grad.cpu().numpy().reshape(-1))
    names = ["row", "layer", "type", "index", "value"] + (["grad"] if grad else [])
    columns = [np.concatenate(rows), layers, types, np.concatenate(index), np.concatenate(values)]
    if grad:
        columns.append(np.concatenate(grads))
    return Frame(names, columns)


def _trace_table(title: str, stages, part: str, n: int, precision, full: bool):
    """One row's values, a column per stage (the input, then each layer's output), a line per unit."""
    from rich.text import Text

    from nncli.views.render import FoldingTable
    from nncli.views.tensors import EDGE, ELLIPSIS, THRESHOLD

    arrays = [(s.values if part == "values" else s.grad)[n].cpu().numpy().reshape(-1) for s in stages]
    units = max((len(a) for a in arrays), default=0)
    cells = units * len(arrays)
    shown = list(range(units))
    if not full and cells > THRESHOLD and units > 2 * EDGE:  # as torch prints large tensors
        shown = list(range(EDGE)) + [None] + list(range(units - EDGE, units))
    names = ["unit"] + [("input" if s.index is None else f"{s.index} {s.type}") for s in stages]
    key = [Text(ELLIPSIS if u is None else str(u), style="dim") for u in shown]
    columns = [key]
    for a in arrays:
        columns.append([ELLIPSIS if u is None else (fmt(float(a[u]), precision) if u < len(a) else "") for u in shown])
    return FoldingTable(names, columns, title=title, keys=1)


def _stages_table(title: str, stages, part: str, precision):
    """A line per stage: its label, min, the distribution as a sparkline, max."""
    import numpy as np

    from nncli.lib import inside
    from nncli.views.render import FoldingTable

    names = ["layer", "min", "distribution", "max"]
    columns = [[], [], [], []]
    for s in stages:
        values = (s.values if part == "values" else s.grad).cpu().numpy()
        hist = inside.histogram(values)
        finite = values[np.isfinite(values)]
        columns[0].append(s.label)
        columns[1].append(_number(float(finite.min()) if finite.size else None, precision))
        columns[2].append(sparkline(hist))
        columns[3].append(_number(float(finite.max()) if finite.size else None, precision))
    return FoldingTable(names, columns, title=title, keys=1, justify=["left", "right", "left", "right"])


# -- stats -----------------------------------------------------------------------------------------


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
    targets: dict = None,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """Layer health over every row, batch by batch: each layer's activations (mean, std, min, max,
    distribution), dead ReLU units, saturated Sigmoid/Tanh units; with --target, each parameter's
    gradient norm, lr × ‖grad‖ / ‖weight‖ and vanishing (norm < 1e-7) or exploding (norm > 1e3) flags.

    dead: a ReLU output that is 0, a LeakyReLU one on its negative slope (input ≤ 0); a unit is dead
    when it is so for every row. saturated: a Sigmoid output ≤ 0.01 or ≥ 0.99, a Tanh one ≤ -0.99
    or ≥ 0.99. std is the population standard deviation (ddof=0), combined across batches in float64."""
    from nncli.lib import inside
    from nncli.views.progress import tracked

    choice(mode, MODES, "--mode")
    if html == "-":
        from nncli.errors import UsageError

        raise UsageError("--html takes a file name (standard output carries the statistics)")
    m = load_model(spec, model, runtime)
    oopts = output_options(output, inputs=[spec, data, targets["targets"], model["weights"]])
    oopts.check(extra={"--html": html})
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
        progress=lambda batches, source: tracked(batches, source, oopts.quiet),
    )
    p = oopts.precision
    text = f"{m.caption}; {mode} mode; {rows_text(result.rows)} in {result.batches:,} batch{'es' if result.batches != 1 else ''}"
    if result.params is not None:
        text += f"; {result.loss_fn} = {fmt(float(result.loss), p)}"
    if html:
        from nncli.io.output import output_file
        from nncli.views.report_html import stats_page

        page = stats_page(result, f"nncli stats: {m.spec.display_name}", text)
        with output_file(html, "--html") as f:
            f.write(page.encode("utf-8"))
    doc = _stats_doc(result, p)

    def tables():
        items = [_activations_table(result, p)]
        units = _units_table(result)
        if units is not None:
            items.append(units)
        if result.params:
            items.append(_gradients_table(result, p))
            text_ = (
                text
                + f"; update/weight = lr × ‖grad‖ / ‖weight‖ with lr {lr:g}; flags: vanishing below {vanishing:g}, exploding above {exploding:g}"
            )
        else:
            text_ = text
        return items + [caption(text_ + (f"; HTML report: {html}" if html else ""))]

    _emit(oopts, _stats_frame(result), tables, doc)


def _jsonable(value, precision, dtype: str = "float64"):
    """A float printed shortest for its dtype: the model's for values it computed (min, max), float64 for statistics."""
    import numpy as np

    from nncli.io.texts import jsonable

    if value is None:
        return None
    return jsonable(np.asarray(value, dtype=dtype), precision)


def _stats_doc(result, p) -> dict:
    from nncli.io.texts import jsonable

    layers = []
    for s in result.layers:
        h = s.histogram
        layers.append(
            {
                "layer": s.index,
                "type": s.type,
                "label": s.label,
                "units": s.units,
                "rows": s.rows,
                "count": s.count,
                "nonfinite": s.nonfinite,
                "mean": _jsonable(s.mean, p),
                "std": _jsonable(s.std, p),
                "min": _jsonable(s.min, p, result.dtype),
                "max": _jsonable(s.max, p, result.dtype),
                "zero_fraction": _jsonable(s.zero_fraction, p),
                "dead_units": s.dead_units,
                "zero_fraction_per_unit": None if s.zero_per_unit is None else jsonable(s.zero_per_unit, p),
                "saturated_fraction": _jsonable(s.saturated_fraction, p),
                "saturated_units": s.saturated_units,
                "saturated_fraction_per_unit": None
                if s.saturated_per_unit is None
                else jsonable(s.saturated_per_unit, p),
                "histogram": {
                    "bin_width": h.width if h.counts is not None else None,
                    "first_edge": float(h.edges[0]) if h.counts is not None else None,
                    "counts": [] if h.counts is None else [int(c) for c in h.counts],
                },
            }
        )
    doc = {"rows": result.rows, "batches": result.batches, "mode": result.mode, "layers": layers}
    if result.params is not None:
        doc.update(
            {
                "loss": jsonable(result.loss, p),
                "loss_fn": result.loss_fn,
                "loss_from": result.loss_from,
                "lr": result.lr,
                "thresholds": {"vanishing": result.vanishing, "exploding": result.exploding},
                "parameters": [
                    {
                        "parameter": g.name,
                        "layer": g.layer,
                        "type": g.type,
                        "shape": g.shape,
                        "grad_norm": _jsonable(g.grad_norm, p),
                        "weight_norm": _jsonable(g.weight_norm, p),
                        "update_ratio": _jsonable(g.update_ratio, p),
                        "flag": g.flag,
                    }
                    for g in result.params
                ],
            }
        )
    return doc


STAT_NAMES = (
    "rows",
    "count",
    "nonfinite",
    "mean",
    "std",
    "min",
    "max",
    "zero_fraction",
    "dead_units",
    "saturated_fraction",
    "saturated_units",
)


def _stats_frame(result) -> Frame:
    """Long and tidy: layer, type, parameter, statistic, unit, value; per-unit fractions with their unit."""
    import numpy as np

    layer, kind, param, stat, unit, value = [], [], [], [], [], []

    def add(l, t, pname, s, u, v):
        (
            layer.append(l),
            kind.append(t),
            param.append(pname),
            stat.append(s),
            unit.append(u),
            value.append(np.nan if v is None else float(v)),
        )

    for s in result.layers:
        for name in STAT_NAMES:
            v = getattr(s, name)
            if v is not None or name in ("mean", "std", "min", "max"):
                if name in ("zero_fraction", "dead_units") and s.zero_fraction is None:
                    continue
                add(s.index, s.type, None, name, None, v)
        for name, per in (("zero_fraction", s.zero_per_unit), ("saturated_fraction", s.saturated_per_unit)):
            if per is not None:
                for u, v in enumerate(per.tolist()):
                    add(s.index, s.type, None, name, u, v)
    for g in result.params or []:
        for name in ("grad_norm", "weight_norm", "update_ratio"):
            add(g.layer, g.type, g.name, name, None, getattr(g, name))
        add(g.layer, g.type, g.name, "vanishing", None, 1.0 if g.flag == "vanishing" else 0.0)
        add(g.layer, g.type, g.name, "exploding", None, 1.0 if g.flag == "exploding" else 0.0)
    return Frame(
        ["layer", "type", "parameter", "statistic", "unit", "value"],
        [layer, kind, param, stat, unit, np.array(value, dtype=np.float64)],
    )


def _activations_table(result, p):
    from nncli.views.render import FoldingTable

    names = ["layer", "mean", "std", "min", "max", "distribution"]
    columns = [[] for _ in names]
    for s in result.layers:
        for column, cell in zip(
            columns,
            [
                s.label,
                _number(s.mean, p),
                _number(s.std, p),
                _number(s.min, p),
                _number(s.max, p),
                sparkline(s.histogram),
            ],
        ):
            column.append(cell)
    title = f"activations over {rows_text(result.rows)}"
    return FoldingTable(
        names, columns, title=title, keys=1, justify=["left", "right", "right", "right", "right", "left"]
    )


def _units_table(result):
    from nncli.views.render import FoldingTable

    chosen = [s for s in result.layers if s.zero_fraction is not None or s.saturated_fraction is not None]
    if not chosen:
        return None
    names = ["layer", "zero", "dead units", "saturated", "saturated units"]
    columns = [[] for _ in names]
    for s in chosen:
        cells = [
            s.label,
            _percent(s.zero_fraction),
            "-" if s.dead_units is None else f"{s.dead_units} of {s.units}",
            _percent(s.saturated_fraction),
            "-" if s.saturated_units is None else f"{s.saturated_units} of {s.units}",
        ]
        for column, cell in zip(columns, cells):
            column.append(cell)
    return FoldingTable(names, columns, title="dead and saturated units", keys=1, justify=["left"] + ["right"] * 4)


def _gradients_table(result, p):
    from nncli.views.render import FoldingTable

    names = ["parameter", "shape", "grad norm", "weight norm", "update/weight", "flag"]
    columns = [[] for _ in names]
    for g in result.params:
        cells = [
            g.name,
            "[" + ", ".join(str(s) for s in g.shape) + "]",
            _number(g.grad_norm, p),
            _number(g.weight_norm, p),
            _number(g.update_ratio, p),
            g.flag or "",
        ]
        for column, cell in zip(columns, cells):
            column.append(cell)
    return FoldingTable(
        names, columns, title="gradients", keys=1, justify=["left", "left", "right", "right", "right", "left"]
    )


# -- gradcheck -------------------------------------------------------------------------------------


@with_options(TARGETS, READ, OUTPUT, RUNTIME)
def gradcheck(
    spec: Spec,
    data: Data,
    eps: Eps = EPS,
    atol: Atol = ATOL,
    rtol: Rtol = RTOL,
    max_checks: MaxChecks = None,
    mode: InspectMode = "eval",
    loss: Loss = None,
    layer: CheckLayer = None,
    full: Full = False,
    seed: Seed = None,
    weights: Weights = None,
    targets: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """Autograd's gradient of the loss beside central finite differences, in float64, parameter by parameter.

    A value passes where |autograd - numerical| <= atol + rtol * |numerical|, torch.autograd.gradcheck's
    rule and defaults (eps 1e-6, atol 1e-5, rtol 1e-3). The model is built in float64 (as --dtype
    float64 builds it) and DATA held in memory. Exit status 1 when any value fails."""
    from nncli.lib import inside

    choice(mode, MODES, "--mode")
    if not (math.isfinite(eps) and eps > 0):
        from nncli.errors import UsageError

        raise UsageError(f"--eps must be a finite number above 0, got {eps}")
    m = load_model(spec, {"seed": seed, "weights": weights, "dtype": "float64"}, runtime)
    oopts = output_options(output, inputs=[spec, data, targets["targets"], weights])
    oopts.check()
    result = inside.gradcheck(
        m,
        data,
        loss=loss,
        eps=eps,
        atol=atol,
        rtol=rtol,
        max_checks=max_checks,
        mode=mode,
        read=read_options(read, targets),
    )
    checks = result.params
    if layer is not None:
        index = _layer_index(layer, len(m.built.layers))
        checks = [c for c in checks if c.layer == index]
        if not checks:
            from nncli.errors import UsageError

            raise UsageError(
                f"--layer {layer}: layers[{index}] ({m.built.layers[index].type}) has no parameters checked"
            )
    p = oopts.precision
    verdict = "passed" if result.passed else "FAILED"
    sample = (
        f"{result.checked:,} of {result.total:,} values drawn at random (seed {m.built.seed})"
        if result.sampled
        else f"all {result.total:,} values"
    )
    text = (
        f"gradcheck {verdict}: {sample}, {result.failures:,} outside atol {atol:g} + rtol {rtol:g} × |numerical|; central differences with "
        f"eps {eps:g}; {m.caption}; {mode} mode; {result.loss_fn} over {rows_text(result.rows)}"
    )
    doc = _check_doc(result, checks, p)

    def tables():
        items = []
        for c in checks:
            items.append(_check_table(c, result, p, full))
        items.append(_check_summary(checks, result, p))
        return items + [caption(text)]

    _emit(oopts, _check_frame(checks, result), tables, doc)
    if not result.passed:
        raise typer.Exit(1)


def _index_text(flat: int, shape: list) -> str:
    """A flat (row-major) index as `row:column` (or `i` in a vector), as grads writes indices."""
    parts = []
    for size in reversed(shape):
        parts.append(flat % size)
        flat //= size
    return ":".join(str(i) for i in reversed(parts)) if shape else ""


def _worst(c):
    import numpy as np

    rel = c.rel_error
    return int(np.argmax(rel)) if len(rel) else None


def _check_doc(result, checks, p) -> dict:
    from nncli.io.texts import jsonable

    parameters = []
    for c in checks:
        rel, ab, ok = c.rel_error, c.abs_error, c.within(result.atol, result.rtol)
        worst = _worst(c)
        parameters.append(
            {
                "parameter": c.name,
                "layer": c.layer,
                "type": c.type,
                "shape": c.shape,
                "checked": int(len(c.indices)),
                "numel": c.numel,
                "passed": bool(ok.all()),
                "max_abs_error": _jsonable(float(ab.max()), p),
                "max_rel_error": _jsonable(float(rel.max()), p),
                "worst_index": _index_text(int(c.indices[worst]), c.shape),
                "elements": [
                    {
                        "index": _index_text(int(i), c.shape),
                        "autograd": a,
                        "numerical": n,
                        "abs_error": e,
                        "rel_error": r,
                        "passed": bool(k),
                    }
                    for i, a, n, e, r, k in zip(
                        c.indices.tolist(),
                        jsonable(c.autograd, p),
                        jsonable(c.numerical, p),
                        jsonable(ab, p),
                        jsonable(rel, p),
                        ok.tolist(),
                    )
                ],
            }
        )
    rel_all = [float(c.rel_error.max()) for c in checks]
    abs_all = [float(c.abs_error.max()) for c in checks]
    return {
        "passed": result.passed,
        "checked": result.checked,
        "total": result.total,
        "sampled": result.sampled,
        "failures": result.failures,
        "eps": result.eps,
        "atol": result.atol,
        "rtol": result.rtol,
        "mode": result.mode,
        "max_rel_error": _jsonable(max(rel_all), p) if rel_all else None,
        "max_abs_error": _jsonable(max(abs_all), p) if abs_all else None,
        "loss": jsonable(result.loss, p),
        "loss_fn": result.loss_fn,
        "loss_from": result.loss_from,
        "rows": result.rows,
        "parameters": parameters,
    }


def _check_frame(checks, result) -> Frame:
    import numpy as np

    names = ["parameter", "index", "autograd", "numerical", "abs_error", "rel_error", "passed"]
    columns = [[] for _ in names]
    for c in checks:
        n = len(c.indices)
        columns[0] += [c.name] * n
        columns[1] += [_index_text(int(i), c.shape) for i in c.indices.tolist()]
        columns[2].append(c.autograd)
        columns[3].append(c.numerical)
        columns[4].append(c.abs_error)
        columns[5].append(c.rel_error)
        columns[6] += c.within(result.atol, result.rtol).tolist()
    for i in (2, 3, 4, 5):
        columns[i] = np.concatenate(columns[i]) if columns[i] else np.zeros(0)
    return Frame(names, columns)


def _check_table(c, result, p, full: bool):
    """One parameter: autograd and the central difference side by side, elided to the first and last 3."""
    from rich.text import Text

    from nncli.views.render import FoldingTable
    from nncli.views.tensors import EDGE, ELLIPSIS

    n = len(c.indices)
    shown = list(range(n))
    if not full and n > 2 * EDGE + 4:
        shown = list(range(EDGE)) + [None] + list(range(n - EDGE, n))
    ok = c.within(result.atol, result.rtol)
    rel, ab = c.rel_error, c.abs_error
    names = ["index", "autograd", "numerical", "abs error", "rel error", "ok"]
    columns = [[] for _ in names]
    for j in shown:
        if j is None:
            cells = [Text(ELLIPSIS)] * len(names)
        else:
            cells = [
                Text(_index_text(int(c.indices[j]), c.shape), style="dim"),
                fmt(float(c.autograd[j]), p),
                fmt(float(c.numerical[j]), p),
                fmt(float(ab[j]), p),
                fmt(float(rel[j]), p),
                Text("yes" if ok[j] else "NO", style="" if ok[j] else "bold red"),
            ]
        for column, cell in zip(columns, cells):
            column.append(cell)
    title = f"{c.name} {c.shape} {c.type}: {n:,} of {c.numel:,} checked"
    return FoldingTable(names, columns, title=title, keys=1)


def _check_summary(checks, result, p):
    from nncli.views.render import FoldingTable

    names = ["parameter", "checked", "max abs error", "max rel error", "at", "result"]
    columns = [[] for _ in names]
    for c in checks:
        worst = _worst(c)
        ok = c.within(result.atol, result.rtol)
        cells = [
            c.name,
            f"{len(c.indices):,}",
            fmt(float(c.abs_error.max()), p),
            fmt(float(c.rel_error.max()), p),
            _index_text(int(c.indices[worst]), c.shape),
            "pass" if ok.all() else f"FAIL ({int((~ok).sum()):,})",
        ]
        for column, cell in zip(columns, cells):
            column.append(cell)
    return FoldingTable(
        names, columns, title="gradcheck", keys=1, justify=["left", "right", "right", "right", "left", "left"]
    )
