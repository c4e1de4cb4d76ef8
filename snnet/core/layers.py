"""Stitching layers: a channel-linear map from one anchor's features to another's.

Two kinds, made by :func:`create_stitching_layer`; both honour the contract LS init relies on,
``set_weights(w, b)`` makes the layer compute ``x w^T + b``:

* ``linear``: the paper's ``nn.Linear`` (SN-Net), every parameter trained;
* ``lora``: SN-Netv2's: the least-squares solution is a frozen base ``W``, a trainable
  low-rank update ``B @ A`` (``B`` zero-initialised, scaled by ``1 / rank`` as the official
  ``lora_alpha = 1``) is added; the bias stays trainable as in the official code. In eval mode
  the layer runs one merged linear map ``W + B A / rank`` (cached, recomputed whenever a
  parameter changed), which is also what export ships and what FLOPs and parameter counts
  describe: the deployed network.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..anchors import Layout
from ..errors import ConfigError

STITCH_LAYER_KINDS = ("linear", "lora")


def to_rows(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Features -> (samples * positions, channels): the rows a stitching layer maps."""
    if layout == "nchw":
        x = x.permute(0, 2, 3, 1)
    return x.reshape(-1, x.shape[-1])


class StitchingLayer(nn.Module):
    """A linear map over channels, applied at every token or pixel.

    On tokens it is the paper's ``nn.Linear``; on feature maps it equals a 1x1 convolution.
    ``in_layout``/``out_layout`` differ only when a CNN (NCHW) feeds a Swin (NHWC) or back.
    """

    def __init__(self, in_dim: int, out_dim: int, in_layout: Layout = "tokens", out_layout: Layout = "tokens"):
        super().__init__()
        self.in_layout = in_layout
        self.out_layout = out_layout
        self.transform = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_layout == "nchw":
            x = x.permute(0, 2, 3, 1)
        x = self.map(x)
        if self.out_layout == "nchw":
            x = x.permute(0, 3, 1, 2)
        return x

    def map(self, x: torch.Tensor) -> torch.Tensor:
        """The channel map on channels-last features."""
        return self.transform(x)

    @torch.no_grad()
    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.transform.weight.copy_(weight)
        self.transform.bias.copy_(bias)

    def effective_weight(self) -> torch.Tensor:
        """The weight of the one linear map the layer computes."""
        return self.transform.weight

    @property
    def deployed_params(self) -> int:
        """Parameters of the layer as a deployed network holds it (one linear map)."""
        return self.transform.weight.numel() + self.transform.bias.numel()

    @torch.no_grad()
    def as_linear(self) -> "StitchingLayer":
        """A plain linear stitching layer with the same outputs (what export ships)."""
        w = self.effective_weight()
        out = StitchingLayer(w.shape[1], w.shape[0], self.in_layout, self.out_layout).to(w.device, w.dtype)
        out.set_weights(w, self.transform.bias)
        return out.train(self.training)

    def extra_repr(self) -> str:
        return f"{self.in_layout} -> {self.out_layout}"


class LoRAStitchingLayer(StitchingLayer):
    """SN-Netv2's stitching layer: frozen base ``W`` plus a trainable ``B @ A / rank``."""

    def __init__(
        self, in_dim: int, out_dim: int, rank: int, in_layout: Layout = "tokens", out_layout: Layout = "tokens"
    ):
        super().__init__(in_dim, out_dim, in_layout, out_layout)
        if rank < 1:
            raise ConfigError(f"--lora-rank must be >= 1, got {rank}")
        self.rank = rank
        self.scaling = 1.0 / rank
        self.transform.weight.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, in_dim))
        self.lora_B = nn.Parameter(torch.zeros(out_dim, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's (and the official) init
        self._merged: Optional[tuple[tuple, torch.Tensor]] = None

    def _merge_key(self) -> tuple:
        ps = (self.transform.weight, self.lora_A, self.lora_B)
        return tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in ps)

    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        key = self._merge_key()
        if self._merged is None or self._merged[0] != key:
            # a cache made under inference_mode must serve outside it too (inference_mode(False)
            # turns grad mode back on, hence no_grad inside it)
            with torch.inference_mode(False), torch.no_grad():
                merged = self.transform.weight + (self.lora_B @ self.lora_A) * self.scaling
            self._merged = (key, merged)
        return self._merged[1]

    def train(self, mode: bool = True) -> "LoRAStitchingLayer":
        super().train(mode)
        if not mode:
            self.effective_weight()  # merge now, outside any forward being traced or timed
        return self

    def map(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.effective_weight(), self.transform.bias)
        return self.transform(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """The base becomes ``weight``/``bias`` and the update restarts from zero (``B = 0``)."""
        super().set_weights(weight, bias)
        self.lora_B.zero_()

    def __getstate__(self):  # deep copies and pickles recompute the merge
        state = self.__dict__.copy()
        state["_merged"] = None
        return state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def create_stitching_layer(
    kind: str,
    in_dim: int,
    out_dim: int,
    in_layout: Layout = "tokens",
    out_layout: Layout = "tokens",
    lora_rank: int = 64,
) -> StitchingLayer:
    """A stitching layer of ``kind`` (``linear`` or ``lora``) from ``in_dim`` to ``out_dim`` channels."""
    if kind == "linear":
        return StitchingLayer(in_dim, out_dim, in_layout, out_layout)
    if kind == "lora":
        return LoRAStitchingLayer(in_dim, out_dim, lora_rank, in_layout, out_layout)
    raise ConfigError(f"unknown --stitch-layer '{kind}': use one of {', '.join(STITCH_LAYER_KINDS)}")
