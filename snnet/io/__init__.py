"""Files in and out: safe checkpoint files, pretrained weights, official SN-Net checkpoints."""
