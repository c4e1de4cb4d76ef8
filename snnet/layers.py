"""Stitching layers: a channel-linear map from one anchor's features to another's."""
from __future__ import annotations

import torch
from torch import nn

from .anchors import Layout


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
        x = self.transform(x)
        if self.out_layout == "nchw":
            x = x.permute(0, 3, 1, 2)
        return x

    @torch.no_grad()
    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.transform.weight.copy_(weight)
        self.transform.bias.copy_(bias)

    def extra_repr(self) -> str:
        return f"{self.in_layout} -> {self.out_layout}"
