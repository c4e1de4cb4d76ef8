"""Anchor adapters: one small file per timm family; importing this package registers them."""
from .base import Anchor, Layout, staged_blocks
from .registry import adapter_class, create_anchor, register_anchor, supported_families
from . import levit, resnet, swin, vit  # noqa: F401  (registration)

__all__ = [
    "Anchor", "Layout", "staged_blocks", "adapter_class", "create_anchor", "register_anchor",
    "supported_families"
]
