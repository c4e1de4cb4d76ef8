"""An SVG drawing of a composed network: its fragments left to right, coloured by the pool
network they come from (each block a square labelled with its index), the junctions between
them labelled with their CKA score; drawn by :func:`snnet.report.routes.route_svg`, which the
report pages' route drawings share."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..core.model import SNNet
from ..report.routes import route_svg


def draw_svg(
    net: SNNet, cfg_id: Optional[int] = None, path: Optional[str | Path] = None, title: Optional[str] = None
) -> str:
    """The SVG of network ``cfg_id`` (default: the selected one) of ``net``: fragments coloured
    by pool network, junctions labelled with their CKA (from ``net.compositions``, as
    :func:`~snnet.compose.generate` builds it). Written to ``path`` (atomically) when given."""
    cfg_id = net.cfg_id if cfg_id is None else cfg_id
    stitch = net.stitches[cfg_id]
    candidate = getattr(net, "compositions", {}).get(cfg_id)
    scores = candidate.junction_scores if candidate is not None else ()
    if title is None:
        title = stitch.name if candidate is None else f"score {candidate.score:.4f}"
    svg = route_svg(stitch.route, [a.name for a in net.anchor_adapters], scores, title)
    if path is not None:
        from ..io.checkpoint import atomic_write

        with atomic_write(path, "w") as f:
            f.write(svg)
    return svg
