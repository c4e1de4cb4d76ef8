"""Training-loader throughput of the same images as an ImageFolder, WebDataset shards and a Hugging
Face dataset (save_to_disk), side by side in one run.

    python benchmarks/bench_data.py                       # 960 digits at 224 px, 2 workers
    python benchmarks/bench_data.py --per-class 20 --size 64 --workers 0 --repeats 1   # tiny

Writes the digits in every form with ``snnet.data.forms`` (PNG files, PNG bytes in tar shards,
PNG bytes in an arrow file), then times one epoch of train.py's own training loader
(``snnet.data.loaders.build_loaders``: timm's training transform at ``--img-size``, uint8 batches)
over each, interleaved, median of ``--repeats``; prints images/s and the ratio to the
ImageFolder. Cross-check: every form gives the same number of images and the same label counts
per epoch.
"""

from __future__ import annotations

import argparse
import collections
import platform
import tempfile
import warnings
from pathlib import Path

import torch
from timing import interleaved_medians

from snnet.cli import build_train_parser
from snnet.data.datasets import create_dataset
from snnet.data.forms import write_forms
from snnet.data.loaders import build_loaders
from snnet.distributed import DistInfo


def loader_of(name: str, data_dir: str | None, args: argparse.Namespace, img_size: int):
    """train.py's training loader (and its per-epoch "sampler") of one form."""
    train = create_dataset(name, data_dir, "train", opts=args, training=True)
    val = create_dataset(name, data_dir, "validation", opts=args)
    cfg = dict(input_size=(3, img_size, img_size), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear",
               crop_pct=1.0, hflip=0.5)  # fmt: skip
    sampler, loader, *_ = build_loaders(train, val, args, DistInfo(), cfg)
    return sampler, loader


def one_epoch(sampler, loader, counts: collections.Counter, epoch: list[int]) -> None:
    sampler.set_epoch(epoch[0])
    epoch[0] += 1
    for _, y in loader:
        counts.update(y.tolist())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--per-class", type=int, default=96, help="training images per class (10 classes; 960 = 30 batches of 32)"
    )
    p.add_argument("--size", type=int, default=224, help="stored image side (px)")
    p.add_argument("--img-size", type=int, default=224, help="training input size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        run(a, Path(tmp))


def run(a: argparse.Namespace, root: Path) -> None:
    """Write the forms under ``root``, time them, print the table and the cross-check."""
    write_forms(root, a.per_class, 2, a.size, a.shards)
    args = build_train_parser().parse_args(["-b", str(a.batch_size), "--workers", str(a.workers)])
    forms = {
        "ImageFolder": ("", str(root / "folder")),
        "WebDataset shards": (f"wds/{root / 'wds'}", None),
        "HF dataset (save_to_disk)": (f"hfds/{root / 'hfds'}", str(root / "hf-cache")),
    }
    loaders = {k: loader_of(name, d, args, a.img_size) for k, (name, d) in forms.items()}
    counts = {k: collections.Counter() for k in forms}
    epochs = {k: [0] for k in forms}
    fns = [lambda k=k: one_epoch(*loaders[k], counts[k], epochs[k]) for k in forms]
    for fn in fns:
        fn()  # warm-up: worker start, HF cache, page cache
    times = interleaved_medians(fns, a.repeats)
    n = sum(counts["ImageFolder"].values()) // (a.repeats + 1)
    print(f"{n} training images per epoch ({a.per_class} per class, stored {a.size} px, trained at {a.img_size} px), "
          f"batch {a.batch_size}, {a.workers} workers, {a.shards} shards; {platform.processor() or platform.machine()}")  # fmt: skip
    print("| form | epoch (median) | images/s | vs ImageFolder |\n| --- | --- | --- | --- |")
    for k, t in zip(forms, times):
        print(f"| {k} | {t * 1000:.0f} ms | {n / t:.0f} | {times[0] / t:.2f}x |")
    same = all(sum(c.values()) == sum(counts["ImageFolder"].values()) for c in counts.values())
    labels = {k: sorted(c.items()) for k, c in counts.items()}
    same_labels = len({str(v) for v in labels.values()}) == 1
    print(f"same images per epoch: {'yes' if same else 'no'}; same label counts: {'yes' if same_labels else 'no'}")


if __name__ == "__main__":
    main()
