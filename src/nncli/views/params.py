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
    """The input schema saved with the weights: each column the model reads, its kind, what it is
    filled with when missing, and the model inputs it becomes; then the target."""
    from nncli.views.render import FoldingTable

    fills = dict(zip(schema.imputer.columns, schema.imputer.statistics)) if schema.imputer is not None else {}
    strategy = schema.imputer.strategy if schema.imputer is not None else None
    encoded: dict[str, list[str]] = {}
    if schema.onehot is not None:
        names, offset = schema.onehot.names, 0
        for column, width in zip(schema.onehot.columns, schema.onehot.widths()):
            encoded[column], offset = names[offset : offset + width], offset + width
    rows = []
    for f in schema.features:
        if f.kind == "number":
            fill = fills.get(f.name, "") if strategy else "(refused)"
            fill_text = "dropped (no value in training)" if strategy and fill is None else f"{fill} ({strategy})"
            rows.append([f.name, "number", fill_text if strategy else "missing refused", f.name])
        else:
            names = encoded.get(f.name, [])
            shown = ", ".join(names[:6]) + (f", ... ({len(names)})" if len(names) > 6 else "")
            rows.append([f.name, "category", schema.onehot.missing if schema.onehot else "", shown])
    target = schema.target
    if target is not None:
        detail = (
            ", ".join(target.classes[:6]) + (", ..." if len(target.classes) > 6 else "")
            if target.classes
            else (
                f"{target.scaling.kind} (shift {target.scaling.shift}, scale {target.scaling.scale})"
                if target.scaling
                else ""
            )
        )
        rows.append([target.name, f"target ({target.kind})", "", detail])
    names = ["column", "kind", "when missing", "model inputs"]
    return FoldingTable(
        names,
        [list(c) for c in zip(*rows)] if rows else [[] for _ in names],
        title=f"input schema: {len(schema.features)} columns -> {schema.width} inputs",
        keys=1,
    )
