"""The pieces of a train.py checkpoint: reading and checking one, its weights, gathering per-rank
state, the scheduler's state as plain data, and timm's checkpoint saver writing through
:mod:`snnet.io.checkpoint` (atomic, ``weights_only``). The :class:`~snnet.train.trainer.Trainer`
itself says what its checkpoint holds (``state_dict``/``load_state_dict``; the format and the
resume rules are in :mod:`snnet.train.trainer`)."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..config import plain
from ..distributed import DistInfo
from ..errors import CheckpointError
from ..io.checkpoint import describe_mismatch, load_checkpoint_file

CHECKPOINT_VERSION = 1


def split_aux_bn(sd: Mapping[str, torch.Tensor]) -> tuple[OrderedDict, dict]:
    """A state dict without, and the part with only, the split-BN auxiliary BatchNorms."""
    aux = {k: v for k, v in sd.items() if ".aux_bn." in k}
    return OrderedDict((k, v) for k, v in sd.items() if ".aux_bn." not in k), aux


def gather(info: DistInfo, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (collective)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def read_training_checkpoint(path: str, config: Mapping[str, Any]) -> dict:
    """Checkpoint file ``path`` when it is a train.py checkpoint of the SN-Net ``config``
    describes; a :class:`CheckpointError` otherwise."""
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is not a train.py checkpoint: start without --resume")
    check_resume_compatible(ckpt, path, config)
    return ckpt


def load_weights(net: nn.Module, ema: Optional[Any], ckpt: Mapping[str, Any], source: str) -> None:
    """A training checkpoint's weights into ``net`` (exactly its keys, split-BN auxiliaries
    optional) and its EMA weights (or, without them, its weights) into ``ema``."""
    sd = dict(ckpt["state_dict"])
    sd.update(ckpt.get("aux_bn_state_dict", {}))
    shapes = describe_mismatch(sd, net, strict=False)
    if shapes:  # load_state_dict(strict=False) still raises on shapes, with a list of every one
        raise CheckpointError(
            f"checkpoint {source} does not match the model: {shapes}; resume with the options it was trained "
            f"with (--num-classes, --model-kwargs, --anchor-kwargs, --img-size) or use another --experiment"
        )
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if ".aux_bn." not in k]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source} does not match the model ({len(missing)} missing keys, e.g. "
            f"{(missing or unexpected)[0]}; {len(unexpected)} unexpected): check --model-kwargs/--anchor-kwargs"
        )
    if ema is not None:
        ema_sd = dict(ckpt.get("state_dict_ema") or ckpt["state_dict"])
        ema_sd.update(ckpt.get("aux_bn_state_dict", {}))
        ema.module.load_state_dict(ema_sd, strict=False)


def check_resume_args(ckpt: dict, path: str, args) -> None:
    """What :meth:`Trainer.load <snnet.train.trainer.Trainer.load>` will refuse, judged from the arguments alone (no model
    built): other anchors or stitching options, another ``--epochs``, another class count, image
    size or model kwargs."""
    from ..config import parse_kwargs

    keys = ("kernel_size", "stride", "nearest", "stages", "stitching", "stitch_layer", "lora_rank")
    config = {"anchors": list(args.anchors), **{k: plain(getattr(args, k)) for k in keys}}
    check_resume_compatible(ckpt, path, config)
    if not args.no_resume_opt:
        check_same_schedule(ckpt, path, args.epochs)
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    ours = {"num_classes": args.num_classes, "img_size": args.img_size, "model_kwargs": parse_kwargs(args.model_kwargs)}
    theirs = {**saved, "model_kwargs": parse_kwargs(saved.get("model_kwargs"))}
    for key, value in ours.items():
        if key in saved and value is not None and plain(value) != plain(theirs[key]):
            raise CheckpointError(
                f"checkpoint {path} was trained with {key}={theirs[key]} but this run has {key}={value}: "
                f"resume with the checkpoint's value or use another --experiment"
            )


def check_same_schedule(ckpt: dict, path: str, epochs: int) -> None:
    """Refuse to resume optimizer and schedule with another ``--epochs``: the checkpoint's
    scheduler state carries its own length, so the new value would change nothing but the
    number of epochs run (e.g. more epochs at the old schedule's floor LR)."""
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    theirs = saved.get("epochs")
    if isinstance(theirs, int) and theirs != epochs:
        done = int(ckpt.get("epoch", -1)) + (1 if ckpt.get("epoch_complete", True) else 0)
        raise CheckpointError(
            f"checkpoint {path} follows a schedule of --epochs {theirs} ({done} done); resuming it keeps that "
            f"schedule, so --epochs {epochs} would not take effect: rerun with --epochs {theirs}, or start a new "
            f"{epochs}-epoch schedule from its weights with --resume {path} --no-resume-opt --experiment NEW"
        )


def check_resume_compatible(ckpt: dict, path: str, config: Mapping[str, Any]) -> None:
    """Refuse to resume a checkpoint of other anchors or other stitching options than ``config``."""
    theirs = ckpt.get("snnet_config")
    if "official_args" in ckpt or "official_config" in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is an official SN-Net checkpoint, which cannot be resumed: start "
            f"from its weights with --initial-checkpoint {path}"
        )
    if not isinstance(theirs, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is not an SN-Net training checkpoint of train.py: start without --resume"
        )
    ours = plain(config)
    if list(theirs.get("anchors", [])) != list(ours["anchors"]):
        raise CheckpointError(
            f"checkpoint {path} was trained with anchors {list(theirs.get('anchors', []))} but --anchors are "
            f"{ours['anchors']}: resume with the same --anchors or use another --experiment"
        )
    for key, value in ours.items():
        if key in theirs and plain(theirs[key]) != value:
            raise CheckpointError(
                f"checkpoint {path} was trained with {key}={theirs[key]} but this run has {key}={value}: "
                f"use the checkpoint's stitching options or another --experiment"
            )


def cpu_copy(obj: Any) -> Any:
    """Tensors in ``obj`` (nested dicts, lists, tuples) moved to the CPU, for gathering and saving."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def plain_scheduler_state(scheduler) -> dict:
    """A timm scheduler's state as tensors and plain data."""
    return {k: plain(v) if not isinstance(v, torch.Tensor) else v for k, v in scheduler.state_dict().items()}


def checkpoint_saver_class():
    """timm's ``CheckpointSaver`` writing through :func:`save_checkpoint` (imported lazily: timm.utils is slow)."""
    from timm.utils import CheckpointSaver

    class SNNetCheckpointSaver(CheckpointSaver):
        """timm's top-k bookkeeping; files written by :func:`snnet.io.checkpoint.save_checkpoint`
        with plain data only (timm's ``_save`` pickles the argparse Namespace)."""

        def __init__(self, state_fn, **kwargs):
            super().__init__(model=None, optimizer=None, **kwargs)
            self.state_fn = state_fn

        def _replace(self, src, dst):
            # atomic on POSIX; timm unlinks dst first (for Windows), which would leave a moment
            # without last.pth.tar for a killed run to resume from
            os.replace(src, dst)

        def _save(self, save_path, epoch, metric=None):
            from ..io.checkpoint import save_checkpoint

            state = self.state_fn(metric)
            state["saver"] = plain(self.state_dict(epoch, metric))
            save_checkpoint(state, save_path)

    return SNNetCheckpointSaver
