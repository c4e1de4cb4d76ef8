"""ViT / DeiT anchors (timm ``VisionTransformer``): one stage of equal-width token blocks."""

from __future__ import annotations

import torch
from torch import nn

from .base import Anchor
from .registry import register_anchor


@register_anchor("vision_transformer", "deit")
class ViTAnchor(Anchor):
    layout = "tokens"

    def split_blocks(self) -> tuple[list[nn.Module], list[int]]:
        blocks = list(self.model.blocks)
        return blocks, [0] * len(blocks)

    def head_modules(self) -> list[nn.Module]:
        m = self.model
        parts = [m.norm, m.fc_norm, m.head, getattr(m, "head_dist", None), getattr(m, "attn_pool", None)]
        return [p for p in parts if p is not None]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(x))

    def token_grid(self, num_patches: int) -> tuple[int, int] | None:
        grid = getattr(self.model.patch_embed, "grid_size", None)
        if grid is not None and grid[0] * grid[1] == num_patches:
            return (int(grid[0]), int(grid[1]))
        return super().token_grid(num_patches)

    def stitched_head(self, x: torch.Tensor) -> torch.Tensor:
        # The official DeiT SN-Net ends stitched networks with forward_head alone (no final norm).
        return self.model.forward_head(x) if self.official_forward else self.head(x)
