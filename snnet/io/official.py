"""Checkpoints of the official SN-Net code (ziplab/SN-Net): layout detection, key mapping, and
the official forward's rules.

The official trees save ``anchors.<i>.<timm keys>`` like snnet, but their stitching layers as
nested lists: ``stitch_layers.<pair>.<layer>.transform.*`` (DeiT: one stage) and
``stitch_layers.<stage group>.<pair>.<layer>.transform.*`` (the ResNet/Swin, Swin and LeViT
trees; ResNet/Swin stores 1x1 convolutions). snnet numbers its layers flat, stage by stage,
pair by pair. Two rules of the official forward differ from snnet's natural one, and an
imported official checkpoint switches them on (``SNNet(official_forward=True)``, saved in the
checkpoint's ``snnet_config`` and shown by eval.py):

* stitched DeiT networks end with the back anchor's ``forward_head`` without its final
  LayerNorm (the anchors themselves keep it);
* unequal-depth stages share layers by list position: the official ``get_stitch_configs``
  zips the stitch list with ``end_mapping_ids`` (one entry per back block), so the n-th stitch
  uses layer ``end_mapping_ids[n]`` instead of its front block's layer.

The files pickle the training ``argparse.Namespace`` under ``args``; :func:`snnet.checkpoint.load_checkpoint_file`
allows exactly that class, and only for files whose weights have this layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..core.stitches import anchor_pairs, official_unpaired_layers
from ..errors import CheckpointError
from .official_layout import OFFICIAL_LAYER_KEY, is_official_state


def official_layer_index(net) -> dict[tuple[int, int, int], int]:
    """(stage group, pair, official layer id) -> index into ``net.stitch_layers``.

    Pairs are numbered as the official code does (neighbouring anchors: the front anchor's
    index); stage groups are the positions in the list of stitched stages.
    """
    pairs = {pair: i for i, pair in enumerate(anchor_pairs(len(net.anchor_adapters), net.config["nearest"]))}
    stages = sorted({spec.stage for spec in net.layer_specs})
    index: dict[tuple[int, int, int], int] = {}
    seen: dict[tuple[int, int, int], int] = {}
    for i, spec in enumerate(net.layer_specs):
        group = (stages.index(spec.stage), pairs[(spec.front, spec.back)])
        front, back = net.anchor_adapters[spec.front], net.anchor_adapters[spec.back]
        f_ids, b_ids = front.stage_block_ids(spec.stage), back.stage_block_ids(spec.stage)
        if len(f_ids) != len(b_ids):  # unpaired: the official id is the interpolation's
            local = (f_ids.index(spec.positions[0][0]), b_ids.index(spec.positions[0][1]))
            layer = next(lid for lid, ps in official_unpaired_layers(len(f_ids), len(b_ids)).items() if local in ps)
        else:  # paired: windows with new positions, in order
            layer = seen.get((*group, spec.stage), 0)
            seen[(*group, spec.stage)] = layer + 1
        index[(*group, layer)] = i
    return index


def convert_official_state(state: Mapping[str, torch.Tensor], net) -> dict[str, torch.Tensor]:
    """An official checkpoint's weights under snnet's keys for ``net`` (built with
    ``official_forward=True`` from the matching anchors and stages)."""
    from .checkpoint import convert_with_timm_filter, describe_mismatch

    out: dict[str, torch.Tensor] = {}
    for i, model in enumerate(net.anchors):
        prefix = f"anchors.{i}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        sub, problem = convert_with_timm_filter(sub, model)
        if problem:
            raise CheckpointError(
                f"anchor {i} ({net.anchor_adapters[i].name}) of the official checkpoint does not match: {problem}; "
                f"pass the config of the official run (-c configs/...yaml)"
            )
        out.update({prefix + k: v for k, v in sub.items()})
    index = official_layer_index(net)
    hierarchical = net.anchor_adapters[0].num_stages > 1
    for key, value in state.items():
        m = OFFICIAL_LAYER_KEY.match(key)
        if not m:
            continue
        a, b, c, what = m.groups()
        if (c is not None) != hierarchical:
            raise CheckpointError(
                f"official key {key} is not of the {'hierarchical' if hierarchical else 'DeiT'} "
                f"layout these anchors use: pass the config of the official run"
            )
        where = (int(a), int(b), int(c)) if hierarchical else (0, int(a), int(b))
        if where not in index:
            continue  # a layer the official code allocates but no stitch uses
        if what == "weight" and value.ndim == 4:  # the ResNet/Swin tree's 1x1 convolutions
            value = value.flatten(1)
        out[f"stitch_layers.{index[where]}.transform.{what}"] = value
    problem = describe_mismatch(out, net)
    if problem:
        raise CheckpointError(
            f"the official checkpoint does not match this SN-Net: {problem}; pass the config of the "
            f"official run (its anchors, and --stages where it differs)"
        )
    return out


def load_snnet_state(net, state: Mapping[str, torch.Tensor], source: str, check: str) -> None:
    """``state`` (snnet's layout, or an official checkpoint's, mapped onto ``net``) into ``net``;
    a mismatch is one :class:`CheckpointError` naming ``source`` and the arguments to ``check``.
    An official state needs ``net`` built with ``official_forward=True``."""
    from .checkpoint import describe_mismatch

    if is_official_state(state):
        state = convert_official_state(state, net)
    problem = describe_mismatch(state, net)
    if problem:
        raise CheckpointError(f"{source} does not match the model: {problem}; check {check}")
    net.load_state_dict(state)


def load_initial_weights(net, ckpt: Mapping[str, Any], path: str) -> None:
    """Weights of a train.py or an official SN-Net checkpoint into ``net`` (no optimizer state)."""
    from .checkpoint import extract_state_dict

    load_snnet_state(
        net,
        extract_state_dict(ckpt),
        f"--initial-checkpoint {path}",
        "--anchors, --model-kwargs, --anchor-kwargs and --num-classes",
    )
