"""The same images written in each form snnet reads: an ImageFolder, a Hugging Face dataset saved
with ``save_to_disk``, WebDataset tar shards, and torchvision's MNIST file layout.

The tests, docs/data.md's commands and ``benchmarks/bench_data.py`` build their data offline with
:func:`write_forms`: scikit-learn's digits (grey), upscaled, ``per_class`` of each class per
split. Every form holds the same PNG bytes in the same order (class by class), so a map-style
form indexes image ``i`` as every other does, and the labels are the class folder names' order.

``python -m snnet.data.forms DIR`` writes them into ``DIR/{folder,hfds,wds,torch}``.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

SPLITS = {"train": "train", "validation": "val"}  # HF/wds split name -> ImageFolder folder
CLASSES = [f"digit{c}" for c in range(10)]  # names, not indices: a test can tell them from a fallback


def digit_images(per_class: int, size: int, offset: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """``per_class`` grey ``size`` x ``size`` digits of each class (the ``offset``-th on), class by class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = [], []
    for c in range(10):
        for i in np.flatnonzero(d.target == c)[offset : offset + per_class]:
            grey = Image.fromarray((d.images[i] * (255.0 / 16.0)).round().astype(np.uint8))
            images.append(np.asarray(grey.resize((size, size), Image.BILINEAR)))
            labels.append(c)
    return images, labels


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _write_folder(root: Path, split: str, pngs: Sequence[bytes], labels: Sequence[int]) -> None:
    for k, (png, c) in enumerate(zip(pngs, labels)):
        path = root / SPLITS[split] / CLASSES[c] / f"{k:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)


def _write_hfds(root: Path, splits: dict) -> None:
    import datasets

    datasets.disable_progress_bars()  # the writers' callers print their own lines
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    parts = {
        split: datasets.Dataset.from_dict(
            {"image": [{"bytes": p, "path": None} for p in pngs], "label": list(labels)}, features=features
        )
        for split, (pngs, labels) in splits.items()
    }
    datasets.DatasetDict(parts).save_to_disk(str(root))


def write_shards(root: Path, split: str, pngs: Sequence[bytes], labels: Sequence, shards: int) -> dict:
    """``split-000000.tar`` ... written with the ``webdataset`` package (``png`` and ``cls`` per
    sample, round robin over the shards); returns the split's entry of timm's ``_info.json``."""
    import webdataset

    root.mkdir(parents=True, exist_ok=True)
    names = [f"{split}-{s:06d}.tar" for s in range(shards)]
    lengths = []
    for s, name in enumerate(names):
        ids = list(range(s, len(pngs), shards))
        lengths.append(len(ids))
        with webdataset.TarWriter(str(root / name)) as sink:
            for k in ids:
                sink.write({"__key__": f"{k:06d}", "png": pngs[k], "cls": str(labels[k]).encode()})
    return {"name": split, "num_samples": len(pngs), "filenames": names, "shard_lengths": lengths}


def _write_mnist(root: Path, splits: dict) -> None:
    """torchvision's MNIST layout: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("validation", "t10k")):
        images, labels = splits[split]
        n, (h, w) = len(images), images[0].shape
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, h, w) + np.stack(images).tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(labels))


def write_forms(root: str | Path, per_class: int = 4, val_per_class: int = 2, size: int = 28, shards: int = 2) -> Path:
    """The digits in every form under ``root``: ``folder/`` (train/, val/), ``hfds/``, ``wds/``
    (``_info.json`` with both splits and the class names), ``torch/`` (MNIST files)."""
    root = Path(root)
    raw = {
        "train": digit_images(per_class, size),
        "validation": digit_images(val_per_class, size, offset=per_class),
    }
    pngs = {s: ([_png(i) for i in imgs], labels) for s, (imgs, labels) in raw.items()}
    info: dict = {"name": "digits", "classes": CLASSES, "splits": {}}
    for split, (p, labels) in pngs.items():
        _write_folder(root / "folder", split, p, labels)
        info["splits"][split] = write_shards(root / "wds", split, p, labels, shards)
    (root / "wds" / "_info.json").write_text(json.dumps(info, indent=1))
    _write_hfds(root / "hfds", pngs)
    _write_mnist(root / "torch", raw)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description="write the digits as ImageFolder, HF dataset, wds shards, MNIST files")
    parser.add_argument("root")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--val-per-class", type=int, default=2)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--shards", type=int, default=2)
    a = parser.parse_args()
    write_forms(a.root, a.per_class, a.val_per_class, a.size, a.shards)
    print(f"wrote {a.root}/folder, {a.root}/hfds, {a.root}/wds, {a.root}/torch")


if __name__ == "__main__":
    main()
