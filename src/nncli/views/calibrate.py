"""calibrate's result as one Report: a JSON document, one CSV row, a before/after table."""

from __future__ import annotations

from nncli.views.render import Frame, Report, caption, fmt, rows_text

MEASURES = (("nll", "NLL"), ("ece", "ECE"), ("brier", "Brier"))


def calibrate_report(result, model_caption: str, saved: str | None, p) -> Report:
    doc = result.to_dict(p)
    doc["weights"] = saved
    frame = Frame(list(doc), [[v] for v in doc.values()])

    def tables():
        from rich.table import Table

        table = Table(title=f"temperature {fmt(result.temperature, p)}")
        for name in ("", "before", "after"):
            table.add_column(name, justify="right" if name else "left", no_wrap=True)
        for key, label in MEASURES:
            before, after = doc[f"{key}_before"], doc[f"{key}_after"]
            table.add_row(label, *("" if v is None else fmt(v, p) for v in (before, after)))
        text = (
            f"{model_caption}; T fitted on {rows_text(result.rows)} (LBFGS lr {result.lr:g}, max_iter "
            f"{result.max_iter}); ECE over {result.bins} bins" + (f"; saved to {saved}" if saved else "")
        )
        return [table, caption(text)]

    return Report(doc, frame, tables)
