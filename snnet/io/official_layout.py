"""How a checkpoint of the official SN-Net code (ziplab/SN-Net) is recognised, from its keys or from
its pickle stream without unpickling it. The mapping of its keys onto an SN-Net is
:mod:`snnet.io.official`; :func:`snnet.io.checkpoint.load_checkpoint_file` allows the pickled
``argparse.Namespace`` only for files this module recognises."""

from __future__ import annotations

import re
import zipfile
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

# stitch_layers.<pair>.<layer>.transform.* (DeiT) or stitch_layers.<group>.<pair>.<layer>.transform.*
OFFICIAL_LAYER_KEY = re.compile(r"^stitch_layers\.(\d+)\.(\d+)(?:\.(\d+))?\.transform\.(weight|bias)$")
_OFFICIAL_BYTES = re.compile(rb"stitch_layers\.\d+\.\d+(?:\.\d+)?\.transform\.")
_STATE_KEYS = ("model", "state_dict")


def is_official_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict has the official code's stitching-layer keys."""
    return any(OFFICIAL_LAYER_KEY.match(str(k)) for k in state)


def official_state_of(ckpt: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The weights of an official SN-Net checkpoint, or None if ``ckpt`` is not one."""
    for key in _STATE_KEYS:
        state = ckpt.get(key)
        if isinstance(state, Mapping) and is_official_state(state):
            return state
    return None


def looks_official(path: str | Path) -> bool:
    """Whether ``path`` is a torch zip checkpoint that pickles an ``argparse.Namespace`` next to
    official stitching-layer keys, read from its pickle stream without unpickling it (the real
    load, :func:`snnet.checkpoint.load_checkpoint_file`, still checks everything)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            data = archive.read(names[0]) if names else b""
    except (OSError, zipfile.BadZipFile):
        return False
    return b"argparse" in data and b"Namespace" in data and _OFFICIAL_BYTES.search(data) is not None


def plain_official_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` with its pickled ``args`` Namespace turned into a plain dict (``official_args``),
    so that nothing downstream mistakes the official arguments for snnet's."""
    out = dict(ckpt)
    args = out.pop("args", None)
    if isinstance(args, Namespace):
        out["official_args"] = dict(vars(args))
    return out
