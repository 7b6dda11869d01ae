#!/usr/bin/env python3
"""A line chart as SVG from a small JSON file, with the standard library only (no
matplotlib: CI and a bare machine need nothing new to regenerate BENCHMARKS.md's plots).

    plot.py SPEC.json OUT.svg

SPEC: {"title": "...", "x_label": "...", "y_label": "...", "x_log": false,
       "series": [{"name": "flotilla", "points": [[x, y], ...]}, ...]}

One polyline (with a dot per point) per series, axes with ticks and labels, a legend.
Each series is a `<g class="series" data-name=NAME>` holding its `<polyline>` and one
`<circle>` per point, so tests (and readers of the file) can find them.
"""
import json
import math
import sys
from xml.sax.saxutils import escape, quoteattr

WIDTH, HEIGHT = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 230, 40, 60
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]


def nice_ticks(low, high, count=5):
    """Round tick values covering [low, high] (the 1-2-5 steps of hand-drawn axes)."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def log_ticks(low, high):
    """Powers of two when the data spans them closely (sizes, connections), else of ten."""
    lo, hi = math.floor(math.log2(low)), math.ceil(math.log2(high))
    if hi - lo <= 12:
        return [2.0 ** e for e in range(lo, hi + 1)]
    return [10.0 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)]


def label(value, binary=False):
    """A tick's text: 16k for 16,000; on power-of-two axes 16Ki for 16,384."""
    if binary and value >= 1024 and value == int(value) and int(value) % 1024 == 0:
        return f"{int(value) // 1024}Ki"
    if value == 0:
        return "0"
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:g}"


def render(spec):
    series = [s for s in spec.get("series", []) if s.get("points")]
    xs = [float(x) for s in series for x, _ in s["points"]]
    ys = [float(y) for s in series for _, y in s["points"]]
    x_log = bool(spec.get("x_log")) and xs and min(xs) > 0
    if not xs:
        xs, ys = [0.0, 1.0], [0.0, 1.0]
    if x_log:
        x_ticks = log_ticks(min(xs), max(xs))
        x_lo, x_hi = math.log2(x_ticks[0]), math.log2(x_ticks[-1])
        x_of = lambda x: math.log2(x)  # noqa: E731
    else:
        x_ticks = nice_ticks(min(0.0, min(xs)), max(xs))
        x_lo, x_hi = x_ticks[0], x_ticks[-1]
        x_of = lambda x: x  # noqa: E731
    y_ticks = nice_ticks(min(0.0, min(ys)), max(ys))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x):
        return LEFT + (x_of(x) - x_lo) / ((x_hi - x_lo) or 1) * plot_w

    def py(y):
        return TOP + plot_h - (y - y_lo) / ((y_hi - y_lo) or 1) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2:.1f}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(spec.get("title", ""))}</text>',
        '<g class="axes" stroke="#333" fill="none">',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>',
        "</g>",
        '<g class="x-ticks">',
    ]
    for tick in x_ticks:
        x = px(tick)
        out.append(f'<line x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" y2="{TOP + plot_h + 5}" stroke="#333"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{label(tick, x_log)}</text>')
    out.append("</g>")
    out.append('<g class="y-ticks">')
    for tick in y_ticks:
        y = py(tick)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<line x1="{LEFT - 5}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" stroke="#333"/>')
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{label(tick)}</text>')
    out.append("</g>")
    out.append(
        f'<text class="x-label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 15}" '
        f'text-anchor="middle">{escape(spec.get("x_label", ""))}</text>'
    )
    out.append(
        f'<text class="y-label" x="18" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2:.1f})">{escape(spec.get("y_label", ""))}</text>'
    )
    for n, s in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        points = sorted((float(x), float(y)) for x, y in s["points"])
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<g class="series" data-name={quoteattr(str(s["name"]))}>')
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in points:
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}">'
                f"<title>{escape(str(s['name']))}: {label(x)} → {y:g}</title></circle>"
            )
        out.append("</g>")
    out.append('<g class="legend">')
    for n, s in enumerate(series):
        y = TOP + 10 + n * 20
        colour = COLOURS[n % len(COLOURS)]
        x = LEFT + plot_w + 15
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 20}" y2="{y}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{x + 26}" y="{y + 4}">{escape(str(s["name"]))}</text>')
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py SPEC.json OUT.svg")
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    with open(sys.argv[2], "w") as f:
        f.write(render(spec))


if __name__ == "__main__":
    main()
