"""Least-squares init on trained anchors: 'mean' (the paper's rule) vs 'joint' for a stitching
layer shared by several positions of the sliding window, judged by every stitched network's
validation top-1 straight after the init, before any training.

    .venv/bin/python benchmarks/bench_ls_combine.py -c configs/demo_digits.yaml \
        --anchor-checkpoints output/demo/anchor-*/last.pth.tar     # after make demo

Any train.py config and flags work (ImageNet: --data-dir). Prints one row per stitch and the
mean over stitches; anchors are left out (the init does not touch them).
"""

from __future__ import annotations

import statistics
import sys
import warnings

import torch

from snnet.cli import build_train_parser
from snnet.config import parse_args_with_config
from snnet.data.datasets import create_dataset, ls_init_images, resolve_num_classes
from snnet.data.loaders import Normalize, data_config_for, eval_loader, eval_transform
from snnet.evaluate.sweep import metrics_of, sweep_pass
from snnet.run_config import build_snnet

COMBINES = ("mean", "joint")


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")
    args = parse_args_with_config(build_train_parser(), argv)[0]
    train_ds = create_dataset(args.dataset, args.data_dir, args.train_split)
    val_ds = create_dataset(args.dataset, args.data_dir, args.val_split)
    num_classes = resolve_num_classes(args.num_classes, train_ds)
    torch.manual_seed(args.seed)
    net = build_snnet(args, num_classes).eval()
    cfg = data_config_for(net, val_ds)
    images = ls_init_images(train_ds, args.ls_init_images, cfg, args.seed)
    val_ds.transform = eval_transform(cfg)
    loader = eval_loader(val_ds, args.validation_batch_size or args.batch_size)
    prep = Normalize(cfg["mean"], cfg["std"], torch.device("cpu"))
    ids = [s.cfg_id for s in net.stitches if not s.is_anchor]

    top1 = {}
    for combine in COMBINES:
        net.init_stitching_layers(images, batch_size=args.ls_init_batch_size, combine=combine)
        top1[combine] = [metrics_of(r)["top1"] for r in sweep_pass(net, loader, ids, prep).records()]

    print(
        f"anchors {net.config['anchors']}, {len(images)} LS images, {len(val_ds)} validation images, "
        f"{len(ids)} stitched networks, {len(net.stitch_layers)} stitching layers"
    )
    print("| cfg_id | network | " + " | ".join(f"top-1 {c}" for c in COMBINES) + " |")
    print("| --- | --- |" + " --- |" * len(COMBINES))
    for i, cfg_id in enumerate(ids):
        print(f"| {cfg_id} | {net.stitches[cfg_id].name} | " + " | ".join(f"{top1[c][i]:.2f}" for c in COMBINES) + " |")
    print("| mean | |" + "".join(f" {statistics.mean(top1[c]):.2f} |" for c in COMBINES))
    wins = sum(j > m for m, j in zip(top1["mean"], top1["joint"]))
    ties = sum(j == m for m, j in zip(top1["mean"], top1["joint"]))
    print(f"joint better on {wins}, equal on {ties}, worse on {len(ids) - wins - ties} of {len(ids)} stitched networks")


if __name__ == "__main__":
    main(sys.argv[1:])
