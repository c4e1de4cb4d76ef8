"""Stitchable Neural Networks (SN-Net) over stock timm models."""
