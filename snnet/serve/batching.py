"""Dynamic batching: requests wait in one queue; a worker thread forms batches of requests for
the same network (at most ``max_batch_size`` images, the first request waiting at most
``max_wait_ms`` for more) and runs them under ``torch.inference_mode``, so the event loop that
reads requests and writes answers never waits for the model.

A request's network is decided when its batch is formed, not when it arrives: a request that
arrived under heavy load is served by the network the controller chose for the queue it is in.
A request with a budget gets its budget's network; while the controller sheds load (it serves
below its top network) it gets the controller's network when that is cheaper.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


@dataclass
class Job:
    """One request's images (a normalised-to-be uint8 batch), its budget network and its answer."""

    images: torch.Tensor
    budget_cfg_id: Optional[int]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)
    cfg_id: Optional[int] = None

    def resolve(self, result: Any) -> None:
        self.loop.call_soon_threadsafe(_set, self.future, result)


def _set(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class Batcher:
    """The queue and its worker thread.

    ``run(cfg_id, images)`` computes one batch's answers (one per image, in order);
    ``choose(queue_images)`` names the network of a batch whose requests carry no budget (the
    controller, or always ``top``, the network served without load); ``rank`` orders cfg_ids by
    cost, so that a budget network and the controller's are compared; ``on_batch(cfg_id, images, seconds)`` is told of
    every batch; ``tick()`` is called about every ``tick_s`` while idle (the controller moves up
    when load has fallen even if no request comes).
    """

    def __init__(
        self,
        run: Callable[[int, torch.Tensor], list],
        choose: Callable[[int], int],
        top: int,
        rank: dict[int, int],
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int, int, float], None] = lambda *_: None,
        tick_s: float = 0.25,
    ):
        self.run, self.choose, self.top, self.rank = run, choose, top, rank
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self.tick_s = tick_s
        self.queue: collections.deque[Job] = collections.deque()
        self.queued_images = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="snnet-serve-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish every queued job, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def submit(self, job: Job) -> None:
        with self._cond:
            self.queue.append(job)
            self.queued_images += len(job.images)
            self._cond.notify_all()

    def _network(self, job: Job, current: int) -> int:
        if job.budget_cfg_id is None:
            return current
        if current == self.top:  # no load to shed: the budget's network, even above the default
            return job.budget_cfg_id
        return min(job.budget_cfg_id, current, key=lambda c: self.rank[c])

    def _take(self) -> Optional[tuple[int, list[Job]]]:
        """Wait for a batch: the oldest job and the later ones of its network that fit."""
        with self._cond:
            while not self.queue:
                if self._stopping:
                    return None
                if not self._cond.wait(timeout=self.tick_s):
                    self.choose(0)  # idle: let the controller see the load has gone
            current = self.choose(self.queued_images)
            cfg_id = self._network(self.queue[0], current)
            deadline = self.queue[0].arrived + self.max_wait_s
            while True:
                batch, size = [], 0
                for job in self.queue:
                    if self._network(job, current) == cfg_id and (
                        not batch or size + len(job.images) <= self.max_batch_size
                    ):
                        batch.append(job)
                        size += len(job.images)
                    if size >= self.max_batch_size:
                        break
                wait = deadline - time.monotonic()
                if size >= self.max_batch_size or wait <= 0 or self._stopping:
                    break
                self._cond.wait(timeout=wait)
            for job in batch:
                self.queue.remove(job)
                job.cfg_id = cfg_id
            self.queued_images -= size
            return cfg_id, batch

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            cfg_id, jobs = taken
            images = torch.cat([j.images for j in jobs])
            start = time.perf_counter()
            try:
                with torch.inference_mode():
                    answers = self.run(cfg_id, images)
            except Exception as e:  # a model failure answers these requests with it; the worker goes on
                for job in jobs:
                    job.resolve(e)
                continue
            self.on_batch(cfg_id, len(images), time.perf_counter() - start)
            offset = 0
            for job in jobs:
                job.resolve(answers[offset : offset + len(job.images)])
                offset += len(job.images)
