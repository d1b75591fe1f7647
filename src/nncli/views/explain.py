"""explain's views: the ranked --summary and permutation importance as Reports, and the signed bars a
terminal table shows beside each attribution (the per-row tidy rows stream through RowWriter)."""

from __future__ import annotations

import math

from nncli.views.render import Frame, Report, caption, frame_table

BAR_HALF = 8  # characters on each side of the centre mark: a ranked table of 30-character names fits 80 columns
CENTRE, BLOCK = "│", "█"


def signed_bar(value: float, scale: float, half: int = BAR_HALF) -> str:
    """A bar 2*half+1 characters wide: `round(half * |value| / scale)` blocks left of the centre mark for
    a negative value, right of it for a positive one, so the sign reads without colour (NO_COLOR).
    A value past the scale (or infinite) fills its side; NaN, 0 or a scale of 0 draws no block."""
    if not (value == value and scale > 0 and math.isfinite(scale)) or value == 0:
        return " " * half + CENTRE + " " * half
    n = half if math.isinf(value) else min(half, int(half * abs(value) / scale + 0.5))
    if value < 0:
        return " " * (half - n) + BLOCK * n + CENTRE + " " * half
    return " " * half + CENTRE + BLOCK * n + " " * (half - n)


def bar_cells(values, scale: float) -> list:
    """Rich Text cells: each value's signed bar, negative red, positive green (plain with NO_COLOR)."""
    from rich.text import Text

    # justify="left": a right-justified cell would lose its padding and move the centre mark
    return [
        Text(signed_bar(v, scale), style="red" if v < 0 else "green" if v > 0 else "", justify="left")
        for v in (float(v) for v in values)
    ]


def finite_max_abs(values) -> float:
    import numpy as np

    a = np.abs(np.asarray(values, dtype=np.float64))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def with_bars(frame: Frame, per_row: int) -> Frame:
    """A tidy per-row frame (`attribution` among its columns) with a `bar` column after it, each input
    row's bars scaled to that row's largest |attribution| (its `per_row` features are consecutive)."""
    import numpy as np

    a = np.asarray(frame.columns[frame.names.index("attribution")], dtype=np.float64)
    rows = a.reshape(-1, per_row) if per_row else a.reshape(0, 0)
    cells = [c for r in rows for c in bar_cells(r, finite_max_abs(r))]
    at = frame.names.index("attribution") + 1
    return Frame(frame.names[:at] + ["bar"] + frame.names[at:], frame.columns[:at] + [cells] + frame.columns[at:])


def _ranked_table(names: list[str], columns: list, values, precision: int | None):
    """The ranked rows with a bar column (scaled to the largest |value|), for a terminal only."""
    frame = Frame(names + ["bar"], columns + [bar_cells(values, finite_max_abs(values))])
    return frame_table(frame, precision)


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
    return Report(
        doc,
        frame,
        lambda: [_ranked_table(frame.names, frame.columns, summary.mean_abs, precision), caption(text)],
    )


def importance_report(result, text: str, precision: int | None) -> Report:
    """Permutation importance per column, largest first, with its std over the repeats."""
    import numpy as np

    doc = result.to_dict()
    if precision is not None:
        doc["value"] = round(doc["value"], precision)
        for item in doc["features"]:
            item["importance"], item["std"] = round(item["importance"], precision), round(item["std"], precision)
    frame = Frame(
        ["rank", "feature", "importance", "std"],
        [
            np.arange(1, len(result.features) + 1),
            list(result.features),
            np.asarray(result.importance, dtype=np.float64),
            np.asarray(result.std, dtype=np.float64),
        ],
    )
    return Report(
        doc,
        frame,
        lambda: [_ranked_table(frame.names, frame.columns, result.importance, precision), caption(text)],
    )
