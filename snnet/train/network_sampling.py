"""Which network each training step trains: seeded network samplers, saved in checkpoints.

:class:`NetworkSampler` draws the ``cfg_id`` of each optimizer step from its own
``torch.Generator``. The documented rule (``tests/test_distributed.py`` re-implements it)::

    g = torch.Generator().manual_seed(sampler_seed(seed, rank, per_rank))
    for every step:  cfg_id = int(torch.multinomial(weights, 1, generator=g))

with ``weights`` a float64 tensor, all ones for uniform sampling. By default every rank uses
the same seed, so all ranks train the same network at the same step and gradients average over
one network; ``--sample-per-rank`` gives each rank its own stream. :class:`FlopsGroupSampler` is
SN-Netv2's FLOPs-balanced sampling (``--sample-by flops-groups``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError

SAMPLE_WEIGHT_KEYWORDS = ("uniform", "flops", "params")


def sampler_seed(seed: int, rank: int = 0, per_rank: bool = False) -> int:
    """Seed of the network sampler: ``seed`` on every rank, or ``seed + 1000 * (rank + 1)`` per rank."""
    return seed + 1000 * (rank + 1) if per_rank else seed


def resolve_sample_weights(spec: Optional[Sequence[Any] | str], net) -> Optional[list[float]]:
    """``--sample-weights`` -> one weight per network (None: uniform).

    ``spec`` is None/``uniform``, ``flops`` or ``params`` (proportional to each network's FLOPs or
    parameter count, favouring the large networks), or one number per network in cfg_id order.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = [spec]
    spec = list(spec)
    n = net.num_stitches
    if len(spec) == 1 and isinstance(spec[0], str) and spec[0].lower() in SAMPLE_WEIGHT_KEYWORDS:
        kind = spec[0].lower()
        if kind == "uniform":
            return None
        if kind == "params":
            return [float(net.num_params(i)) for i in range(n)]
        import warnings

        from ..core.flops import stitches_flops

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fvcore's tracing warnings
            return [float(f) for f in stitches_flops(net)]
    try:
        weights = [float(w) for w in spec]
    except (TypeError, ValueError):
        raise ConfigError(
            f"--sample-weights {' '.join(map(str, spec))}: give 'uniform', 'flops', 'params' or {n} numbers (one per network)"
        ) from None
    if len(weights) != n:
        raise ConfigError(
            f"--sample-weights has {len(weights)} numbers but this SN-Net has {n} networks: give one per cfg_id"
        )
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError("--sample-weights must be finite, non-negative and not all zero")
    return weights


class NetworkSampler:
    """Draws the network (cfg_id) each training step trains; see the module docstring for the rule."""

    def __init__(
        self,
        num_networks: int,
        seed: int,
        rank: int = 0,
        per_rank: bool = False,
        weights: Optional[Sequence[float]] = None,
    ):
        if num_networks < 1:
            raise ConfigError("nothing to sample: the SN-Net has no networks")
        self.num_networks = num_networks
        self.per_rank = per_rank
        w = (
            torch.ones(num_networks, dtype=torch.float64)
            if weights is None
            else torch.tensor(list(weights), dtype=torch.float64)
        )
        if w.numel() != num_networks:
            raise ConfigError(f"{w.numel()} sampling weights for {num_networks} networks")
        self.weights = w
        self.generator = torch.Generator().manual_seed(sampler_seed(seed, rank, per_rank))

    def draw(self) -> int:
        return int(torch.multinomial(self.weights, 1, generator=self.generator))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "per_rank": self.per_rank, "weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


SAMPLE_BY = ("networks", "flops-groups")


def group_by_flops(flops: Sequence[float], gap_gflops: float) -> list[list[int]]:
    """The official ``group_subnets_by_flops``: cfg_ids sorted by FLOPs (ties by cfg_id); a new
    group starts at a network more than ``gap_gflops`` GFLOPs above the first network of the
    current group (the reference starts at 0 GFLOPs); cfg_ids sorted inside each group."""
    groups: list[list[int]] = []
    current: list[int] = []
    reference = 0.0
    for cfg_id in sorted(range(len(flops)), key=lambda i: flops[i]):
        g = flops[cfg_id] / 1e9
        if abs(reference - g) > gap_gflops:
            if current:
                groups.append(sorted(current))
            current, reference = [cfg_id], g
        else:
            current.append(cfg_id)
    if current:
        groups.append(sorted(current))
    return groups


def flops_group_weights(num_groups: int, k: Optional[float] = None) -> torch.Tensor:
    """Uniform over groups, or the official linearly increasing ``i / k + 1 / num_groups``
    (normalised; favours the groups of larger networks) when ``k`` is given."""
    if k is None:
        return torch.ones(num_groups, dtype=torch.float64)
    if not k > 0:
        raise ConfigError(f"--flops-sampling-k must be > 0, got {k}")
    w = torch.tensor([i / k + 1 / num_groups for i in range(num_groups)], dtype=torch.float64)
    return w / w.sum()


class FlopsGroupSampler(NetworkSampler):
    """SN-Netv2's FLOPs-balanced sampling: a FLOPs group (:func:`group_by_flops`), then a network
    of that group uniformly; see the module docstring for the rule."""

    def __init__(
        self,
        flops: Sequence[float],
        gap_gflops: float,
        seed: int,
        rank: int = 0,
        per_rank: bool = False,
        k: Optional[float] = None,
    ):
        if not gap_gflops >= 0:
            raise ConfigError(f"--flops-gap must be >= 0 GFLOPs, got {gap_gflops}")
        super().__init__(len(flops), seed, rank, per_rank)
        self.groups = group_by_flops(flops, gap_gflops)
        self.group_weights = flops_group_weights(len(self.groups), k)

    def draw(self) -> int:
        members = self.groups[int(torch.multinomial(self.group_weights, 1, generator=self.generator))]
        return members[int(torch.randint(len(members), (1,), generator=self.generator))]

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "groups": [list(g) for g in self.groups],
            "group_weights": self.group_weights.clone(),
        }


def create_network_sampler(
    net,
    sample_by: str,
    seed: int,
    rank: int = 0,
    per_rank: bool = False,
    sample_weights: Optional[Sequence[Any] | str] = None,
    flops_gap: float = 1.0,
    flops_sampling_k: Optional[float] = None,
) -> NetworkSampler:
    """The sampler ``--sample-by`` asks for: per network (``--sample-weights``) or per FLOPs group."""
    if sample_by == "networks":
        if flops_sampling_k is not None:
            raise ConfigError("--flops-sampling-k weighs FLOPs groups: add --sample-by flops-groups or drop it")
        weights = resolve_sample_weights(sample_weights, net)
        if net.anchors_frozen:  # --train-only stitching: an anchor network has nothing to train
            weights = [0.0 if s.is_anchor else w for s, w in zip(net.stitches, weights or [1.0] * net.num_stitches)]
            if not any(weights):
                raise ConfigError(
                    "--train-only stitching trains stitched networks, but this SN-Net has none with a sampling weight: "
                    "add --routes or drop --train-only"
                )
        return NetworkSampler(net.num_stitches, seed, rank, per_rank, weights)
    if net.anchors_frozen:
        raise ConfigError("--train-only stitching draws stitched networks one by one: use --sample-by networks")
    if sample_by != "flops-groups":
        raise ConfigError(f"unknown --sample-by '{sample_by}': use one of {', '.join(SAMPLE_BY)}")
    if sample_weights is not None:
        raise ConfigError(
            "--sample-weights weighs single networks, --sample-by flops-groups weighs FLOPs groups: drop one of them"
        )
    import warnings

    from ..core.flops import stitches_flops

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's tracing warnings
        flops = stitches_flops(net)
    return FlopsGroupSampler(flops, flops_gap, seed, rank, per_rank, flops_sampling_k)
