"""Seeded data order and augmentation, so that a run repeats exactly and a resumed run continues
the very same sequence:

* **Data order.** :class:`EpochSampler` is a ``DistributedSampler`` whose order depends only on
  ``(seed, epoch)`` (also with one process) and which can start after the first ``k`` batches
  of an epoch, which is how a run resumed inside an epoch skips the batches already trained
  on without loading them.
* **Augmentation.** :class:`SeededSamples` seeds python/numpy/torch before loading each sample
  from ``(seed, epoch, index)``: an image's crop, flip, RandAugment and random erasing are the
  same whichever worker, process count or resume loads it.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, get_worker_info


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
