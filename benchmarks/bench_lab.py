"""The stitching lab: a grid of cells in one pass (lab.py) against one training run per cell.

    python benchmarks/bench_lab.py                    # 12 cells: S[:4]>Ti[4:], S[:4]>Ti[5:] x 2 adapters x 3 lrs
    python benchmarks/bench_lab.py --front tiny       # Ti[:4]>S[4:], Ti[:4]>S[5:]: the back costs more
    python benchmarks/bench_lab.py --epochs 1 --steps 4   # quick

Tiny DeiT-S/Ti-shaped anchors (depth ``--depth``, 32x32 digits, patch 4, embed dims ``--dims``; random
weights saved to files, as a lab stitches given anchors), scikit-learn's digits, batch 32. The
grid is ``--routes`` x {linear, lora rank 8} x ``--lrs`` x seed 0, each cell training its
stitching layer for ``--epochs`` with the anchors frozen, least-squares init on 100 images.

* one pass: ``lab.py -c grid.yaml`` (every cell's batch loaded once per seed, fronts shared);
* one run per cell: ``train.py --routes R --stitch-layer K --train-only stitching --lr L --seed S``
  for each cell, in this process (no interpreter start-up counted), as a grid is run one job per
  cell.

Asserted: every cell's final stitching weights are equal (``torch.equal``) between the two, and
so are the top-1s. Both run on one torch thread, data loading in the main process.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from snnet import create_snnet
from snnet.io.checkpoint import load_checkpoint_file, save_checkpoint
from snnet.lab.main import main as lab_main
from snnet.train.main import main as train_main

TI, S = "deit_tiny_patch16_224", "deit_small_patch16_224"


def write_config(tmp: Path, opts: argparse.Namespace) -> tuple[dict, dict]:
    """The anchors' weight files and the recipe (train.py keys) and grid of the benchmark."""
    kwargs = dict(model_kwargs=dict(patch_size=4, depth=opts.depth))
    per = [dict(embed_dim=d, num_heads=max(1, d // 16)) for d in opts.dims]
    torch.manual_seed(0)
    net = create_snnet([TI, S], num_classes=10, img_size=32, anchor_kwargs=per, **kwargs)
    paths = [str(tmp / f"anchor{i}.pth") for i in range(2)]
    for model, path in zip(net.anchors, paths):
        save_checkpoint({"state_dict": model.state_dict()}, path)
    front, back = (S, TI) if opts.front == "small" else (TI, S)
    recipe = dict(
        dataset="digits", img_size=32, anchors=[TI, S], anchor_kwargs=per, anchor_checkpoints=paths, **kwargs,
        ls_init=True, ls_init_images=100, batch_size=32, epochs=opts.epochs, max_steps_per_epoch=opts.steps,
        warmup_epochs=0, workers=0, device="cpu", log_interval=1000, scale=[0.5, 1.0], hflip=0.0,
    )  # fmt: skip
    grid = dict(
        routes=[f"{front}[:{r.split(':')[0]}]>{back}[{r.split(':')[1]}:]" for r in opts.routes],
        adapters=["linear", {"name": "lora-8", "stitch_layer": "lora", "lora_rank": 8}],
        lrs=opts.lrs,
        seeds=[0],
    )
    return recipe, grid


def run_alone(tmp: Path, recipe: dict, cell: dict, overrides: dict) -> Path:
    """One cell trained alone: ``train.py --routes R --stitch-layer K --train-only stitching --lr L
    --seed S`` over the recipe (in this process); its run folder."""
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    argv = ["-c", str(tmp / "recipe.yaml"), "--routes", cell["route"], "--train-only", "stitching"]
    argv += ["--lr", cell["lr"], "--seed", cell["seed"], "--output", str(tmp), "--experiment", f"alone-{cell['cell']}"]
    for key, value in overrides.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert train_main(argv) == 0
    return tmp / f"alone-{cell['cell']}"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs=2, default=[32, 64], help="embed dims of the two anchors")
    parser.add_argument("--depth", type=int, default=6, help="blocks of each anchor")
    parser.add_argument("--routes", nargs="+", default=["4:4", "4:5"], metavar="I:J", help="routes A[:I]>B[J:]")
    parser.add_argument(
        "--front",
        choices=["small", "tiny"],
        default="small",
        help="A, B: S > Ti (a deep front, a short back: Traft & Cheney's large gaps) or Ti > S",
    )
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="max steps per epoch (default: all 44)")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        recipe, grid = write_config(tmp, opts)
        (tmp / "grid.yaml").write_text(yaml.safe_dump({**recipe, **grid}))
        start = time.perf_counter()
        assert lab_main(["-c", str(tmp / "grid.yaml"), "--output", str(tmp / "lab")]) == 0
        one_pass = time.perf_counter() - start
        lab = tmp / "lab" / "grid"
        with open(lab / "cells.csv") as f:
            cells = list(csv.DictReader(f))
        adapters = {"linear": {"stitch_layer": "linear"}, "lora-8": {"stitch_layer": "lora", "lora_rank": 8}}
        start = time.perf_counter()
        alone = [run_alone(tmp, recipe, c, adapters[c["adapter"]]) for c in cells]
        per_cell = time.perf_counter() - start
        equal = 0
        for cell, out in zip(cells, alone):
            trained = load_checkpoint_file(out / "last.pth.tar")["state_dict"]
            mine = load_checkpoint_file(lab / "cells" / f"cell-{int(cell['cell']):04d}.pth")["state_dict"]
            assert mine and all(torch.equal(v, trained[k]) for k, v in mine.items()), f"cell {cell['cell']} differs"
            with open(out / "summary.csv") as f:
                last = list(csv.DictReader(f))[-1]
            top1 = last["eval_top1_net2"]  # cfg 2: the route after the 2 anchors
            assert float(top1) == float(cell["top1"]), f"cell {cell['cell']}: top-1 {top1} alone vs {cell['top1']}"
            equal += 1
    steps = opts.steps or 44
    print(f"grid: {len(cells)} cells ({', '.join(grid['routes'])} x 2 adapters x {len(opts.lrs)} lrs x 1 seed), "
          f"{opts.epochs} epoch(s) of {steps} steps, batch 32, anchors depth {opts.depth}, dims {opts.dims[0]}/{opts.dims[1]}")  # fmt: skip
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread")
    print()
    print("| | seconds |")
    print("| --- | --- |")
    print(f"| one pass (lab.py, fronts and batches shared) | **{one_pass:.1f}** |")
    print(f"| one run per cell (train.py --routes R --train-only stitching, {len(cells)} runs) | {per_cell:.1f} |")
    print(f"| speed-up | **{per_cell / one_pass:.2f}x** |")
    print()
    print(f"final stitching weights torch.equal and top-1 equal: {equal}/{len(cells)} cells")


if __name__ == "__main__":
    main()
