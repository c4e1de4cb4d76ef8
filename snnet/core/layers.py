"""Stitching layers: a learned map from one anchor's features to another's, behind a junction.

The kinds are a registry (:func:`register_stitch_layer`, :func:`create_stitching_layer`,
``--stitch-layer``); every kind honours the contract LS init relies on: after ``set_weights(w, b)``
the layer computes ``x w^T + b`` on the junction's working features (the least-squares map), its
extra capacity adding nothing until trained:

* ``linear``: the paper's ``nn.Linear`` (SN-Net), every parameter trained;
* ``lora``: SN-Netv2's: the least-squares solution is a frozen base ``W``, a trainable
  low-rank update ``B @ A`` (``B`` zero-initialised, scaled by ``1 / rank`` as the official
  ``lora_alpha = 1``) is added; the bias stays trainable as in the official code. In eval mode
  the layer runs one merged linear map ``W + B A / rank`` (cached, recomputed whenever a
  parameter changed), which is also what export ships and what FLOPs and parameter counts
  describe: the deployed network;
* ``conv3x3``: a 3x3 convolution, the map in its centre tap;
* ``mlp``, ``basic-block``, ``bottleneck``, ``transformer-block``: the map plus a residual
  branch (a per-token MLP, a ResNet basic or bottleneck block, a ViT block) whose last layer
  starts at zero.

``conv3x3``, ``basic-block`` and ``bottleneck`` can downsample (``--stitch-stride``). The
junction (:mod:`snnet.core.junctions`) changes the layout around the map.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..anchors import Layout
from ..errors import ConfigError
from .junctions import Junction

_KINDS: dict[str, Callable[..., "BaseStitchingLayer"]] = {}


_STRIDED: set[str] = set()


def register_stitch_layer(kind: str, strided: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: ``fn(junction, out_dim, **options)`` builds a stitching layer of ``kind``
    (a :class:`BaseStitchingLayer`; ``options``: ``lora_rank``, ...). ``strided``: the kind can
    downsample by the junction's ``stride`` (``--stitch-stride``)."""

    def register(fn: Callable) -> Callable:
        _KINDS[kind] = fn
        if strided:
            _STRIDED.add(kind)
        return fn

    return register


def check_kind(kind: str, stride: int = 1) -> None:
    """One line for an unknown kind, or a stride the kind cannot take."""
    if kind not in _KINDS:
        raise ConfigError(f"unknown --stitch-layer '{kind}': use one of {', '.join(_KINDS)}")
    if stride < 1:
        raise ConfigError(f"--stitch-stride must be >= 1, got {stride}")
    if stride > 1 and kind not in _STRIDED:
        raise ConfigError(
            f"--stitch-stride {stride} downsamples inside the layer, which --stitch-layer {kind} cannot: use one of "
            f"{', '.join(k for k in _KINDS if k in _STRIDED)}, or --stitch-stride 1 (the junction resamples)"
        )


def stitch_layer_kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def to_rows(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Features -> (samples * positions, channels): the rows a stitching layer maps."""
    if layout == "nchw":
        x = x.permute(0, 2, 3, 1)
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def _set_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    linear.weight.copy_(weight)
    linear.bias.copy_(bias)


class BaseStitchingLayer(nn.Module):
    """A stitching layer: a junction (the layout change, no parameters) around a learned map.

    Every kind honours the contract LS init relies on: after ``set_weights(w, b)`` the layer
    computes ``rows w^T + b`` on the junction's working features (:meth:`Junction.fit_rows`),
    whatever extra capacity it has adding nothing. ``deployed()`` is the module export ships,
    ``deployed_params`` its parameter count.
    """

    def __init__(self, junction: Junction):
        super().__init__()
        self.junction = junction

    @property
    def in_layout(self) -> Layout:
        return self.junction.src.layout

    @property
    def out_layout(self) -> Layout:
        return self.junction.dst.layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.junction.leave(self.map(self.junction.enter(x)))

    def map(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on the junction's working features (channels last)."""
        raise NotImplementedError

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Become the least-squares map ``x weight^T + bias`` (extra capacity adds nothing)."""
        raise NotImplementedError

    @property
    def deployed_params(self) -> int:
        """Parameters of the layer as a deployed network holds it."""
        return sum(p.numel() for p in self.parameters())

    def deployed(self) -> nn.Module:
        """The layer as export ships it (a copy: export changes its modes)."""
        return copy.deepcopy(self)

    def extra_repr(self) -> str:
        return f"{self.in_layout} -> {self.out_layout}"


class StitchingLayer(BaseStitchingLayer):
    """``linear``: a linear map over channels, applied at every token or pixel, behind a junction.

    On tokens it is the paper's ``nn.Linear``; on feature maps it equals a 1x1 convolution. The
    :class:`~snnet.core.junctions.Junction` (``junction``) changes the layout around the map: for
    anchors of one layout it only permutes feature maps (NCHW -> channels last and back).
    ``StitchingLayer(in_dim, out_dim, in_layout, out_layout)`` makes the junction of two layouts.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        in_layout: Layout = "tokens",
        out_layout: Layout = "tokens",
        junction: Optional[Junction] = None,
    ):
        super().__init__(junction or Junction.between_layouts(in_layout, out_layout, in_dim, out_dim))
        self.transform = nn.Linear(in_dim, out_dim)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)

    @torch.no_grad()
    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        _set_linear(self.transform, weight, bias)

    def effective_weight(self) -> torch.Tensor:
        """The weight of the one linear map the layer computes."""
        return self.transform.weight

    @property
    def deployed_params(self) -> int:
        """One linear map (a LoRA layer merged)."""
        return self.transform.weight.numel() + self.transform.bias.numel()

    @torch.no_grad()
    def deployed(self) -> nn.Module:
        """A plain linear stitching layer with the same outputs."""
        w = self.effective_weight()
        out = StitchingLayer(w.shape[1], w.shape[0], junction=self.junction).to(w.device, w.dtype)
        out.set_weights(w, self.transform.bias)
        return out.train(self.training)

    as_linear = deployed


class LoRAStitchingLayer(StitchingLayer):
    """SN-Netv2's stitching layer: frozen base ``W`` plus a trainable ``B @ A / rank``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        in_layout: Layout = "tokens",
        out_layout: Layout = "tokens",
        junction: Optional[Junction] = None,
    ):
        super().__init__(in_dim, out_dim, in_layout, out_layout, junction)
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


class ConvStitchingLayer(BaseStitchingLayer):
    """``conv3x3``: one 3x3 convolution (stride: the junction's) on the patch grid or feature map.

    LS init puts the map in the centre tap and zeroes the others; prefix tokens (a ViT's class
    token) take the centre tap's map alone.
    """

    def __init__(self, junction: Junction, out_dim: int):
        junction.require_grid("conv3x3")
        super().__init__(junction)
        self.conv = nn.Conv2d(junction.in_channels, out_dim, 3, stride=junction.stride, padding=1)
        start = nn.Linear(junction.in_channels, out_dim)  # before LS init: a random linear map
        self.set_weights(start.weight, start.bias)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        prefix, grid = self.junction.split(x)
        if prefix is not None:
            prefix = F.linear(prefix, self.conv.weight[:, :, 1, 1], self.conv.bias)
        return self.junction.join(prefix, self.conv(grid))

    @torch.no_grad()
    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.conv.weight.zero_()
        self.conv.weight[:, :, 1, 1] = weight
        self.conv.bias.copy_(bias)


class ResidualStitchingLayer(BaseStitchingLayer):
    """The LS map (``transform``, an ``nn.Linear`` as the ``linear`` kind's) plus extra capacity
    whose last layer starts at zero, so that the layer starts as the map. Subclasses add the
    capacity in :meth:`map` and name its last parameters in :meth:`zero_last`."""

    def __init__(self, junction: Junction, out_dim: int):
        super().__init__(junction)
        self.transform = nn.Linear(junction.in_channels, out_dim)

    def zero_last(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        _set_linear(self.transform, weight, bias)
        self.zero_last()


class MLPStitchingLayer(ResidualStitchingLayer):
    """``mlp``: the LS map plus a per-token MLP ``fc2(gelu(fc1(x)))`` (hidden width: the output's),
    ``fc2`` zero-initialised."""

    def __init__(self, junction: Junction, out_dim: int):
        super().__init__(junction, out_dim)
        self.fc1 = nn.Linear(junction.in_channels, out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.zero_last()

    def map(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x) + self.fc2(self.act(self.fc1(x)))

    @torch.no_grad()
    def zero_last(self) -> None:
        self.fc2.weight.zero_()
        self.fc2.bias.zero_()


class ConvResidualStitchingLayer(ResidualStitchingLayer):
    """The LS map as a (strided) 1x1 shortcut plus a ResNet block's convolutions on the grid,
    the last BatchNorm zero-initialised (timm's ``zero_init_last``); no activation after the sum,
    so that the layer starts as the map. Prefix tokens take the shortcut alone."""

    def map(self, x: torch.Tensor) -> torch.Tensor:
        s = self.junction.stride
        prefix, grid = self.junction.split(x)
        out = F.conv2d(grid[:, :, ::s, ::s], self.transform.weight[:, :, None, None], self.transform.bias)
        out = out + self.branch(grid)
        return self.junction.join(None if prefix is None else self.transform(prefix), out)

    @torch.no_grad()
    def zero_last(self) -> None:
        last = self.branch[-1]
        last.weight.zero_()
        last.bias.zero_()


class BasicBlockStitchingLayer(ConvResidualStitchingLayer):
    """``basic-block``: conv3x3 (stride) - BN - ReLU - conv3x3 - BN beside the shortcut."""

    def __init__(self, junction: Junction, out_dim: int):
        junction.require_grid("basic-block")
        super().__init__(junction, out_dim)
        c, s = junction.in_channels, junction.stride
        self.branch = nn.Sequential(
            nn.Conv2d(c, out_dim, 3, stride=s, padding=1, bias=False),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(),
            nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_dim),
        )
        self.zero_last()


class BottleneckStitchingLayer(ConvResidualStitchingLayer):
    """``bottleneck``: conv1x1 - BN - ReLU - conv3x3 (stride) - BN - ReLU - conv1x1 - BN beside
    the shortcut, the middle width a quarter of the output's."""

    def __init__(self, junction: Junction, out_dim: int):
        junction.require_grid("bottleneck")
        super().__init__(junction, out_dim)
        c, s, mid = junction.in_channels, junction.stride, max(out_dim // 4, 1)
        self.branch = nn.Sequential(
            nn.Conv2d(c, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride=s, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, out_dim, 1, bias=False),
            nn.BatchNorm2d(out_dim),
        )
        self.zero_last()


class TransformerStitchingLayer(ResidualStitchingLayer):
    """``transformer-block``: the LS map, then a pre-norm ViT block (timm's ``Block``) on the
    mapped tokens (a grid as ``H*W`` tokens), its two residual branches' output projections
    zero-initialised, so that the block starts as the identity."""

    def __init__(self, junction: Junction, out_dim: int):
        from timm.models.vision_transformer import Block

        super().__init__(junction, out_dim)
        heads = next(h for h in range(max(out_dim // 64, 1), 0, -1) if out_dim % h == 0)  # head width >= 64
        self.block = Block(out_dim, heads, mlp_ratio=4.0, qkv_bias=True)
        self.zero_last()

    def map(self, x: torch.Tensor) -> torch.Tensor:
        y = self.transform(x)
        if y.dim() == 4:  # a grid: attention over its H*W positions
            return self.block(y.flatten(1, 2)).reshape(y.shape)
        return self.block(y)

    @torch.no_grad()
    def zero_last(self) -> None:
        for last in (self.block.attn.proj, self.block.mlp.fc2):
            last.weight.zero_()
            last.bias.zero_()


@register_stitch_layer("linear")
def _linear(junction: Junction, out_dim: int, **_: Any) -> StitchingLayer:
    return StitchingLayer(junction.in_channels, out_dim, junction=junction)


@register_stitch_layer("lora")
def _lora(junction: Junction, out_dim: int, lora_rank: int = 64, **_: Any) -> StitchingLayer:
    return LoRAStitchingLayer(junction.in_channels, out_dim, lora_rank, junction=junction)


def _plain(cls: type) -> Callable[..., BaseStitchingLayer]:
    """The builder of a kind that takes no options."""
    return lambda junction, out_dim, **_: cls(junction, out_dim)


register_stitch_layer("conv3x3", strided=True)(_plain(ConvStitchingLayer))
register_stitch_layer("mlp")(_plain(MLPStitchingLayer))
register_stitch_layer("basic-block", strided=True)(_plain(BasicBlockStitchingLayer))
register_stitch_layer("bottleneck", strided=True)(_plain(BottleneckStitchingLayer))
register_stitch_layer("transformer-block")(_plain(TransformerStitchingLayer))


def create_stitching_layer(
    kind: str,
    in_dim: int,
    out_dim: int,
    in_layout: Layout = "tokens",
    out_layout: Layout = "tokens",
    lora_rank: int = 64,
    junction: Optional[Junction] = None,
    **options: Any,
) -> BaseStitchingLayer:
    """A stitching layer of ``kind`` (see :func:`stitch_layer_kinds`) from ``in_dim`` to
    ``out_dim`` channels, behind ``junction`` (default: the junction of the two layouts)."""
    junction = junction or Junction.between_layouts(in_layout, out_layout, in_dim, out_dim)
    check_kind(kind, junction.stride)
    return _KINDS[kind](junction, out_dim, lora_rank=lora_rank, **options)


# every kind registered above, in the order --help lists them
STITCH_LAYER_KINDS = stitch_layer_kinds()
