"""The latency controller of ``serve.py --slo-ms P99``: which frontier network serves the
requests that carry no budget, so that their p99 latency stays under the target.

It watches three things: the queue (images waiting), the arrival rate and the time per image
each network has taken in its recent batches (a moving average; networks not run yet are
estimated from a measured one by their cost: the sweep's latency when it has one, else FLOPs),
and a sliding window of the requests' own latencies. From them it predicts, per network, the
utilisation ``rate x time per image`` and the latency of a request arriving now,
``(queue + 1) x time per image + max wait``.

Moving down is immediate: when the current network cannot keep up (utilisation above
``down_utilisation``) or the predicted latency would pass ``down_at`` of the target, it moves to
the most accurate network that can (the cheapest when none can). Moving up is one frontier step
at a time, at least ``cooldown_s`` after the last switch, and only when the next network would
stay well inside (``up_utilisation``, ``up_at``) and the window's measured p99 is below
``up_at`` of the target: the gap between the two thresholds is the hysteresis that keeps it from
flapping. Requests are never dropped: a cheaper network is how load is shed.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

MovingWindow = collections.deque


@dataclass(frozen=True)
class ControllerSettings:
    """The controller's thresholds (fractions of the p99 target ``slo_ms``, and utilisations)."""

    slo_ms: float
    max_wait_ms: float = 0.0
    window_s: float = 2.0
    cooldown_s: float = 1.0
    down_at: float = 0.9
    up_at: float = 0.6
    down_utilisation: float = 0.85
    up_utilisation: float = 0.6
    min_rate_span_s: float = 0.5  # a rate is measured over this long at least
    smoothing: float = 0.3  # weight of the newest batch in the time-per-image average


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by the nearest-rank rule (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


class LatencyController:
    """Chooses among ``frontier`` (cfg_ids ascending in cost and accuracy; ``costs`` their
    relative costs) starting at ``start``; ``log`` gets one line per switch."""

    def __init__(
        self,
        frontier: Sequence[int],
        costs: Sequence[float],
        start: int,
        settings: ControllerSettings,
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.frontier = list(frontier)
        self.costs = dict(zip(frontier, costs))
        self.top = self.frontier.index(start)
        self.index = self.top
        self.settings = settings
        self.log = log
        self.clock = clock
        self.seconds_per_image: dict[int, float] = {}
        self.latencies: MovingWindow = MovingWindow()  # (time, seconds)
        self.arrivals: MovingWindow = MovingWindow()  # (time, images)
        self.last_switch = clock()
        self.switches = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> int:
        return self.frontier[self.index]

    # observations --------------------------------------------------------------------------
    def arrived(self, images: int) -> None:
        with self._lock:
            self.arrivals.append((self.clock(), images))

    def served(self, cfg_id: int, images: int, seconds: float) -> None:
        """A batch of ``images`` ran on ``cfg_id`` in ``seconds``."""
        with self._lock:
            per_image = seconds / max(1, images)
            old = self.seconds_per_image.get(cfg_id)
            a = self.settings.smoothing
            self.seconds_per_image[cfg_id] = per_image if old is None else (1 - a) * old + a * per_image

    def completed(self, seconds: float) -> None:
        """A request was answered ``seconds`` after it arrived."""
        with self._lock:
            self.latencies.append((self.clock(), seconds))

    # predictions ---------------------------------------------------------------------------
    def _trim(self, now: float) -> None:
        for window in (self.latencies, self.arrivals):
            while window and window[0][0] < now - self.settings.window_s:
                window.popleft()

    def _rate(self, now: float) -> float:
        """Images per second over the window, measured over the span the arrivals cover (not the
        whole window: a burst that began a moment ago counts at its own rate)."""
        if not self.arrivals:
            return 0.0
        span = max(now - self.arrivals[0][0], self.settings.min_rate_span_s)
        return sum(n for _, n in self.arrivals) / span

    def _time_per_image(self, cfg_id: int) -> Optional[float]:
        if cfg_id in self.seconds_per_image:
            return self.seconds_per_image[cfg_id]
        if not self.seconds_per_image:
            return None
        # scale the measured network nearest in cost: one network's overheads resemble its neighbour's
        ref = min(self.seconds_per_image, key=lambda c: abs(self.costs[c] - self.costs[cfg_id]))
        return self.seconds_per_image[ref] * self.costs[cfg_id] / self.costs[ref]

    def _predict(self, index: int, queue: int, rate: float) -> tuple[float, float]:
        """(utilisation, predicted latency in ms) of frontier network ``index``."""
        per_image = self._time_per_image(self.frontier[index])
        if per_image is None:
            return 0.0, 0.0
        return rate * per_image, 1000 * (queue + 1) * per_image + self.settings.max_wait_ms

    # the decision --------------------------------------------------------------------------
    def choose(self, queue: int) -> int:
        """The network for the next batch, with ``queue`` images waiting (switching if needed)."""
        with self._lock:
            now = self.clock()
            self._trim(now)
            rate = self._rate(now)
            p99 = 1000 * percentile([s for _, s in self.latencies], 0.99)
            s, slo = self.settings, self.settings.slo_ms
            util, latency = self._predict(self.index, queue, rate)
            if self.index > 0 and (util > s.down_utilisation or latency > s.down_at * slo):
                target = 0
                for i in range(self.index - 1, -1, -1):
                    u, lat = self._predict(i, queue, rate)
                    if u <= s.down_utilisation and lat <= s.down_at * slo:
                        target = i
                        break
                reason = (
                    f"predicted latency {latency:.1f} ms (queue {queue} images), utilisation {util:.2f} at "
                    f"{rate:.1f} images/s: above {s.down_at:g} x slo {slo:g} ms or {s.down_utilisation:g}"
                )
                self._switch(target, now, reason)
            elif self.index < self.top and now - self.last_switch >= s.cooldown_s and p99 <= s.up_at * slo:
                u, lat = self._predict(self.index + 1, queue, rate)
                if u <= s.up_utilisation and lat <= s.up_at * slo:
                    reason = (
                        f"load fell: window p99 {p99:.1f} ms, next network predicted {lat:.1f} ms, utilisation "
                        f"{u:.2f} at {rate:.1f} images/s: within {s.up_at:g} x slo {slo:g} ms and {s.up_utilisation:g}"
                    )
                    self._switch(self.index + 1, now, reason)
            return self.current

    def _switch(self, index: int, now: float, reason: str) -> None:
        old = self.current
        self.index = index
        self.last_switch = now
        self.switches += 1
        direction = "down" if index < self.frontier.index(old) else "up"
        self.log(f"slo: switch {direction} cfg_id {old} -> {self.current}: {reason}")
