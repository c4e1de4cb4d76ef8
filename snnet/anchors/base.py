"""The Anchor interface: SN-Net's view of one stock timm model.

SN-Net needs every anchor as ``stem -> blocks -> head`` with the feature shape between blocks
known, so that the front of one anchor can be joined to the back of another. An adapter gives
that view over an unmodified timm model: it holds references to the model's own modules, so
the weights, the state dict and ``model(x)`` stay exactly timm's.
"""

from __future__ import annotations

import math
from typing import ClassVar, Iterable, Literal, Sequence

import torch
from torch import nn

Layout = Literal["tokens", "nchw", "nhwc"]


def staged_blocks(stages: Iterable[nn.Module]) -> tuple[list[nn.Module], list[int]]:
    """Flatten timm stages that hold ``downsample`` + ``blocks`` (Swin, LeViT) into block units.

    The stage's downsample runs in front of its first block, so that every unit keeps the
    stage's spatial size at its output and the split points are exactly timm's.
    """
    blocks: list[nn.Module] = []
    block_stages: list[int] = []
    for s, stage in enumerate(stages):
        for b, block in enumerate(stage.blocks):
            down = getattr(stage, "downsample", None)
            if b == 0 and down is not None and not isinstance(down, nn.Identity):
                block = nn.Sequential(down, block)
            blocks.append(block)
            block_stages.append(s)
    return blocks, block_stages


class Anchor:
    """One anchor model split into stem, blocks and head.

    Subclasses (one per timm family) implement :meth:`split_blocks`, :meth:`head_modules`,
    :meth:`stem` and :meth:`head`; everything else is shared.

    Attributes:
        model: the timm model itself.
        blocks: the ordered block units; ``blocks[i]`` maps features ``i`` to features ``i+1``.
        block_stages: the stage index of each block.
        feature_shapes: per-sample feature shape before each block (index ``i``) and, at index
            ``len(blocks)``, after the last block.
    """

    layout: ClassVar[Layout] = "tokens"
    #: whether the timm constructor takes ``img_size`` (ResNets take any size and do not).
    takes_img_size: ClassVar[bool] = True
    #: the first stage stitched by default (see :func:`snnet.core.stitches.default_stages`).
    first_stitch_stage: ClassVar[int] = 0
    #: set by ``SNNet(official_forward=True)``: stitched networks end as the official code's do.
    official_forward: bool = False

    def __init__(self, model: nn.Module, name: str, input_size: Sequence[int]):
        self.model = model
        self.name = name
        self.input_size = tuple(int(v) for v in input_size)
        self.blocks, self.block_stages = self.split_blocks()
        self.feature_shapes = self._probe_feature_shapes()

    # -- family-specific -------------------------------------------------------------------
    def split_blocks(self) -> tuple[list[nn.Module], list[int]]:
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Modules that only the head runs (for counting a network's parameters)."""
        raise NotImplementedError

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_stages(self) -> int:
        return max(self.block_stages) + 1

    def stage_block_ids(self, stage: int) -> list[int]:
        """Global indices of the blocks of ``stage``."""
        return [i for i, s in enumerate(self.block_stages) if s == stage]

    def forward_until(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Images -> features after ``block`` (inclusive); ``block=-1`` stops after the stem."""
        x = self.stem(x)
        for blk in self.blocks[: block + 1]:
            x = blk(x)
        return x

    def forward_from(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Features before ``block`` -> logits, as the back part of a stitched network."""
        for blk in self.blocks[block:]:
            x = blk(x)
        return self.stitched_head(x)

    def stitched_head(self, x: torch.Tensor) -> torch.Tensor:
        """The head as a stitched network runs it; a family whose official forward differs
        overrides this (see :mod:`snnet.io.official`)."""
        return self.head(x)

    def channels(self, index: int) -> int:
        """Channel width of ``feature_shapes[index]``."""
        shape = self.feature_shapes[index]
        return shape[0] if self.layout == "nchw" else shape[-1]

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (class, distillation, register tokens); 0 for feature maps."""
        return int(getattr(self.model, "num_prefix_tokens", 0)) if self.layout == "tokens" else 0

    def grid(self, index: int) -> tuple[int, int] | None:
        """(H, W) of ``feature_shapes[index]``: the feature map, or the patch tokens' grid (None when
        the patch tokens form no known grid)."""
        if self.layout != "tokens":
            return self.spatial(index)  # type: ignore[return-value]
        n = self.feature_shapes[index][0] - self.num_prefix_tokens
        return self.token_grid(n)

    def token_grid(self, num_patches: int) -> tuple[int, int] | None:
        """The grid of ``num_patches`` patch tokens: a square when it is one (families with
        non-square grids override this)."""
        side = math.isqrt(num_patches)
        return (side, side) if side * side == num_patches else None

    def spatial(self, index: int) -> tuple[int, ...]:
        """Token count (tokens) or (H, W) of ``feature_shapes[index]``."""
        shape = self.feature_shapes[index]
        if self.layout == "tokens":
            return (shape[0],)
        return tuple(shape[1:]) if self.layout == "nchw" else tuple(shape[:2])

    def num_params(self, modules: Iterable[nn.Module]) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    def stem_params(self) -> int:
        """Everything the model owns outside its blocks and head (patch embedding, tokens...)."""
        total = sum(p.numel() for p in self.model.parameters())
        return total - self.num_params(self.blocks) - self.num_params(self.head_modules())

    def head_params(self) -> int:
        return self.num_params(self.head_modules())

    def _probe_feature_shapes(self) -> list[tuple[int, ...]]:
        # One sample in eval mode: BatchNorm cannot normalise a single 1x1 map in train mode.
        was_training = self.model.training
        self.model.eval()
        try:
            param = next(self.model.parameters())
            x = torch.zeros(1, *self.input_size, device=param.device, dtype=param.dtype)
            with torch.no_grad():
                x = self.stem(x)
                shapes = [tuple(x.shape[1:])]
                for blk in self.blocks:
                    x = blk(x)
                    shapes.append(tuple(x.shape[1:]))
        finally:
            self.model.train(was_training)
        return shapes
