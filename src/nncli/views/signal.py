"""loss, grads and step's results as one Report each: a JSON document, tidy rows, tables."""

from __future__ import annotations

from nncli.io.texts import jsonable
from nncli.views.render import Frame, Report, caption, fmt, frame_table, key_value_table, rows_text
from nncli.views.tensors import (
    layer_type,
    long_rows,
    summary_long,
    summary_rows,
    summary_table,
    tensor_table,
    tensor_tables,
)

PARTS = ("before", "grad", "after")


def loss_fields(report, precision) -> dict:
    """The fields every loss-bearing record shares, with the same keys in every format."""
    return {
        "loss": jsonable(report.tensor, precision) if report.tensor is not None else None,
        "loss_fn": report.loss_fn,
        "loss_from": report.loss_from,
        "reduction": report.reduction,
        "rows": report.rows,
    }


def scalar(tensor):
    """A 0-d tensor as a one-element array, so CSV prints it shortest for its dtype."""
    return tensor.detach().cpu().numpy().reshape(1)


def loss_report(report, model_caption: str, p) -> Report:
    import numpy as np  # after reading began: numpy's BLAS threads would keep the reader from forking (procread)

    doc = loss_fields(report, p)
    if report.tensor is None:
        values = report.per_row
        doc["loss"] = jsonable(values, p)
        values = values.reshape(len(values), -1)
        names = ["loss"] if values.shape[1] == 1 else [f"loss_{i}" for i in range(values.shape[1])]
        frame = Frame(["row"] + names, [np.arange(len(values))] + [values[:, i] for i in range(values.shape[1])])
        table = frame_table(frame, p)
    else:
        frame = Frame(list(doc), [scalar(report.tensor)] + [[doc[k]] for k in list(doc)[1:]])
        table = key_value_table({**{k: str(v) for k, v in doc.items()}, "loss": fmt(float(report.tensor), p)})
    text = f"{model_caption}; {report.loss_fn} from {report.loss_from}, {rows_text(report.rows)}"
    return Report(doc, frame, [table, caption(text)])


def input_grads_report(report, model_caption: str, p) -> Report:
    """grads --inputs: d loss / d x, a row per input row."""
    import numpy as np

    doc = loss_fields(report, p)
    text = f"{model_caption}; {report.loss_fn} = {fmt(float(report.tensor), p)} over {rows_text(report.rows)}"
    values = report.input_gradients.cpu().numpy()
    names = [f"grad_{n}" for n in report.feature_names]
    doc["input_gradients"] = jsonable(values, p)
    frame = Frame(["row"] + names, [np.arange(len(values))] + [values[:, i] for i in range(values.shape[1])])
    return Report(doc, frame, [frame_table(frame, p), caption(text + "; d loss / d input per row")])


def grads_report(report, named: dict, built, model_caption: str, p, summary: bool, full: bool) -> Report:
    doc = loss_fields(report, p)
    text = f"{model_caption}; {report.loss_fn} = {fmt(float(report.tensor), p)} over {rows_text(report.rows)}"
    if summary:
        doc["gradients"], frame = summary_rows(named, p)
        tables = [summary_table("gradients", named, p), caption(text)]
    else:
        doc["gradients"] = {k: jsonable(v, p) for k, v in named.items()}
        frame = long_rows({k: {"grad": v} for k, v in named.items()}, ["grad"], p)
        tables = tensor_tables(built, named, p, full) + [summary_table("gradients", named, p), caption(text)]
    return Report(doc, frame, tables)


def step_report(result, named: dict, built, model_caption: str, lr: float, saved, p, summary: bool, full: bool):
    before, after = result.before, result.after
    doc = {
        "loss_before": jsonable(before.tensor, p),
        "loss_after": jsonable(after.tensor, p),
        "loss_fn": before.loss_fn,
        "loss_from": before.loss_from,
        "reduction": before.reduction,
        "rows": before.rows,
        "lr": lr,
    }
    if saved:
        doc["weights"] = saved
    text = (
        f"{model_caption}; {before.loss_fn} {fmt(float(before.tensor), p)} -> {fmt(float(after.tensor), p)} "
        f"after one step with lr {lr:g}" + (f"; saved to {saved}" if saved else "")
    )
    tables = []
    if summary:
        parts = {
            part: {r["parameter"]: r for r in summary_rows({k: v[part] for k, v in named.items()}, p)[0]}
            for part in PARTS
        }
        doc["parameters"] = {
            name: {part: {k: v for k, v in parts[part][name].items() if k != "parameter"} for part in parts}
            for name in named
        }
        frame = summary_long(parts, list(named))
    else:
        doc["parameters"] = {k: {part: jsonable(v, p) for part, v in parts.items()} for k, parts in named.items()}
        frame = long_rows(named, list(PARTS), p)
        for name, parts in named.items():
            for part in PARTS:
                title = f"{name} {part} {list(parts[part].shape)} {layer_type(built, name)}"
                tables.append(tensor_table(title, parts[part], p, full))
    for part in PARTS:
        tables.append(summary_table(part, {k: v[part] for k, v in named.items()}, p))
    tables.append(caption(text))
    return Report(doc, frame, tables)
