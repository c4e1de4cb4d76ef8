"""Composed networks as SN-Nets: the pool's anchors plus the chosen routes, their stitching
layers set to the cached least-squares solutions; and :func:`generate`, the Python API."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from ..core.model import SNNet
from ..core.routes import Route
from .junctions import JunctionTable
from .search import Candidate, SearchConfig, sample_network, search


def compose_snnet(pool: SNNet, table: JunctionTable, candidates: Sequence[Candidate]) -> SNNet:
    """An SN-Net over the pool's anchors (the same modules, no copies) holding the anchors
    (cfg_ids ``0 .. P-1``) and then the candidates (cfg_ids ``P, P+1, ...``), every junction's
    linear stitching layer set to its least-squares solution from ``table`` (one layer per
    distinct junction, ``create_snnet(..., routes=...)``'s rule). ``net.compositions[cfg_id]``
    is the candidate behind a composed network."""
    routes = [Route(c.segments, tuple(range(len(c.segments) - 1))) for c in candidates]
    net = SNNet(
        pool.anchor_adapters,
        routes=routes,
        stitch_layer="linear",
        class_token=table.class_token,
        prefix_tokens=table.prefix_tokens,
    )
    param = next(pool.parameters())
    for spec, layer in zip(net.layer_specs, net.stitch_layers):
        ((j, k),) = spec.positions
        solved = table.junction((spec.front, j + 1), (spec.back, k))
        layer.to(param.device).set_weights(solved.weight, solved.bias)
    net.compositions = {len(pool.anchor_adapters) + n: c for n, c in enumerate(candidates)}
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
    self_junctions: bool = True,
) -> Iterator[tuple[float, SNNet]]:
    """StitchNet's ``generate`` over a pool of networks: yields ``(score, net)`` for every composed
    network the search reaches (depth first), or one random network with ``sample=True`` (the
    same for the same ``seed``); at most ``max_networks``. ``self_junctions=False`` joins different
    pool networks only (see :class:`~snnet.compose.search.SearchConfig`).

    ``pool`` is an SN-Net whose anchors are the pool's networks (e.g. ``create_snnet([...])``);
    ``images`` the stitching images (StitchNet uses 32). Each ``net`` is an SN-Net over the
    pool's anchors holding that one route, selected (cfg_id ``len(pool anchors)``), its stitching
    layers least-squares initialised: its FLOPs table, export and predict work as for any
    SN-Net; ``net.compositions[net.cfg_id]`` holds the fragments and junction scores. Pass
    ``table`` to reuse the features and junctions of an earlier call on the same images.
    """
    cfg = SearchConfig(threshold, total_threshold, max_depth, top_k, self_junctions)
    if table is None:
        table = JunctionTable(
            pool.anchor_adapters, images, class_token=pool.class_token, prefix_tokens=pool.prefix_tokens
        )
    found = iter([sample_network(table, cfg, seed)]) if sample else search(table, cfg)
    for n, candidate in enumerate(found):
        if max_networks is not None and n >= max_networks:
            return
        net = compose_snnet(pool, table, [candidate])
        yield candidate.score, net.select(len(pool.anchor_adapters))
