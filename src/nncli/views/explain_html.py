"""`nncli explain --html`: one self-contained page, the ranked global bars and each kept row's signed
attributions (permutation: the ranked importances).

Self-contained as `stats --html` is (views/report_html.py): inline CSS and inline SVG, no script, no
font, no image, no address, and a Content-Security-Policy that lets the page load nothing. Every
number drawn is also in a data-* attribute, as the shortest text that reads back as the same float64,
so a program (or a test in a browser) reads back exactly what explain computed. Every text the user
wrote (column names, cells, the spec's name) is escaped.
"""

from __future__ import annotations

import html
import math

from nncli.views.report_html import number, shown

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; } h3 { font-size: 1em; margin: 1.5em 0 0.3em; }
table { border-collapse: collapse; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: right; vertical-align: middle; }
th { background: #f4f4f4; } td.name, th.name, td.value { text-align: left; font-family: ui-monospace, monospace; }
.caption { color: #666; }
svg rect.pos { fill: #2e7d32; } svg rect.neg { fill: #c62828; } svg line.axis { stroke: #999; stroke-width: 1; }
"""
BAR_WIDTH = 240
BAR_HEIGHT = 14


def _attrs(**values) -> str:
    return "".join(f' data-{k.replace("_", "-")}="{html.escape(str(v), quote=True)}"' for k, v in values.items())


def _scale(values) -> float:
    finite = [abs(float(v)) for v in values if math.isfinite(float(v))]
    return max(finite, default=0.0)


def bar_svg(value: float, scale: float, signed: bool) -> str:
    """One bar, its length proportional to |value| / scale: from the left edge (unsigned), or from the
    centre line to the right (positive, green) or the left (negative, red). NaN draws nothing."""
    value = float(value)
    half = BAR_WIDTH / 2 if signed else BAR_WIDTH
    origin = BAR_WIDTH / 2 if signed else 0.0
    length = 0.0
    if value == value and scale > 0:
        length = half if math.isinf(value) else min(half, half * abs(value) / scale)
    x = origin - length if value < 0 else origin
    parts = [f'<svg class="bar" width="{BAR_WIDTH}" height="{BAR_HEIGHT}" viewBox="0 0 {BAR_WIDTH} {BAR_HEIGHT}">']
    if length > 0:
        parts.append(
            f'<rect class="{"neg" if value < 0 else "pos"}" x="{x:.2f}" y="1" width="{length:.2f}" '
            f'height="{BAR_HEIGHT - 2}"></rect>'
        )
    if signed:
        parts.append(f'<line class="axis" x1="{origin}" y1="0" x2="{origin}" y2="{BAR_HEIGHT}"></line>')
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, caption: str, body: list[str], **attrs) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body"
        + _attrs(**attrs)
        + ">\n"
        + f'<h1>{html.escape(title)}</h1>\n<p class="caption">{html.escape(caption)}</p>\n'
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def explain_page(summary, kept, names: list[str], title: str, caption: str) -> str:
    """The ranked mean |attribution| per column over every row, then each kept row's attributions
    (its columns, `names`, in DATA's order)."""
    scale = _scale(summary.mean_abs)
    rows = [
        f'<tr class="feature"{_attrs(rank=i + 1, feature=f, mean_abs=number(v))}><td>{i + 1}</td>'
        f'<td class="name">{html.escape(f)}</td><td>{shown(v)}</td><td>{bar_svg(v, scale, False)}</td></tr>'
        for i, (f, v) in enumerate(zip(summary.features, summary.mean_abs))
    ]
    body = [
        f"<h2>Mean |attribution| over {summary.rows:,} row{'s' if summary.rows != 1 else ''}, ranked</h2>",
        '<table class="global"><thead><tr><th>rank</th><th class="name">feature</th>'
        "<th>mean |attribution|</th><th></th></tr></thead><tbody>",
        *rows,
        "</tbody></table>",
    ]
    if kept:
        shown_rows = f"the first {len(kept):,}" if len(kept) < summary.rows else f"all {len(kept):,}"
        body.append(f"<h2>Rows ({shown_rows} of {summary.rows:,}): each column's value and signed attribution</h2>")
    for r in kept:
        heading = f"row {r.row}" + (f" · id {r.id}" if r.id is not None else "")
        if r.delta is not None:
            heading += f" · delta {shown(r.delta)}"
        scale = _scale(r.attributions)
        cells = [
            f'<tr class="attribution"{_attrs(feature=f, value="" if v is None else v, attribution=number(a))}>'
            f'<td class="name">{html.escape(f)}</td><td class="value">{html.escape("" if v is None else str(v))}</td>'
            f"<td>{shown(a)}</td><td>{bar_svg(a, scale, True)}</td></tr>"
            for f, v, a in zip(names, r.values, r.attributions)
        ]
        body += [
            f'<section class="row"{_attrs(row=r.row, id="" if r.id is None else r.id, delta=number(r.delta))}>',
            f"<h3>{html.escape(heading)}</h3>",
            '<table><thead><tr><th class="name">feature</th><th class="name">value</th><th>attribution</th>'
            "<th></th></tr></thead><tbody>",
            *cells,
            "</tbody></table></section>",
        ]
    return _page(title, caption, body, rows=summary.rows, method=summary.method)


def importance_page(result, title: str, caption: str) -> str:
    """Permutation importance: the ranked drops in the metric, signed, with their std over repeats."""
    scale = _scale(result.importance)
    rows = [
        f'<tr class="feature"{_attrs(rank=i + 1, feature=f, importance=number(v), std=number(s))}><td>{i + 1}</td>'
        f'<td class="name">{html.escape(f)}</td><td>{shown(v)}</td><td>{shown(s)}</td>'
        f"<td>{bar_svg(v, scale, True)}</td></tr>"
        for i, (f, v, s) in enumerate(zip(result.features, result.importance, result.std))
    ]
    body = [
        f"<h2>Permutation importance: the drop in {html.escape(result.metric)}'s score when a column is shuffled, "
        f"over {result.rows:,} rows, {result.repeats} repeats</h2>",
        '<table class="global"><thead><tr><th>rank</th><th class="name">feature</th>'
        "<th>importance</th><th>std</th><th></th></tr></thead><tbody>",
        *rows,
        "</tbody></table>",
    ]
    return _page(
        title, caption, body, rows=result.rows, method="permutation", metric=result.metric, value=number(result.value)
    )
