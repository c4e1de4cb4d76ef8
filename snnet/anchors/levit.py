"""LeViT anchors (timm ``Levit`` / ``LevitDistilled``): three stages of attention blocks."""

from __future__ import annotations

import torch
from torch import nn

from .base import Anchor, staged_blocks
from .registry import register_anchor


@register_anchor("levit")
class LevitAnchor(Anchor):
    layout = "tokens"

    def __init__(self, model: nn.Module, name: str, input_size):
        # levit_conv_* variants keep NCHW maps throughout instead of token sequences.
        self.layout = "nchw" if model.use_conv else "tokens"
        super().__init__(model, name, input_size)

    def split_blocks(self) -> tuple[list[nn.Module], list[int]]:
        return staged_blocks(self.model.stages)

    def head_modules(self) -> list[nn.Module]:
        m = self.model
        return [h for h in (m.head, getattr(m, "head_dist", None)) if h is not None]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.stem(x)
        return x if self.model.use_conv else x.flatten(2).transpose(1, 2)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)
