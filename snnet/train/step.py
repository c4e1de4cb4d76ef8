"""What one optimizer step runs with, shared by the :class:`~snnet.train.trainer.Trainer` and the
lab's cells (:mod:`snnet.lab.cells`), so that a lab cell steps exactly as train.py would: the
precision (autocast, GradScaler or NVIDIA apex) and :func:`backward_and_step`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..distributed import GradAllReduce
from ..runtime import autocast_factory


@dataclass
class Precision:
    """How a step's forward and backward run: ``autocast()`` gives the forward's context,
    ``scaler`` scales float16 losses on CUDA, ``apex_amp`` is NVIDIA apex (legacy ``--amp-impl apex``)."""

    autocast: Callable[[], Any]
    scaler: Optional[torch.amp.GradScaler] = None
    apex_amp: Any = None


def build_precision(
    net: nn.Module, optimizer: torch.optim.Optimizer, args: Any, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, Precision]:
    """The step's precision from ``--amp``, ``--amp-dtype`` and ``--amp-impl``; apex patches the net
    and optimizer in place and returns them, so the (possibly patched) pair comes back."""
    apex_amp = None
    if args.amp and args.amp_impl == "apex":  # legacy: NVIDIA apex AMP O1 (patches net in place)
        from apex import amp as apex_amp  # checked in resolve_args

        net, optimizer = apex_amp.initialize(net, optimizer, opt_level="O1")
    amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    native_amp = args.amp and args.amp_impl == "native"
    # GradScaler for float16 on CUDA only (bfloat16 and CPU autocast need none)
    cuda_fp16 = native_amp and amp_dtype == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if cuda_fp16 else None
    return net, optimizer, Precision(autocast_factory(native_amp, amp_dtype, device), scaler, apex_amp)


def backward_and_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    args: Any,
    scaler: Optional[torch.amp.GradScaler] = None,
    apex_amp=None,
    grad_sync: Optional[GradAllReduce] = None,
) -> None:
    """One optimizer step from ``loss``: backward (scaled by ``scaler`` or apex when given), the
    gradient all-reduce, ``--clip-grad``, the step, grads to None. The trainer's and the lab's
    (:mod:`snnet.lab`) cells' steps, so that a lab cell trains exactly as train.py would."""
    from timm.utils import dispatch_clip_grad

    if apex_amp is not None:
        with apex_amp.scale_loss(loss, opt) as scaled:
            scaled.backward()
    elif scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    if grad_sync is not None:
        grad_sync()
    if args.clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        dispatch_clip_grad(params, value=args.clip_grad, mode=args.clip_mode)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)  # unused parameters keep grad None: the optimizer skips them
