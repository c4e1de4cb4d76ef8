"""How a checkpoint of the official SN-Net code (ziplab/SN-Net, ziplab/SN-Netv2) is recognised,
from its keys or from its pickle stream without unpickling it, and which official forward it
needs. The mapping of its keys onto an SN-Net is :mod:`snnet.io.official`;
:func:`snnet.io.checkpoint.load_checkpoint_file` allows the objects these files pickle (the
training ``argparse.Namespace``; the Swin tree's yacs ``CfgNode``, rebuilt as a plain dict by a
stand-in, never by yacs) only for files this module recognises."""

from __future__ import annotations

import re
import zipfile
from argparse import Namespace
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

# stitch_layers.<pair>.<layer>.transform.* (DeiT), stitch_layers.<group>.<pair>.<layer>.transform.*
# (hierarchical trees) or stitch_layers.<direction>.<layer>.transform.* (SN-Netv2, LoRA A/B beside)
OFFICIAL_LAYER_KEY = re.compile(r"^stitch_layers\.(\d+)\.(\d+)(?:\.(\d+))?\.transform\.(weight|bias|lora_A|lora_B)$")
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


def official_forward_of(ckpt: Mapping[str, Any]) -> Optional[str]:
    """Which official forward the weights of ``ckpt`` need: ``'v1'`` for an SN-Net checkpoint
    (stitched DeiT networks without the final norm, unpaired layers shared by list position),
    ``'v2'`` for an SN-Netv2 one (LoRA stitching layers, or ``snnet_name: snnet_v2`` in its
    arguments; its forward applies the final norm, i.e. snnet's natural forward), None for
    anything else."""
    state = official_state_of(ckpt)
    if state is None:
        return None
    args = ckpt.get("official_args")
    v2 = isinstance(args, Mapping) and args.get("snnet_name") == "snnet_v2"
    return "v2" if v2 or any(str(k).endswith((".lora_A", ".lora_B")) for k in state) else "v1"


def official_snnet_options(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The SN-Net options an official checkpoint's weights imply (two-way stitching and the LoRA
    rank of an SN-Netv2 one); empty for the SN-Net trees, whose files leave them to the config."""
    state = official_state_of(ckpt)
    if state is None or official_forward_of(ckpt) != "v2":
        return {}
    ranks = [v.shape[0] for k, v in state.items() if str(k).endswith(".lora_A")]
    lora = {"stitch_layer": "lora", "lora_rank": int(ranks[0])} if ranks else {"stitch_layer": "linear"}
    return {"stitching": "two-way", **lora}


def looks_official(path: str | Path) -> bool:
    """Whether ``path`` is a torch zip checkpoint that pickles an ``argparse.Namespace`` or a yacs
    ``CfgNode`` next to official stitching-layer keys, read from its pickle stream without
    unpickling it (the real load, :func:`snnet.io.checkpoint.load_checkpoint_file`, still checks
    everything)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            data = archive.read(names[0]) if names else b""
    except (OSError, zipfile.BadZipFile):
        return False
    pickled = any(module in data and name in data for module, name in _PICKLED_NAMES)
    return pickled and _OFFICIAL_BYTES.search(data) is not None


class YacsConfigStandIn:
    """What the Swin tree's pickled ``yacs.config.CfgNode`` (its ``config``) unpickles as: an
    ``OrderedDict`` of its entries, the only thing torch's weights-only unpickler lets a dict
    subclass become (it fills nothing but plain dicts; the flags yacs pickles as the node's state
    land in that dict's ``__dict__`` and are dropped by :func:`plain_official_checkpoint`). yacs
    itself is neither needed nor imported: registered under yacs' class path, this class stands
    in for it, and building it runs no code but ``OrderedDict()``."""

    def __new__(cls, *args: Any) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


# The objects official checkpoints pickle: the class, and the path torch's unpickler looks up.
OFFICIAL_PICKLED = ((Namespace, "argparse.Namespace"), (YacsConfigStandIn, "yacs.config.CfgNode"))
_PICKLED_NAMES = ((b"argparse", b"Namespace"), (b"yacs.config", b"CfgNode"))  # as pickle's GLOBAL writes them


def _plain_config(value: Any) -> Any:
    """A rebuilt yacs config as nested plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_config(v) for v in value]
    return value


def plain_official_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` with its pickled ``args`` Namespace (``official_args``) or yacs ``config``
    (``official_config``) turned into plain dicts, so that nothing downstream mistakes the
    official arguments for snnet's."""
    out = dict(ckpt)
    args = out.pop("args", None)
    if isinstance(args, Namespace):
        out["official_args"] = dict(vars(args))
    if isinstance(out.get("config"), OrderedDict):
        out["official_config"] = _plain_config(out.pop("config"))
    return out
