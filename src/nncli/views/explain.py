"""explain's views: the ranked --summary as a Report (the per-row tidy rows stream through RowWriter)."""

from __future__ import annotations

from nncli.views.render import Frame, Report, caption, frame_table


def summary_report(summary, text: str, precision: int | None) -> Report:
    """Mean |attribution| per column, largest first: a document, tidy rows and a table."""
    import numpy as np

    doc = summary.to_dict()
    if precision is not None:
        for item in doc["features"]:
            item["mean_abs_attribution"] = round(item["mean_abs_attribution"], precision)
    frame = Frame(
        ["rank", "feature", "mean_abs_attribution"],
        [np.arange(1, len(summary.features) + 1), list(summary.features), np.asarray(summary.mean_abs)],
    )
    return Report(doc, frame, lambda: [frame_table(frame, precision), caption(text)])
