"""Seeded sampling for training: which network a step trains, which images it sees, and how.

Everything random in a training run is a function of ``--seed`` and of state that the
checkpoints save, so that a run repeats exactly and a resumed run continues the very same
sequence:

* **Networks.** :class:`NetworkSampler` draws the ``cfg_id`` of each optimizer step from its own
  ``torch.Generator``. The documented rule (``tests/test_distributed.py`` re-implements it)::

      g = torch.Generator().manual_seed(sampler_seed(seed, rank, per_rank))
      for every step:  cfg_id = int(torch.multinomial(weights, 1, generator=g))

  with ``weights`` a float64 tensor, all ones for uniform sampling. By default every rank uses
  the same seed, so all ranks train the same network at the same step and DDP averages
  gradients of one network; ``--sample-per-rank`` gives each rank its own stream.
* **Data order.** :class:`EpochSampler` is a ``DistributedSampler`` whose order depends only on
  ``(seed, epoch)`` (also with one process) and which can start after the first ``k`` batches
  of an epoch, which is how a run resumed inside an epoch skips the batches already trained
  on without loading them.
* **Augmentation.** :class:`SeededSamples` seeds python/numpy/torch before loading each sample
  from ``(seed, epoch, index)``: an image's crop, flip, RandAugment and random erasing are the
  same whichever worker, process count or resume loads it.
* **Process RNGs** (drop-path, Mixup/CutMix, batch-level random erasing) are the global
  torch/numpy/python generators; :func:`capture_rng_state` / :func:`restore_rng_state` put them
  into checkpoints as tensors and plain Python data.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

from .errors import ConfigError

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

        from .flops import stitches_flops

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
        return NetworkSampler(net.num_stitches, seed, rank, per_rank, resolve_sample_weights(sample_weights, net))
    if sample_by != "flops-groups":
        raise ConfigError(f"unknown --sample-by '{sample_by}': use one of {', '.join(SAMPLE_BY)}")
    if sample_weights is not None:
        raise ConfigError(
            "--sample-weights weighs single networks, --sample-by flops-groups weighs FLOPs groups: drop one of them"
        )
    import warnings

    from .flops import stitches_flops

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's tracing warnings
        flops = stitches_flops(net)
    return FlopsGroupSampler(flops, flops_gap, seed, rank, per_rank, flops_sampling_k)


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` over ``(epoch, index)`` keys, resumable inside an epoch.

    The permutation is ``torch.randperm(len(dataset))`` seeded with ``seed + epoch`` (exactly
    ``DistributedSampler``'s), padded to a multiple of the world size, and rank ``r`` takes
    positions ``r, r + world, ...``. So one process with batch ``2B`` and two processes with
    batch ``B`` put the same images in each global batch. ``set_epoch(epoch, skip_batches=k)``
    starts after the first ``k`` batches of this rank.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int, shuffle: bool = True
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.skip :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextmanager
def _seeded(seed: int):
    """Seed python, numpy and torch (CPU); in the main process, restore their states afterwards."""
    in_main = get_worker_info() is None
    if in_main:
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32 - 1))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if in_main:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class SeededSamples(Dataset):
    """Wraps a dataset indexed by ``(epoch, index)``: each sample's augmentation is seeded from
    ``(seed, epoch, index)`` so it does not depend on workers, world size or resumes."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with _seeded(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]


def capture_rng_state() -> dict[str, Any]:
    """The process's python/numpy/torch RNG states as tensors and plain Python data."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32 - 1))
    torch.manual_seed(seed)
