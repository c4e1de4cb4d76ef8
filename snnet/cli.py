"""Arguments shared by train.py and eval.py: which anchors, how to stitch, which data."""
from __future__ import annotations

import argparse
from typing import Any, Optional

from .config import parse_kwargs
from .errors import ConfigError
from .model import SNNet, create_snnet


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SN-Net model")
    group.add_argument("--anchors", nargs="+", default=None, metavar="NAME",
                       help="timm model names of the anchors, ordered small to large")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                       help="start the anchors from timm's pretrained weights (local HF cache first, then the hub)")
    group.add_argument("--anchor-checkpoints", nargs="+", default=None, metavar="FILE",
                       help="local weights file per anchor ('none' to skip one): timm/HF .safetensors or .bin, "
                            "DeiT/Swin {'model': ...} .pth, torchvision ResNet .pth")
    group.add_argument("--num-classes", type=int, default=None, metavar="N",
                       help="classifier size (default: the dataset's class count)")
    group.add_argument("--img-size", type=int, default=None, metavar="PX", help="input resolution")
    group.add_argument("--model-kwargs", nargs="*", default={}, metavar="K=V",
                       help="timm.create_model keyword arguments for every anchor")
    group.add_argument("--anchor-kwargs", nargs="+", default=None, metavar="'K=V ...'",
                       help="per-anchor timm keyword arguments, one quoted string per anchor")
    group.add_argument("--kernel-size", type=int, default=2, help="sliding window size of paired stitching")
    group.add_argument("--stride", type=int, default=1, help="sliding window stride of paired stitching")
    group.add_argument("--nearest", action=argparse.BooleanOptionalAction, default=True,
                       help="stitch only neighbouring anchors (the paper's nearest stitching)")
    group.add_argument("--stages", nargs="+", type=int, default=None,
                       help="stages to stitch in, hierarchical anchors (default: all but the last)")
    group.add_argument("--official-forward", action=argparse.BooleanOptionalAction, default=False,
                       help="run stitched networks as the official SN-Net code does (set by loading an official checkpoint)")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", default=None, metavar="DIR",
                       help="ImageFolder root with train/ and val/ (timm layout)")
    group.add_argument("--dataset", default="", metavar="NAME",
                       help="'digits' for scikit-learn's handwritten digits (offline); empty for --data-dir")
    group.add_argument("--workers", "-j", type=int, default=2, metavar="N", help="data loading processes")
    group.add_argument("--seed", type=int, default=42, help="random seed")


def _anchor_kwargs(args: argparse.Namespace) -> Optional[list[dict[str, Any]]]:
    if args.anchor_kwargs is None:
        return None
    # YAML gives mappings, the command line gives 'k=v k=v' strings.
    return [a if isinstance(a, dict) else parse_kwargs(str(a).split()) for a in args.anchor_kwargs]


def build_snnet(args: argparse.Namespace, num_classes: Optional[int] = None, pretrained: Optional[bool] = None) -> SNNet:
    """The SN-Net the parsed arguments describe."""
    if not args.anchors:
        raise ConfigError("no anchors given: pass --anchors NAME [NAME ...] (small to large) or -c a config")
    ckpts = args.anchor_checkpoints
    if ckpts is not None:
        ckpts = [None if str(c).lower() == "none" else c for c in ckpts]
    return create_snnet(
        args.anchors,
        pretrained=args.pretrained if pretrained is None else pretrained,
        num_classes=num_classes if num_classes is not None else args.num_classes,
        img_size=args.img_size,
        model_kwargs=parse_kwargs(args.model_kwargs),
        anchor_kwargs=_anchor_kwargs(args),
        anchor_checkpoints=ckpts,
        kernel_size=args.kernel_size,
        stride=args.stride,
        nearest=args.nearest,
        stages=args.stages,
        official_forward=bool(getattr(args, "official_forward", False)),
    )
