"""MobileNetV3 anchors (timm ``MobileNetV3``): seven stages of NCHW inverted-residual blocks."""

from __future__ import annotations

import torch
from torch import nn

from .base import Anchor
from .registry import register_anchor


@register_anchor("mobilenetv3")
class MobileNetV3Anchor(Anchor):
    layout = "nchw"
    takes_img_size = False

    def split_blocks(self) -> tuple[list[nn.Module], list[int]]:
        # timm keeps each stage's downsampling inside its first block, like the ResNets.
        blocks, stages = [], []
        for s, stage in enumerate(self.model.blocks):
            blocks += list(stage)
            stages += [s] * len(stage)
        return blocks, stages

    def head_modules(self) -> list[nn.Module]:
        m = self.model
        return [m.conv_head, m.norm_head, m.classifier]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.bn1(self.model.conv_stem(x))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)
