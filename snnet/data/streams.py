"""WebDataset shards as snnet's training and evaluation data, read by timm's ``ReaderWds``.

timm's reader decides which shards a process reads from ``torch.distributed`` and the DataLoader
worker it runs in, and seeds its sample shuffle from the worker's seed. :class:`ShardStream`
makes that a function of ``(seed, epoch, rank, worker)`` only, so that a run and its resume read
the very same stream:

* a fresh timm dataset per pass (per epoch), built in the process that iterates it, with the
  rank and world size of the main process (a DataLoader worker has no process group);
* the sample-shuffle seed and each sample's augmentation seed drawn from
  ``(seed, epoch, rank, worker[, position])``, not from the DataLoader's per-iterator base seed.

Shard ``k`` of the (epoch-shuffled) list goes to global worker ``k mod (world x workers)``, so
every rank's every loader worker needs at least one shard: at least ``world x max(1, workers)``
shards in all (docs/data.md).
"""

from __future__ import annotations

import copy
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..errors import DataError
from .samplers import _seeded


def _stream_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ShardStream(torch.utils.data.IterableDataset):
    """One split of WebDataset shards (``root``, timm's ``split`` string) as an iterable dataset of
    ``(image, int label)`` with a settable ``transform``, classes when known, and a length.

    :meth:`configure` sets what a pass depends on (training or not, seed, rank, world size,
    batch size); :meth:`set_epoch` the epoch.
    """

    def __init__(self, root, split, num_samples, input_key, target_key, class_map: str, img_mode: str):
        from timm.data.readers.reader_wds import _load_info, _parse_split_info

        self.root, self.split, self.img_mode = str(root), split, img_mode
        self.keys = {k: v for k, v in (("input_key", input_key), ("target_key", target_key)) if v}
        info = _load_info(self.root)
        try:
            split_info = _parse_split_info(split, info)
        except RuntimeError:
            raise DataError(
                f"split '{split}' is not in {root}/_info.json (splits: {', '.join(info.get('splits', {}))}): "
                f"fix --train-split/--val-split"
            ) from None
        self.shards = [os.path.join(self.root, f) for f in split_info.filenames]
        self.num_samples = int(num_samples or split_info.num_samples or 0)
        if not self.shards or (split_info.num_samples == 0 and split_info.shard_lengths):
            raise DataError(f"split '{split}' of {root} is empty: pick another with --train-split/--val-split")
        self.classes = self._class_names(class_map, info)
        self._probe_first_sample()
        self.transform = None
        self.is_training, self.seed, self.rank, self.world, self.batch_size, self.epoch = False, 0, 0, 1, 1, 0

    def _class_names(self, class_map: str, info: dict) -> Optional[list[str]]:
        if class_map:
            from timm.data.readers.class_map import load_class_map

            return list(load_class_map(class_map))
        names = info.get("classes")  # snnet's writers put the class names in _info.json
        return [str(n) for n in names] if names else None

    def _probe_first_sample(self) -> None:
        """Refuse now what timm's reader would skip sample by sample (its handler logs and goes on):
        a label that is not an integer, a missing image or label key."""
        image_keys = self.keys.get("input_key", "jpg;png;webp").split(";")
        label_key = self.keys.get("target_key")
        with tarfile.open(self.shards[0]) as tar:
            members = {}
            for m in tar:
                stem, _, ext = m.name.partition(".")
                if members and stem != next(iter(members.values()))[0]:
                    break
                members[ext] = (stem, tar.extractfile(m).read())
        if not any(k in members for k in image_keys):
            raise DataError(
                f"{self.shards[0]}: no image under {'/'.join(image_keys)} (keys: {', '.join(members)}): "
                f"pass --input-key <extension>"
            )
        if label_key:
            meta = json.loads(members.get("json", (None, b"{}"))[1])
            if label_key not in meta:
                raise DataError(f"{self.shards[0]}: no '{label_key}' in the json sidecar: pass --target-key <field>")
            label = meta[label_key]
        elif "cls" not in members:
            raise DataError(f"{self.shards[0]}: no .cls label file: pass --target-key <json field>")
        else:
            label = members["cls"][1].decode().strip()
        try:
            label = int(label)
        except ValueError:
            raise DataError(
                f"{self.shards[0]}: label '{label}' is a string: write class indices (0..N-1) and the names with "
                f"--class-map"
            ) from None
        if self.classes and not 0 <= label < len(self.classes):
            raise DataError(
                f"{self.shards[0]}: label {label} is outside the classes 0..{len(self.classes) - 1}: fix the labels, "
                f"or give all class names (--class-map)"
            )

    def configure(
        self, is_training: bool, seed: int, rank: int = 0, world: int = 1, batch_size: int = 1, workers: int = 0
    ):
        """What a pass depends on; the timm reader is built in the process that iterates. Refuses
        fewer shards than loader workers over all ranks (a worker without a shard reads nothing)."""
        if is_training and not self.num_samples:
            raise DataError(f"{self.root} split '{self.split}' has no sample count: pass --train-num-samples")
        readers = world * max(1, workers)
        if len(self.shards) < readers:
            raise DataError(
                f"split '{self.split}' has {len(self.shards)} shard(s) for {world} rank(s) x {max(1, workers)} loader "
                f"worker(s): each needs one; use --workers {max(0, len(self.shards) // world)} or write "
                f"at least {readers} shards"
            )
        self.is_training, self.seed, self.rank, self.world, self.batch_size = is_training, seed, rank, world, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples in the whole split (as a map-style dataset's length: eval.py checks its counts
        against it); a rank's share is :attr:`StreamLoader.num_samples`."""
        return self.num_samples

    def _reader(self, worker: int, workers: int):
        """timm's ReaderWds for this rank and worker, with seeds of (seed, epoch, rank, worker)."""
        from timm.data import create_dataset

        ds = create_dataset(
            "wds/" + Path(self.root).name, root=self.root, split=self.split, is_training=self.is_training,
            batch_size=self.batch_size, num_samples=self.num_samples or None, seed=self.seed,
            input_img_mode=self.img_mode, **self.keys,
        )  # fmt: skip
        r = ds.reader
        r.dist_rank, r.dist_num_replicas = self.rank, self.world
        r.set_epoch(self.epoch)
        # Set what _lazy_init would take from the DataLoader (whose base seed changes per iterator).
        r.worker_info, r.worker_id, r.num_workers = object(), worker, workers
        r.worker_seed = _stream_seed(self.seed, self.epoch, self.rank, worker)
        r.global_num_workers, r.global_worker_id = self.world * workers, self.rank * workers + worker
        return r

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        n_classes = len(self.classes) if self.classes else None
        for i, (image, target) in enumerate(self._reader(worker, workers)):
            if n_classes is not None and not 0 <= int(target) < n_classes:
                raise DataError(
                    f"label {target} in {self.root} is outside the classes 0..{n_classes - 1}: fix the labels"
                )
            if self.transform is not None:
                with _seeded(_stream_seed(self.seed, self.epoch, self.rank, worker, i)):
                    image = self.transform(image)
            yield image, int(target)


def first_images(stream: ShardStream, n: int) -> list:
    """The first ``n`` images of the split in shard order (no shuffle): a stream's LS-init images."""
    view = copy.copy(stream)  # the stream's own settings stay as they are
    view.is_training, view.world, view.rank, view.epoch, view.transform = False, 1, 0, 0, None
    images = []
    for image, _ in view:
        images.append(image)
        if len(images) == n:
            break
    return images


class StreamLoader:
    """The training loader of a :class:`ShardStream`, and its "sampler" for the trainer:
    ``set_epoch(epoch, skip_batches=k)``, ``num_samples`` (per rank).

    Resume: the interrupted epoch's stream is read again from its start and its first ``k``
    batches are decoded and dropped, so the run continues with exactly the batches (and
    augmentations) it would have had; the cost is reading those ``k`` batches again.
    """

    def __init__(self, stream: ShardStream, batch_size: int, workers: int, pin_memory: bool):
        self.stream, self.batch_size, self.workers, self.pin_memory = stream, batch_size, workers, pin_memory
        self.skip = 0

    @property
    def num_samples(self) -> int:
        """Training samples per rank per epoch (timm's: the split over the ranks, rounded up)."""
        return -(-len(self.stream) // self.stream.world)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.stream.set_epoch(epoch)
        self.skip = skip_batches

    def __iter__(self) -> Iterator:
        from itertools import islice

        from timm.data.loader import fast_collate

        loader = torch.utils.data.DataLoader(
            self.stream,
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=fast_collate,
            pin_memory=self.pin_memory,
            drop_last=True,
        )
        return islice(iter(loader), self.skip, None)
