"""Candidates scored per second by compose's search: every pool network's features at every block
boundary computed once and every junction solved and scored once (``JunctionTable``), against
recomputing per candidate (run the candidate's networks on the stitching images, solve and score
each of its junctions), side by side:

    .venv/bin/python benchmarks/bench_compose.py                      # the demo's three DeiT shapes
    .venv/bin/python benchmarks/bench_compose.py --images 32 --max-depth 3 --top-k 3 --recompute 40

Random weights (the work does not depend on them), random stitching images. The recomputing side
is timed on the first ``--recompute`` candidates of the search and its rate extrapolated; the
script checks that both sides give the same scores.
"""

from __future__ import annotations

import argparse
import math
import platform
import warnings

import torch
from timing import interleaved_medians

from snnet import create_snnet
from snnet.compose import JunctionTable, SearchConfig, search


def recompute_score(pool, candidate, images: torch.Tensor) -> float:
    """One candidate scored from scratch: its networks run on the images, its junctions solved."""
    involved = sorted({s.anchor for s in candidate.segments})
    local = {a: n for n, a in enumerate(involved)}
    table = JunctionTable([pool.anchor_adapters[a] for a in involved], images)
    scores = [table.solve((local[a], i), (local[b], k)).cka for (a, i), (b, k) in candidate.junctions]
    return math.prod(scores)


def main() -> None:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--anchors", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
    )
    p.add_argument(
        "--widths",
        nargs="+",
        type=int,
        default=[24, 48, 96],
        help="embed_dim per anchor (heads: width // 16, at least 2)",
    )
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--images", type=int, default=32, help="stitching images (StitchNet: 32)")
    p.add_argument("--threshold", type=float, default=0.0)
    p.add_argument("--total-threshold", type=float, default=0.0)
    p.add_argument("--max-depth", type=int, default=3)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--recompute", type=int, default=40, help="candidates timed on the recomputing side")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    args = p.parse_args()
    torch.manual_seed(0)
    pool = create_snnet(
        args.anchors,
        img_size=args.img_size,
        num_classes=10,
        routes=[],
        model_kwargs=dict(patch_size=args.patch_size, depth=args.depth),
        anchor_kwargs=[dict(embed_dim=w, num_heads=max(2, w // 16)) for w in args.widths],
    ).eval()
    images = torch.randn(args.images, 3, args.img_size, args.img_size)
    cfg = SearchConfig(args.threshold, args.total_threshold, args.max_depth, args.top_k)

    state = {}

    def cached() -> None:  # the whole search, from the networks' forward on
        state["table"] = JunctionTable(pool.anchor_adapters, images)
        state["candidates"] = list(search(state["table"], cfg))

    cached()
    table, candidates = state["table"], state["candidates"]
    sample = candidates[: args.recompute]

    def recompute() -> None:
        state["again"] = [recompute_score(pool, c, images) for c in sample]

    t_cached, t_sample = interleaved_medians([cached, recompute], args.repeats)
    recomputed = t_sample / len(sample) * len(candidates)
    same = all(math.isclose(a, c.score, rel_tol=1e-9, abs_tol=1e-12) for a, c in zip(state["again"], sample))

    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"pool: {', '.join(f'{a} (width {w})' for a, w in zip(args.anchors, args.widths))}, depth {args.depth}, "
        f"{args.img_size}x{args.img_size}, {args.images} stitching images; search: threshold {cfg.threshold}, "
        f"total {cfg.total_threshold}, max depth {cfg.max_depth}, top-k {cfg.top_k}"
    )
    print(f"candidates: {len(candidates)}, distinct junctions scored: {table.num_solved}")
    print("| method | time for all candidates | candidates scored / s |")
    print("| --- | --- | --- |")
    print(
        f"| junction table (features once, each junction once) | {t_cached:.2f} s | {len(candidates) / t_cached:,.0f} |"
    )
    print(
        f"| recomputing per candidate (timed on {len(sample)}, extrapolated) | {recomputed:.1f} s | "
        f"{len(candidates) / recomputed:,.1f} |"
    )
    print(f"ratio cached / recomputed (candidates per second): {recomputed / t_cached:.1f}x")
    print(f"identical scores: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
