"""`nncli stats --html`: one self-contained page, per-layer histograms and gradient norms.

Self-contained means the page asks nothing of the network: the styles are inline CSS, the
pictures inline SVG (no xmlns: HTML5 needs none, and the page holds no http(s) address at all), no
scripts, no fonts, no images. Every number drawn is also in a data-* attribute, written as the
shortest text that reads back as the same float64, so a program (or a test in a browser) reads
back exactly what stats computed.
"""

from __future__ import annotations

import html
import math

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; vertical-align: middle; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; font-family: ui-monospace, monospace; }
.caption { color: #666; }
svg rect.bar { fill: #4a78b5; } svg rect.zero { fill: #d8893b; } svg line.axis { stroke: #999; stroke-width: 1; }
svg text { font: 10px ui-monospace, monospace; fill: #555; } svg text.value { fill: #b03a2e; font-weight: bold; }
.flag-vanishing { color: #b03a2e; font-weight: bold; } .flag-exploding { color: #b03a2e; font-weight: bold; }
svg line.threshold { stroke: #b03a2e; stroke-dasharray: 3 3; }
"""


def number(value, dtype: str = "float64") -> str:
    """A float as the shortest text that reads back as the same value of its dtype (as stats' JSON
    prints it); '' for None."""
    if value is None:
        return ""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if dtype == "float32":
        import numpy as np

        return str(np.float32(value))
    return repr(value)


def shown(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value != 0 and abs(value) < 0.5 * 10**-digits:
        return f"{value:.{digits}e}"
    return f"{value:.{digits}f}"


def _attrs(**values) -> str:
    return "".join(f' data-{k.replace("_", "-")}="{html.escape(str(v), quote=True)}"' for k, v in values.items())


def histogram_svg(hist, width: int = 260, height: int = 60) -> str:
    """Bars for each bin, each rect carrying its bin's edges and count."""
    counts = [] if hist.counts is None else [int(c) for c in hist.counts]
    edges = [] if hist.counts is None else [float(e) for e in hist.edges]
    head = (
        f'<svg class="histogram" width="{width}" height="{height + 14}" viewBox="0 0 {width} {height + 14}" role="img"'
        + _attrs(
            bin_width=number(hist.width) if counts else "",
            first_edge=number(edges[0]) if counts else "",
            counts=" ".join(str(c) for c in counts),
            bins=len(counts),
        )
        + ">"
    )
    parts = [head]
    if counts:
        top = max(counts) or 1
        step = width / len(counts)
        for i, c in enumerate(counts):
            h = 0 if c == 0 else max(1.0, height * c / top)
            parts.append(
                f'<rect class="bar" x="{i * step:.2f}" y="{height - h:.2f}" width="{max(step - 1, 0.5):.2f}" '
                f'height="{h:.2f}"'
                + _attrs(lo=number(edges[i]), hi=number(edges[i + 1]), count=c)
                + f"><title>[{shown(edges[i])}, {shown(edges[i + 1])}): {c:,}</title></rect>"
            )
        parts.append(f'<line class="axis" x1="0" y1="{height}" x2="{width}" y2="{height}"></line>')
        parts.append(f'<text x="0" y="{height + 12}">{html.escape(shown(edges[0]))}</text>')
        parts.append(f'<text x="{width}" y="{height + 12}" text-anchor="end">{html.escape(shown(edges[-1]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def norms_svg(params, vanishing: float, exploding: float, width: int = 420, bar: int = 16) -> str:
    """Gradient norms on a log scale, one bar per parameter, with the two thresholds drawn.

    The scale spans the finite, positive norms and thresholds. A norm of 0 (or a threshold of 0,
    `--vanishing 0`) sits at the left end, an infinite one at the right end, NaN draws no bar; each
    of those is written out as text beside its bar, since its length says nothing. (An infinite norm
    made math.ceil raise OverflowError, a zero threshold math.log10 a domain error.)"""
    drawable = [
        v for v in [*(float(p.grad_norm) for p in params), float(vanishing), float(exploding)] if 0 < v < math.inf
    ]
    logs = [math.log10(v) for v in drawable] or [0.0]
    lo = math.floor(min(logs)) - 1
    hi = math.ceil(max(logs)) + 1
    label = 80
    span = width - label - 10

    def x(value: float) -> float:
        value = float(value)
        if math.isnan(value) or value <= 0:
            return label
        if value == math.inf:
            return label + span
        return label + span * (math.log10(value) - lo) / (hi - lo)

    height = bar * len(params) + 20
    parts = [f'<svg class="norms" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for i, p in enumerate(params):
        y = i * bar + 2
        end = x(p.grad_norm)
        parts.append(f'<text x="0" y="{y + bar - 5}">{html.escape(p.name)}</text>')
        parts.append(
            f'<rect class="bar" x="{label}" y="{y}" width="{max(end - label, 0.5):.2f}" height="{bar - 4}"'
            + _attrs(parameter=p.name, grad_norm=number(p.grad_norm))
            + f"><title>{html.escape(p.name)}: {shown(p.grad_norm)}</title></rect>"
        )
        if not 0 < float(p.grad_norm) < math.inf:  # a clamped bar: its value in words
            at, anchor = (end - 3, "end") if end > label + span / 2 else (end + 3, "start")
            parts.append(
                f'<text class="value" x="{at:.2f}" y="{y + bar - 5}" '
                f'text-anchor="{anchor}">{html.escape(shown(p.grad_norm))}</text>'
            )
    bottom = bar * len(params) + 4
    for name, value in (("vanishing", vanishing), ("exploding", exploding)):
        parts.append(
            f'<line class="threshold" x1="{x(value):.2f}" y1="0" x2="{x(value):.2f}" y2="{bottom}"'
            + _attrs(threshold=name, value=number(value))
            + "></line>"
        )
    parts.append(
        f'<text x="{label}" y="{height - 2}">1e{lo}</text><text x="{width - 10}" y="{height - 2}" '
        f'text-anchor="end">1e{hi}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def stats_page(result, title: str, caption: str) -> str:
    """The whole page as text. Its Content-Security-Policy lets it load nothing at all (inline styles only)."""
    rows = []
    for layer in result.layers:
        attrs = _attrs(
            layer="" if layer.index is None else layer.index,
            type=layer.type,
            units=layer.units,
            rows=layer.rows,
            count=layer.count,
            nonfinite=layer.nonfinite,
            mean=number(layer.mean),
            std=number(layer.std),
            min=number(layer.min, result.dtype),
            max=number(layer.max, result.dtype),
            zero_fraction=number(layer.zero_fraction),
            dead_units="" if layer.dead_units is None else layer.dead_units,
            saturated_fraction=number(layer.saturated_fraction),
            saturated_units="" if layer.saturated_units is None else layer.saturated_units,
        )
        health = []
        if layer.zero_fraction is not None:
            health.append(f"{layer.zero_fraction:.1%} zero, {layer.dead_units} of {layer.units} units dead")
        if layer.saturated_fraction is not None:
            health.append(
                f"{layer.saturated_fraction:.1%} saturated, {layer.saturated_units} of {layer.units} units always"
            )
        rows.append(
            f'<tr class="layer"{attrs}><td class="name">{html.escape(layer.label)}</td><td>{shown(layer.mean)}</td>'
            f"<td>{shown(layer.std)}</td><td>{shown(layer.min)}</td><td>{shown(layer.max)}</td>"
            f"<td>{html.escape('; '.join(health))}</td><td>{histogram_svg(layer.histogram)}</td></tr>"
        )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="caption">{html.escape(caption)}</p>',
        f"<h2>Activations over {result.rows:,} row{'s' if result.rows != 1 else ''} ({html.escape(result.mode)} "
        "mode)</h2>",
        '<table class="activations"><thead><tr><th '
        'class="name">layer</th><th>mean</th><th>std</th><th>min</th><th>max</th>'
        "<th>dead / saturated</th><th>histogram</th></tr></thead><tbody>",
        *rows,
        "</tbody></table>",
    ]
    if result.params is not None:
        grad_rows = []
        for p in result.params:
            attrs = _attrs(
                parameter=p.name,
                layer=p.layer,
                type=p.type,
                shape="x".join(str(s) for s in p.shape),
                grad_norm=number(p.grad_norm),
                weight_norm=number(p.weight_norm),
                update_ratio=number(p.update_ratio),
                flag=p.flag or "",
            )
            flag = f'<span class="flag-{p.flag}">{p.flag}</span>' if p.flag else ""
            grad_rows.append(
                f'<tr class="parameter"{attrs}><td '
                f'class="name">{html.escape(p.name)}</td><td>{html.escape(str(p.shape))}</td>'
                f"<td>{shown(p.grad_norm)}</td><td>{shown(p.weight_norm)}</td><td>{shown(p.update_ratio)}</td>"
                f"<td>{flag}</td></tr>"
            )
        body += [
            f"<h2>Gradients of {html.escape(result.loss_fn or '')} = {shown(result.loss)}</h2>",
            '<p class="caption"'
            + _attrs(lr=number(result.lr), vanishing=number(result.vanishing), exploding=number(result.exploding))
            + (
                f">update/weight: lr × ‖grad‖ / ‖weight‖ with lr {result.lr:g}; vanishing: norm below "
                f"{result.vanishing:g}; "
                f"exploding: norm above {result.exploding:g}</p>"
            ),
            '<table class="gradients"><thead><tr><th class="name">parameter</th><th>shape</th><th>grad '
            "norm</th><th>weight norm</th>"
            "<th>update/weight</th><th>flag</th></tr></thead><tbody>",
            *grad_rows,
            "</tbody></table>",
        ]
        if result.params:
            body += [
                '<p class="caption">gradient norms, log scale; dashed: the vanishing and exploding thresholds</p>',
                norms_svg(result.params, result.vanishing, result.exploding),
            ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body"
        + _attrs(rows=result.rows, batches=result.batches, mode=result.mode)
        + ">\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
