"""timm's pretrained weights without waiting on an unreachable hub.

``timm.create_model(name, pretrained=True)`` asks the Hugging Face hub for the file even when
it is cached, and on a machine without internet retries for about a minute before failing
with a long traceback. Here the local caches are tried first (the HF cache, then torch.hub's
download folder for timm's legacy URLs); a cached file is loaded safely
(:func:`snnet.io.checkpoint.load_checkpoint_file`) and handed to timm as its pretrained state
dict, so timm's own checkpoint filter and classifier handling still apply. Only when nothing
is cached is the hub asked, after a short connection probe, and a failure is one clear line.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from torch import nn

from ..errors import CheckpointError

# The hub file names timm looks for, in its order of preference.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_PROBE_TIMEOUT_S = 3.0


def _pretrained_cfg(model_name: str):
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(model_name)


def cached_weights_file(model_name: str) -> Optional[Path]:
    """The local copy of timm's pretrained weights of ``model_name``, if one is cached."""
    cfg = _pretrained_cfg(model_name)
    if cfg is None:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
        for name in names:
            found = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        import torch.hub

        legacy = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if legacy.is_file():
            return legacy
    return None


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _source_host(model_name: str) -> tuple[str, int]:
    """Host and port timm would download ``model_name``'s weights from."""
    cfg = _pretrained_cfg(model_name)
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.hf_hub_id else cfg.url
    parsed = urlparse(url)
    return parsed.hostname or "", parsed.port or (80 if parsed.scheme == "http" else 443)


def _unreachable(host: str, port: int) -> Optional[str]:
    """Why ``host:port`` cannot be reached within a few seconds, or None if it can."""
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def weights_unavailable(
    model_name: str, why: str, checkpoint_flag: str = "--anchor-checkpoints FILE ..."
) -> CheckpointError:
    """The one-line error naming the three ways out."""
    cfg = _pretrained_cfg(model_name)
    where = f" ({cfg.hf_hub_id})" if cfg is not None and cfg.hf_hub_id else ""
    return CheckpointError(
        f"cannot get timm's pretrained weights of {model_name}{where}: {why}. Either download them on a "
        f'machine with internet into the Hugging Face cache (python -c "import timm; '
        f"timm.create_model('{model_name}', pretrained=True)\", then copy HF_HOME) and set HF_HUB_OFFLINE=1, "
        f"or pass {checkpoint_flag} (local weights), or --no-pretrained"
    )


def create_pretrained_model(
    model_name: str, checkpoint_flag: str = "--anchor-checkpoints FILE ...", **kwargs: Any
) -> nn.Module:
    """``timm.create_model(model_name, pretrained=True, **kwargs)``, from the local cache when it
    holds the weights; otherwise from the hub, failing within seconds when it is unreachable."""
    import timm

    from .checkpoint import extract_state_dict, load_checkpoint_file

    if _pretrained_cfg(model_name) is None:
        raise CheckpointError(
            f"timm has no pretrained weights for {model_name}: use --no-pretrained or {checkpoint_flag}"
        )
    cached = cached_weights_file(model_name)
    if cached is not None:
        state = extract_state_dict(load_checkpoint_file(cached))
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
        for cfg in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
            if isinstance(cfg, dict):
                cfg.pop("state_dict", None)  # the model holds the weights now; do not keep a second copy
        return model
    if _hub_offline():
        raise weights_unavailable(
            model_name, "HF_HUB_OFFLINE is set and they are not in the local cache", checkpoint_flag
        )
    host, port = _source_host(model_name)
    why = _unreachable(host, port)
    if why is not None:
        raise weights_unavailable(
            model_name, f"{host} is unreachable ({why}) and they are not in the local cache", checkpoint_flag
        )
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # hub / HTTP errors subclass these
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise weights_unavailable(
            model_name, f"the download failed ({type(e).__name__}: {first})", checkpoint_flag
        ) from None
