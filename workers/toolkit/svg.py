"""Two small self-contained SVG renderers: a flamegraph of sampled stacks and a line plot over time."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from html import escape

WIDTH = 1200
ROW = 17
FONT = 11
CHAR_W = 6.2  # average glyph width of monospace 11px text: decides when a label fits its box


def _colour(name: str) -> str:
    # Stable warm colours per function name, as flamegraph.pl does, so two graphs of one program look alike.
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).digest()
    return f"rgb({205 + digest[0] % 50},{digest[1] % 200},{digest[2] % 55})"


def flamegraph(stacks: dict[tuple[str, ...], int], title: str) -> str:
    """Root at the bottom, width proportional to samples; each box has a <title> tooltip with its counts."""
    tree: dict[str, object] = {}
    counts: dict[int, int] = {}

    def node(children: dict[str, object], name: str) -> dict[str, object]:
        return children.setdefault(name, {})  # type: ignore[return-value]

    total = sum(stacks.values())
    for stack, n in stacks.items():
        children = tree
        for name in stack:
            child = node(children, name)
            counts[id(child)] = counts.get(id(child), 0) + n
            children = child
    boxes: list[tuple[float, int, float, str, int]] = []  # x, depth, width, name, samples

    def walk(children: dict[str, object], x: float, depth: int) -> int:
        deepest = depth
        for name, child in sorted(children.items()):
            n = counts[id(child)]
            width = WIDTH * n / total if total else 0
            if width >= 0.3:  # thinner than a pixel's third: invisible, and it bloats the file
                boxes.append((x, depth, width, name, n))
                deepest = max(deepest, walk(child, x, depth + 1))  # type: ignore[arg-type]
            x += width
        return deepest

    depth = walk(tree, 0.0, 0) + 1
    height = (depth + 3) * ROW
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'font-family="monospace" font-size="{FONT}">',
             '<rect width="100%" height="100%" fill="#f8f8f8"/>',
             f'<text x="{WIDTH / 2}" y="{ROW}" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for x, d, width, name, n in boxes:
        y = height - (d + 1) * ROW - 2
        label = escape(name)
        pct = 100 * n / total
        parts.append(f'<g><title>{label} ({n} samples, {pct:.1f}%)</title>'
                     f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{ROW - 1}" fill="{_colour(name)}" '
                     f'rx="2"/>')
        fits = int((width - 4) / CHAR_W)
        if fits >= 3:
            shown = name if len(name) <= fits else name[: fits - 2] + ".."
            parts.append(f'<text x="{x + 2:.2f}" y="{y + ROW - 5}">{escape(shown)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def line_plot(points: Sequence[tuple[float, float]], title: str, y_label: str, threshold_line: Sequence[
        tuple[float, float]] | None = None) -> str:
    """Points (x seconds, y) as a polyline with labelled axes; an optional second series drawn dashed."""
    width, height, pad = 800, 400, 60
    xs = [p[0] for p in points] or [0.0]
    ys = [p[1] for p in points] + [p[1] for p in threshold_line or []] or [0.0]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 1, y1 + 1

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    def polyline(series: Sequence[tuple[float, float]], style: str) -> str:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in series)
        return f'<polyline points="{coords}" fill="none" {style}/>'

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12">', '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">{escape(title)}</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">seconds</text>',
             f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">'
             f'{escape(y_label)}</text>']
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        xv = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{pad - 5}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.1f}</text>')
        parts.append(f'<text x="{sx(xv):.1f}" y="{height - pad + 16}" text-anchor="middle">{xv:.0f}</text>')
    if threshold_line:
        parts.append(polyline(threshold_line, 'stroke="#999" stroke-dasharray="6 4"'))
    parts.append(polyline(points, 'stroke="#c0392b" stroke-width="2"'))
    parts.append("</svg>")
    return "\n".join(parts)
