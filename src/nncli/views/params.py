"""params (summary)'s result, torchinfo's summary as nncli shows it: a table of layers, the totals
and the memory one training step takes, and the same as a JSON document and tidy rows."""

from __future__ import annotations

from nncli.io.texts import jsonable
from nncli.views.render import Frame, Report, caption
from nncli.views.tensors import long_rows, tensor_tables

ROW_KEYS = ("index", "type", "args", "output_shape", "params", "trainable", "buffers", "mult_adds")


def params_report(summary, values: dict | None, built, fmt: str, p, full: bool) -> Report:
    """`values`: the parameters to show (--values, --layer), or None for the counts alone."""
    doc = summary.to_dict()  # the library's result is the JSON document: one home for its fields
    rows = doc["layers"]
    columns = [[r[k] if k != "output_shape" else output_shape_text(r[k]) for r in rows] for k in ROW_KEYS]
    frame = Frame(list(ROW_KEYS), columns)
    tables = [_params_table(summary.name, rows, summary), _totals_table(summary)]
    if summary.schema is not None:
        tables.append(schema_table(summary.schema))
    if summary.temperature is not None:
        tables.append(
            caption(
                f"calibrated: temperature T = {summary.temperature!r} (nncli calibrate); forward, evaluate and "
                "export divide the logits by it, loss, grads, step and train do not"
            )
        )
    if values is not None:
        doc["parameters"] = {k: jsonable(v, p) for k, v in values.items()}
        tables += tensor_tables(built, values, p, full)
        tables.append(caption(built.caption))
        if fmt in ("csv", "tsv", "jsonl"):
            frame = long_rows({k: {"value": v} for k, v in values.items()}, ["value"], p)
    return Report(doc, frame, tables)


def output_shape_text(shape: list) -> str:
    return "[" + ", ".join(("N" if i == 0 else "?") if s is None else str(s) for i, s in enumerate(shape)) + "]"


def _params_table(title: str, rows: list[dict], summary):
    from nncli.views.render import FoldingTable

    names = ["#", "layer", "arguments", "output shape", "params", "buffers", "mult-adds"]
    cells = [
        [
            str(r["index"]),
            r["type"],
            r["args"],
            output_shape_text(r["output_shape"]),
            f"{r['params']:,}",
            f"{r['buffers']:,}",
            f"{r['mult_adds']:,}",
        ]
        for r in rows
    ]
    cells.append(
        ["", "total", "", "", f"{summary.total_params:,}", f"{summary.buffers:,}", f"{summary.mult_adds_per_row:,}"]
    )
    return FoldingTable(
        names,
        [list(c) for c in zip(*cells)],
        title=title,
        keys=2,
        total=True,
        justify=["right", "left", "left", "left", "right", "right", "right"],
    )


def _totals_table(summary):
    """Counts and the memory of one training step on a batch, torchinfo's "Estimated Total Size"."""
    from nncli.views.render import key_value_table

    memory = summary.memory
    size = lambda n: "?" if n is None else _bytes(n)  # noqa: E731
    momentum = ", momentum" if summary.optimizer == "sgd" and summary.momentum else ""
    state = f"optimizer state ({summary.optimizer}{momentum})"
    return key_value_table(
        {
            "trainable params": f"{summary.trainable_params:,}",
            "non-trainable params": f"{summary.non_trainable_params:,}",
            "buffer values": f"{summary.buffers:,}",
            "mult-adds per row": f"{summary.mult_adds_per_row:,}",
            f"mult-adds per batch of {summary.batch_size:,}": f"{summary.mult_adds_batch:,}",
            f"input, batch of {summary.batch_size:,}": size(memory["input"]),
            "activations (forward + backward)": size(memory["activations"]),
            f"parameters ({summary.dtype})": size(memory["parameters"]),
            "buffers": size(memory["buffers"]),
            "gradients": size(memory["gradients"]),
            state: size(memory["optimizer_state"]),
            "estimated total size": size(memory["total"]),
        }
    )


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def schema_table(schema):
    """The input schema saved with the weights: each column the model reads, its kind, what fills it
    when missing, how many model inputs it becomes and its categories; then the target."""
    from nncli.views.render import FoldingTable

    imputer, onehot = schema.imputer, schema.onehot
    fills = dict(zip(imputer.columns, imputer.statistics)) if imputer is not None else {}
    flagged = {imputer.columns[i] for i in imputer.indicator} if imputer is not None else set()
    widths = dict(zip(onehot.columns, onehot.widths())) if onehot is not None else {}
    categories = dict(zip(onehot.columns, onehot.categories)) if onehot is not None else {}
    rows = []
    for f in schema.features:
        if f.kind == "number":
            fill = fills.get(f.name)
            missing = "refused" if imputer is None else ("dropped: none in training" if fill is None else f"{fill:g}")
            count = 0 if imputer is not None and fill is None and not imputer.keep_empty_features else 1
            rows.append([f.name, missing, str(count + (f.name in flagged)), "(a number)"])
        else:
            cats = ["(missing)" if c is None else str(c) for c in categories.get(f.name, ())]
            shown = ", ".join(cats[:8]) + (f", ... ({len(cats)})" if len(cats) > 8 else "")
            rows.append([f.name, onehot.missing if onehot else "", str(widths.get(f.name, 0)), shown])
    target = schema.target
    if target is not None:
        if target.classes:
            detail = ", ".join(target.classes[:8]) + (
                f", ... ({len(target.classes)})" if len(target.classes) > 8 else ""
            )
        elif target.scaling is not None:
            detail = f"{target.scaling.kind}: shift {target.scaling.shift:g}, scale {target.scaling.scale:g}"
        else:
            detail = ""
        rows.append([target.name, "(target)", "", detail])
    strategy = f", numbers filled with the {imputer.strategy}" if imputer is not None else ""
    names = ["column", "when missing", "inputs", "categories"]
    return FoldingTable(
        names,
        [list(c) for c in zip(*rows)] if rows else [[] for _ in names],
        title=f"input schema: {len(schema.features)} columns, {schema.width} model inputs{strategy}",
        keys=1,
        justify=["left", "left", "right", "left"],
    )
