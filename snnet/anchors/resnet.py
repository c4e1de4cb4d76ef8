"""ResNet anchors (timm ``ResNet``): four stages of NCHW residual blocks."""

from __future__ import annotations

import torch
from torch import nn

from .base import Anchor
from .registry import register_anchor


@register_anchor("resnet")
class ResNetAnchor(Anchor):
    layout = "nchw"
    takes_img_size = False
    # The official ResNet/Swin tree stitches stages 1-2 only (10 ResNet-18/50 networks, 8
    # ResNet-18/Swin-T): stage-0 stitches run ResNet-50's whole body and cost more than it.
    first_stitch_stage = 1

    def split_blocks(self) -> tuple[list[nn.Module], list[int]]:
        m = self.model
        blocks, stages = [], []
        # timm ResNets keep their downsampling inside the first block of each stage.
        for s, layer in enumerate([m.layer1, m.layer2, m.layer3, m.layer4]):
            blocks += list(layer)
            stages += [s] * len(layer)
        return blocks, stages

    def head_modules(self) -> list[nn.Module]:
        return [self.model.fc]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.maxpool(m.act1(m.bn1(m.conv1(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)
