"""FLOPs per network, counted as the paper's tables count them, and fast.

Convention: fvcore's (one multiply-add = one FLOP; convolutions, linears, matmuls and norms
counted), at batch 1 and the anchors' input size. timm >= 1.0 runs attention through fused
``scaled_dot_product_attention``, which fvcore does not know and would skip silently (DeiT-Ti
would read 1.080 G instead of the paper's 1.258 G), so we add a handle for it.

A network is a route: a stem, some blocks, maybe a stitching layer, more blocks (and maybe
another layer and more blocks) and a head, each run on a fixed input shape, so its FLOPs are the
sum of its parts' FLOPs. :func:`flops_table` counts
every part of every anchor once and adds them up per network, instead of tracing each of the
(often 71+) networks whole; ``tests/test_flops.py`` checks the sums against whole-network
counts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from math import prod
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from ..anchors import Anchor
from ..runtime import eval_mode
from .model import SNNet
from .routes import Route

_SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)


def _sdpa_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """``softmax(q k^T) v``: two batched matmuls, (..., L, E) x (..., S, E) and (..., L, S) x (..., S, Ev)."""
    q, k, v = (inputs[i].type().sizes() for i in range(3))
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """fvcore FLOPs of ``module(*inputs)``, fused attention included, in eval mode."""
    with eval_mode(module):
        analysis = FlopCountAnalysis(module, inputs)
        for op in _SDPA_OPS:
            analysis.set_op_handle(op, _sdpa_flop)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow
            return int(analysis.total())


class _Call(nn.Module):
    """A module around an adapter function (stem, head), so fvcore can trace it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@dataclass(frozen=True)
class AnchorFlops:
    stem: int
    blocks: tuple[int, ...]
    head: int
    stitched_head: int  # the head as a stitched network ends (Anchor.stitched_head)

    @property
    def total(self) -> int:
        return self.stem + sum(self.blocks) + self.head


def _probe(anchor: Anchor, index: int) -> torch.Tensor:
    p = next(anchor.model.parameters())
    return torch.zeros(1, *anchor.feature_shapes[index], device=p.device, dtype=p.dtype)


def anchor_flops(anchor: Anchor) -> AnchorFlops:
    """FLOPs of an anchor's stem, of each block on its own input shape, and of its head."""
    p = next(anchor.model.parameters())
    images = torch.zeros(1, *anchor.input_size, device=p.device, dtype=p.dtype)
    stem = count_flops(_Call(anchor.stem, anchor.model), images)
    blocks = tuple(count_flops(blk, _probe(anchor, i)) for i, blk in enumerate(anchor.blocks))
    head = count_flops(_Call(anchor.head, anchor.model), _probe(anchor, anchor.num_blocks))
    stitched_head = count_flops(_Call(anchor.stitched_head, anchor.model), _probe(anchor, anchor.num_blocks))
    return AnchorFlops(stem, blocks, head, stitched_head)


def stitches_flops(net: SNNet) -> list[int]:
    """FLOPs of every network of ``net``, by composition of per-part counts along its route."""
    parts = [anchor_flops(a) for a in net.anchor_adapters]
    layers = []
    for spec, layer in zip(net.layer_specs, net.stitch_layers):
        j = spec.positions[0][0]  # every position of a layer sees the same input shape
        layers.append(count_flops(layer, _probe(net.anchor_adapters[spec.front], j + 1)))
    return [route_flops(s.route, parts, layers) for s in net.stitches]


def route_flops(route: Route, parts: Sequence[AnchorFlops], layers: Sequence[int] | Mapping[int, int]) -> int:
    """FLOPs of ``route`` from its parts: the anchors' stem / block / head counts (``parts``,
    by anchor) and the stitching layers' (``layers``, by layer index)."""
    return (
        parts[route.first.anchor].stem
        + sum(sum(parts[seg.anchor].blocks[seg.start : seg.stop]) for seg in route.segments)
        + sum(layers[i] for i in route.layers)
        + (parts[route.last.anchor].head if route.is_anchor else parts[route.last.anchor].stitched_head)
    )


def network_flops(net: SNNet, cfg_id: int) -> int:
    """FLOPs of one network traced whole (the slow reference for :func:`stitches_flops`)."""
    p = next(net.parameters())
    with net.selecting(cfg_id):
        return count_flops(net, torch.zeros(1, *net.input_size, device=p.device, dtype=p.dtype))


def flops_table(net: SNNet, cfg_ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Rows ``cfg_id, name, flops, params, is_anchor`` for the given (default: all) networks;
    two-way SN-Nets add ``official_cfg_id`` after ``cfg_id`` (SN-Netv2's numbering, which skips
    one id: :func:`~snnet.core.stitches.official_two_way_id`)."""
    flops = stitches_flops(net)
    ids = range(net.num_stitches) if cfg_ids is None else cfg_ids
    rows = []
    for i in ids:
        stitch = net.stitches[i]
        official = {} if stitch.official_id is None else {"official_cfg_id": stitch.official_id}
        rows.append(
            {
                "cfg_id": i,
                **official,
                "name": stitch.name,
                "flops": flops[i],
                "params": net.num_params(i),
                "is_anchor": stitch.is_anchor,
            }
        )
    return rows
