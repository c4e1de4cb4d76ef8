"""Which networks an SN-Net holds: the paper's stitching rules as small value objects.

A stitch runs anchor ``front`` up to and including block ``front_block`` (``j``), a stitching
layer, then anchor ``back`` from block ``back_block`` (``k``) to its head. Its name reads as
Python slices: ``deit_tiny_patch16_224[:4]>deit_small_patch16_224[4:]`` is ``j = 3, k = 4``.
Block indices in a :class:`Stitch` are global (over all of an anchor's blocks); the rules below
work on indices local to one stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Optional, Sequence

from .anchors import Anchor
from .errors import ConfigError, IncompatibleAnchorsError
from .official import official_unpaired_layers

Position = tuple[int, int]

# Layout changes a stitching layer can make (the CNN -> Swin case and its reverse).
_CONVERTIBLE = {("tokens", "tokens"), ("nchw", "nchw"), ("nhwc", "nhwc"), ("nchw", "nhwc"), ("nhwc", "nchw")}


@dataclass(frozen=True)
class Stitch:
    """One network of an SN-Net; ``cfg_id`` is its index in ``SNNet.stitches``."""

    cfg_id: int
    name: str
    front: int
    back: Optional[int] = None
    front_block: Optional[int] = None
    back_block: Optional[int] = None
    layer: Optional[int] = None
    stage: Optional[int] = None

    @property
    def is_anchor(self) -> bool:
        return self.back is None

    @property
    def anchors(self) -> tuple[int, ...]:
        return (self.front,) if self.back is None else (self.front, self.back)


@dataclass(frozen=True)
class StitchingLayerSpec:
    """One stitching layer and the (front_block, back_block) positions that share it."""

    front: int
    back: int
    stage: int
    positions: tuple[Position, ...]


def paired_positions(depth: int, kernel_size: int = 2, stride: int = 1, forward_only: bool = False) -> list[list[Position]]:
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


def stitch_name(front: Anchor, j: int, back: Anchor, k: int) -> str:
    return f"{front.name}[:{j + 1}]>{back.name}[{k}:]"


def check_stitchable(front: Anchor, j: int, back: Anchor, k: int) -> None:
    """Raise a clear error if features after ``front`` block j cannot feed ``back`` block k."""
    where = f"{front.name} block {j} -> {back.name} block {k}"
    if (front.layout, back.layout) not in _CONVERTIBLE:
        raise IncompatibleAnchorsError(
            f"cannot stitch {where}: {front.layout} features cannot feed {back.layout} blocks "
            f"(stitch CNNs with CNNs or Swin, token models with token models)"
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


def enumerate_stitches(
    anchors: Sequence[Anchor],
    kernel_size: int = 2,
    stride: int = 1,
    nearest: bool = True,
    stages: Optional[Sequence[int]] = None,
    official_sharing: bool = False,
) -> tuple[list[Stitch], list[StitchingLayerSpec]]:
    """All networks of an SN-Net over ``anchors`` (small -> large), in the published order.

    Order: the anchors, then stage by stage (one stage for plain ViTs), each anchor pair's
    stitches in window order. Single-stage anchors pair every ``(j, k)`` of a window;
    multi-stage anchors stitch forward only, inside a stage, never at a stage's first block
    (its input has the previous stage's resolution). ``official_sharing``: unequal-depth stages
    share layers as the official code does (:func:`snnet.official.official_unpaired_layers`).
    """
    if len(anchors) < 1:
        raise IncompatibleAnchorsError("an SN-Net needs at least one anchor")
    stage_counts = {a.num_stages for a in anchors}
    if len(stage_counts) > 1:
        desc = ", ".join(f"{a.name}: {a.num_stages}" for a in anchors)
        raise IncompatibleAnchorsError(f"anchors have different numbers of stages ({desc}); stitch anchors of one stage layout")
    num_stages = stage_counts.pop()
    stages = default_stages(anchors) if stages is None else list(stages)
    bad = [s for s in stages if not 0 <= s < num_stages]
    if bad:
        raise IncompatibleAnchorsError(f"stitching stages {bad} out of range: the anchors have stages 0..{num_stages - 1}")

    stitches = [Stitch(cfg_id=i, name=a.name, front=i) for i, a in enumerate(anchors)]
    specs: list[StitchingLayerSpec] = []
    forward_only = num_stages > 1
    for stage in stages:
        for fa, ba in anchor_pairs(len(anchors), nearest):
            front, back = anchors[fa], anchors[ba]
            f_ids, b_ids = front.stage_block_ids(stage), back.stage_block_ids(stage)
            if len(f_ids) == len(b_ids):
                groups = paired_positions(len(f_ids), kernel_size, stride, forward_only)
            elif official_sharing:
                groups = list(official_unpaired_layers(len(f_ids), len(b_ids)).values())
            else:
                groups = unpaired_positions(len(f_ids), len(b_ids))
            for group in groups:
                positions = tuple((f_ids[j], b_ids[k]) for j, k in group)
                layer = len(specs)
                specs.append(StitchingLayerSpec(fa, ba, stage, positions))
                for j, k in positions:
                    check_stitchable(front, j, back, k)
                    stitches.append(Stitch(len(stitches), stitch_name(front, j, back, k), fa, ba, j, k, layer, stage))
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
        raise ConfigError(
            f"stitch id {out_of_range[0]} is out of range: this SN-Net has cfg_ids 0..{num_stitches - 1}"
        )
    return sorted(ids)
