"""The scoring cache of a composition search: every junction scored once.

A *boundary* ``(a, i)`` of pool network ``a`` is the point between its blocks ``i - 1`` and ``i``
(0: right after the stem, ``depth``: after the last block). A *junction* ``(a, i) -> (b, k)``
feeds network ``a``'s features at boundary ``i`` into network ``b`` at boundary ``k`` through a
stitching layer initialised by least squares, ``min ||[X 1] S - Y||``, with ``X`` the sender's
features and ``Y`` the receiver's own features there, every image position a row (as
``SNNet.init_stitching_layers`` sees them, through the layer's layout change when the two
networks keep their features differently). Its *score* is the linear CKA between the LS-mapped
features ``[X 1] S`` and ``Y`` (StitchNet scores the compatibility of two fragments by linear CKA
on a few images): 1 when the receiver's features are a linear function of the sender's.

:class:`JunctionTable` runs every pool network once on the stitching images and keeps its
features at every boundary; each boundary's Gram matrix ``[X 1]^T [X 1]`` is formed and
factorised (its pseudo-inverse) once and shared by every junction leaving it, and each junction's LS solution and CKA are computed once,
on first use, and then reused by every candidate network that contains the junction. The CKA
needs no mapped rows: with ``G = [X 1]^T [X 1]`` and ``C = [X 1]^T Y``, the mapped features have
``sum = S^T G[:, -1]``, ``(XS)^T (XS) = S^T G S`` and ``(XS)^T Y = S^T C``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..anchors import Anchor
from ..core.junctions import DEFAULT_CLASS_TOKEN, DEFAULT_PREFIX_TOKENS, feature_spec
from ..core.junctions import Junction as LayoutJunction
from ..core.layers import to_rows
from ..core.lstsq import augment, normal_equations_inverse, solve_with_inverse
from ..core.measures import linear_cka
from ..errors import IncompatibleAnchorsError

Boundary = tuple[int, int]  # (pool network, boundary index)


@dataclass(frozen=True)
class SolvedJunction:
    """The least-squares stitching layer of one junction (``x weight^T + bias``) and its score."""

    weight: torch.Tensor
    bias: torch.Tensor
    cka: float


class JunctionTable:
    """Features of the pool networks at every block boundary on ``images``, computed once, and
    the junctions between them, each solved and scored once on first use.

    A junction between layouts (tokens / NCHW / NHWC, other grids, prefix tokens) goes through
    the stitching layer's own :class:`~snnet.core.junctions.Junction` (``class_token``,
    ``prefix_tokens`` as ``create_snnet``'s), so the solution is the one ``init_stitching_layers``
    would find for that layer.

    Args:
        adapters: the pool networks' anchor adapters (``SNNet.anchor_adapters``).
        images: the stitching images, ``(N, 3, H, W)`` (StitchNet uses 32).
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        adapters: Sequence[Anchor],
        images: torch.Tensor,
        batch_size: int = 32,
        class_token: str = DEFAULT_CLASS_TOKEN,
        prefix_tokens: str = DEFAULT_PREFIX_TOKENS,
    ):
        self.adapters = list(adapters)
        self.class_token, self.prefix_tokens = class_token, prefix_tokens
        self.features: dict[Boundary, torch.Tensor] = {}
        self._layers: dict[tuple[Boundary, Boundary], Optional[LayoutJunction]] = {}
        self._grams: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._targets: dict[Boundary, tuple[torch.Tensor, torch.Tensor]] = {}
        self._junctions: dict[tuple[Boundary, Boundary], SolvedJunction] = {}
        self._ranked: dict[Boundary, list[tuple[float, Boundary]]] = {}
        # Junctions left out because the images give no more rows than the layer's inputs: there
        # the least-squares map interpolates the receiver's features and its CKA is 1 whatever
        # the networks (more --stitch-images, or fewer channels, make them count).
        self.underdetermined: set[tuple[Boundary, Boundary]] = set()
        for a in range(len(self.adapters)):
            feats = [self._features(a, batch) for batch in images.split(batch_size)]
            for i in range(len(feats[0])):
                self.features[(a, i)] = torch.cat([f[i] for f in feats])

    @torch.no_grad()
    def _features(self, a: int, images: torch.Tensor) -> list[torch.Tensor]:
        """Network ``a``'s features at every boundary, in eval mode, on the CPU."""
        adapter = self.adapters[a]
        was_training = adapter.model.training
        adapter.model.eval()
        try:
            param = next(adapter.model.parameters())
            x = adapter.stem(images.to(device=param.device, dtype=param.dtype))
            out = [x.float().cpu()]
            for blk in adapter.blocks:
                x = blk(x)
                out.append(x.float().cpu())
        finally:
            adapter.model.train(was_training)
        return out

    @property
    def num_solved(self) -> int:
        """Junctions solved and scored so far."""
        return len(self._junctions)

    def depth(self, a: int) -> int:
        return self.adapters[a].num_blocks

    def layout_junction(self, src: Boundary, dst: Boundary) -> Optional[LayoutJunction]:
        """The layout change of a stitching layer from ``src`` to ``dst``; None when no layer can
        join them (e.g. tokens that form no grid into a feature map), or when the stitching
        images give no more rows there than the layer has inputs (see :meth:`underdetermined`)."""
        key = (src, dst)
        if key not in self._layers:
            front, back = self.adapters[src[0]], self.adapters[dst[0]]
            try:
                layout = LayoutJunction(
                    feature_spec(front, src[1]), feature_spec(back, dst[1]), self.class_token, self.prefix_tokens
                )
            except IncompatibleAnchorsError:
                layout = None
            if layout is not None and self._rows(src, layout) <= layout.in_channels + 1:
                self.underdetermined.add(key)
                layout = None
            self._layers[key] = layout
        return self._layers[key]

    def _rows(self, src: Boundary, layout: LayoutJunction) -> int:
        """Rows the least-squares fit of ``layout`` sees (images x positions)."""
        one = self.features[src][:1]
        return layout.fit_rows(layout.enter(one)).shape[0] * len(self.features[src])

    def can_join(self, src: Boundary, dst: Boundary) -> bool:
        return self.layout_junction(src, dst) is not None

    def _inputs(self, src: Boundary, layout: LayoutJunction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[X 1]`` (float64 rows of the layer's input, after the layout change), its Gram matrix
        and that matrix's pseudo-inverse, the last two shared by every junction from ``src``
        with the same layout change."""
        rows = augment(layout.fit_rows(layout.enter(self.features[src])))
        key = (src, layout.signature)
        if key not in self._grams:
            gram = rows.T @ rows
            self._grams[key] = (gram, normal_equations_inverse(gram))
        return (rows, *self._grams[key])

    def _target(self, dst: Boundary) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The receiver's rows (float64), their column sums and ``Y^T Y`` (the last two cached)."""
        y = to_rows(self.features[dst], self.adapters[dst[0]].layout).double()
        if dst not in self._targets:
            self._targets[dst] = (y.sum(0), y.T @ y)
        return (y, *self._targets[dst])

    def junction(self, src: Boundary, dst: Boundary) -> SolvedJunction:
        """The LS stitching layer from ``src`` to ``dst`` and its CKA score (cached)."""
        key = (src, dst)
        if key not in self._junctions:
            self._junctions[key] = self.solve(src, dst)
        return self._junctions[key]

    def solve(self, src: Boundary, dst: Boundary) -> SolvedJunction:
        """Solve and score one junction from the cached features (the result not cached)."""
        layout = self.layout_junction(src, dst)
        if layout is None:
            raise IncompatibleAnchorsError(f"no stitching layer joins boundary {src} to {dst}")
        x, gram, inverse = self._inputs(src, layout)
        y, sy, yy = self._target(dst)
        cross = x.T @ y
        weight, bias = solve_with_inverse(inverse, cross)
        s = torch.cat([weight.T, bias[None]])  # [W^T; b]: the mapped rows are [X 1] S
        cka = linear_cka(y.shape[0], s.T @ gram[:, -1], sy, s.T @ gram @ s, yy, s.T @ cross)
        # CKA lies in [0, 1]; rounding can step past 1 by ~1e-15 for identical features
        return SolvedJunction(weight.float(), bias.float(), min(max(cka, 0.0), 1.0))

    def score(self, src: Boundary, dst: Boundary) -> float:
        return self.junction(src, dst).cka

    def ranked(self, src: Boundary) -> list[tuple[float, Boundary]]:
        """Every junction leaving ``src`` into a block of a pool network, best score first
        (ties: lower network, then lower boundary); ``src`` itself (no junction) left out."""
        if src in self._ranked:
            return self._ranked[src]
        out = []
        for b, adapter in enumerate(self.adapters):
            for k in range(adapter.num_blocks):  # entering at the last boundary would run no block
                dst = (b, k)
                if dst != src and self.can_join(src, dst):
                    out.append((self.score(src, dst), dst))
        self._ranked[src] = sorted(out, key=lambda t: (-t[0], t[1]))
        return self._ranked[src]
