"""What a training run measures: each step's loss, kept on the device until it is read
(:class:`PendingSteps`), the per-step records in ``steps.jsonl`` (:class:`StepLog`), and each
epoch's validation of chosen networks through eval.py's shared-prefix sweep."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch

from ..core.model import SNNet
from ..data.loaders import Normalize
from ..distributed import all_reduce_sum
from ..evaluate.sweep import metrics_of, sweep_pass


class PendingSteps:
    """The steps trained since their losses were last read, the losses still on the device.

    Reading a loss on the host waits for its step to finish on the GPU, so the trainer reads them
    in one go: once per log interval and before every checkpoint (:meth:`read`).
    """

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.losses: list[torch.Tensor] = []

    def add(self, record: dict, loss: torch.Tensor) -> None:
        self.records.append(record)
        self.losses.append(loss.detach().float().reshape(()))

    def read(self, world_size: int) -> tuple[list[dict], Optional[int]]:
        """The pending records with ``loss`` (this process's) and ``global_loss`` (the mean over
        processes) filled in, and the index of the first non-finite one on any process (None if
        all are finite). Collective: every rank has the same steps pending."""
        if not self.records:
            return [], None
        local = torch.stack(self.losses)
        summed = torch.stack([local, (~torch.isfinite(local)).float()])
        all_reduce_sum(summed)
        values = torch.cat([local, summed.flatten()]).tolist()  # the one host sync
        k = len(self.records)
        records, self.records, self.losses = self.records, [], []
        first_bad = None
        for i, record in enumerate(records):
            record.update(loss=values[i], global_loss=values[k + i] / world_size)
            if first_bad is None and (values[2 * k + i] > 0 or not math.isfinite(record["global_loss"])):
                first_bad = i
        return records, first_bad


class StepLog:
    """Per-step records (one JSON line per rank and optimizer step) in the run folder's steps.jsonl."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        os.write(self.fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


@torch.no_grad()
def validate(
    net: SNNet, loader, prep: Normalize, cfg_ids: list[int], autocast, max_batches: Optional[int] = None
) -> dict[int, dict[str, float]]:
    """Top-1/top-5/loss of each network in ``cfg_ids``, in that order, from one pass over the
    (sharded) data that shares the networks' common prefixes (eval.py's sweep), summed over
    processes."""
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    sums = sweep_pass(net, batches, cfg_ids, prep, autocast, device=prep.device).all_reduce()
    by_id = {r["cfg_id"]: metrics_of(r) for r in sums.records()}
    return {c: by_id[c] for c in cfg_ids}


def summarize(per_net: dict[int, dict[str, float]], prefix: str = "") -> OrderedDict:
    """Mean top-1/top-5/loss over the validated networks, and each network's top-1."""
    row: OrderedDict = OrderedDict()
    for m in ("top1", "top5", "loss"):
        row[prefix + m] = sum(v[m] for v in per_net.values()) / len(per_net)
    for cfg, v in per_net.items():
        row[f"{prefix}top1_net{cfg}"] = v["top1"]
    return row
