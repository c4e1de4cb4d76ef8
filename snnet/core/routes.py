"""One route per network: the single description of what a network of an SN-Net runs.

A route is a list of segments ``(anchor, start, stop)`` -- anchor ``anchor`` runs its blocks
``start .. stop-1`` -- joined by stitching layers, with the first anchor's stem before and the
last anchor's head after. An anchor is the one-segment route over all of its blocks; an SN-Net
(v1) stitch has two segments and one layer; SN-Netv2's LSL/SLS networks have three segments and
two layers. Forward, parameter and FLOPs counts, the sweep's prefix sharing, LS init and export
all read :meth:`Route.steps` (or the segments), so the path is written down here only.

A route's name reads as Python slices over the anchors' blocks, e.g.
``deit3_small_patch16_224[:4]>deit3_large_patch16_224[8:16]>deit3_small_patch16_224[8:]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Segment:
    """Anchor ``anchor`` runs blocks ``start .. stop-1``."""

    anchor: int
    start: int
    stop: int


class Step(NamedTuple):
    """One unit of computation: ``kind`` is ``stem`` / ``head`` / ``stitched_head`` (``index``:
    the anchor; a stitched network ends with ``stitched_head``), ``block`` (``index``: the
    anchor, ``block``: its block) or ``layer`` (``index``: the stitching layer)."""

    kind: str
    index: int
    block: int = -1


@dataclass(frozen=True)
class Route:
    """Segments joined by stitching layers: ``layers[i]`` maps the output of ``segments[i]``
    to the input of ``segments[i + 1]``."""

    segments: tuple[Segment, ...]
    layers: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.segments or len(self.layers) != len(self.segments) - 1:
            raise ValueError(
                f"a route of {len(self.segments)} segments needs {max(len(self.segments) - 1, 0)} "
                f"stitching layers, got {len(self.layers)}"
            )

    @property
    def is_anchor(self) -> bool:
        return len(self.segments) == 1

    @property
    def anchors(self) -> tuple[int, ...]:
        """The anchors the route runs, each once, in order of first use."""
        return tuple(dict.fromkeys(s.anchor for s in self.segments))

    @property
    def first(self) -> Segment:
        return self.segments[0]

    @property
    def last(self) -> Segment:
        return self.segments[-1]

    def junctions(self) -> list[tuple[Segment, int, Segment]]:
        """``(segment before, stitching layer, segment after)`` of every junction."""
        return [(self.segments[i], layer, self.segments[i + 1]) for i, layer in enumerate(self.layers)]

    def steps(self) -> tuple[Step, ...]:
        """stem, blocks, layer, blocks, ..., head: what running the route means."""
        steps = [Step("stem", self.first.anchor)]
        for i, seg in enumerate(self.segments):
            if i:
                steps.append(Step("layer", self.layers[i - 1]))
            steps.extend(Step("block", seg.anchor, b) for b in range(seg.start, seg.stop))
        # a stitched network may end differently from its anchor (Anchor.stitched_head)
        steps.append(Step("head" if self.is_anchor else "stitched_head", self.last.anchor))
        return tuple(steps)


def anchor_route(anchor: int, depth: int) -> Route:
    return Route((Segment(anchor, 0, depth),))


def route_name(route: Route, names: Sequence[str], depths: Sequence[int]) -> str:
    """``name`` for an anchor, else every segment as a slice of its anchor's blocks."""
    if route.is_anchor:
        return names[route.first.anchor]
    parts = []
    for i, seg in enumerate(route.segments):
        start = "" if i == 0 else str(seg.start)
        stop = "" if i == len(route.segments) - 1 and seg.stop == depths[seg.anchor] else str(seg.stop)
        parts.append(f"{names[seg.anchor]}[{start}:{stop}]")
    return ">".join(parts)


_SEGMENT = re.compile(r"^\s*([^\s\[\]>]+)\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\]\s*$")


def parse_route(name: str, anchor_names: Sequence[str], depths: Sequence[int]) -> Route:
    """A route from its name (the inverse of :func:`route_name`), e.g.
    ``resnet50[:7]>vit_small_patch16_224[6:]``, three segments
    ``a[:4]>b[8:16]>a[8:]``, or one anchor with a gap ``resnet50[:5]>resnet50[9:]``.

    The first segment starts at the stem (``A[:j]``: blocks ``0..j-1``), a middle one runs
    ``B[k:l]`` (at least one block), the last one runs to its anchor's head (``C[k:]``); a bare
    anchor name is that anchor. Anchors are named as in ``anchor_names`` (the first of equal
    names). The route's stitching layers are numbered ``0, 1, ...`` in route order (an SN-Net
    numbers them over all its routes). Raises :class:`ConfigError` (one line) for a name that
    does not parse, an anchor not in ``anchor_names`` or a block that does not exist.
    """
    text = str(name).strip()
    if text in anchor_names:
        a = list(anchor_names).index(text)
        return anchor_route(a, depths[a])
    parts = text.split(">")
    segments = []
    for i, part in enumerate(parts):
        match = _SEGMENT.match(part)
        if not match:
            raise ConfigError(
                f"route '{name}': cannot read '{part.strip()}': write segments as NAME[start:stop] joined by '>', "
                f"e.g. resnet50[:7]>vit_small_patch16_224[6:]"
            )
        anchor, start, stop = match.groups()
        if anchor not in anchor_names:
            raise ConfigError(
                f"route '{name}': '{anchor}' is not an anchor of this SN-Net (anchors: {', '.join(anchor_names)}): "
                f"add it to --anchors"
            )
        a = list(anchor_names).index(anchor)
        segments.append(_segment(name, a, anchor, depths[a], start, stop, i, len(parts)))
    route = Route(tuple(segments), tuple(range(len(segments) - 1)))
    if route.is_anchor and route.first.stop != depths[route.first.anchor]:
        raise ConfigError(f"route '{name}': one segment must run its anchor whole (NAME or NAME[:])")
    return route


def _segment(name: str, a: int, anchor: str, depth: int, start: str, stop: str, i: int, n: int) -> Segment:
    """Segment ``i`` of ``n`` of route ``name`` from the slice text, checked against ``depth``."""
    first, last = i == 0, i == n - 1
    lo = 0 if start == "" and first else (int(start) if start else None)
    hi = depth if stop == "" and last else (int(stop) if stop else None)
    if lo is None or hi is None:
        missing = "start" if lo is None else "stop"
        raise ConfigError(
            f"route '{name}': segment {i} '{anchor}[{start}:{stop}]' needs a {missing} block: only the first "
            f"segment starts at the stem ([:stop]) and only the last runs to the head ([start:])"
        )
    if first and lo != 0:
        raise ConfigError(f"route '{name}': the first segment starts at the stem, write {anchor}[:{stop}]")
    if last and hi != depth:
        raise ConfigError(
            f"route '{name}': the last segment runs to the head, write {anchor}[{start}:] ({anchor} has {depth} blocks)"
        )
    if not (0 <= lo <= depth and 0 <= hi <= depth):
        raise ConfigError(
            f"route '{name}': {anchor}[{start}:{stop}] names a block that does not exist: {anchor} has blocks "
            f"0..{depth - 1}"
        )
    if lo > hi or (lo == hi and not (first or last)):
        raise ConfigError(
            f"route '{name}': {anchor}[{start}:{stop}] runs no blocks: a middle segment runs at least one"
        )
    return Segment(a, lo, hi)


def apply_step(
    step: Step,
    x: torch.Tensor,
    adapters: Mapping[int, object] | Sequence[object],
    layers: Sequence[nn.Module] | Mapping[int, nn.Module],
) -> torch.Tensor:
    """Run one step on ``x`` with the given anchor adapters and stitching layers.

    The head step is the one place where a network's output is produced: an alternative head
    (e.g. one that skips the final norm) belongs here.
    """
    if step.kind == "block":
        return adapters[step.index].blocks[step.block](x)
    if step.kind == "layer":
        return layers[step.index](x)
    if step.kind == "stem":
        return adapters[step.index].stem(x)
    if step.kind == "stitched_head":
        return adapters[step.index].stitched_head(x)
    return adapters[step.index].head(x)


def run_route(route: Route, x: torch.Tensor, step_fn: Callable[[Step, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    for step in route.steps():
        x = step_fn(step, x)
    return x
