"""The training recipe: model extras, loss and distillation, teacher, parameter groups,
optimizer and schedule, all stock timm (``create_optimizer_v2``, ``create_scheduler_v2``,
``Mixup``, label smoothing, ``convert_splitbn_model``) plus SN-Net's learning-rate scale for the
stitching layers and DeiT-style distillation."""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..cli import build_snnet
from ..config import parse_kwargs
from ..core.model import SNNet
from ..errors import ConfigError


def build_model(args: Namespace, num_classes: int) -> SNNet:
    """The SN-Net of train.py's arguments (``--drop-path``/``--drop`` added to the timm kwargs;
    ``--train-only stitching`` freezes the anchors)."""
    model_args = Namespace(**vars(args))
    kwargs = parse_kwargs(args.model_kwargs)
    if args.drop_path is not None:
        kwargs.setdefault("drop_path_rate", args.drop_path)
    if args.drop is not None:
        kwargs.setdefault("drop_rate", args.drop)
    model_args.model_kwargs = kwargs
    net = build_snnet(model_args, num_classes=num_classes)
    if getattr(args, "train_only", "all") == "stitching":
        net.freeze_anchors()
    return net


def apply_split_bn(net: SNNet) -> None:
    """timm's ``convert_splitbn_model``: the erased half of each batch gets its own BatchNorm stats."""
    from timm.layers import convert_splitbn_model

    bn1d = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm1d)]
    if bn1d:
        raise ConfigError(
            f"--split-bn converts BatchNorm2d only, but these anchors use BatchNorm1d ({bn1d[0]}, ...): drop --split-bn"
        )
    convert_splitbn_model(net, 2)  # replaces BatchNorm layers in place below the top module


def param_groups(net: SNNet, weight_decay: float, stitch_lr_scale: float) -> list[dict]:
    """Anchors' groups (timm's decay/no-decay split, ``no_weight_decay()`` respected) and the
    stitching layers' groups with ``lr_scale`` (timm's schedulers multiply each group's lr by it)."""
    from timm.optim import param_groups_weight_decay

    groups = []
    for anchor in net.anchors:
        nwd = anchor.no_weight_decay() if hasattr(anchor, "no_weight_decay") else ()
        groups += param_groups_weight_decay(anchor, weight_decay, no_weight_decay_list=nwd)
    for g in param_groups_weight_decay(net.stitch_layers, weight_decay):
        g["lr_scale"] = stitch_lr_scale  # the scheduler sets lr = schedule value * lr_scale
        groups.append(g)
    groups = [g for g in groups if len(g["params"])]
    covered = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert covered == total, f"param groups cover {covered} of {total} parameters"
    return groups


def build_teacher(args: Namespace, num_classes: int, device: torch.device) -> Optional[nn.Module]:
    """The frozen timm teacher of ``--distillation-type`` (None without distillation)."""
    if args.distillation_type == "none" or not args.teacher:
        return None
    import timm

    from ..io.checkpoint import load_model_weights

    kwargs = parse_kwargs(args.teacher_kwargs)
    pretrained = args.teacher_checkpoint is None
    if not timm.is_model(args.teacher.split(".")[0]):
        raise ConfigError(f"unknown teacher model '{args.teacher}': timm has no model of that name")
    if pretrained:
        from ..io.weights import create_pretrained_model

        teacher = create_pretrained_model(args.teacher, "--teacher-checkpoint FILE", num_classes=num_classes, **kwargs)
    else:
        teacher = timm.create_model(args.teacher, num_classes=num_classes, **kwargs)
    if args.teacher_checkpoint:
        load_model_weights(teacher, args.teacher_checkpoint)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class TrainLoss(nn.Module):
    """Base loss (timm's), plus DeiT-style distillation on the same output:
    ``(1 - alpha) * base + alpha * distill``."""

    def __init__(self, base: nn.Module, teacher: Optional[nn.Module], kind: str, alpha: float, tau: float):
        super().__init__()
        self.base = base
        self.teacher = teacher
        self.kind = kind
        self.alpha = alpha
        self.tau = tau

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        base = self.base(outputs, targets)
        if self.kind == "none" or self.teacher is None:
            return base
        with torch.no_grad():
            t = self.teacher(inputs)
        if self.kind == "soft":
            T = self.tau
            distill = (
                F.kl_div(
                    F.log_softmax(outputs / T, dim=1), F.log_softmax(t / T, dim=1), reduction="sum", log_target=True
                )
                * (T * T)
                / outputs.numel()
            )
        else:
            distill = F.cross_entropy(outputs, t.argmax(dim=1))
        return base * (1 - self.alpha) + distill * self.alpha


def default_val_ids(net: SNNet, extra: int = 3) -> list[int]:
    """The anchors plus ``extra`` evenly spaced stitches."""
    anchors = [s.cfg_id for s in net.stitches if s.is_anchor]
    rest = [s.cfg_id for s in net.stitches if not s.is_anchor]
    if not rest:
        return anchors
    k = min(extra, len(rest))
    picks = [rest[round(i * (len(rest) - 1) / max(1, k - 1))] for i in range(k)] if k > 1 else [rest[len(rest) // 2]]
    return sorted(set(anchors + picks))


def build_optimizer(net: SNNet, args: Namespace) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` over :func:`param_groups`."""
    from timm.optim import create_optimizer_v2

    opt_kwargs: dict[str, Any] = {}
    if args.opt_eps is not None:
        opt_kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs["betas"] = tuple(args.opt_betas)
    return create_optimizer_v2(
        param_groups(net, args.weight_decay, args.stitch_lr_scale),
        opt=args.opt,
        lr=args.lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        **opt_kwargs,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, args: Namespace, updates_per_epoch: int):
    """timm's ``create_scheduler_v2`` from the schedule arguments."""
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    scheduler, _ = create_scheduler_v2(
        optimizer,
        **scheduler_kwargs(args, decreasing_metric=args.eval_metric == "loss"),
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_loss(args: Namespace, teacher: Optional[nn.Module], num_classes: int) -> tuple[Optional[Any], TrainLoss]:
    """timm's Mixup/CutMix (None when off) and the training loss that goes with it."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    mixup_fn = None
    if mixup_active and not args.no_aug:
        mixup_fn = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob,
            switch_prob=args.mixup_switch_prob,
            mode=args.mixup_mode,
            label_smoothing=args.smoothing,
            num_classes=num_classes,
        )
        base = SoftTargetCrossEntropy()
    elif args.smoothing:
        base = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return mixup_fn, TrainLoss(base, teacher, args.distillation_type, args.distillation_alpha, args.distillation_tau)
