"""The scoring cache of a composition search: every junction scored once.

A *boundary* ``(a, i)`` of pool network ``a`` is the point between its blocks ``i - 1`` and ``i``
(0: right after the stem, ``depth``: after the last block). A *junction* ``(a, i) -> (b, k)``
feeds network ``a``'s features at boundary ``i`` into network ``b`` at boundary ``k`` through a
stitching layer initialised by least squares, ``min ||[X 1] S - Y||``, with ``X`` the sender's
features and ``Y`` the receiver's own features there, every image position a row (as
``SNNet.init_stitching_layers`` sees them). Its *score* is the linear CKA between the LS-mapped
features ``[X 1] S`` and ``Y`` (StitchNet scores the compatibility of two fragments by linear CKA
on a few images): 1 when the receiver's features are a linear function of the sender's.

:class:`JunctionTable` runs every pool network once on the stitching images and keeps its
features at every boundary; each boundary's Gram matrix ``[X 1]^T [X 1]`` is formed once and
shared by every junction leaving it, and each junction's LS solution and CKA are computed once,
on first use, and then reused by every candidate network that contains the junction. The CKA
needs no mapped rows: with ``G = [X 1]^T [X 1]`` and ``C = [X 1]^T Y``, the mapped features have
``sum = S^T G[:, -1]``, ``(XS)^T (XS) = S^T G S`` and ``(XS)^T Y = S^T C``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..anchors import Anchor
from ..core.layers import to_rows
from ..core.lstsq import augment, solve_normal_equations
from ..evaluate.compat import linear_cka

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

    Args:
        adapters: the pool networks' anchor adapters (``SNNet.anchor_adapters``).
        images: the stitching images, ``(N, 3, H, W)`` (StitchNet uses 32).
        batch_size: images per forward pass.
    """

    def __init__(self, adapters: Sequence[Anchor], images: torch.Tensor, batch_size: int = 32):
        self.adapters = list(adapters)
        self.rows: dict[Boundary, torch.Tensor] = {}
        self._grams: dict[Boundary, torch.Tensor] = {}
        self._targets: dict[Boundary, tuple[torch.Tensor, torch.Tensor]] = {}
        self._junctions: dict[tuple[Boundary, Boundary], SolvedJunction] = {}
        self._ranked: dict[Boundary, list[tuple[float, Boundary]]] = {}
        for a in range(len(self.adapters)):
            feats = [self._features(a, batch) for batch in images.split(batch_size)]
            for i in range(len(feats[0])):
                self.rows[(a, i)] = torch.cat([f[i] for f in feats])

    @torch.no_grad()
    def _features(self, a: int, images: torch.Tensor) -> list[torch.Tensor]:
        """Network ``a``'s features (as rows) at every boundary, in eval mode."""
        adapter = self.adapters[a]
        was_training = adapter.model.training
        adapter.model.eval()
        try:
            param = next(adapter.model.parameters())
            x = adapter.stem(images.to(device=param.device, dtype=param.dtype))
            out = [to_rows(x, adapter.layout).float().cpu()]
            for blk in adapter.blocks:
                x = blk(x)
                out.append(to_rows(x, adapter.layout).float().cpu())
        finally:
            adapter.model.train(was_training)
        return out

    def depth(self, a: int) -> int:
        return self.adapters[a].num_blocks

    @property
    def boundaries(self) -> list[Boundary]:
        return list(self.rows)

    def can_join(self, src: Boundary, dst: Boundary) -> bool:
        """Whether a stitching layer can map ``src``'s features onto ``dst``'s: the same layout
        and the same positions per image (the rows pair up)."""
        a, b = self.adapters[src[0]], self.adapters[dst[0]]
        return a.layout == b.layout and self.rows[src].shape[0] == self.rows[dst].shape[0]

    def _gram(self, src: Boundary) -> torch.Tensor:
        if src not in self._grams:
            x = augment(self.rows[src])
            self._grams[src] = x.T @ x
        return self._grams[src]

    def _target(self, dst: Boundary) -> tuple[torch.Tensor, torch.Tensor]:
        """Column sums and ``Y^T Y`` of the receiver's features (float64)."""
        if dst not in self._targets:
            y = self.rows[dst].double()
            self._targets[dst] = (y.sum(0), y.T @ y)
        return self._targets[dst]

    def junction(self, src: Boundary, dst: Boundary) -> SolvedJunction:
        """The LS stitching layer from ``src`` to ``dst`` and its CKA score (cached)."""
        key = (src, dst)
        if key not in self._junctions:
            self._junctions[key] = self.solve(src, dst)
        return self._junctions[key]

    def solve(self, src: Boundary, dst: Boundary) -> SolvedJunction:
        """Solve and score one junction from the cached features (no caching of the result)."""
        gram = self._gram(src)
        y = self.rows[dst].double()
        cross = augment(self.rows[src]).T @ y
        weight, bias = solve_normal_equations(gram, cross)
        s = torch.cat([weight.T, bias[None]])  # [W^T; b]: the mapped rows are [X 1] S
        sy, yy = self._target(dst)
        n = y.shape[0]
        cka = linear_cka(n, s.T @ gram[:, -1], sy, s.T @ gram @ s, yy, s.T @ cross)
        # CKA lies in [0, 1]; rounding can step past 1 by ~1e-15 for identical features
        return SolvedJunction(weight.float(), bias.float(), min(max(cka, 0.0), 1.0))

    def score(self, src: Boundary, dst: Boundary) -> float:
        return self.junction(src, dst).cka

    def ranked(self, src: Boundary) -> list[tuple[float, Boundary]]:
        """Every junction leaving ``src`` into a block of a pool network, best score first
        (ties: lower network, then lower boundary); ``src`` itself (no junction) left out."""
        out = []
        for b, adapter in enumerate(self.adapters):
            for k in range(adapter.num_blocks):  # entering at the last boundary would run no block
                dst = (b, k)
                if dst != src and self.can_join(src, dst):
                    out.append((self.score(src, dst), dst))
        self._ranked[src] = sorted(out, key=lambda t: (-t[0], t[1]))
        return self._ranked[src]
