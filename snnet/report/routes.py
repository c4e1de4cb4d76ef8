"""An SVG drawing of a route: its segments left to right, coloured by the anchor (pool network)
they come from, each block a square labelled with its index, the junctions between them labelled
with their CKA score when known. Plain SVG text, no drawing library; compose.py's ``svg/`` files
and the report pages' route drawings are these."""

from __future__ import annotations

from typing import Sequence
from xml.sax.saxutils import escape

from ..core.routes import Route

# matplotlib's tab10, so that the drawings match the plots
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_BLOCK, _GAP, _PAD, _JUNCTION = 18, 4, 10, 90


def _text(x: float, y: float, text: str, size: int = 11, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _fragment(x: float, y: float, name: str, start: int, stop: int, colour: str) -> tuple[list[str], float]:
    """One fragment's box with a square per block; returns the SVG elements and its width."""
    blocks = stop - start
    label = f"{name}[{start}:{stop}]"
    width = 2 * _PAD + max(blocks * (_BLOCK + _GAP) - _GAP, 6 * len(label))  # ~6 px per character at size 10
    parts = [
        f'<rect x="{x:.0f}" y="{y}" width="{width:.0f}" height="64" rx="6" fill="{colour}" fill-opacity="0.18" '
        f'stroke="{colour}" stroke-width="2"/>',
        _text(x + width / 2, y + 16, label, 10),
    ]
    bx = x + (width - (blocks * (_BLOCK + _GAP) - _GAP)) / 2
    for b in range(start, stop):
        parts.append(f'<rect x="{bx:.0f}" y="{y + 28}" width="{_BLOCK}" height="{_BLOCK}" rx="2" fill="{colour}"/>')
        parts.append(_text(bx + _BLOCK / 2, y + 41, str(b), 9, extra=' fill="white"'))
        bx += _BLOCK + _GAP
    return parts, width


def route_svg(route: Route, names: Sequence[str], scores: Sequence[float] = (), title: str = "") -> str:
    """The SVG of ``route`` over anchors ``names``; ``scores``: each junction's CKA."""
    y, x = 40, _PAD
    body: list[str] = []
    first, last = route.first.anchor, route.last.anchor
    body.append(_text(x + 18, y + 36, "stem", 10))
    body.append(
        f'<rect x="{x}" y="{y + 20}" width="36" height="24" rx="4" fill="none" stroke="{PALETTE[first % 10]}"/>'
    )
    x += 48
    for n, seg in enumerate(route.segments):
        if n:
            score = scores[n - 1] if n - 1 < len(scores) else None
            mid = y + 32
            body.append(
                f'<line x1="{x}" y1="{mid}" x2="{x + _JUNCTION - 8}" y2="{mid}" stroke="black" stroke-width="1.5" '
                f'marker-end="url(#arrow)"/>'
            )
            label = "junction" if score is None else f"CKA {score:.3f}"
            body.append(_text(x + _JUNCTION / 2, mid - 8, label, 10, extra=' font-weight="bold"'))
            x += _JUNCTION
        parts, width = _fragment(x, y, names[seg.anchor], seg.start, seg.stop, PALETTE[seg.anchor % 10])
        body += parts
        x += width + 12
    body.append(f'<rect x="{x}" y="{y + 20}" width="36" height="24" rx="4" fill="none" stroke="{PALETTE[last % 10]}"/>')
    body.append(_text(x + 18, y + 36, "head", 10))
    x += 36 + _PAD
    legend_y = y + 90
    used = list(dict.fromkeys(s.anchor for s in route.segments))
    for n, a in enumerate(used):
        body.append(f'<rect x="{_PAD}" y="{legend_y + 16 * n}" width="10" height="10" fill="{PALETTE[a % 10]}"/>')
        body.append(_text(_PAD + 16, legend_y + 9 + 16 * n, f"network {a}: {names[a]}", 10, anchor="start"))
    height = legend_y + 16 * len(used) + _PAD
    width = max(x, 320)
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}" font-family="sans-serif">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
        _text(_PAD, 20, title, 12, anchor="start", extra=' font-weight="bold"'),
    ]
    return "\n".join(head + body + ["</svg>"]) + "\n"
