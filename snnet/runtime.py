"""How modules run for a while: in eval mode (then back to what they were), under autocast."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block, in its previous mode (train or eval) after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def autocast_factory(enabled: bool, dtype: str | torch.dtype, device: torch.device) -> Callable[[], Any]:
    """A callable giving a fresh ``torch.autocast`` context on ``device`` (``dtype``: a torch
    dtype, or 'bfloat16' / 'float16'), or a no-op context when not ``enabled``."""
    if not enabled:
        return contextlib.nullcontext
    if isinstance(dtype, str):
        dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
