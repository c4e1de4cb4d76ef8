"""Least-squares initialisation of stitching layers.

For a stitch from features ``X`` (after front block j) to features ``Y`` (before back block k)
the layer starts as the solution of ``min ||[X 1] W - Y||``. ``X`` is 100 images x hundreds of
positions x channels, so instead of holding it we accumulate the normal equations
``[X 1]^T [X 1]`` and ``[X 1]^T Y`` in float64 batch by batch: memory is O(channels^2), one
pass over the images suffices, ``[X 1]^T [X 1]`` is shared by every stitch leaving block j,
and float64 keeps the squared condition number harmless. The small system is solved by
``torch.linalg.lstsq`` with an SVD driver on the CPU, which gives the minimum-norm solution
when ``X`` is rank deficient, like ``pinv``.
"""

from __future__ import annotations

import torch


def augment(x: torch.Tensor) -> torch.Tensor:
    """Rows ``x`` with a column of ones appended (for the bias), in float64."""
    x = x.to(torch.float64)
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


def solve_normal_equations(gram: torch.Tensor, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``gram @ S = cross`` for ``S = [W^T; b]``; returns (weight ``(out, in)``, bias)."""
    # gelsd (SVD) is CPU-only and handles singular systems; the system is tiny anyway.
    sol = torch.linalg.lstsq(gram.cpu(), cross.cpu(), driver="gelsd").solution
    return sol[:-1].T.contiguous(), sol[-1].contiguous()


def normal_equations_inverse(gram: torch.Tensor) -> torch.Tensor:
    """The pseudo-inverse of a Gram matrix ``[X 1]^T [X 1]`` (symmetric): factorised once, it
    solves every system with that Gram matrix by one product (:func:`solve_with_inverse`), the
    same minimum-norm solution as :func:`solve_normal_equations`."""
    return torch.linalg.pinv(gram.cpu(), hermitian=True)


def solve_with_inverse(inverse: torch.Tensor, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``S = inverse @ cross`` as (weight ``(out, in)``, bias), as :func:`solve_normal_equations`."""
    sol = inverse @ cross.cpu()
    return sol[:-1].T.contiguous(), sol[-1].contiguous()
