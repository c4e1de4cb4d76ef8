"""Stitchable Neural Networks (SN-Net) over stock timm models."""

from .anchors import Anchor, create_anchor, register_anchor
from .core.model import SNNet, create_snnet
from .core.stitches import Stitch, enumerate_stitches
from .errors import SNNetError

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
