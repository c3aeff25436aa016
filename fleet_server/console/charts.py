"""Charts drawn server side as inline SVG (no JavaScript, no CDN). Pure: values in, markup out."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")
W, H, PAD = 420, 160, 28


def _svg(parts: list[str]) -> Markup:
    """The chart's markup. Every part is built from constants, numbers formatted with a
    numeric format spec and ``escape``d text (titles, series names, labels, ids)."""
    return Markup("".join(parts))  # noqa: S704 - all text in the parts is escaped (see above)


def _bins(values: Sequence[float], lo: float, hi: float, n: int) -> list[int]:
    counts = [0] * n
    span = (hi - lo) or 1.0
    for v in values:
        i = int((v - lo) / span * n)
        counts[min(max(i, 0), n - 1)] += 1
    return counts


def histogram(series: dict[str, Sequence[float]], *, title: str, bins: int = 20,
              chart_id: str = "") -> Markup:
    """Overlaid histograms of each named series on one shared axis."""
    values = [v for s in series.values() for v in s]
    parts = [f'<svg class="chart" id="{escape(chart_id)}" width="{W}" height="{H}" '
             f'role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {H}">',
             f'<text x="{PAD}" y="14" font-size="12">{escape(title)}</text>']
    if not values:
        parts.append(f'<text x="{PAD}" y="{H // 2}" font-size="12">no data yet</text></svg>')
        return _svg(parts)
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    counted = {name: _bins(s, lo, hi, bins) for name, s in series.items()}
    top = max(max(c) for c in counted.values()) or 1
    bw = (W - 2 * PAD) / bins
    for k, (name, counts) in enumerate(counted.items()):
        color = COLORS[k % len(COLORS)]
        for i, c in enumerate(counts):
            h = (H - 2 * PAD) * c / top
            parts.append(f'<rect x="{PAD + i * bw:.1f}" y="{H - PAD - h:.1f}" '
                         f'width="{bw - 1:.1f}" height="{h:.1f}" fill="{color}" '
                         f'fill-opacity="0.5"><title>{escape(name)}: {c}</title></rect>')
        parts.append(f'<text x="{W - PAD - 120}" y="{14 + 12 * (k + 1)}" font-size="11" '
                     f'fill="{color}">{escape(name)} (n={len(series[name])})</text>')
    parts.append(f'<text x="{PAD}" y="{H - 8}" font-size="10">{lo:.4g}</text>'
                 f'<text x="{W - PAD - 30}" y="{H - 8}" font-size="10">{hi:.4g}</text></svg>')
    return _svg(parts)


def bars(items: Sequence[tuple[str, float]], *, title: str, threshold: float | None = None,
         chart_id: str = "") -> Markup:
    """Horizontal bars (e.g. PSI per input) with an optional threshold line."""
    h = max(H, 30 + 18 * len(items))
    parts = [f'<svg class="chart" id="{escape(chart_id)}" width="{W}" height="{h}" '
             f'role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {h}">',
             f'<text x="{PAD}" y="14" font-size="12">{escape(title)}</text>']
    top = max([v for _, v in items] + [threshold or 0.0, 1e-9])
    span = W - 2 * PAD - 100
    for i, (label, v) in enumerate(items):
        y = 24 + 18 * i
        parts.append(f'<text x="{PAD}" y="{y + 11}" font-size="11">{escape(label[:16])}</text>'
                     f'<rect x="{PAD + 100}" y="{y}" width="{span * v / top:.1f}" height="13" '
                     f'fill="{COLORS[0]}"><title>{v:.4g}</title></rect>')
    if threshold is not None:
        x = PAD + 100 + span * threshold / top
        parts.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{h - 4}" stroke="#dc2626" '
                     f'stroke-dasharray="4"/>')
    parts.append("</svg>")
    return _svg(parts)


def lines(series: dict[str, Sequence[tuple[float, float]]], *, title: str,
          chart_id: str = "") -> Markup:
    """Line chart of (x, y) points per named series (e.g. telemetry over time)."""
    pts = [p for s in series.values() for p in s]
    parts = [f'<svg class="chart" id="{escape(chart_id)}" width="{W}" height="{H}" '
             f'role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {H}">',
             f'<text x="{PAD}" y="14" font-size="12">{escape(title)}</text>']
    if len(pts) < 2:
        parts.append(f'<text x="{PAD}" y="{H // 2}" font-size="12">no data yet</text></svg>')
        return _svg(parts)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y1 = max(p[1] for p in pts) or 1.0
    sx = (W - 2 * PAD) / ((x1 - x0) or 1.0)
    sy = (H - 2 * PAD) / y1
    for k, (name, s) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        path = " ".join(f"{PAD + (x - x0) * sx:.1f},{H - PAD - y * sy:.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{path}"><title>{escape(name)}</title></polyline>'
                     f'<text x="{W - PAD - 120}" y="{14 + 12 * (k + 1)}" font-size="11" '
                     f'fill="{color}">{escape(name)}</text>')
    parts.append(f'<text x="2" y="{PAD}" font-size="10">{y1:.3g}</text></svg>')
    return _svg(parts)


def interval_history(points: Sequence[tuple[float, float, float]], *, title: str,
                     lines_at: dict[str, float], lo: float = 0.0, hi: float = 1.0,
                     chart_id: str = "") -> Markup:
    """A confidence interval narrowing over samples: ``points`` are (samples, lower,
    upper); the band is shaded and each named horizontal line (halt, promote) is drawn."""
    parts = [f'<svg class="chart" id="{escape(chart_id)}" width="{W}" height="{H}" '
             f'role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {H}">',
             f'<text x="{PAD}" y="14" font-size="12">{escape(title)}</text>']
    if not points:
        parts.append(f'<text x="{PAD}" y="{H // 2}" font-size="12">no data yet</text></svg>')
        return _svg(parts)
    # zoom the y axis onto the lines and the latest interval, so a narrow band stays visible
    focus = [*lines_at.values(), points[-1][1], points[-1][2]]
    pad = (max(focus) - min(focus)) * 0.5 or 0.01
    y0, y1 = max(lo, min(focus) - pad), min(hi, max(focus) + pad)
    x0, x1 = points[0][0], points[-1][0]
    sx = (W - 2 * PAD) / ((x1 - x0) or 1.0)

    def y(v: float) -> float:
        return H - PAD - (min(max(v, y0), y1) - y0) * (H - 2 * PAD) / ((y1 - y0) or 1.0)

    upper = [f"{PAD + (n - x0) * sx:.1f},{y(u):.1f}" for n, _, u in points]
    lower = [f"{PAD + (n - x0) * sx:.1f},{y(lw):.1f}" for n, lw, _ in reversed(points)]
    parts.append(f'<polygon class="interval-band" points="{" ".join(upper + lower)}" '
                 f'fill="{COLORS[0]}" fill-opacity="0.3" stroke="{COLORS[0]}"/>')
    for k, (name, v) in enumerate(lines_at.items()):
        color = COLORS[1 + k % (len(COLORS) - 1)]
        parts.append(f'<line x1="{PAD}" y1="{y(v):.1f}" x2="{W - PAD}" y2="{y(v):.1f}" '
                     f'stroke="{color}" stroke-dasharray="4"><title>{escape(name)} {v:.4g}'
                     f'</title></line><text x="{W - PAD - 110}" y="{y(v) - 3:.1f}" '
                     f'font-size="10" fill="{color}">{escape(name)} {v:.4g}</text>')
    parts.append(f'<text x="2" y="{PAD}" font-size="10">{y1:.4g}</text>'
                 f'<text x="2" y="{H - PAD}" font-size="10">{y0:.4g}</text>'
                 f'<text x="{PAD}" y="{H - 8}" font-size="10">{x0:g} samples</text>'
                 f'<text x="{W - PAD - 60}" y="{H - 8}" font-size="10">{x1:g}</text></svg>')
    return _svg(parts)
