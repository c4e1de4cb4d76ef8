"""Safe, atomic checkpoint I/O.

Checkpoints hold only tensors and plain Python data, so that they load with
``torch.load(weights_only=True)``: unpickling arbitrary objects can run arbitrary code, and a
checkpoint is often a file from someone else. Saves are atomic (temporary file in the same
folder, flushed, fsynced, renamed), so a process killed mid-save leaves the previous file intact.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import CheckpointError

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_plain(value: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the key path of anything ``weights_only`` loading would refuse."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(value).__name__}: checkpoints hold only tensors and plain Python data")


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically; refuse anything but tensors and plain data."""
    check_plain(state)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``, or safetensors), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist: check the path (or drop --resume to start fresh)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as e:
            raise CheckpointError(f"'{path}' is not a valid safetensors file: {_first_line(e)}") from None
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # A torch file with pickled objects names the refused global; random bytes fail earlier.
        if "unsupported global" in str(e).lower() or "can still be loaded" in str(e).lower():
            raise CheckpointError(
                f"'{path}' holds pickled Python objects, which snnet refuses to load because unpickling "
                f"can run arbitrary code; re-save it with only tensors and plain data"
            ) from None
        raise CheckpointError(f"'{path}' is not a valid checkpoint (truncated or not written by torch.save): {_first_line(e)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"'{path}' is not a valid checkpoint (truncated or not written by torch.save): {_first_line(e)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"'{path}' holds a {type(ckpt).__name__}, not a checkpoint dict or state dict")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def extract_state_dict(ckpt: Mapping[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights of a timm / torchvision / snnet checkpoint dict (or a bare state dict)."""
    if use_ema:
        for key in ("state_dict_ema", "model_ema"):
            if key in ckpt:
                state = ckpt[key]
                break
        else:
            raise CheckpointError("the checkpoint has no EMA weights (state_dict_ema): drop --use-ema or train with --model-ema")
    else:
        state = next((ckpt[k] for k in ("state_dict", "model") if isinstance(ckpt.get(k), Mapping)), ckpt)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def describe_mismatch(state: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """'' if ``state`` fits ``model`` exactly, else a one-line summary of what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({shapes[0]})")
    return ", ".join(parts)


def load_model_weights(model: nn.Module, path: str | Path, use_ema: bool = False) -> None:
    """Load a local weights file into ``model``, refusing any mismatch with a precise message.

    A checkpoint of a one-anchor SN-Net (what ``train.py --anchors NAME`` writes) loads into
    the plain timm model: its ``anchors.0.`` prefix is stripped.
    """
    state = extract_state_dict(load_checkpoint_file(path), use_ema)
    if state and all(k.startswith("anchors.0.") for k in state):
        state = {k[len("anchors.0."):]: v for k, v in state.items()}
    problem = describe_mismatch(state, model)
    if problem:
        raise CheckpointError(
            f"checkpoint '{path}' does not match the model: {problem}; was it saved for other anchors, "
            f"other --model-kwargs or another --num-classes?"
        )
    model.load_state_dict(state)
