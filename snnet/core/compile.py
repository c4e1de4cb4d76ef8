"""``--torchcompile``: torch.compile per block, so that switching networks never recompiles.

An SN-Net holds dozens of networks that share their blocks. Compiling each network would mean
one compilation per network and a recompilation whenever the sampled network changes; compiling
each block (and stitching layer) once serves every network that runs it, plain anchors included
(a timm model calls its blocks as modules, so it picks up the compiled ones).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from torch import nn

from .model import SNNet

# Every block of every anchor shares one code object (e.g. timm's ``Block.forward``): dynamo keeps
# one cache entry per anchor width, train/eval mode and batch shape under that code object, more
# than its default limit of 8, past which it would silently run the block eagerly.
_RECOMPILE_LIMIT = 256


def compile_blocks(net: SNNet, backend: str = "inductor", mode: Optional[str] = None) -> list[nn.Module]:
    """Compile every block of every anchor and every stitching layer in place; returns them.

    ``mode`` is torch.compile's (``default``, ``reduce-overhead`` for CUDA graphs,
    ``max-autotune``...). Shapes are static (``dynamic=False``): each anchor's blocks always see the
    same feature shape, and dynamic shapes would give slower kernels for all of them.
    """
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; older releases read the second
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), _RECOMPILE_LIMIT))
    modules = [blk for adapter in net.anchor_adapters for blk in adapter.blocks] + list(net.stitch_layers)
    for module in modules:
        module.compile(backend=backend, mode=mode, dynamic=False)
    return modules


@contextmanager
def compiled_blocks(net: SNNet, backend: str = "inductor", mode: Optional[str] = None) -> Iterator[None]:
    """:func:`compile_blocks` inside the ``with`` block, eager modules again after it (before an
    export, which copies modules: a copy of a compiled module would call the original's forward)."""
    modules = compile_blocks(net, backend, mode)
    try:
        yield
    finally:
        for module in modules:
            module._compiled_call_impl = None  # what nn.Module.compile set
