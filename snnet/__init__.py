"""Stitchable Neural Networks (SN-Net) over stock timm models."""

from .anchors import Anchor, create_anchor, register_anchor
from .errors import SNNetError
from .model import SNNet, create_snnet
from .stitches import Stitch, enumerate_stitches

__all__ = [
    "Anchor",
    "SNNet",
    "SNNetError",
    "Stitch",
    "create_anchor",
    "create_snnet",
    "enumerate_stitches",
    "register_anchor",
]
