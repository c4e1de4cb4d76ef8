"""Checkpoints of the official SN-Net code (ziplab/SN-Net, ziplab/SN-Netv2): key mapping, and
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

SN-Netv2 (two-way stitching) saves ``stitch_layers.<direction>.<layer>.transform.*``: direction
0 small -> large, 1 large -> small, LoRA's ``lora_A``/``lora_B`` beside the frozen base. Its
forward ends every network with the final norm, i.e. snnet's natural forward: a v2 checkpoint
switches nothing on (:func:`snnet.io.official_layout.official_forward_of` says which forward a
file needs).

The files pickle the training ``argparse.Namespace`` under ``args`` (the Swin tree: a yacs
``CfgNode`` under ``config``); :func:`snnet.io.checkpoint.load_checkpoint_file` allows exactly
those classes, and only for files whose weights have this layout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable

import torch

from ..core.stitches import anchor_pairs, official_unpaired_layers
from ..errors import CheckpointError
from .official_layout import OFFICIAL_LAYER_KEY, is_official_state, official_forward_of

_logger = logging.getLogger("snnet")


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


def official_v2_layer_index(net) -> dict[tuple[int, int], int]:
    """(direction, official layer id) -> index into ``net.stitch_layers`` of a two-way SN-Net.

    As SN-Netv2's ``get_stitch_configs_bidirection``: ``stitch_layers[0]`` (small -> large) has
    one layer per small block ``i`` (id ``i``), ``stitch_layers[1]`` (large -> small) one per
    large block ``i`` it leaves, with id ``i // (d1 // d0)``. The small -> large layer after the
    small anchor's last block (id ``d0 - 1``) serves only the official cfg ``d0 + 1``, which the
    official code never trains or evaluates; snnet has no such network, hence no such layer.
    """
    d0, d1 = (a.num_blocks for a in net.anchor_adapters)
    index = {}
    for i, spec in enumerate(net.layer_specs):
        block = spec.positions[0][0]
        index[(spec.front, block if spec.front == 0 else block // (d1 // d0))] = i
    return index


def _anchor_states(state: Mapping[str, torch.Tensor], net) -> dict[str, torch.Tensor]:
    """The anchors' weights of an official checkpoint under timm's keys (timm's checkpoint filter
    converts other layouts: the old / Microsoft Swin, DeiT-III's ``gamma_1/gamma_2``)."""
    from .checkpoint import convert_with_timm_filter

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
    return out


def _v1_layers(state: Mapping[str, torch.Tensor], net) -> dict[str, torch.Tensor]:
    """SN-Net's stitching layers (DeiT and hierarchical layouts) under snnet's keys."""
    index = official_layer_index(net)
    hierarchical = net.anchor_adapters[0].num_stages > 1
    out = {}
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
    return out


def _v2_layers(state: Mapping[str, torch.Tensor], net, log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """SN-Netv2's stitching layers (``stitch_layers.<direction>.<id>.transform.*``, LoRA's A and B
    beside the base) under snnet's keys; the small -> large layer of the official cfg ``d0 + 1``
    is dropped with a line to ``log``."""
    if net.config.get("stitching") != "two-way":
        raise CheckpointError(
            "the checkpoint is an official SN-Netv2 one (two-way stitching): pass the config of its run, "
            "e.g. -c configs/deit3_s_l_v2.yaml, or --stitching two-way --stitch-layer lora"
        )
    index = official_v2_layer_index(net)
    unused = (0, net.anchor_adapters[0].num_blocks - 1)
    out, dropped = {}, set()
    for key, value in state.items():
        m = OFFICIAL_LAYER_KEY.match(key)
        if not m:
            continue
        direction, layer, extra, what = m.groups()
        where = (int(direction), int(layer))
        if extra is not None or (where not in index and where != unused):
            raise CheckpointError(
                f"official key {key} is not a layer of this two-way SN-Net: pass the config of the official run"
            )
        if where == unused:
            dropped.add(key)
            continue
        name = f"transform.{what}" if what in ("weight", "bias") else what  # snnet keeps A, B beside the base
        out[f"stitch_layers.{index[where]}.{name}"] = value
    if dropped:
        log(
            f"official SN-Netv2 layer stitch_layers.{unused[0]}.{unused[1]} dropped: it serves only the official "
            f"cfg {net.anchor_adapters[0].num_blocks + 1} (small -> large after the small anchor's last block), "
            f"which the official code never trains or evaluates"
        )
    return out


def convert_official_state(
    state: Mapping[str, torch.Tensor], net, log: Callable[[str], None] = _logger.info
) -> dict[str, torch.Tensor]:
    """An official checkpoint's weights under snnet's keys for ``net``: an SN-Net checkpoint's for
    ``net`` built with ``official_forward=True`` from the matching anchors and stages, an
    SN-Netv2 checkpoint's for a two-way ``net`` (:func:`official_v2_layer_index`)."""
    from .checkpoint import describe_mismatch

    v2 = official_forward_of({"model": state}) == "v2" or net.config.get("stitching") == "two-way"
    out = _anchor_states(state, net)
    out.update(_v2_layers(state, net, log) if v2 else _v1_layers(state, net))
    problem = describe_mismatch(out, net)
    if problem:
        raise CheckpointError(
            f"the official checkpoint does not match this SN-Net: {problem}; pass the config of the "
            f"official run (its anchors, and --stages where it differs)"
        )
    return out


def load_snnet_state(
    net, state: Mapping[str, torch.Tensor], source: str, check: str, log: Callable[[str], None] = _logger.info
) -> None:
    """``state`` (snnet's layout, or an official checkpoint's, mapped onto ``net``) into ``net``;
    a mismatch is one :class:`CheckpointError` naming ``source`` and the arguments to ``check``.
    An official SN-Net state needs ``net`` built with ``official_forward=True``, an SN-Netv2 one
    a two-way ``net`` (natural forward)."""
    from .checkpoint import describe_mismatch

    if is_official_state(state):
        state = convert_official_state(state, net, log)
    problem = describe_mismatch(state, net)
    if problem:
        raise CheckpointError(f"{source} does not match the model: {problem}; check {check}")
    net.load_state_dict(state)


def load_initial_weights(net, ckpt: Mapping[str, Any], path: str, log: Callable[[str], None] = _logger.info) -> None:
    """Weights of a train.py or an official SN-Net checkpoint into ``net`` (no optimizer state)."""
    from .checkpoint import extract_state_dict

    load_snnet_state(
        net,
        extract_state_dict(ckpt),
        f"--initial-checkpoint {path}",
        "--anchors, --model-kwargs, --anchor-kwargs and --num-classes",
        log,
    )
