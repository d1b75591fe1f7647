"""train and evaluate's results as one Report each: the history (a table, a loss curve, tidy rows,
a JSON document), and the evaluation's summary, per-class or per-label scores and confusion matrix."""

from __future__ import annotations

from nncli.io.texts import jsonable
from nncli.views.render import Frame, Report, caption, fmt, frame_table, key_value_table, rows_text


def train_report(history, model_caption: str, saved: str | None, precision) -> Report:
    """The epochs' history; `saved`: the --save-weights file, or None."""
    rows = history.as_dicts()
    o = history.options
    doc = {
        "history": [{k: jsonable(v) for k, v in r.items()} for r in rows],
        "weights": saved,
        "loss_fn": history.loss_fn,
        "loss_from": history.loss_from,
        "optimizer": o.optimizer,
        "lr": o.lr,
        "batch_size": o.batch_size,
        "epochs": len(rows),
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
    }
    names = list(rows[0]) if rows else ["epoch"]
    frame = Frame(names, [_column(n, [r.get(n) for r in rows]) for n in names])
    stopped = (
        f", stopped early after {len(rows)} epochs (best validation weights kept, epoch {history.best_epoch})"
        if history.stopped_early
        else ""
    )
    kept = f"; weights saved to {saved}" if saved else "; weights not saved"
    text = f"{model_caption}; {history.loss_fn}, {o.optimizer} lr {o.lr:g}, batch {o.batch_size}{stopped}{kept}"

    def tables():
        from nncli.views.plot import loss_curve

        return [frame_table(frame, precision), loss_curve(rows), caption(text)]

    return Report(doc, frame, tables)


EVALUATE_PARTS = (
    "loss_fn",
    "loss_from",
    "rows",
    "per_class",
    "per_label",
    "confusion_matrix",
    "classes",
    "reliability",
)
RELIABILITY = ("lower", "upper", "count", "confidence", "accuracy")  # a bin's fields after its number


def evaluate_report(doc: dict, model_caption: str, p, plot: bool = False) -> Report:
    """evaluate's document (rounded to --precision decimals when given), its tables and tidy rows;
    `plot`: a classifier's reliability diagram under its reliability table."""
    if p is not None:
        doc = {k: (round(v, p) if isinstance(v, float) else v) for k, v in doc.items()}
    summary = {
        k: (fmt(float(v), p) if isinstance(v, float) else str(v)) for k, v in doc.items() if k not in EVALUATE_PARTS
    }
    summary["rows"] = str(doc["rows"])
    tables = [key_value_table(summary)]
    if "per_class" in doc:
        tables += [
            _per_table(doc["per_class"], "class", p),
            _confusion_table(doc["confusion_matrix"], doc.get("classes")),
        ]
        if "reliability" in doc:
            binary = len(doc["confusion_matrix"]) == 2
            tables.append(_reliability_table(doc["reliability"], binary, p))
            if plot:
                from nncli.views.plot import reliability_diagram

                tables.append(reliability_diagram(doc["reliability"], binary))
    elif "per_label" in doc:
        tables += [_per_table(doc["per_label"], "label", p)]
    tables.append(caption(f"{model_caption}; {doc['loss_fn']} from {doc['loss_from']}, {rows_text(doc['rows'])}"))
    return Report(doc, _evaluate_long(doc), tables)


def _column(name: str, values: list):
    """A history column: epochs as integers, losses in their own dtype (numpy scalars), accuracies float64."""
    import numpy as np

    if name == "epoch":
        return np.array(values, dtype=np.int64)
    dtype = np.float32 if {type(v) for v in values} == {np.float32} else np.float64
    return np.array([np.nan if v is None else v for v in values], dtype=dtype)


def _per_table(records: list[dict], key: str, p):
    import numpy as np

    names = list(records[0])
    columns = [[r[key] for r in records]]
    columns += [
        np.array([r[k] for r in records], dtype=np.float64) if k != "support" else [r[k] for r in records]
        for k in names[1:]
    ]
    return frame_table(Frame(names, columns), p)


def _evaluate_long(doc: dict) -> Frame:
    """evaluate as tidy rows for CSV, TSV and JSON Lines: metric, class, predicted, value. The summary
    comes first, so `nncli evaluate ... | head` shows the loss and the accuracy."""
    rows = [
        (k, None, None, v)
        for k, v in doc.items()
        if k not in ("per_class", "per_label", "confusion_matrix", "classes", "reliability")
    ]
    for key, label in (("per_class", "class"), ("per_label", "label")):
        for r in doc.get(key, []):
            rows += [(k, str(r[label]), None, v) for k, v in r.items() if k != label]
    labels = doc.get("classes") or [str(c) for c in range(len(doc.get("confusion_matrix", [])))]
    for t, row in enumerate(doc.get("confusion_matrix", [])):
        rows += [("confusion", labels[t], labels[pred], v) for pred, v in enumerate(row)]
    for r in doc.get("reliability", []):  # the bin's number in the class column; an empty bin's means are empty
        rows += [(f"reliability_{k}", str(r["bin"]), None, r[k]) for k in RELIABILITY]
    columns = [list(c) for c in zip(*rows)]
    columns[3] = [None if v is None else (repr(v) if isinstance(v, float) else str(v)) for v in columns[3]]
    return Frame(["metric", "class", "predicted", "value"], columns)


def _reliability_table(records: list[dict], binary: bool, p):
    """The reliability table: each bin's rows, mean confidence and accuracy (an empty bin's are blank)."""
    from nncli.views.render import FoldingTable

    def number(v) -> str:
        return "" if v is None else fmt(v, p)

    names = ["bin", "lower", "upper", "count", "confidence", "accuracy"]
    columns = [[str(r["bin"]) for r in records]]
    columns += [[number(r[k]) if k != "count" else str(r[k]) for r in records] for k in RELIABILITY]
    on = "P(class 1); accuracy: share of class 1" if binary else "the top-class probability"
    return FoldingTable(names, columns, title=f"reliability: bins (lower, upper] of {on}", keys=1)


def _confusion_table(matrix: list[list[int]], classes: list | None = None):
    from rich.text import Text

    from nncli.errors import printable
    from nncli.views.render import FoldingTable

    def cell(v: int, diagonal: bool) -> Text:
        return Text(str(v), style="bold green" if diagonal else ("red" if v else ""))

    labels = classes or [str(c) for c in range(len(matrix))]
    names = [""] + list(labels)
    columns = [[Text(printable(str(c)), style="bold") for c in labels]]  # text labels are the user's data
    columns += [[cell(row[p], p == t) for t, row in enumerate(matrix)] for p in range(len(matrix))]
    return FoldingTable(names, columns, title="confusion matrix: true class ↓, predicted →", keys=1)
