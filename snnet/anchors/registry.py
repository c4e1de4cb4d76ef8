"""Model name -> anchor adapter, keyed by the timm module that defines the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import timm
from timm.models import get_pretrained_cfg_value, is_model_in_modules
from torch import nn

from ..errors import ConfigError, SNNetError, UnknownModelError

_ADAPTERS: dict[str, type] = {}


def register_anchor(*timm_modules: str) -> Callable[[type], type]:
    """Class decorator: the adapter serves every model defined in these timm modules."""

    def register(cls: type) -> type:
        for name in timm_modules:
            _ADAPTERS[name] = cls
        return cls

    return register


def supported_families() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_class(model_name: str) -> type:
    """The adapter class for a timm model name, or a clear error."""
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:5]
        hint = f" (close names: {', '.join(close)})" if close else ""
        raise UnknownModelError(f"unknown model '{model_name}': timm has no model of that name{hint}")
    for module, cls in _ADAPTERS.items():
        if is_model_in_modules(model_name, [module]):
            return cls
    raise UnknownModelError(
        f"model '{model_name}' has no SN-Net anchor adapter: supported timm families are "
        f"{', '.join(supported_families())} (add one in snnet/anchors/)"
    )


def default_input_size(model_name: str) -> tuple[int, int, int]:
    return tuple(get_pretrained_cfg_value(model_name, "input_size") or (3, 224, 224))


def create_anchor(
    model_name: str,
    pretrained: bool = False,
    checkpoint_path: Optional[str | Path] = None,
    num_classes: Optional[int] = None,
    img_size: Optional[int] = None,
    model_kwargs: Optional[dict[str, Any]] = None,
):
    """Create a timm model and wrap it in its family's adapter.

    Args:
        model_name: a timm model name (``deit_small_patch16_224``, ``swin_tiny_...``).
        pretrained: load timm's pretrained weights (local cache first, then the hub; see
            :mod:`snnet.io.weights`).
        checkpoint_path: a local weights file loaded after creation (safe loading only); it replaces
            ``pretrained``.
        num_classes: classifier size; None keeps timm's default.
        img_size: input resolution; None keeps the model's default.
        model_kwargs: extra keyword arguments for ``timm.create_model``.
    """
    cls = adapter_class(model_name)
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None and cls.takes_img_size:
        kwargs.setdefault("img_size", img_size)
    if img_size is not None and img_size < 1:
        raise ConfigError(f"--img-size must be >= 1 pixel, got {img_size}")
    if num_classes is not None and num_classes < 0:
        raise ConfigError(f"--num-classes must be >= 0 (0: no classifier), got {num_classes}")
    try:
        if pretrained and not checkpoint_path:  # a local file replaces the pretrained weights
            from ..io.weights import create_pretrained_model

            model: nn.Module = create_pretrained_model(model_name, **kwargs)
        else:
            model = timm.create_model(model_name, **kwargs)
    except SNNetError:
        raise
    except (TypeError, ValueError, AssertionError) as e:  # timm's own refusal of a keyword value
        given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
        reason = str(e).splitlines()[0][:200] if str(e) else ""
        raise ConfigError(
            f"timm cannot build {model_name} with {given} ({type(e).__name__}: {reason}): "
            f"check --model-kwargs / --anchor-kwargs / --img-size / --num-classes"
        ) from None
    if checkpoint_path:
        from ..io.checkpoint import load_model_weights

        load_model_weights(model, checkpoint_path)
    size = default_input_size(model_name)
    if img_size is not None:
        size = (size[0], img_size, img_size)
    elif hasattr(getattr(model, "patch_embed", None), "img_size"):
        size = (size[0], *model.patch_embed.img_size)
    return cls(model, model_name, size)


def checkpoint_num_classes(model_name: str, path: str | Path, model_kwargs: Optional[dict[str, Any]] = None) -> int:
    """The classifier size of the weights file ``path`` for ``model_name`` (0: the file has no
    classifier), in any layout :func:`~snnet.io.checkpoint.load_model_weights` reads. Found by
    building the model without a classifier (on the meta device: no memory, no init) and taking
    the file's keys left over after the layout conversion that belong to timm's classifier."""
    import torch

    from ..io.checkpoint import convert_with_timm_filter, extract_state_dict, load_checkpoint_file

    kwargs = {k: v for k, v in (model_kwargs or {}).items() if k != "num_classes"}
    with torch.device("meta"):
        headless = timm.create_model(model_name, **kwargs, num_classes=0)
        classifier = set(timm.create_model(model_name, **kwargs, num_classes=2).state_dict()) - set(
            headless.state_dict()
        )
    state = extract_state_dict(load_checkpoint_file(path))
    if all(k.startswith("anchors.0.") for k in state):  # a one-anchor train.py run
        state = {k[len("anchors.0.") :]: v for k, v in state.items()}
    state, _ = convert_with_timm_filter(state, headless, strict=False)
    sizes = [int(state[k].shape[0]) for k in sorted(classifier) if k in state and state[k].dim() == 2]
    return sizes[0] if sizes else 0
