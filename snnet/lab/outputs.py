"""What a lab writes to ``DIR/NAME/``: one file per finished cell (how a killed lab resumes),
then ``cells.csv``, ``trajectory.csv`` and the plots, all written atomically.

* ``lab.json``: the config and the cell list the folder belongs to; a rerun with another grid
  is refused (``--overwrite`` starts over);
* ``cells/cell-NNNN.json``: a finished cell's row, its per-epoch trajectory and what the plots
  need (anchor pair, depths); written as soon as the cell's chunk is done, skipped on rerun;
  ``cells/cell-NNNN.pth``: its trained stitching layers;
* ``cells.csv``, ``trajectory.csv``: every finished cell, in cell order;
* ``top1_vs_depth.png``, ``top1_vs_flops.png``: top-1 against the destination depth (the back
  anchor's entry block) and against FLOPs, coloured by adapter, mean +- std over seeds (at each
  route and adapter's best learning rate by mean top-1);
* ``matrix_<adapter>.png``: per adapter, front block x back block heat maps of top-1 (same mean),
  one panel per anchor pair.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import plain
from ..errors import ConfigError
from ..io.checkpoint import atomic_write
from ..io.paths import atomic_path
from .spec import Cell

CELL_COLUMNS = (
    "cell",
    "route",
    "adapter",
    "lr",
    "seed",
    "front_block",
    "back_block",
    "params",
    "trainable_params",
    "flops",
    "ls_top1",
    "top1",
    "best_top1",
    "seconds",
)
TRAJECTORY_COLUMNS = (
    "cell",
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "img_per_sec",
    "peak_mem_mb",
)


def open_lab_dir(out_dir: Path, config: dict, cells: Sequence[Cell], overwrite: bool, primary: bool) -> None:
    """Claim ``out_dir`` for this grid: ``lab.json`` written on first use, compared on reruns."""
    header = plain({"config": config, "cells": [c.key() for c in cells]})
    path = out_dir / "lab.json"
    if overwrite and primary and out_dir.exists():
        shutil.rmtree(out_dir)
    if path.exists():
        old = json.loads(path.read_text())
        if old != header:
            what = "its cells" if old.get("config") == header["config"] else "its config"
            raise ConfigError(
                f"{out_dir} holds a lab of another grid ({what} differ): pass --overwrite to start over, "
                f"or choose another --experiment"
            )
        return
    if primary:
        (out_dir / "cells").mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(header, f, indent=1)


def _cell_path(out_dir: Path, index: int) -> Path:
    return out_dir / "cells" / f"cell-{index:04d}.json"


def save_cell(out_dir: Path, record: dict[str, Any], weights: dict[str, Any]) -> None:
    """A finished cell's trained stitching layers (``cell-NNNN.pth``, ``weights_only`` loadable:
    ``{'cell': key, 'state_dict': ...}``), then its record, atomically (a rerun skips it)."""
    from ..io.checkpoint import save_checkpoint

    path = _cell_path(out_dir, record["row"]["cell"])
    save_checkpoint({"cell": {k: record["row"][k] for k in CELL_COLUMNS[:5]}, "state_dict": weights},
                    path.with_suffix(".pth"))  # fmt: skip
    with atomic_write(path, "w") as f:
        json.dump(record, f)


def finished_cells(out_dir: Path, cells: Iterable[Cell]) -> dict[int, dict[str, Any]]:
    """The records of the given cells already finished in ``out_dir``."""
    done = {}
    for cell in cells:
        path = _cell_path(out_dir, cell.index)
        if path.exists():
            done[cell.index] = json.loads(path.read_text())
    return done


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row[c] for c in columns})


def write_outputs(out_dir: Path, records: dict[int, dict[str, Any]]) -> None:
    """cells.csv, trajectory.csv and the plots of the finished cells."""
    ordered = [records[i] for i in sorted(records)]
    _write_csv(out_dir / "cells.csv", CELL_COLUMNS, (r["row"] for r in ordered))
    _write_csv(out_dir / "trajectory.csv", TRAJECTORY_COLUMNS, (t for r in ordered for t in r["trajectory"]))
    if ordered:
        points = seed_means(ordered)
        plot_against(points, "depth", out_dir / "top1_vs_depth.png")
        plot_against(points, "flops", out_dir / "top1_vs_flops.png")
        for adapter in dict.fromkeys(p["adapter"] for p in points):
            plot_matrix([p for p in points if p["adapter"] == adapter], adapter, out_dir / f"matrix_{adapter}.png")


def seed_means(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per route and adapter: mean and std of top-1 over seeds, at the learning rate
    with the best mean."""
    by_lr: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        row = r["row"]
        by_lr[(row["route"], row["adapter"], row["lr"])].append(r)
    best: dict[tuple, dict[str, Any]] = {}
    for (route, adapter, lr), group in by_lr.items():
        top1 = [g["row"]["top1"] for g in group]
        point = {
            **group[0]["pair"],
            "route": route,
            "adapter": adapter,
            "lr": lr,
            "front_block": group[0]["row"]["front_block"],
            "back_block": group[0]["row"]["back_block"],
            "flops": group[0]["row"]["flops"],
            "mean": statistics.fmean(top1),
            "std": statistics.pstdev(top1),
            "seeds": len(top1),
        }
        if (route, adapter) not in best or point["mean"] > best[(route, adapter)]["mean"]:
            best[(route, adapter)] = point
    return list(best.values())


def _figure(width: float, height: float):
    # Figure + Agg canvas as snnet.evaluate.pareto: headless, no global pyplot state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_against(points: Sequence[dict[str, Any]], axis: str, path: Path) -> None:
    """Top-1 (mean +- std over seeds) against destination depth (one panel per anchor pair) or
    FLOPs (one panel), coloured by adapter."""
    pairs = list(dict.fromkeys(p["pair_name"] for p in points)) if axis == "depth" else ["all routes"]
    fig = _figure(5.5 * len(pairs), 4.2)
    adapters = list(dict.fromkeys(p["adapter"] for p in points))
    colours = {a: f"C{i % 10}" for i, a in enumerate(adapters)}
    for k, pair in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), k + 1)
        for adapter in adapters:
            pts = [p for p in points if p["adapter"] == adapter and (axis != "depth" or p["pair_name"] == pair)]
            if axis == "depth":
                pts.sort(key=lambda p: (p["back_block"], p["front_block"]))
                xs = [p["back_block"] / p["back_depth"] for p in pts]
            else:
                pts.sort(key=lambda p: p["flops"])
                xs = [p["flops"] / 1e6 for p in pts]
            ax.errorbar(xs, [p["mean"] for p in pts], yerr=[p["std"] for p in pts], fmt="o", ms=5, capsize=3,
                        color=colours[adapter], label=adapter, alpha=0.85)  # fmt: skip
        ax.set_xlabel("destination depth (back entry block / back depth)" if axis == "depth" else "MFLOPs")
        ax.set_ylabel("top-1 (%), mean +- std over seeds")
        ax.set_title(pair, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a full disk keeps the previous plot
        fig.savefig(tmp)


def plot_matrix(points: Sequence[dict[str, Any]], adapter: str, path: Path) -> None:
    """Front block x back block heat map of top-1 (mean over seeds) per anchor pair."""
    import numpy as np

    pairs = list(dict.fromkeys(p["pair_name"] for p in points))
    fig = _figure(4.8 * len(pairs), 4.2)
    low, high = min(p["mean"] for p in points), max(p["mean"] for p in points)  # one scale for all panels
    for k, pair in enumerate(pairs):
        pts = [p for p in points if p["pair_name"] == pair]
        fronts = sorted({p["front_block"] for p in pts})
        backs = sorted({p["back_block"] for p in pts})
        grid = np.full((len(fronts), len(backs)), np.nan)
        for p in pts:
            grid[fronts.index(p["front_block"]), backs.index(p["back_block"])] = p["mean"]
        ax = fig.add_subplot(1, len(pairs), k + 1)
        image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower", vmin=low, vmax=high)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                dark = v < (low + high) / 2
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="w" if dark else "k")
        ax.set_xticks(range(len(backs)), [str(b) for b in backs])
        ax.set_yticks(range(len(fronts)), [str(f) for f in fronts])
        ax.set_xlabel(f"back block (entry of {pts[0]['back']})")
        ax.set_ylabel(f"front block (last of {pts[0]['front']})")
        ax.set_title(f"{adapter}: {pair}", fontsize=9)
        fig.colorbar(image, ax=ax, label="top-1 (%)")
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a full disk keeps the previous plot
        fig.savefig(tmp)
