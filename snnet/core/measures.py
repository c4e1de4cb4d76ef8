"""Measures of how two sets of features agree, shared by eval.py's ``--compatibility``
(:mod:`snnet.evaluate.compat`) and the composition search (:mod:`snnet.compose.junctions`).

Linear Centered Kernel Alignment (Kornblith et al. 2019) of row matrices ``X``, ``Y`` (every image
position a row): ``||Cxy||_F^2 / (||Cxx||_F ||Cyy||_F)`` with ``C`` the centred (cross-)covariances;
1 when the two representations agree up to rotation and scale. It is computed from sums, so that
data seen in batches (:class:`RowMoments`), or a linear map of ``X``, needs no rows kept.
"""

from __future__ import annotations

import torch


def linear_cka(
    n: int, sx: torch.Tensor, sy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor, xy: torch.Tensor
) -> float:
    """Linear CKA of row matrices ``X``, ``Y`` from their sums: ``n`` rows, column sums ``sx``,
    ``sy`` and the products ``X^T X``, ``Y^T Y``, ``X^T Y`` (float64), so that CKA of data seen
    in batches, or of a linear map of ``X`` (snnet.compose), needs no rows."""
    mx, my = sx / n, sy / n
    cxx = xx - n * torch.outer(mx, mx)
    cyy = yy - n * torch.outer(my, my)
    cxy = xy - n * torch.outer(mx, my)
    return float(cxy.pow(2).sum() / (cxx.norm() * cyy.norm()))


class RowMoments:
    """Running float64 sums over the rows of ``X`` and ``Y`` seen in batches: n, sum x, sum y,
    X^T X, Y^T Y, X^T Y (what :func:`linear_cka` needs)."""

    def __init__(self):
        self.n = 0
        self.sx = self.sy = self.xx = self.yy = self.xy = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.double()
        self.n += x.shape[0]
        self.sx = self.sx + x.sum(0)
        self.sy = self.sy + y.sum(0)
        self.xx = self.xx + x.T @ x
        self.yy = self.yy + y.T @ y
        self.xy = self.xy + x.T @ y

    def cka(self) -> float:
        return linear_cka(self.n, self.sx, self.sy, self.xx, self.yy, self.xy)
