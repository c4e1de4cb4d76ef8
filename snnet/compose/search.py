"""StitchNet's search over chains of fragments, on a :class:`~snnet.compose.junctions.JunctionTable`.

A composed network is a chain of *fragments*, block ranges of pool networks (the segments of a
:class:`~snnet.core.routes.Route`): the first starts at a network's stem, the last ends at a
network's head, and consecutive fragments meet at a junction. Its score is the product of its
junctions' scores. The search (StitchNet's ``generate``) starts from every first fragment
``a[:i]`` and, at each junction, keeps the ``top_k`` best next entries ``(b, k)`` whose score is at
least ``threshold`` and for which the running product stays at least ``total_threshold``; the
fragment entered at ``b[k:]`` either runs to ``b``'s head (a finished network) or, while the
network has fewer than ``max_depth`` fragments, leaves at any later boundary for the next
junction. ``sample`` walks one random path of the same tree instead.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from ..core.routes import Segment
from ..errors import ConfigError
from .junctions import Boundary, JunctionTable


@dataclass(frozen=True)
class Candidate:
    """A composed network: its fragments and the score of each junction between them."""

    segments: tuple[Segment, ...]
    junction_scores: tuple[float, ...]

    @property
    def score(self) -> float:
        return math.prod(self.junction_scores)

    @property
    def junctions(self) -> list[tuple[Boundary, Boundary]]:
        """``((a, i), (b, k))`` of every junction, in order."""
        return [((s.anchor, s.stop), (t.anchor, t.start)) for s, t in zip(self.segments[:-1], self.segments[1:])]


@dataclass(frozen=True)
class SearchConfig:
    """StitchNet's knobs: ``threshold`` per junction, ``total_threshold`` for the product,
    ``max_depth`` fragments at most, ``top_k`` next entries kept per junction.
    ``self_junctions``: a junction may also lead back into the network it leaves (skipping or
    repeating its blocks), as StitchNet's fragments may; False keeps only junctions between
    different pool networks."""

    threshold: float = 0.9
    total_threshold: float = 0.5
    max_depth: int = 3
    top_k: int = 5
    self_junctions: bool = True

    def __post_init__(self):
        for name in ("threshold", "total_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {value} is outside [0, 1]: scores are CKA values, pass e.g. {flag} 0.5")
        if self.max_depth < 2:
            raise ConfigError(
                f"--max-depth {self.max_depth} allows no junction: a composed network has at least 2 fragments, "
                f"pass --max-depth 2 or more"
            )
        if self.top_k < 1:
            raise ConfigError(f"--top-k {self.top_k} keeps no next fragment: pass --top-k 1 or more")


def _starts(table: JunctionTable) -> list[Boundary]:
    """Every first fragment ``a[:i]`` (at least one block), as the boundary it leaves at."""
    return [(a, i) for a in range(len(table.adapters)) for i in range(1, table.depth(a) + 1)]


def _next(table: JunctionTable, src: Boundary, total: float, cfg: SearchConfig) -> list[tuple[float, Boundary]]:
    """The ``top_k`` best junctions leaving ``src`` above ``threshold`` that keep the running
    product ``total`` at least ``total_threshold``."""
    ranked = table.ranked(src) if cfg.self_junctions else [(c, d) for c, d in table.ranked(src) if d[0] != src[0]]
    best = [(c, dst) for c, dst in ranked if c >= cfg.threshold][: cfg.top_k]
    return [(c, dst) for c, dst in best if total * c >= cfg.total_threshold]


def search(table: JunctionTable, cfg: SearchConfig) -> Iterator[Candidate]:
    """Every composed network the search reaches, depth first (StitchNet's order: a start, then
    its best junction's networks, ...)."""
    for a, i in _starts(table):
        yield from _extend(table, cfg, (Segment(a, 0, i),), ())


def _extend(
    table: JunctionTable, cfg: SearchConfig, segments: tuple[Segment, ...], scores: tuple[float, ...]
) -> Iterator[Candidate]:
    last = segments[-1]
    total = math.prod(scores)
    for c, (b, k) in _next(table, (last.anchor, last.stop), total, cfg):
        depth = table.depth(b)
        yield Candidate(segments + (Segment(b, k, depth),), scores + (c,))
        if len(segments) + 1 < cfg.max_depth:
            for m in range(k + 1, depth):
                yield from _extend(table, cfg, segments + (Segment(b, k, m),), scores + (c,))


def sample_network(table: JunctionTable, cfg: SearchConfig, seed: int, tries: int = 1000) -> Candidate:
    """One random network of the search's tree (StitchNet's ``sample=True``), the same for the
    same ``seed``: a random start, then at each junction a random one of the kept next entries
    and a random exit (the head, or a later boundary while fragments are left). A path that
    reaches no finished network is abandoned and another drawn."""
    rng = random.Random(seed)
    starts = _starts(table)
    for _ in range(tries):
        a, i = rng.choice(starts)
        segments, scores = (Segment(a, 0, i),), ()
        while True:
            options = _next(table, (segments[-1].anchor, segments[-1].stop), math.prod(scores), cfg)
            if not options:
                break
            c, (b, k) = rng.choice(options)
            depth = table.depth(b)
            exits = [depth] + (list(range(k + 1, depth)) if len(segments) + 1 < cfg.max_depth else [])
            m = rng.choice(exits)
            segments, scores = segments + (Segment(b, k, m),), scores + (c,)
            if m == depth:
                return Candidate(segments, scores)
    raise ConfigError(
        f"no composed network passes --threshold {cfg.threshold} and --total-threshold {cfg.total_threshold} "
        f"(tried {tries} random paths): lower the thresholds"
    )


def best_candidates(candidates: Iterable[Candidate], n: Optional[int] = None) -> list[Candidate]:
    """The ``n`` (default: all) best-scored candidates, best first (ties: search order)."""
    indexed = ((-c.score, order, c) for order, c in enumerate(candidates))
    chosen = heapq.nsmallest(n, indexed) if n is not None else sorted(indexed)
    return [c for _, _, c in chosen]
