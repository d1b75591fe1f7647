"""Tensors as Rich tables (shared by params, grads and step) and in long, tidy rows.

Large tensors are elided the way torch prints them (more than 1000 elements: the first and last
3 rows and columns around an ellipsis); wide ones fold into several tables that fit the terminal.
Values are coloured by sign and emphasised by magnitude; NO_COLOR or a pipe gives plain text.
"""

from __future__ import annotations

from nncli.views.render import Frame, fmt

THRESHOLD = 1000  # torch.set_printoptions defaults
EDGE = 3
ELLIPSIS = "…"


def _positions(size: int, elide: bool) -> list[int | None]:
    if elide and size > 2 * EDGE:
        return list(range(EDGE)) + [None] + list(range(size - EDGE, size))
    return list(range(size))


def _style(value: float, scale: float) -> str:
    if value != value or scale == 0:
        return "yellow" if value != value else ""
    colour = "green" if value > 0 else ("red" if value < 0 else "dim")
    magnitude = abs(value) / scale
    if magnitude >= 0.5:
        return f"bold {colour}"
    return colour if magnitude >= 0.05 else f"dim {colour}"


def tensor_table(title: str, values, precision: int | None, full: bool):
    """A table showing one tensor (0-d, 1-d or 2-d), which folds to the width it is printed at."""
    import numpy as np
    from rich.text import Text

    from nncli.views.render import FoldingTable

    array = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values)
    matrix = array.reshape(1, -1) if array.ndim < 2 else array.reshape(array.shape[0], -1)
    elide = not full and array.size > THRESHOLD
    rows, cols = _positions(matrix.shape[0], elide), _positions(matrix.shape[1], elide)
    finite = matrix[np.isfinite(matrix)] if matrix.dtype.kind == "f" else matrix
    scale = float(np.abs(finite).max()) if finite.size else 0.0

    def cell(r, c) -> Text:
        if r is None or c is None:
            return Text(ELLIPSIS)
        return Text(fmt(float(matrix[r, c]), precision), style=_style(float(matrix[r, c]), scale))

    labels = [Text(ELLIPSIS if r is None else (str(r) if array.ndim >= 2 else ""), style="dim") for r in rows]
    names = [""] + [ELLIPSIS if c is None else str(c) for c in cols]
    return FoldingTable(names, [labels] + [[cell(r, c) for r in rows] for c in cols], title=title, keys=1, uniform=True)


def summary_table(title: str, named: dict, precision: int | None):
    """One row per tensor: name, shape, norm, min, max, mean |x|; folds on a narrow terminal, never squeezes."""
    from nncli.views.render import FoldingTable

    names = ["parameter", "shape", "norm", "min", "max", "mean |x|"]
    rows = []
    for name, tensor in named.items():
        t = tensor.detach().double()
        empty = t.numel() == 0
        stats = ["-"] * 4 if empty else [fmt(float(v), precision) for v in (t.norm(), t.min(), t.max(), t.abs().mean())]
        rows.append([name, str(list(tensor.shape)), *stats])
    columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in names]
    return FoldingTable(names, columns, title=title, keys=1, justify=["left", "left"] + ["right"] * 4)


def index_text(index: tuple) -> str:
    """An element's index in long form: `3:5` for row 3, column 5; `3` in a vector."""
    return ":".join(str(i) for i in index)


def long_rows(named: dict[str, dict], value_names: list[str], precision: int | None):
    """Long, tidy rows (parameter, index, then one column per value name) for CSV, TSV and JSON Lines."""
    import numpy as np

    from nncli.views.render import Frame

    params, indices = [], []
    columns: dict[str, list] = {v: [] for v in value_names}
    for name, values in named.items():
        first = values[value_names[0]]
        shape = tuple(first.shape)
        for index in np.ndindex(*shape) if shape else [()]:
            params.append(name)
            indices.append(index_text(index))
        for v in value_names:
            columns[v].append(values[v].detach().cpu().numpy().reshape(-1))
    arrays = [np.concatenate(columns[v]) if columns[v] else np.zeros(0) for v in value_names]
    return Frame(["parameter", "index"] + value_names, [params, indices] + arrays)


def summary_rows(named: dict, precision) -> tuple[list[dict], Frame]:
    """Per tensor: shape, norm, min, max, mean |x| (computed in float64), as records and as a frame."""
    import numpy as np

    from nncli.io.texts import jsonable
    from nncli.views.render import Frame

    records, names = [], ["parameter", "shape", "norm", "min", "max", "mean_abs"]
    for name, tensor in named.items():
        t = tensor.detach().double()
        empty = t.numel() == 0
        stats = [None] * 4 if empty else [float(v) for v in (t.norm(), t.min(), t.max(), t.abs().mean())]
        records.append({"parameter": name, "shape": list(tensor.shape), **dict(zip(names[2:], stats))})
    columns = [[r["parameter"] for r in records], [shape_text(r["shape"]) for r in records]]
    columns += [np.array([np.nan if r[k] is None else r[k] for r in records], dtype=np.float64) for k in names[2:]]
    return [
        {k: (jsonable(np.float64(v), precision) if isinstance(v, float) else v) for k, v in r.items()} for r in records
    ], Frame(names, columns)


def shape_text(shape: list) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def summary_long(parts: dict, order: list[str]) -> Frame:
    """step --summary as tidy rows: parameter, part (before, grad, after), shape, norm, min, max, mean_abs."""
    import numpy as np

    from nncli.views.render import Frame

    names = ["parameter", "part", "shape", "norm", "min", "max", "mean_abs"]
    rows = [
        (name, part, shape_text(parts[part][name]["shape"])) + tuple(parts[part][name][k] for k in names[3:])
        for name in order
        for part in parts
    ]
    columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in names]
    for i in range(3, 7):
        columns[i] = np.array([np.nan if v is None else v for v in columns[i]], dtype=np.float64)
    return Frame(names, columns)


def only_layer(named: dict, built, layer: int | None) -> dict:
    """The tensors of one layer (--layer I, negative from the end), or all of them."""
    from nncli.errors import UsageError

    if layer is None:
        return named
    count = len(built.layers)
    if not -count <= layer < count:
        raise UsageError(f"--layer {layer}: the model has layers 0 to {count - 1}")
    index = layer % count
    chosen = {k: v for k, v in named.items() if k.split(".")[0] == str(index)}
    if not chosen:
        raise UsageError(f"--layer {layer}: layers[{index}] ({built.layers[index].type}) has no parameters")
    return chosen


def layer_type(built, name: str) -> str:
    return built.layers[int(name.split(".")[0])].type


def tensor_tables(built, named: dict, precision, full: bool) -> list:
    return [
        tensor_table(f"{name} {list(tensor.shape)} {layer_type(built, name)}", tensor, precision, full)
        for name, tensor in named.items()
    ]
