"""trace, stats and gradcheck's results as tables for people, tidy rows and JSON documents: one
Report each (nncli.lib.inside computes them)."""

from __future__ import annotations

import math

from nncli.views.render import Frame, Report, caption, fmt, rows_text

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 16


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


def layer_index(layer: int | None, count: int) -> int | None:
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


def rows_label(rows: list) -> str:
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


# -- the three reports -----------------------------------------------------------------------------


def trace_report(result, stages, grad: bool, text: str, precision, full: bool) -> Report:
    """Each traced row's values (and gradients) stage by stage; JSON is the tidy rows' records."""

    def tables():
        items = []
        for part in ["values", "grad"] if grad else ["values"]:
            for n, r in enumerate(result.rows):
                title = f"row {r}" + (": d loss / d value" if part == "grad" else "")
                items.append(_trace_table(title, stages, part, n, precision, full))
            title = "distribution over the traced rows" + (" (gradients)" if part == "grad" else "")
            items.append(_stages_table(title, stages, part, precision))
        return items + [caption(text)]

    return Report(None, _trace_frame(result, stages, grad), tables)


def stats_report(result, text: str, precision, lr: float, vanishing: float, exploding: float, html) -> Report:
    p = precision

    def tables():
        items = [_activations_table(result, p)]
        units = _units_table(result)
        if units is not None:
            items.append(units)
        text_ = text
        if result.params:
            items.append(_gradients_table(result, p))
            text_ += (
                f"; update/weight = lr × ‖grad‖ / ‖weight‖ with lr {lr:g}; "
                f"flags: vanishing below {vanishing:g}, exploding above {exploding:g}"
            )
        return items + [caption(text_ + (f"; HTML report: {html}" if html else ""))]

    return Report(_stats_doc(result, p), _stats_frame(result), tables)


def gradcheck_report(result, checks, text: str, precision, full: bool) -> Report:
    def tables():
        items = [_check_table(c, result, precision, full) for c in checks]
        return items + [_check_summary(checks, result, precision), caption(text)]

    return Report(_check_doc(result, checks, precision), _check_frame(checks, result), tables)
