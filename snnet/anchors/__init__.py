"""Anchor adapters: one small file per timm family; importing this package registers them."""

from . import levit, mobilenetv3, resnet, swin, vit  # noqa: F401  (registration)
from .base import Anchor, Layout, staged_blocks
from .registry import adapter_class, create_anchor, register_anchor, supported_families

__all__ = [
    "Anchor",
    "Layout",
    "staged_blocks",
    "adapter_class",
    "create_anchor",
    "register_anchor",
    "supported_families",
]
