"""A trained SN-Net from a checkpoint, for eval.py and predict.py: read the file, fill the model
options the command line left open from the arguments the checkpoint saved, build the net and
load its weights (a train.py checkpoint, or an official SN-Net one: then the official forward is
switched on, and said so)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import plain
from ..core.model import SNNet
from ..errors import CheckpointError
from ..run_config import ModelConfig, build_snnet, idle_weight_options

# Model options a checkpoint's own ``args`` (or ``snnet_config``) fill in when the command line
# and config leave them at their defaults (the trainer saves its arguments as plain data).
MODEL_KEYS = (
    "anchors",
    "model_kwargs",
    "anchor_kwargs",
    "img_size",
    "num_classes",
    "kernel_size",
    "stride",
    "nearest",
    "stages",
    "stitching",
    "stitch_layer",
    "lora_rank",
    "official_forward",
    "routes",
    "class_token",
    "prefix_tokens",
    "stitch_stride",
)
_CKPT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".safetensors", ".bin")


def train_keys() -> set[str]:
    """Config keys train.py knows: a training config is a valid eval.py / predict.py config."""
    from ..cli import build_train_parser

    return {a.dest for a in build_train_parser()._actions}


def default_out_dir(checkpoint: str, use_ema: bool, flops_only: bool = False) -> Path:
    """eval.py's results folder when ``--output`` is not given: ``eval-<name>[-ema]`` beside the
    checkpoint (predict.py's ``--stitch best`` looks there too)."""
    if checkpoint:
        name = Path(checkpoint).name
        for suffix in _CKPT_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return Path(checkpoint).parent / f"eval-{name}{'-ema' if use_ema else ''}"
    return Path("output/eval") / ("flops" if flops_only else "untrained")


def _is_default(cfg: Any, key: str, value: Any) -> bool:
    return value == cfg.defaults.get(key) or value in (None, {}, [], "")


def with_checkpoint_model(cfg: Any, ckpt: dict, log: Callable[[str], None]) -> Any:
    """``cfg`` (an eval.py / predict.py config) with the model options it left at their defaults
    taken from the checkpoint; a checkpoint of other anchors or other stitching options is
    refused. An official SN-Net checkpoint switches ``official_forward`` on (logged)."""
    from ..io.official_layout import official_forward_of, official_snnet_options

    path, updates = cfg.checkpoint, {}
    official = official_forward_of(ckpt)
    if official is not None:  # the official code's layout: its forward, its options, our anchors' names
        updates = _official_updates(cfg, official, official_snnet_options(ckpt), log)
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    config = ckpt.get("snnet_config") if isinstance(ckpt.get("snnet_config"), dict) else {}
    if cfg.anchors and config.get("anchors") and list(config["anchors"]) != list(cfg.anchors):
        raise CheckpointError(
            f"checkpoint {path} holds anchors {list(config['anchors'])} but --anchors are {list(cfg.anchors)}: "
            f"drop --anchors (the checkpoint's are used) or pass the matching config"
        )
    for key in MODEL_KEYS:
        source = config if key in config else saved
        if key not in source or source[key] is None:
            continue
        value = updates.get(key, getattr(cfg, key))
        if _is_default(cfg, key, value):
            updates[key] = source[key]
        elif key in config and key != "anchors" and plain(value) != plain(config[key]):
            raise CheckpointError(
                f"checkpoint {path} was trained with {key}={config[key]} but this run has "
                f"{key}={value}: drop the option or use the checkpoint's value"
            )
    cfg = dataclasses.replace(cfg, **updates)
    if not cfg.anchors:
        raise CheckpointError(f"checkpoint {path} names no anchors (not a train.py checkpoint?): pass --anchors")
    return cfg


def _official_updates(cfg: Any, official: str, options: dict, log: Callable[[str], None]) -> dict:
    """An official checkpoint: the forward it needs (SN-Net's ``official_forward``, logged;
    SN-Netv2's is snnet's natural one) and the options its weights imply where ``cfg`` left the
    defaults."""
    path = cfg.checkpoint
    if not cfg.anchors:
        example = "configs/deit3_s_l_v2.yaml" if official == "v2" else "configs/deit_ti_s_b.yaml"
        raise CheckpointError(
            f"{path} is an official SN-Net{'v2' if official == 'v2' else ''} checkpoint, which does not "
            f"name its anchors: pass the config of its run, e.g. -c {example}"
        )
    if official == "v2" and cfg.official_forward:
        raise CheckpointError(
            f"{path} is an official SN-Netv2 checkpoint, whose networks end with the final norm: "
            f"drop --official-forward (SN-Net's rule without it)"
        )
    updates = {key: value for key, value in options.items() if _is_default(cfg, key, getattr(cfg, key))}
    if official == "v1":
        if not cfg.official_forward:
            log(f"{path} is an official SN-Net checkpoint: its networks run with the official forward")
        updates["official_forward"] = True
    return updates


def with_checkpoint_data(cfg: Any, ckpt: dict) -> tuple[Any, bool]:
    """``cfg`` with ``--dataset``/``--data-dir`` (and ``--val-split``) of the checkpoint's run when
    the command line and config give no data; True when they were taken from the checkpoint."""
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    if cfg.dataset or cfg.data_dir or not (saved.get("dataset") or saved.get("data_dir")):
        return cfg, False
    updates = {"dataset": saved.get("dataset") or "", "data_dir": saved.get("data_dir")}
    if _is_default(cfg, "val_split", cfg.val_split) and saved.get("val_split"):
        updates["val_split"] = saved["val_split"]
    return dataclasses.replace(cfg, **updates), True


def training_data(ckpt: Optional[dict], cfg: Any) -> tuple[str, Optional[str], str, Any]:
    """The dataset of ``cfg``, else the one the checkpoint was trained on (its saved arguments):
    name, folder, validation split and timm's dataset options (class map, columns: the class names)."""
    from ..data.sources import DataOptions

    saved = ckpt.get("args") if ckpt is not None and isinstance(ckpt.get("args"), dict) else {}
    if cfg.dataset or cfg.data_dir:
        return cfg.dataset, cfg.data_dir, getattr(cfg, "val_split", "validation"), DataOptions.from_args(cfg)
    opts = DataOptions.from_args(argparse.Namespace(**saved))
    return saved.get("dataset") or "", saved.get("data_dir"), saved.get("val_split") or "validation", opts


def classifier_size(net: SNNet, state: dict) -> Optional[int]:
    """The class count the checkpoint's classifiers have (from the timm models' own classifier)."""
    for i, model in enumerate(net.anchors):
        clf = model.get_classifier()
        mods = clf if isinstance(clf, (tuple, list)) else (clf,)
        names = {id(m): n for n, m in model.named_modules()}
        for m in mods:
            for pname, p in m.named_parameters():
                if p.ndim >= 2 and id(m) in names:
                    key = f"anchors.{i}.{names[id(m)]}.{pname}".replace("..", ".")
                    if key in state:
                        return int(state[key].shape[0])
    return None


def build_trained_snnet(
    cfg: Any, num_classes: Optional[int], state: Optional[dict], log: Callable[[str], None] = print
) -> SNNet:
    """The SN-Net of ``cfg`` with the checkpoint weights ``state`` (untrained when None: then
    the anchors start as ``--pretrained`` / ``--anchor-checkpoints`` say); notes of an official
    checkpoint's import go to ``log``."""
    model = ModelConfig.from_args(cfg)
    idle = idle_weight_options(model, "" if state is None else f"checkpoint {cfg.checkpoint}")
    if idle:
        log(idle)
    if state is None:
        return build_snnet(model, num_classes, seed=cfg.seed)  # untrained layers: the same on every rank
    model = dataclasses.replace(model, pretrained=False, anchor_checkpoints=None)  # the checkpoint holds every weight
    net = build_snnet(model, num_classes, seed=cfg.seed)
    if cfg.num_classes is None:  # e.g. --export without data: the checkpoint's classifier decides
        size = classifier_size(net, state)
        if size is not None and size != classifier_size(net, net.state_dict()):
            net = build_snnet(model, size, seed=cfg.seed)
    from ..io.official import load_snnet_state

    load_snnet_state(
        net,
        state,
        f"checkpoint {cfg.checkpoint}",
        "--anchors, --model-kwargs, --anchor-kwargs, --img-size and --num-classes",
        log,
    )
    return net
