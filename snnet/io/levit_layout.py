"""Checkpoints of the original LeViT code (facebookresearch/LeViT, vendored by the official SN-Net
LeViT tree): its key layout mapped onto timm's, which timm's own LeViT filter no longer does."""

from __future__ import annotations

import torch
from torch import nn

# The original LeViT code's module names (facebookresearch/LeViT, vendored by the official SN-Net
# LeViT tree) -> timm's, inside one residual unit of the flat ``blocks`` list.
_ORIGINAL_PARTS = (
    ("m.qkv.c.", "attn.qkv.linear."),
    ("m.qkv.bn.", "attn.qkv.bn."),
    ("m.proj.1.c.", "attn.proj.ln.linear."),
    ("m.proj.1.bn.", "attn.proj.ln.bn."),
    ("m.attention_biases", "attn.attention_biases"),
    ("m.0.c.", "mlp.ln1.linear."),
    ("m.0.bn.", "mlp.ln1.bn."),
    ("m.2.c.", "mlp.ln2.linear."),
    ("m.2.bn.", "mlp.ln2.bn."),
    ("kv.c.", "attn_downsample.kv.linear."),
    ("kv.bn.", "attn_downsample.kv.bn."),
    ("q.1.c.", "attn_downsample.q.ln.linear."),
    ("q.1.bn.", "attn_downsample.q.ln.bn."),
    ("proj.1.c.", "attn_downsample.proj.ln.linear."),
    ("proj.1.bn.", "attn_downsample.proj.ln.bn."),
    ("attention_biases", "attn_downsample.attention_biases"),
)


def _original_block_prefixes(depths: list[int]) -> dict[int, str]:
    """Index in the original flat ``blocks`` -> timm prefix: per stage, an attention and an MLP
    residual per block (``stages.<s>.blocks.<d>.``), then between stages the attention subsample
    and its MLP residual (both ``stages.<s+1>.downsample.``)."""
    prefixes, i = {}, 0
    for s, depth in enumerate(depths):
        for d in range(depth):
            prefixes[i] = prefixes[i + 1] = f"stages.{s}.blocks.{d}."
            i += 2
        if s + 1 < len(depths):
            prefixes[i] = prefixes[i + 1] = f"stages.{s + 1}.downsample."
            i += 2
    return prefixes


def original_levit_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of the original LeViT code (``patch_embed.<i>.c``, flat ``blocks.<i>.m...``,
    ``head.l``: the official SN-Net LeViT tree's anchors, Facebook's LeViT release files) under
    timm's keys for ``model``; timm's own LeViT filter no longer converts it. The constant
    ``attention_bias_idxs`` buffers are dropped (timm does not save them)."""
    prefixes = _original_block_prefixes([len(stage.blocks) for stage in model.stages])
    out = {}
    for key, value in state.items():
        if key.endswith("attention_bias_idxs"):
            continue
        if key.startswith("patch_embed."):  # Conv2d_BN (c, bn) at 0, 2, 4, 6, activations between
            _, index, part, leaf = key.split(".", 3)
            key = f"stem.conv{int(index) // 2 + 1}.{'linear' if part == 'c' else part}.{leaf}"
        elif key.startswith("blocks."):
            index, rest = key[len("blocks.") :].split(".", 1)
            part = next(((o, n) for o, n in _ORIGINAL_PARTS if rest.startswith(o)), None)
            if part is None or int(index) not in prefixes:
                return state  # not the original layout: left to the caller's mismatch check
            key = prefixes[int(index)] + part[1] + rest[len(part[0]) :]
        elif key.startswith(("head.l.", "head_dist.l.")):
            key = key.replace(".l.", ".linear.", 1)
        out[key] = value
    return out
