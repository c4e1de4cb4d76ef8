"""Safe, atomic checkpoint I/O.

Checkpoints hold only tensors and plain Python data, so that they load with
``torch.load(weights_only=True)``: unpickling arbitrary objects can run arbitrary code, and a
checkpoint is often a file from someone else. Saves are atomic (temporary file in the same
folder, flushed, fsynced, renamed), so a process killed mid-save leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .levit_layout import original_levit_state
from .paths import atomic_path

# What torch.load(weights_only=True) rebuilds. Exact types: a subclass (a namedtuple, a
# defaultdict, a str Enum) pickles as its own class, which weights_only refuses.
_PLAIN_TYPES = {str, int, float, bool, type(None), torch.Tensor, nn.Parameter, torch.Size, torch.dtype, torch.device}
_MAPPING_TYPES = {dict, OrderedDict}
_SEQUENCE_TYPES = {list, tuple}

# Original layouts of a timm family that its checkpoint_filter_fn no longer converts.
_ORIGINAL_LAYOUTS = {"timm.models.levit": original_levit_state}

# DeiT-III's original LayerScale keys (blocks.<i>.gamma_1 / gamma_2; timm: ls1.gamma / ls2.gamma).
_GAMMA_KEY = re.compile(r"(^|\.)gamma_\d$")

# What torch's weights-only unpickler says when it meets an object it will not build.
_UNSAFE_MARKERS = (
    "Unsupported global",
    "unsupported GLOBAL",
    "Trying to call reduce",
    "Can only create new object",
    "Can only build",
)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a new file beside ``path`` for writing; on success, move it onto ``path``.

    Through :func:`snnet.io.paths.atomic_path`: the data is fsynced before ``os.replace`` renames
    the file, and the folder is fsynced after, so a crash or kill at any moment leaves at ``path``
    either the previous file or the complete new one, never a torn one. On an exception the
    temporary file is removed (an ``OSError`` names ``path``); a SIGKILL leaves it behind as
    ``.{name}.tmp-{pid}-{random}{suffix}``.
    """
    with atomic_path(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


def check_plain(value: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the key path of anything ``weights_only`` loading would refuse."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return
    if kind in _MAPPING_TYPES:
        for k, v in value.items():
            check_plain(k, f"a key of {where}")
            check_plain(v, f"{where}[{k!r}]")
    elif kind in _SEQUENCE_TYPES:
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(
            f"{where} is a {kind.__module__}.{kind.__qualname__}: checkpoints hold only tensors and plain "
            f"Python data (dict, list, tuple, str, int, float, bool, None); convert it (e.g. vars(args))"
        )


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (see :func:`atomic_write`).

    Raises ``TypeError`` before writing anything if ``state`` holds more than tensors and plain
    Python data: every checkpoint snnet writes must load with ``weights_only=True``.
    """
    check_plain(state)
    with atomic_write(path) as f:
        torch.save(dict(state), f)


def _reason(e: BaseException) -> str:
    """The informative part of a torch.load error, on one line."""
    text = str(e)
    if "WeightsUnpickler error:" in text:  # skip torch's generic advice around the actual error
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # the first sentence: torch appends paragraphs of advice
    return f"{type(e).__name__}: {lines[0].split('. ')[0]}" if lines else type(e).__name__


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling objects: ``torch.load(weights_only=True)``, or safetensors.

    The one exception: an official SN-Net checkpoint may hold an ``argparse.Namespace`` (its
    ``args``) or, from the Swin tree, a yacs ``CfgNode`` (its ``config``); those classes alone
    are allowed for such files, and they come back as plain dicts under ``official_args`` /
    ``official_config`` (:mod:`snnet.io.official_layout`).

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint, holds pickled
            Python objects, or does not hold a dict.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist: check the path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' is a folder, not a file: give the checkpoint file inside it")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as e:  # safetensors raises its own SafetensorError, or OSError
            raise CheckpointError(f"'{path}' is not a valid safetensors file: {_reason(e)}") from None
    invalid = f"'{path}' is not a valid checkpoint (truncated or not written by torch.save)"
    try:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            ckpt = _load_official(path, map_location, e)
    except pickle.UnpicklingError as e:
        if any(marker in str(e) for marker in _UNSAFE_MARKERS):
            refused = re.search(r"GLOBAL (\S+) ", str(e))
            what = f" ({refused.group(1)})" if refused else ""
            raise CheckpointError(
                f"'{path}' holds pickled Python objects{what}, which snnet refuses to load because unpickling "
                f"can run arbitrary code; re-save it with only tensors and plain data (if you trust its source: "
                f"torch.save(torch.load(f, weights_only=False)['state_dict'], new_f))"
            ) from None
        raise CheckpointError(f"{invalid}: {_reason(e)}") from None
    except MemoryError:  # a checkpoint too big for this machine is not a damaged one
        raise
    except PermissionError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}': {e.strerror}: check its permissions") from None
    except Exception as e:  # damaged bytes surface as whatever the zip or pickle reader trips on
        raise CheckpointError(f"{invalid}: {_reason(e)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"'{path}' holds a {type(ckpt).__name__}, not a checkpoint dict or state dict")
    return ckpt


def _load_official(path: Path, map_location, refusal: pickle.UnpicklingError) -> dict[str, Any]:
    """An official SN-Net checkpoint, whose only objects are the training ``argparse.Namespace``
    under ``args`` or the Swin tree's yacs ``CfgNode`` under ``config``: loaded with those classes
    allowed (the yacs one as a stand-in that builds a plain dict; still ``weights_only``), then
    checked to hold official SN-Net weights; anything else re-raises the original ``refusal``."""
    from .official_layout import OFFICIAL_PICKLED, official_state_of, plain_official_checkpoint

    if not any(name in str(refusal) for _, name in OFFICIAL_PICKLED):
        raise refusal
    with torch.serialization.safe_globals([(cls, name) for cls, name in OFFICIAL_PICKLED]):
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or official_state_of(ckpt) is None:
        raise refusal
    return plain_official_checkpoint(ckpt)


def extract_state_dict(ckpt: Mapping[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights of a timm / torchvision / snnet checkpoint dict, or of a bare state dict.

    Looks where timm's ``load_state_dict`` looks: ``state_dict_ema`` then ``model_ema`` with
    ``use_ema``, else ``state_dict`` then ``model``, else the dict itself. Unlike timm, asking for
    EMA weights a checkpoint lacks is an error, not a silent fallback. DDP's ``module.`` and
    torch.compile's ``_orig_mod.`` prefixes are removed.
    """
    from timm.models import clean_state_dict

    keys = ("state_dict_ema", "model_ema") if use_ema else ("state_dict", "model")
    found = next((k for k in keys if isinstance(ckpt.get(k), Mapping)), None)
    if use_ema and found is None:
        raise CheckpointError(
            "the checkpoint has no EMA weights (state_dict_ema): drop --use-ema or train with --model-ema"
        )
    state = ckpt[found] if found else ckpt
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"the checkpoint holds no weights (its keys: {', '.join(map(str, list(ckpt)[:8]))}): "
            f"give a file with a 'state_dict' or 'model' entry, or a bare state dict"
        )
    return clean_state_dict(tensors)


def describe_mismatch(state: Mapping[str, torch.Tensor], model: nn.Module, strict: bool = True) -> str:
    """'' if ``state`` fits ``model``, else a one-line summary of what differs.

    With ``strict=False`` only shape mismatches count: missing and unexpected keys are allowed.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    shapes = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({shapes[0]})")
    return ", ".join(parts)


def convert_with_timm_filter(
    state: dict[str, torch.Tensor], model: nn.Module, strict: bool = True
) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` and '' if it fits ``model``; else ``state`` converted by the timm family's
    ``checkpoint_filter_fn`` (what timm applies to its pretrained files: Swin's original layout,
    DeiT-III's ``gamma_1/gamma_2`` LayerScale keys, ...) or by snnet's converter of a layout timm
    no longer converts (the original LeViT code's) if that makes it fit; otherwise ``state`` and
    the mismatch (:func:`describe_mismatch`)."""
    import inspect
    import sys

    problem = describe_mismatch(state, model, strict)
    if not problem:
        return state, problem
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", lambda sd, m: sd)
    kwargs = {}
    if "adapt_layer_scale" in inspect.signature(convert).parameters and any(_GAMMA_KEY.search(k) for k in state):
        kwargs["adapt_layer_scale"] = True  # DeiT-III's release files, as timm's deit3 pretrained_filter_fn
    for candidate in (partial(convert, **kwargs), _ORIGINAL_LAYOUTS.get(type(model).__module__)):
        try:
            converted = candidate(dict(state), model) if candidate else None
        except Exception:  # a file of another architecture can trip a converter anywhere
            continue
        if converted is not None and not describe_mismatch(converted, model, strict):
            return converted, ""
    return state, problem


def load_model_weights(
    model: nn.Module, path: str | Path, use_ema: bool = False, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load a local weights file into ``model``, refusing a mismatch with a precise message.

    The shapes are compared before ``load_state_dict``, whose own error is a multi-line list.
    A file in another layout of the same architecture (DeiT's, DeiT-III's and Swin's original
    ``{'model': ...}`` releases) is converted by timm's own checkpoint filter for the model's family.
    A checkpoint of a one-anchor SN-Net (what ``train.py --anchors NAME`` writes) loads into
    the plain timm model: its ``anchors.0.`` prefix is removed.

    Returns:
        The missing and the unexpected keys (both empty with ``strict=True``).
    """
    ckpt = load_checkpoint_file(path)
    try:
        state = extract_state_dict(ckpt, use_ema)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint '{path}': {e}") from None  # name the file
    if all(k.startswith("anchors.0.") for k in state):
        state = {k[len("anchors.0.") :]: v for k, v in state.items()}
    state, problem = convert_with_timm_filter(state, model, strict)
    if problem:
        raise CheckpointError(
            f"checkpoint '{path}' does not match the model: {problem}; was it saved for other anchors, "
            f"other --model-kwargs or another --num-classes?"
        )
    missing, unexpected = model.load_state_dict(state, strict=strict)
    return list(missing), list(unexpected)
