"""lab.py: a grid of stitching cells (routes x adapters x lrs x seeds), each training its
stitching layer(s) only, over frozen anchors, in one pass over the data per chunk of cells.

Which cells run where:

* ``--cell-shard I/K`` (Slurm array task I of K, ``submit.py --job lab``): the cells whose index
  is ``I`` modulo ``K``;
* under ``torchrun`` the (shard's) cells are spread over the ranks, the i-th to rank
  ``i % world``; each rank trains its cells as single-process runs (all the data, no gradient
  averaging) and rank 0 gathers the rows;
* the cells already finished in ``DIR/NAME/cells/`` are skipped (a killed lab resumes, keeping
  them); the others are trained in chunks of ``chunk_cells`` (sorted by seed and front, so that a
  chunk shares its fronts), each chunk's cells saved as soon as it is done.

``cells.csv``, ``trajectory.csv`` and the plots then hold every finished cell in the folder (the
other shards' too, as far as they are done).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..cli import build_train_parser
from ..config import plain
from ..core.routes import parse_route, route_name
from ..data.datasets import create_dataset, ls_init_images, resolve_num_classes
from ..data.loaders import build_loaders, data_config_for
from ..data.sources import DataOptions
from ..distributed import DistInfo, init_distributed
from ..errors import ConfigError, DataError, OneLineArgumentParser, exit_on_user_error
from ..io.lock import LOCK_NAME, check_folder_free, hold_folder
from ..io.paths import check_output_dir
from ..run_config import TrainConfig, build_snnet, from_namespace
from ..train.main import resolve_args
from .cells import CellRun, FrozenAnchors, build_cell, layer_state
from .grid import Progress, SeedData, train_chunk
from .outputs import finished_cells, open_lab_dir, save_cell, write_outputs
from .report import write_report
from .spec import Cell, LabSpec, expand_cells, gap_routes, load_lab_spec, parse_shard

_logger = logging.getLogger("lab")

# (finished chunk's cell indices) -> None; tests use it to kill a lab between chunks
ChunkCallback = Callable[[list[int]], None]


def build_lab_parser() -> argparse.ArgumentParser:
    # fmt: off
    parser = OneLineArgumentParser(
        prog="lab.py",
        description="Train a grid of stitching cells (routes x adapters x lrs x seeds) over frozen anchors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-c", "--config", required=True, metavar="FILE.yaml",
                        help="lab config: train.py keys plus routes|gaps, adapters, lrs, seeds (configs/lab/)")
    parser.add_argument("--output", default="output/lab", metavar="DIR", help="parent folder of the lab runs")
    parser.add_argument("--experiment", default="", metavar="NAME", help="run folder name (default: the config's name)")
    parser.add_argument("--cell-shard", default=None, metavar="I/K",
                        help="run only the cells with index %% K == I (array task I of K); outputs merge in the folder")
    parser.add_argument("--overwrite", action="store_true", default=False,
                        help="discard the folder's finished cells and start over")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the config's, else cuda if available)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="the dataset folder (train/ and val/), instead of the config's data_dir")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="the dataset (digits, torch/<name>, hfds/<path>, wds/<dir>), instead of the config's")
    parser.add_argument("--check-args", action="store_true", default=False,
                        help="only check the config and --cell-shard, then exit (distributed_train.sh does this "
                             "before starting the workers)")
    # fmt: on
    return parser


@exit_on_user_error
def main(argv: Optional[list[str]] = None, on_chunk_done: Optional[ChunkCallback] = None) -> int:
    """lab.py; ``on_chunk_done`` runs after each chunk's cells are saved."""
    argv = list(map(str, sys.argv[1:] if argv is None else argv))
    opts = build_lab_parser().parse_args(argv)
    spec = load_lab_spec(opts.config)
    if opts.data_dir:  # where the data lives is the machine's, not the grid's: not in the fingerprint
        spec = dataclasses.replace(spec, train={**spec.train, "data_dir": opts.data_dir})
    if opts.dataset:  # which data it is is the grid's: in the fingerprint, as if the config said it
        spec = dataclasses.replace(
            spec, train={**spec.train, "dataset": opts.dataset}, raw={**spec.raw, "dataset": opts.dataset}
        )
    shard = parse_shard(opts.cell_shard)
    if opts.check_args:
        return 0
    info = init_distributed(opts.device or spec.train.get("device"))
    handler = logging.StreamHandler(sys.stdout if info.is_primary else sys.stderr)
    handler.setLevel(logging.INFO if info.is_primary else logging.WARNING)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False
    _logger.addHandler(handler)
    try:
        return run_lab(spec, opts, shard, info, on_chunk_done, argv)
    finally:
        _logger.removeHandler(handler)
        if dist.is_initialized():
            dist.destroy_process_group()


def base_args(spec: LabSpec) -> TrainConfig:
    """train.py's run config from the lab config (before the grid sets a cell's)."""
    parser = build_train_parser()
    parser.set_defaults(**spec.train)
    return from_namespace(TrainConfig, parser.parse_args([]))


def cell_args(base: TrainConfig, cell: Cell, device: torch.device) -> TrainConfig:
    """The run config of ``train.py --routes R --stitch-layer K --train-only stitching --lr L
    --seed S`` over the lab config (one process)."""
    cfg = dataclasses.replace(
        base, **dict(cell.adapter.overrides), lr=cell.lr, seed=cell.seed, routes=[cell.route], train_only="stitching"
    )
    return resolve_args(cfg, DistInfo(device=device))


def check_lab_dir(out_dir: Path, spec: LabSpec, opts: argparse.Namespace, lock: str) -> None:
    """Refuse, before any work, an output folder that is a file, one that another lab.py of the
    same shard writes (or, with --overwrite, any lab.py), and an --overwrite that would delete
    the config or an anchor checkpoint the lab reads."""
    flag = "--output/--experiment"
    check_output_dir(out_dir, flag)
    for name in sorted(p.name for p in out_dir.glob(f"{LOCK_NAME}*")) if opts.overwrite else [lock]:
        check_folder_free(out_dir, flag, name)
    if not opts.overwrite:
        return
    inputs = {"config": spec.path, **{f"anchor checkpoint {c}": c for c in spec.train.get("anchor_checkpoints") or ()}}
    for what, path in inputs.items():
        if path and str(path).lower() != "none" and out_dir.resolve() in Path(path).resolve().parents:
            raise ConfigError(
                f"--overwrite would delete {out_dir}, which holds the {what} this lab reads: move it out, "
                f"or choose another {flag}"
            )


def shard_lock(shard: tuple[int, int]) -> str:
    """The lock file of a cell shard: array tasks of one grid share the folder, not their cells."""
    return LOCK_NAME if shard == (0, 1) else f"{LOCK_NAME}-shard-{shard[0]}-of-{shard[1]}"


def run_lab(
    spec: LabSpec, opts: argparse.Namespace, shard: tuple[int, int], info: DistInfo, on_chunk_done, argv=()
) -> int:
    """The shard's cells on this process, then (rank 0) the folder's outputs and report.html;
    ``argv``: the command line as given, which the report shows."""
    base = base_args(spec)
    out_dir = Path(opts.output) / (opts.experiment or Path(spec.path).stem)
    check_lab_dir(out_dir, spec, opts, shard_lock(shard))
    data_opts = DataOptions.from_args(base)
    train_ds = create_dataset(
        base.dataset, base.data_dir, base.train_split, base.img_size, opts=data_opts, training=True
    )
    val_ds = create_dataset(base.dataset, base.data_dir, base.val_split, base.img_size, opts=data_opts)
    num_classes = resolve_num_classes(base.num_classes, train_ds)
    anchors_net = _anchors_net(base, num_classes)
    data_cfg = data_config_for(anchors_net, train_ds)
    frozen = FrozenAnchors.take(anchors_net)
    frozen.models.to(info.device)
    names = list(base.anchors)
    depths = [a.num_blocks for a in frozen.adapters]
    routes = spec.routes or gap_routes(spec.gaps, names, depths)
    cells = expand_cells(spec, [route_name(parse_route(r, names, depths), names, depths) for r in routes])
    check_cells_build(cells, base, frozen, info.device)
    open_lab_dir(out_dir, plain(spec.raw), cells, opts.overwrite, info.is_primary)
    if info.is_primary:
        hold_folder(out_dir, "--output/--experiment", shard_lock(shard))
    if info.distributed:
        dist.barrier()
    shard_cells = [c for c in cells if c.index % shard[1] == shard[0]]
    mine = shard_cells[info.rank :: info.world_size]
    done = finished_cells(out_dir, mine)
    todo = sorted((c for c in mine if c.index not in done), key=lambda c: (c.seed, _front(c.route), c.index))
    size = spec.chunk_cells or max(len(todo), 1)
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    _logger.info(
        f"lab {out_dir}: {len(cells)} cells ({len(shard_cells)} in shard {shard[0]}/{shard[1]}, {len(mine)} on this "
        f"process, {len(done)} already done); {len(chunks)} chunk(s) of up to {size}"
    )
    runs_cfg = RunSetup(base, train_ds, val_ds, num_classes, data_cfg, info.device)
    steps = runs_cfg.steps_per_epoch(cell_args(base, cells[0], info.device))
    progress = Progress(len(mine), len(done), len(todo) * base.epochs * steps)  # this process's cells
    for chunk in chunks:
        for record, weights in train_cells(chunk, runs_cfg, frozen, progress):
            save_cell(out_dir, record, weights)
            done[record["row"]["cell"]] = record
        progress.done_cells += len(chunk)
        if on_chunk_done is not None:
            on_chunk_done([c.index for c in chunk])
    gathered = [done]
    if info.distributed:
        gathered = [None] * info.world_size if info.is_primary else None
        dist.gather_object(done, gathered, dst=0)
    if info.is_primary:
        records = finished_cells(out_dir, cells)  # other shards' cells too, where done
        for part in gathered:
            records.update(part)
        write_outputs(out_dir, records)
        about = [
            ("config", spec.path),
            ("anchors", " / ".join(names)),
            ("training", f"{base.dataset or base.data_dir}, {base.epochs} epochs per cell, anchors frozen"),
            ("folder", str(out_dir)),
        ]
        write_report(out_dir, records, len(cells), about, argv)
        _logger.info(
            f"lab: {len(records)}/{len(cells)} cells done; {out_dir}/cells.csv, trajectory.csv, plots, report.html"
        )
    return 0


def check_cells_build(cells: list[Cell], base: TrainConfig, frozen: FrozenAnchors, device: torch.device) -> None:
    """Build each route x adapter's stitching layers once over the frozen anchors (no anchor is
    built or loaded again), so that an adapter that does not fit a route's layouts (a stride on a
    kind that cannot stride, a grid-convolving kind where the tokens form no grid) is refused
    before the lab folder is written, not when its chunk comes."""
    from ..core.model import SNNet

    for route, adapter in dict.fromkeys((c.route, c.adapter) for c in cells):
        a = cell_args(base, next(c for c in cells if (c.route, c.adapter) == (route, adapter)), device)
        SNNet(frozen.adapters, stitch_layer=a.stitch_layer, lora_rank=a.lora_rank, routes=[route],
              class_token=a.class_token, prefix_tokens=a.prefix_tokens, stitch_stride=a.stitch_stride)  # fmt: skip


def _front(route: str) -> str:
    return route.split(">")[0]


def _anchors_net(base: TrainConfig, num_classes: int):
    """An SN-Net over the lab config's anchors, loaded as train.py loads them: its anchors become
    the frozen copy every cell shares."""
    # the anchors alone (the cells add their routes)
    return build_snnet(dataclasses.replace(base, routes=[], train_only="stitching"), num_classes, check_effects=False)


class RunSetup:
    """What every cell's build needs, with the per-seed data and least-squares images made once."""

    def __init__(self, base, train_ds, val_ds, num_classes: int, data_cfg: dict, device: torch.device):
        self.base, self.train_ds, self.val_ds = base, train_ds, val_ds
        self.num_classes, self.data_cfg, self.device = num_classes, data_cfg, device
        self.ls_images: dict[int, torch.Tensor] = {}
        self.data: dict[int, tuple] = {}

    def loaders(self, args: TrainConfig) -> tuple:
        """train.py's loaders for ``args.seed`` (one process: all the data)."""
        if args.seed not in self.data:
            self.data[args.seed] = build_loaders(self.train_ds, self.val_ds, args, DistInfo(device=self.device),
                                                 self.data_cfg)  # fmt: skip
        return self.data[args.seed]

    def steps_per_epoch(self, args: TrainConfig) -> int:
        sampler = self.loaders(args)[0]
        full = sampler.num_samples // args.batch_size
        steps = min(full, args.max_steps_per_epoch or full)
        if steps < 1:
            raise DataError(f"{sampler.num_samples} training images give no full batch of {args.batch_size}: lower it")
        return steps

    def images(self, args: TrainConfig) -> Optional[torch.Tensor]:
        """train.py's least-squares images for ``args.seed``."""
        if not args.ls_init:
            return None
        if args.seed not in self.ls_images:
            cfg = self.data_cfg
            self.ls_images[args.seed] = ls_init_images(self.train_ds, args.ls_init_images, cfg, args.seed)
        return self.ls_images[args.seed]


def train_cells(chunk: list[Cell], setup: RunSetup, frozen: FrozenAnchors, progress: Progress) -> list[tuple]:
    """Build and train the chunk's cells in one pass; their records and trained layers."""
    runs: list[CellRun] = []
    twins: dict[tuple, CellRun] = {}  # (route, adapter, seed) -> the first such cell built
    for cell in chunk:
        start = time.perf_counter()
        args = cell_args(setup.base, cell, setup.device)
        key = (cell.route, cell.adapter, cell.seed)
        run = build_cell(cell, args, frozen, setup.num_classes, setup.images(args), setup.steps_per_epoch(args),
                         setup.device, twins.get(key))  # fmt: skip
        twins.setdefault(key, run)
        run.seconds += time.perf_counter() - start
        runs.append(run)
    data = {}
    for run in runs:
        sampler, loader, prep, val_loader, val_prep = setup.loaders(run.args)
        data[run.cell.seed] = SeedData(sampler, loader, prep)
    train_chunk(runs, frozen, data, (val_loader, val_prep), setup.steps_per_epoch(runs[0].args), progress)
    flops: dict[tuple, int] = {}  # (route, adapter) -> FLOPs, the same for every lr and seed
    return [(cell_record(run, flops), layer_state(run)) for run in runs]


def cell_record(run: CellRun, flops: dict[tuple, int]) -> dict:
    """The finished cell's row, trajectory and what its plots need (``flops``: a cache)."""
    from ..core.flops import stitches_flops

    net, route = run.net, run.route
    if (run.cell.route, run.cell.adapter) not in flops:
        flops[(run.cell.route, run.cell.adapter)] = stitches_flops(net)[run.cfg_id]
    names = net.config["anchors"]
    front, back = route.first.anchor, route.last.anchor
    stitch = net.stitches[run.cfg_id]
    row = {
        **run.cell.key(),
        "front_block": stitch.front_block,
        "back_block": stitch.back_block,
        "params": net.num_params(run.cfg_id),
        "trainable_params": sum(p.numel() for layer in run.layers for p in layer.parameters() if p.requires_grad),
        "flops": flops[(run.cell.route, run.cell.adapter)],
        "ls_top1": run.ls_top1,
        "top1": run.trajectory[-1]["val_top1"],
        "best_top1": max(t["val_top1"] for t in run.trajectory),
        "seconds": round(run.seconds, 3),
    }
    pair = {
        "front": names[front],
        "back": names[back],
        "back_depth": net.anchor_adapters[back].num_blocks,
        "pair_name": f"{names[front]} > {names[back]}",
    }
    return {"row": row, "trajectory": run.trajectory, "pair": pair}
