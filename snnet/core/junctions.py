"""Junctions: the layout change between one anchor's features and another's blocks, written once.

Anchors keep their features in one of three layouts: ``tokens`` (ViT/DeiT, LeViT: ``(B, N, C)``,
the first ``P`` of them prefix tokens such as the class token, then the patch tokens of an
``H x W`` grid row by row), ``nchw`` (ResNet, MobileNetV3: ``(B, C, H, W)``) and ``nhwc`` (Swin:
``(B, H, W, C)``). A stitching layer maps channels; the :class:`Junction` inside it brings the
front anchor's features into the layer's *working* layout, channels last, shaped as the back
anchor's input:

* tokens ``(B, P + H*W, C)`` when the back anchor takes tokens, else a grid ``(B, H, W, C)``;
* patch grids resampled bilinearly when the two grids differ (to ``stride`` times the back grid
  when the layer itself downsamples by ``stride``);
* feature maps -> tokens (CNN -> ViT): the back anchor's prefix tokens are made by
  ``class_token``: ``zeros``, ``ones`` or ``mean`` (the mean of the patch tokens, the default);
  tokens -> tokens keeps the front's prefix tokens, as many as the back takes, and makes the
  missing ones so too;
* tokens -> feature maps (ViT -> CNN): ``prefix_tokens`` ``drop`` (the default) drops the prefix
  tokens, ``broadcast`` spreads the class token (the first prefix token) over ``H x W`` as ``C``
  extra channels (the layer then maps ``2 C`` channels).

The layer maps channels on the working features and :meth:`Junction.leave` puts the result in the
back anchor's layout. Forward, FLOPs, the sweep and export run the layer (junction included);
least-squares init fits the map on :meth:`Junction.fit_rows` of the working features, so LS init
works through every junction. Between anchors of one layout and grid (every SN-Net of the papers)
the junction is the identity on tokens and the plain permutes on feature maps, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..anchors import Anchor, Layout
from ..errors import ConfigError, IncompatibleAnchorsError

CLASS_TOKEN_RULES = ("zeros", "ones", "mean")
PREFIX_TOKEN_RULES = ("drop", "broadcast")
DEFAULT_CLASS_TOKEN = "mean"
DEFAULT_PREFIX_TOKENS = "drop"

Grid = tuple[int, int]


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature tensor between two blocks looks like (per sample).

    ``grid``: (H, W) of the feature map or of the patch tokens (None: tokens that form no known
    grid); ``prefix``: tokens in front of the patch tokens (tokens layout only).
    """

    layout: Layout
    channels: int
    grid: Optional[Grid] = None
    prefix: int = 0


def feature_spec(anchor: Anchor, index: int) -> FeatureSpec:
    """The spec of ``anchor.feature_shapes[index]`` (0: after the stem, i: after block i-1)."""
    return FeatureSpec(anchor.layout, anchor.channels(index), anchor.grid(index), anchor.num_prefix_tokens)


def check_rules(class_token: str, prefix_tokens: str) -> None:
    if class_token not in CLASS_TOKEN_RULES:
        raise ConfigError(f"unknown --class-token '{class_token}': use one of {', '.join(CLASS_TOKEN_RULES)}")
    if prefix_tokens not in PREFIX_TOKEN_RULES:
        raise ConfigError(f"unknown --prefix-tokens '{prefix_tokens}': use one of {', '.join(PREFIX_TOKEN_RULES)}")


class Junction(nn.Module):
    """Front features ``src`` -> the layer's working features -> back features ``dst``.

    A module without parameters (it adds no state-dict keys); ``in_channels`` is the width of
    the working features the layer maps, ``work`` their spec (channels ``in_channels``).
    ``where`` names the junction in error messages.
    """

    def __init__(
        self,
        src: FeatureSpec,
        dst: FeatureSpec,
        class_token: str = DEFAULT_CLASS_TOKEN,
        prefix_tokens: str = DEFAULT_PREFIX_TOKENS,
        stride: int = 1,
        where: str = "",
    ):
        super().__init__()
        check_rules(class_token, prefix_tokens)
        self.src, self.dst = src, dst
        self.class_token, self.prefix_tokens, self.stride = class_token, prefix_tokens, stride
        where = where or f"{src.layout} -> {dst.layout}"
        work_grid = None if dst.grid is None else (dst.grid[0] * stride, dst.grid[1] * stride)
        self.resample = src.grid is not None and work_grid is not None and src.grid != work_grid
        self.broadcast = dst.layout != "tokens" and src.prefix > 0 and prefix_tokens == "broadcast"
        self.same_tokens = dst.layout == "tokens" and src.layout == "tokens" and src.prefix == dst.prefix
        if stride > 1 and work_grid is None:
            raise IncompatibleAnchorsError(f"cannot stitch {where}: a strided layer needs a grid of patch tokens")
        if src.layout == "tokens" and dst.layout != "tokens" and src.grid is None:
            raise IncompatibleAnchorsError(
                f"cannot stitch {where}: the {src.layout} there form no known grid of patches, so they cannot be "
                f"laid out as {dst.layout} features; stitch at other blocks"
            )
        if (src.grid is None) != (dst.grid is None) and "tokens" in (src.layout, dst.layout):
            raise IncompatibleAnchorsError(
                f"cannot stitch {where}: the patch grids there cannot be matched ({src.grid} vs {dst.grid}); "
                f"stitch at other blocks"
            )
        channels = src.channels * (2 if self.broadcast else 1)
        prefix = dst.prefix if dst.layout == "tokens" else 0
        self.work = FeatureSpec("tokens" if dst.layout == "tokens" else "nhwc", channels, work_grid, prefix)

    @property
    def signature(self) -> tuple:
        """Equal for junctions that make the same working features from the same front features."""
        return (self.src, self.work, self.class_token, self.prefix_tokens, self.stride)

    @property
    def in_channels(self) -> int:
        return self.work.channels

    @classmethod
    def between_layouts(cls, in_layout: Layout, out_layout: Layout, in_dim: int, out_dim: int) -> "Junction":
        """The junction of two features of unknown grids (equal spatial sizes assumed): only the
        layout changes (the permutes of a channel map on feature maps)."""
        return cls(FeatureSpec(in_layout, in_dim), FeatureSpec(out_layout, out_dim))

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """Front features -> working features (channels last, the back's spatial layout)."""
        src = self.src
        if src.layout == "tokens" and self.same_tokens and not self.resample:
            return x  # token models of one grid: nothing changes
        if src.layout == "nchw":
            x = x.permute(0, 2, 3, 1)
        prefix = None
        if src.layout == "tokens":
            prefix, x = x[:, : src.prefix], x[:, src.prefix :]
            x = x.reshape(x.shape[0], *src.grid, x.shape[-1])
        if self.resample:
            size = self.work.grid
            x = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
            x = x.permute(0, 2, 3, 1)
        if self.work.layout == "tokens":
            return self._with_prefix(x.flatten(1, 2), prefix)
        if self.broadcast:
            cls_token = prefix[:, :1, None, :].expand(-1, x.shape[1], x.shape[2], -1)
            x = torch.cat([x, cls_token], dim=-1)
        return x

    def _with_prefix(self, patches: torch.Tensor, prefix: Optional[torch.Tensor]) -> torch.Tensor:
        """Patch tokens -> the back's tokens: its prefix tokens (the front's kept, the rest made
        by the class-token rule) in front."""
        want = self.work.prefix
        kept = [] if prefix is None or want == 0 else [prefix[:, :want]]
        missing = want - (kept[0].shape[1] if kept else 0)
        if missing > 0:
            b, _, c = patches.shape
            if self.class_token == "mean":
                made = patches.mean(dim=1, keepdim=True).expand(b, missing, c)
            else:
                made = (patches.new_zeros if self.class_token == "zeros" else patches.new_ones)(b, missing, c)
            kept.append(made)
        return torch.cat([*kept, patches], dim=1) if kept else patches

    def leave(self, y: torch.Tensor) -> torch.Tensor:
        """The layer's output (working layout, the back's channels) -> the back's layout."""
        return y.permute(0, 3, 1, 2) if self.dst.layout == "nchw" else y

    def require_grid(self, kind: str) -> None:
        """One line when a layer that convolves (``kind``) meets tokens that form no known grid."""
        if self.work.layout == "tokens" and self.work.grid is None:
            raise IncompatibleAnchorsError(
                f"--stitch-layer {kind} convolves a grid of patches, but the tokens at this junction form none "
                f"({self.extra_repr()}): use linear, lora, mlp or transformer-block"
            )

    def split(self, x: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """Working features -> (prefix tokens or None, the patch grid as NCHW) for layers that
        convolve (the prefix tokens take the layer's channel map only; see :meth:`require_grid`)."""
        if self.work.layout != "tokens":
            return None, x.permute(0, 3, 1, 2)
        p = self.work.prefix
        grid = x[:, p:].reshape(x.shape[0], *self.work.grid, x.shape[-1])
        return (x[:, :p] if p else None), grid.permute(0, 3, 1, 2)

    def join(self, prefix: Optional[torch.Tensor], grid: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split` (after a layer changed channels or downsampled the grid)."""
        x = grid.permute(0, 2, 3, 1)
        if self.work.layout != "tokens":
            return x
        x = x.flatten(1, 2)
        return x if prefix is None else torch.cat([prefix, x], dim=1)

    def fit_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Working features -> the rows the layer's channel map sees at its output positions
        (every ``stride``-th grid position), ``(samples * positions, channels)``."""
        if self.stride > 1:
            prefix, grid = self.split(x)
            x = self.join(prefix, grid[:, :, :: self.stride, :: self.stride])
        return x.reshape(-1, x.shape[-1])

    def extra_repr(self) -> str:
        parts = [f"{self.src.layout} -> {self.dst.layout}"]
        if self.resample:
            parts.append(f"resample {self.src.grid} -> {self.work.grid}")
        if self.src.layout != "tokens" and self.dst.layout == "tokens" and self.dst.prefix:
            parts.append(f"class_token={self.class_token}")
        if self.src.prefix and self.dst.layout != "tokens":
            parts.append(f"prefix_tokens={self.prefix_tokens}")
        return ", ".join(parts)
