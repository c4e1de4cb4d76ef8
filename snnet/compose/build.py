"""Composed networks as SN-Nets: the pool's anchors plus the chosen routes, their stitching
layers set to the cached least-squares solutions; and :func:`generate`, the Python API."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from ..core.model import SNNet
from ..core.routes import Route, anchor_route, route_name
from ..core.stitches import Stitch, StitchingLayerSpec
from .junctions import JunctionTable
from .search import Candidate, SearchConfig, sample_network, search


def candidate_route(candidate: Candidate, layer_of: dict) -> Route:
    """The candidate's route, its junctions numbered by ``layer_of`` (extended as needed)."""
    layers = []
    for src, dst in candidate.junctions:
        layers.append(layer_of.setdefault((src, dst), len(layer_of)))
    return Route(candidate.segments, tuple(layers))


def compose_snnet(pool: SNNet, table: JunctionTable, candidates: Sequence[Candidate]) -> SNNet:
    """An SN-Net over the pool's anchors (the same modules, no copies) holding the anchors
    (cfg_ids ``0 .. P-1``) and then the candidates (cfg_ids ``P, P+1, ...``), every junction's
    stitching layer set to its least-squares solution from ``table`` (one layer per distinct
    junction). ``net.compositions[cfg_id]`` is the candidate behind a composed network."""
    adapters = pool.anchor_adapters
    names, depths = [a.name for a in adapters], [a.num_blocks for a in adapters]
    net = SNNet(adapters, stitch_layer="linear")
    stitches = [Stitch(i, a.name, anchor_route(i, a.num_blocks)) for i, a in enumerate(adapters)]
    layer_of: dict = {}
    for c in candidates:
        route = candidate_route(c, layer_of)
        stitches.append(Stitch(len(stitches), route_name(route, names, depths), route, 0))
    specs = [StitchingLayerSpec(a, b, 0, ((i - 1, k),)) for (a, i), (b, k) in layer_of]
    net.stitches, net.layer_specs = stitches, specs
    net.stitch_layers = nn.ModuleList(net._make_layer(spec, "linear", 1) for spec in specs)
    param = next(pool.parameters())
    for (src, dst), layer in zip(layer_of, net.stitch_layers):
        solved = table.junction(src, dst)
        layer.to(param.device).set_weights(solved.weight, solved.bias)
    net.compositions = {len(adapters) + n: c for n, c in enumerate(candidates)}
    return net.eval()


def generate(
    pool: SNNet,
    images: torch.Tensor,
    threshold: float = 0.9,
    total_threshold: float = 0.5,
    max_depth: int = 3,
    top_k: int = 5,
    sample: bool = False,
    seed: int = 0,
    max_networks: Optional[int] = None,
    table: Optional[JunctionTable] = None,
) -> Iterator[tuple[float, SNNet]]:
    """StitchNet's ``generate`` over a pool of networks: yields ``(score, net)`` for every composed
    network the search reaches (depth first), or one random network with ``sample=True`` (the
    same for the same ``seed``); at most ``max_networks``.

    ``pool`` is an SN-Net whose anchors are the pool's networks (e.g. ``create_snnet([...])``);
    ``images`` the stitching images (StitchNet uses 32). Each ``net`` is an SN-Net over the
    pool's anchors holding that one route, selected (cfg_id ``len(pool anchors)``), its stitching
    layers least-squares initialised: its FLOPs table, export and predict work as for any
    SN-Net; ``net.compositions[net.cfg_id]`` holds the fragments and junction scores. Pass
    ``table`` to reuse the features and junctions of an earlier call on the same images.
    """
    cfg = SearchConfig(threshold, total_threshold, max_depth, top_k)
    table = table if table is not None else JunctionTable(pool.anchor_adapters, images)
    found = iter([sample_network(table, cfg, seed)]) if sample else search(table, cfg)
    for n, candidate in enumerate(found):
        if max_networks is not None and n >= max_networks:
            return
        net = compose_snnet(pool, table, [candidate])
        yield candidate.score, net.select(len(pool.anchor_adapters))
