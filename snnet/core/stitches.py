"""Which networks an SN-Net holds: the papers' stitching rules as small value objects.

Every network is a :class:`~snnet.core.routes.Route`. An SN-Net (v1) stitch runs anchor ``front`` up
to and including block ``front_block`` (``j``), a stitching layer, then anchor ``back`` from
block ``back_block`` (``k``) to its head; its name reads as Python slices:
``deit_tiny_patch16_224[:4]>deit_small_patch16_224[4:]`` is ``j = 3, k = 4``. SN-Netv2's
two-way stitching (:func:`two_way_stitches`) adds large -> small stitches and three-segment
routes. Block indices are global (over all of an anchor's blocks); the v1 rules below work on
indices local to one stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..anchors import Anchor
from ..errors import ConfigError, IncompatibleAnchorsError
from .routes import Route, Segment, anchor_route, parse_route, route_name

Position = tuple[int, int]

# Layout changes a stitching layer can make (the CNN -> Swin case and its reverse).
_CONVERTIBLE = {("tokens", "tokens"), ("nchw", "nchw"), ("nhwc", "nhwc"), ("nchw", "nhwc"), ("nhwc", "nchw")}


STITCHING_RULES = ("paired", "unpaired", "two-way")


@dataclass(frozen=True)
class Stitch:
    """One network of an SN-Net; ``cfg_id`` is its index in ``SNNet.stitches``.

    ``front``/``front_block`` name where the route leaves its first anchor and
    ``back``/``back_block`` where it enters its last one (None for an anchor).
    """

    cfg_id: int
    name: str
    route: Route
    stage: Optional[int] = None

    @property
    def is_anchor(self) -> bool:
        return self.route.is_anchor

    @property
    def anchors(self) -> tuple[int, ...]:
        return self.route.anchors

    @property
    def front(self) -> int:
        return self.route.first.anchor

    @property
    def back(self) -> Optional[int]:
        return None if self.is_anchor else self.route.last.anchor

    @property
    def front_block(self) -> Optional[int]:
        return None if self.is_anchor else self.route.first.stop - 1

    @property
    def back_block(self) -> Optional[int]:
        return None if self.is_anchor else self.route.last.start


@dataclass(frozen=True)
class StitchingLayerSpec:
    """One stitching layer and the (front_block, back_block) positions that share it."""

    front: int
    back: int
    stage: int
    positions: tuple[Position, ...]


def paired_positions(
    depth: int, kernel_size: int = 2, stride: int = 1, forward_only: bool = False
) -> list[list[Position]]:
    """Stitching positions of two equal-depth stages, grouped by the stitching layer they share.

    A window of ``kernel_size`` block indices slides over ``0..depth-1`` by ``stride``; inside
    each window every ordered pair ``(j, k)`` not produced by an earlier window is a new
    stitch, and the new pairs of one window share one layer. ``forward_only`` keeps ``j < k``
    (the official Swin rule: the back anchor never repeats a block the front one ran).
    For depth 12, kernel 2, stride 1 this gives the paper's 34 stitches over 11 layers.
    """
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size} and {stride}")
    seen: set[Position] = set()
    groups: list[list[Position]] = []
    for start in range(0, depth, stride):
        window = range(start, min(start + kernel_size, depth))
        new = [(j, k) for j in window for k in window if (j, k) not in seen and (j < k or not forward_only)]
        seen.update(new)
        if new:
            groups.append(new)
    return groups


def unpaired_positions(front_depth: int, back_depth: int) -> list[list[Position]]:
    """Stitching positions of stages of different depths, one layer per shallow-side block.

    The shallower stage's block indices are mapped onto the deeper one proportionally
    (nearest-neighbour, as the official code's ``F.interpolate``), and only forward stitches
    (``j < k``) are kept.
    """
    if front_depth <= back_depth:
        owner = [i * front_depth // back_depth for i in range(back_depth)]  # back block -> front block
        groups = [[(j, k) for k in range(back_depth) if owner[k] == j and j < k] for j in range(front_depth)]
    else:
        owner = [i * back_depth // front_depth for i in range(front_depth)]  # front block -> back block
        groups = [[(j, k) for j in range(front_depth) if owner[j] == k and j < k] for k in range(back_depth)]
    return [g for g in groups if g]


def anchor_pairs(num_anchors: int, nearest: bool = True) -> list[tuple[int, int]]:
    """Pairs (front, back) to stitch; anchors are ordered small -> large."""
    if nearest:
        return [(i, i + 1) for i in range(num_anchors - 1)]
    return list(combinations(range(num_anchors), 2))


def check_stitchable(front: Anchor, j: int, back: Anchor, k: int) -> None:
    """Raise a clear error if features after ``front`` block j cannot feed ``back`` block k."""
    where = f"{front.name} block {j} -> {back.name} block {k}"
    if (front.layout, back.layout) not in _CONVERTIBLE:
        raise IncompatibleAnchorsError(
            f"cannot stitch {where}: {front.layout} features cannot feed {back.layout} blocks "
            f"by the stitching rules (stitch CNNs with CNNs or Swin, token models with token models; or name the "
            f"networks with --routes, whose junctions change layouts)"
        )
    a, b = front.spatial(j + 1), back.spatial(k)
    if a != b:
        unit = "tokens" if front.layout == "tokens" else "feature map"
        raise IncompatibleAnchorsError(
            f"cannot stitch {where}: spatial sizes differ ({unit} {'x'.join(map(str, a))} vs "
            f"{'x'.join(map(str, b))}); use anchors with the same input size and patch/stage strides"
        )


def default_stages(anchors: Sequence[Anchor]) -> list[int]:
    """Every stage but the last (whose output feeds the head), as the official code does; with a
    ResNet among the anchors also not the first (the official ResNet/Swin tree's stages 1-2)."""
    n = anchors[0].num_stages
    if n == 1:
        return [0]
    return list(range(max(a.first_stitch_stage for a in anchors), n - 1))


def _names_depths(anchors: Sequence[Anchor]) -> tuple[list[str], list[int]]:
    return [a.name for a in anchors], [a.num_blocks for a in anchors]


def _pair_groups(
    front: Anchor,
    back: Anchor,
    f_depth: int,
    b_depth: int,
    rule: Optional[str],
    kernel_size: int,
    stride: int,
    forward_only: bool,
    official_sharing: bool = False,
) -> list[list[Position]]:
    """A pair's position groups under ``rule`` (None: paired for equal depths, else unpaired;
    ``official_sharing``: unpaired layers shared as the official code does)."""
    rule = rule or ("paired" if f_depth == b_depth else "unpaired")
    if rule == "paired":
        if f_depth != b_depth:
            raise IncompatibleAnchorsError(
                f"paired stitching needs stages of equal depth, but {front.name} has {f_depth} blocks there and "
                f"{back.name} {b_depth}: use --stitching unpaired (or leave it unset)"
            )
        return paired_positions(f_depth, kernel_size, stride, forward_only)
    if f_depth == b_depth:
        raise IncompatibleAnchorsError(
            f"unpaired stitching needs stages of different depths, but {front.name} and {back.name} both have "
            f"{f_depth} blocks there: use --stitching paired (or leave it unset)"
        )
    if official_sharing:
        return list(official_unpaired_layers(f_depth, b_depth).values())
    return unpaired_positions(f_depth, b_depth)


def enumerate_stitches(
    anchors: Sequence[Anchor],
    kernel_size: int = 2,
    stride: int = 1,
    nearest: bool = True,
    stages: Optional[Sequence[int]] = None,
    stitching: Optional[str] = None,
    official_sharing: bool = False,
) -> tuple[list[Stitch], list[StitchingLayerSpec]]:
    """All networks of an SN-Net over ``anchors`` (small -> large), in the published order.

    ``stitching``: ``None`` chooses per anchor pair as the paper does (``paired`` for stages of
    equal depth, else ``unpaired``); ``paired``/``unpaired`` insist on one; ``two-way`` is
    SN-Netv2's rule (:func:`two_way_stitches`).

    v1 order: the anchors, then stage by stage (one stage for plain ViTs), each anchor pair's
    stitches in window order. Single-stage anchors pair every ``(j, k)`` of a window;
    multi-stage anchors stitch forward only, inside a stage, never at a stage's first block
    (its input has the previous stage's resolution). ``official_sharing``: unequal-depth stages
    share layers as the official code does (:func:`official_unpaired_layers`).
    """
    if stitching is not None and stitching not in STITCHING_RULES:
        raise ConfigError(f"unknown stitching '{stitching}': use one of {', '.join(STITCHING_RULES)}")
    if len(anchors) < 1:
        raise IncompatibleAnchorsError("an SN-Net needs at least one anchor")
    stage_counts = {a.num_stages for a in anchors}
    if len(stage_counts) > 1:
        desc = ", ".join(f"{a.name}: {a.num_stages}" for a in anchors)
        raise IncompatibleAnchorsError(
            f"anchors have different numbers of stages ({desc}); stitch anchors of one stage layout"
        )
    if stitching == "two-way":
        return two_way_stitches(anchors)
    num_stages = stage_counts.pop()
    stages = default_stages(anchors) if stages is None else list(stages)
    bad = [s for s in stages if not 0 <= s < num_stages]
    if bad:
        raise IncompatibleAnchorsError(
            f"stitching stages {bad} out of range: the anchors have stages 0..{num_stages - 1}"
        )

    names, depths = _names_depths(anchors)
    stitches = [Stitch(i, a.name, anchor_route(i, a.num_blocks)) for i, a in enumerate(anchors)]
    specs: list[StitchingLayerSpec] = []
    forward_only = num_stages > 1
    for stage in stages:
        for fa, ba in anchor_pairs(len(anchors), nearest):
            front, back = anchors[fa], anchors[ba]
            f_ids, b_ids = front.stage_block_ids(stage), back.stage_block_ids(stage)
            groups = _pair_groups(
                front, back, len(f_ids), len(b_ids), stitching, kernel_size, stride, forward_only, official_sharing
            )
            for group in groups:
                positions = tuple((f_ids[j], b_ids[k]) for j, k in group)
                layer = len(specs)
                specs.append(StitchingLayerSpec(fa, ba, stage, positions))
                for j, k in positions:
                    check_stitchable(front, j, back, k)
                    route = Route((Segment(fa, 0, j + 1), Segment(ba, k, depths[ba])), (layer,))
                    stitches.append(Stitch(len(stitches), route_name(route, names, depths), route, stage))
    return stitches, specs


def route_stitches(
    anchors: Sequence[Anchor], routes: Sequence[str | Route]
) -> tuple[list[Stitch], list[StitchingLayerSpec]]:
    """The anchors, then the given routes (names or :class:`Route` objects) in the given order.

    Any layouts may meet (the junction changes them, see :mod:`snnet.core.junctions`); one
    stitching layer per distinct junction (front anchor and block, back anchor and block), in
    order of first use: routes through the same junction share its layer, as SN-Netv2's
    three-segment routes share the two-segment ones'. A route's layer numbers (``parse_route``
    numbers them 0, 1, ... per route) are replaced by the SN-Net's.
    """
    names, depths = _names_depths(anchors)
    stitches = [Stitch(i, a.name, anchor_route(i, a.num_blocks)) for i, a in enumerate(anchors)]
    specs: list[StitchingLayerSpec] = []
    layer_of: dict[tuple[int, int, int, int], int] = {}
    seen = {s.route.segments: s.cfg_id for s in stitches}
    for given in routes:
        parsed = given if isinstance(given, Route) else parse_route(given, names, depths)
        layers = []
        for before, _, after in parsed.junctions():
            key = (before.anchor, before.stop - 1, after.anchor, after.start)
            if key not in layer_of:
                layer_of[key] = len(specs)
                back = anchors[after.anchor]
                stage = back.block_stages[min(after.start, back.num_blocks - 1)]
                specs.append(StitchingLayerSpec(before.anchor, after.anchor, stage, ((key[1], key[3]),)))
            layers.append(layer_of[key])
        route = Route(parsed.segments, tuple(layers))
        name = route_name(route, names, depths)
        if route.segments in seen:
            raise ConfigError(
                f"route '{given if isinstance(given, str) else name}' is network {seen[route.segments]} already "
                f"(the anchors come first): list each route once"
            )
        seen[route.segments] = len(stitches)
        stage = None if route.is_anchor else specs[route.layers[0]].stage
        stitches.append(Stitch(len(stitches), name, route, stage))
    return stitches, specs


def two_way_positions(small_depth: int, large_depth: int) -> tuple[list[Position], list[Position]]:
    """SN-Netv2's stitching positions (``get_stitch_configs_bidirection``) of anchors of depths
    ``d0 <= d1``, ``r = d1 // d0``: small -> large ``(i, (i + 1) r)`` for every small block but the
    last, and large -> small ``(i, floor(i d0 / d1) + 1)`` at the last block of every group of
    ``r`` large blocks but the final one.

    The official code leaves out the small -> large stitch after the small anchor's last block
    (it would run no large block) and hard-codes ``i % 2 == 1`` for the large -> small blocks of
    unequal depths, i.e. ``r = 2`` (DeiT3-S/L); ``i % r == r - 1`` is the same rule for any ``r``.
    """
    r = large_depth // small_depth
    sl = [(i, (i + 1) * r) for i in range(small_depth - 1)]
    ls = [(i, i * small_depth // large_depth + 1) for i in range(large_depth - 1) if i % r == r - 1]
    return sl, [(i, k) for i, k in ls if k < small_depth]


def two_way_stitches(anchors: Sequence[Anchor]) -> tuple[list[Stitch], list[StitchingLayerSpec]]:
    """SN-Netv2's networks of two anchors (small, large), in the official order: the anchors,
    SL (small -> large), LS (large -> small), LSL and SLS routes. One stitching layer per
    position: the SL layers first, then the LS layers; LSL/SLS routes reuse them.

    For DeiT3-S/L (depths 12/24): 2 + 11 + 11 + 55 + 55 = 134 networks over 22 layers.
    """
    if len(anchors) != 2:
        raise IncompatibleAnchorsError(
            f"two-way stitching joins exactly two anchors, got {len(anchors)} ({', '.join(a.name for a in anchors)}): "
            f"pass two anchors ordered small to large"
        )
    small, large = anchors
    if small.num_stages > 1:
        raise IncompatibleAnchorsError(
            f"two-way stitching needs single-stage anchors (ViT/DeiT/DeiT3), but {small.name} has {small.num_stages} "
            f"stages: use the default stitching (--stitching unset) for these anchors"
        )
    if small.num_blocks > large.num_blocks:
        raise IncompatibleAnchorsError(
            f"two-way stitching takes anchors ordered small to large, but {small.name} has {small.num_blocks} blocks "
            f"and {large.name} {large.num_blocks}: swap them"
        )
    names, depths = _names_depths(anchors)
    d0, d1 = depths
    sl, ls = two_way_positions(d0, d1)
    for j, k in sl:
        check_stitchable(small, j, large, k)
    for j, k in ls:
        check_stitchable(large, j, small, k)
    specs = [StitchingLayerSpec(0, 1, 0, (p,)) for p in sl] + [StitchingLayerSpec(1, 0, 0, (p,)) for p in ls]
    sl_layers = [(j, k, n) for n, (j, k) in enumerate(sl)]
    ls_layers = [(j, k, len(sl) + n) for n, (j, k) in enumerate(ls)]

    routes = [anchor_route(0, d0), anchor_route(1, d1)]
    routes += [Route((Segment(0, 0, j + 1), Segment(1, k, d1)), (n,)) for j, k, n in sl_layers]
    routes += [Route((Segment(1, 0, j + 1), Segment(0, k, d0)), (n,)) for j, k, n in ls_layers]
    routes += [
        Route((Segment(1, 0, i + 1), Segment(0, t, j + 1), Segment(1, k, d1)), (m, n))
        for i, t, m in ls_layers
        for j, k, n in sl_layers
        if j >= t
    ]
    routes += [
        Route((Segment(0, 0, j + 1), Segment(1, k, i + 1), Segment(0, t, d0)), (n, m))
        for j, k, n in sl_layers
        for i, t, m in ls_layers
        if i >= k
    ]
    stitches = [Stitch(c, route_name(r, names, depths), r, None if r.is_anchor else 0) for c, r in enumerate(routes)]
    return stitches, specs


def parse_stitch_ids(text: str, num_stitches: int) -> list[int]:
    """``'0,3,10-20'`` -> sorted unique cfg_ids, checked against ``num_stitches``."""
    ids: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            lo, _, hi = part.partition("-")
            ids.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ConfigError(f"bad stitch id '{part}' in '{text}': use e.g. 0,3,10-20") from None
    out_of_range = sorted(i for i in ids if not 0 <= i < num_stitches)
    if out_of_range:
        raise ConfigError(f"stitch id {out_of_range[0]} is out of range: this SN-Net has cfg_ids 0..{num_stitches - 1}")
    return sorted(ids)


def official_unpaired_layers(front_depth: int, back_depth: int) -> dict[int, list[tuple[int, int]]]:
    """Positions of two unequal-depth stages grouped by the official layer they use.

    As ``unpaired_stitching`` + ``get_stitch_configs``: the front blocks are mapped onto the back
    ones by nearest interpolation; stitch ``(j, k)`` exists when back block ``k`` maps to ``j``
    and ``j < k``; the n-th stitch (front-major order) uses layer ``end_mapping_ids[n]``.
    """
    ids = torch.arange(front_depth, dtype=torch.float32)[None, None]
    end_mapping = F.interpolate(ids, back_depth).long().flatten().tolist()
    stitches = [(j, k) for j in range(front_depth) for k, e in enumerate(end_mapping) if e == j and j < k]
    groups: dict[int, list[tuple[int, int]]] = {}
    for position, layer in zip(stitches, end_mapping):
        groups.setdefault(layer, []).append(position)
    return dict(sorted(groups.items()))
