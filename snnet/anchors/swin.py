"""Swin Transformer anchors (timm ``SwinTransformer``): four stages of NHWC window blocks."""

from __future__ import annotations

import torch
from torch import nn

from .base import Anchor, staged_blocks
from .registry import register_anchor


@register_anchor("swin_transformer")
class SwinAnchor(Anchor):
    layout = "nhwc"

    def split_blocks(self) -> tuple[list[nn.Module], list[int]]:
        return staged_blocks(self.model.layers)

    def head_modules(self) -> list[nn.Module]:
        return [self.model.norm, self.model.head]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.patch_embed(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(x))
