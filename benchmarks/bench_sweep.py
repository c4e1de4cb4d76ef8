"""Evaluating every network of an SN-Net: one pass over the data vs one pass per network.

    python benchmarks/bench_sweep.py                     # DeiT-style Ti/S/B (71 networks), 256 JPEGs, 2 cores
    python benchmarks/bench_sweep.py --dims 24 48 96     # heavier anchors: compute weighs more than decoding

Writes a JPEG ImageFolder of 224x224 images (the scikit-learn digits, upscaled, 10 classes),
then, side by side on the same loader (timm eval transform, ``--workers`` processes):

* one-pass sweep (``snnet.evaluate.sweep.sweep_pass``, what eval.py runs): every batch decoded once,
  each front anchor's stem and blocks run once per batch, every network branches off;
* one pass per network (the official SN-Net evaluation): ``net.select(i); net(x)`` over a fresh
  pass of the data for each of the networks.

Both give identical counts (asserted). Also timed: the floor, i.e. the forward passes of all
networks one at a time on pre-loaded tensors (no data loading), the shared-prefix forward on
the same tensors, and one pass of data loading alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from snnet import create_snnet
from snnet.core.model import SNNet
from snnet.data.datasets import create_dataset
from snnet.data.loaders import Normalize, data_config_for, eval_loader, eval_transform
from snnet.evaluate.sweep import SweepPlan, forward_networks, one_at_a_time, sweep_pass


def write_jpegs(root: Path, n: int, size: int = 224) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.RandomState(0)
    for i in range(n):
        img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        arr = np.asarray(img.convert("RGB"), dtype=np.int16) + rng.randint(-20, 21, (size, size, 3))
        folder = root / "val" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def build_ti_s_b(args: argparse.Namespace):
    """The DeiT-Ti/S/B-shaped SN-Net (71 networks) at embed dims ``args.dims``."""
    return create_snnet(
        ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"],
        num_classes=10,
        model_kwargs=dict(patch_size=args.patch_size),
        anchor_kwargs=[dict(embed_dim=d, num_heads=max(1, d // 24)) for d in args.dims],
    )


def main(
    build: Callable[[argparse.Namespace], SNNet] = build_ti_s_b,
    dims: Sequence[int] = (16, 32, 64),
    shape: str = "DeiT-style Ti/S/B",
    description: str = __doc__,
) -> None:
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="loader processes (decoding)")
    parser.add_argument(
        "--dims", type=int, nargs=len(dims), default=list(dims), help=f"embed dims of the {shape} anchors"
    )
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the main process (1 + 1 worker: one core each on a 2-core machine; "
        "OpenMP threads that share cores with loader workers stall)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the fastest of each is kept")
    parser.add_argument("--data-dir", default=None, help="reuse a folder written by an earlier run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_sweep_")
        args.data_dir = tmp.name
    root = Path(args.data_dir)
    if not (root / "val").is_dir():
        write_jpegs(root, args.images)

    torch.manual_seed(0)
    net = build(args).eval()
    with torch.no_grad():  # distinct stitched networks
        for layer in net.stitch_layers:
            layer.transform.weight.normal_(0, 0.3)
    ids = list(range(net.num_stitches))

    ds = create_dataset(None, root, "val")
    cfg = data_config_for(net, ds)
    ds.transform = eval_transform(cfg)
    loader = eval_loader(ds, args.batch_size, args.workers)
    prep = Normalize(cfg["mean"], cfg["std"], torch.device("cpu"))

    start = time.perf_counter()
    batches = [prep(x, y) for x, y in loader]  # also starts the (persistent) workers
    data_pass = time.perf_counter() - start
    start = time.perf_counter()
    for _ in loader:
        pass
    data_pass = min(data_pass, time.perf_counter() - start)

    plan = SweepPlan(net, ids)
    t_sweep = t_each = t_floor = t_shared = float("inf")
    for _ in range(args.repeats):  # alternate, so that a busy moment of the machine hits both
        start = time.perf_counter()
        ours = sweep_pass(net, loader, ids, prep).records()
        t_sweep = min(t_sweep, time.perf_counter() - start)

        start = time.perf_counter()
        ref = one_at_a_time(net, loader, ids, prep).records()
        t_each = min(t_each, time.perf_counter() - start)
        for a, b in zip(ours, ref):
            assert (a["correct1"], a["correct5"], a["count"]) == (b["correct1"], b["correct5"], b["count"]), (a, b)
            assert abs(a["loss_sum"] - b["loss_sum"]) <= 1e-9 * abs(b["loss_sum"]), (a, b)

        with torch.no_grad():
            start = time.perf_counter()
            for i in ids:
                net.select(i)
                for x, _ in batches:
                    net(x)
            t_floor = min(t_floor, time.perf_counter() - start)
            start = time.perf_counter()
            for x, _ in batches:
                for _ in forward_networks(net, plan, x):
                    pass
            t_shared = min(t_shared, time.perf_counter() - start)

    print(
        f"networks: {len(ids)} ({shape}, embed dims {args.dims}, patch {args.patch_size}, 224x224); "
        f"{len(ds)} JPEGs, batch {args.batch_size}, {args.workers} workers, {torch.get_num_threads()} threads, "
        f"best of {args.repeats} alternating rounds"
    )
    print("| what | time | per network |")
    print("| --- | --- | --- |")
    print(f"| one-pass sweep (eval.py) | {t_sweep:.1f} s | {1000 * t_sweep / len(ids):.0f} ms |")
    print(f"| one pass per network (official) | {t_each:.1f} s | {1000 * t_each / len(ids):.0f} ms |")
    print(
        f"| floor: every network's forward on pre-loaded tensors | {t_floor:.1f} s | {1000 * t_floor / len(ids):.0f} ms |"
    )
    print(f"| shared-prefix forward on pre-loaded tensors | {t_shared:.1f} s | {1000 * t_shared / len(ids):.0f} ms |")
    print(f"| one data pass alone (decode, transform) | {data_pass:.2f} s | |")
    print(
        f"\nspeed-up over one pass per network: {t_each / t_sweep:.2f}x; sweep / floor: {t_sweep / t_floor:.2f}; "
        f"identical counts: yes"
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
