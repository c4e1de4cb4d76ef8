"""eval.py: evaluate every network of a trained SN-Net in one pass, pick, and ship.

    python eval.py -c configs/deit_ti_s_b.yaml --resume output/train/RUN/last.pth.tar --data-dir /data/imagenet
    torchrun --nproc_per_node 8 eval.py -c ... --resume ... --output results/deit
    python eval.py -c configs/deit_ti_s_b.yaml --flops-only --output results/flops
    python eval.py ... --budget-flops 2.5G --export best --export-path deit_2.5G.pt

The model, data and config arguments are train.py's (a training config works unchanged; keys
only the trainer uses are ignored, unknown keys are errors). What happens:

1. The checkpoint's weights are loaded (``--use-ema`` for its EMA weights); anchors, kwargs and
   image size default to the checkpoint's own when not given.
2. The selected networks (``--stitches``, default all) are evaluated from ONE pass over the
   validation data (:mod:`snnet.evaluate.sweep`), in chunks of ``--sweep-chunk`` networks (0: all in one
   pass). Each finished chunk is appended to ``DIR/sweep_partial.jsonl``; a rerun into the same
   DIR skips what is there. Under torchrun every rank evaluates its own shard, without padding.
3. ``--measure-latency`` times each network alone at ``--latency-batch-size`` on the device.
4. DIR gets ``stitches.csv``, ``stitches_res.txt`` (the official SN-Net JSON lines),
   ``pareto.csv`` and ``pareto.png`` (FLOPs vs top-1), and ``pareto_latency.csv``/``.png`` when
   latency was measured; the frontier is printed; ``report.html`` shows it all interactively
   (:mod:`snnet.evaluate.report`; ``--report-only`` rewrites it from DIR's ``stitches.csv``).
5. ``--budget-flops 2.5G`` / ``--budget-latency MS`` print the best network within budget;
   ``--export CFG_ID|best --export-path net.{pt,pt2,onnx}`` writes one network as a standalone
   model (:mod:`snnet.evaluate.export`). ``--export CFG_ID`` alone only exports (no data pass).
   ``--export frontier --export-path nets.pt`` writes the frontier's networks into one TorchScript
   file, each block once, and ``--export 3,12,40`` the listed ones, without a data pass
   (:mod:`snnet.evaluate.export_frontier`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from argparse import Namespace
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from ..cli import build_eval_parser
from ..config import Needs, given_on_command_line, parse_args_with_config, refuse_without_effect
from ..core.compile import compiled_blocks
from ..core.model import SNNet
from ..core.stitches import parse_stitch_ids
from ..distributed import is_distributed, on_primary
from ..errors import ConfigError, DataError, exit_on_user_error
from ..io.lock import check_folder_free, hold_folder
from ..io.paths import check_output_dir
from ..run_config import EvalConfig, EvalMode, ModelConfig, build_snnet, defaults_of, from_namespace, require_anchors
from .export import export_choice
from .latency import autocast_for, cached_latencies
from .load import (
    build_trained_snnet,
    default_out_dir,
    train_keys,
    training_data,
    with_checkpoint_data,
    with_checkpoint_model,
)

ChunkCallback = Callable[[int, int], None]


def parse_eval_config(argv: Optional[Sequence[str]] = None) -> EvalConfig:
    """eval.py's command line (and ``-c`` config) as a checked, frozen :class:`EvalConfig`."""
    parser = build_eval_parser()
    argv = tuple(map(str, sys.argv[1:] if argv is None else argv))
    args, _ = parse_args_with_config(parser, argv, extra_known_keys=train_keys())
    return eval_config(args, defaults_of(parser, given_on_command_line(build_eval_parser(), argv)), argv)


def _export_only(a: Any) -> bool:  # 'best' and 'frontier' pick from a sweep; ids export without one
    return a.export is not None and str(a.export).strip() not in ("best", "frontier")


def _reads_data(a: Any) -> bool:
    return not a.flops_only and not _export_only(a)


# eval.py's options that act only with others, judged against the defaults after -c (a training
# config's keys are the training run's, not this command's): given where they cannot act, refused
EVAL_RULES = (
    Needs("pretrained", lambda a: not a.flops_only, "loads weights and --flops-only loads none"),
    Needs("anchor_checkpoints", lambda a: not a.flops_only, "loads weights and --flops-only loads none"),
    Needs("seed", lambda a: not a.checkpoint and not a.flops_only,
          "seeds an untrained SN-Net's layers and the --compatibility images (no --resume, no --flops-only)"),
    Needs("workers", _reads_data, "loads data and --flops-only / --export CFG_ID read none"),
    Needs("batch_size", _reads_data, "batches data and --flops-only / --export CFG_ID read none"),
    Needs("val_split", _reads_data, "names the data and --flops-only / --export CFG_ID read none"),
    Needs("sweep_chunk", _reads_data, "splits the sweep and --flops-only / --export CFG_ID run none"),
    Needs("log_interval", _reads_data, "paces the sweep's progress and --flops-only / --export CFG_ID run none"),
    Needs("stitches", lambda a: not _export_only(a), "selects the networks to sweep and --export CFG_ID sweeps none"),
    Needs("budget_flops", lambda a: not _export_only(a), "picks from a sweep and --export CFG_ID sweeps none"),
    Needs("compat_images", lambda a: a.compatibility, "acts only with --compatibility"),
    Needs("latency_batch_size", lambda a: a.measure_latency, "acts only with --measure-latency"),
    Needs("latency_warmup", lambda a: a.measure_latency, "acts only with --measure-latency"),
    Needs("latency_repeats", lambda a: a.measure_latency, "acts only with --measure-latency"),
    Needs("export_batch_size", lambda a: a.export is not None, "acts only with --export"),
    Needs("onnx_opset", lambda a: str(a.export_path or "").lower().endswith(".onnx"),
          "acts only with an --export-path ending .onnx"),
    Needs("amp_dtype", lambda a: a.amp, "acts only with --amp"),
    Needs("torchcompile_mode", lambda a: a.torchcompile, "acts only with --torchcompile"),
)  # fmt: skip


def _check_sizes(args: Any) -> None:
    for name in ("batch_size", "latency_batch_size", "latency_repeats", "export_batch_size", "compat_images"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sweep_chunk < 0:
        raise ConfigError(f"--sweep-chunk must be >= 0 (0: all networks in one pass), got {args.sweep_chunk}")


def eval_config(args: Namespace, defaults: Mapping[str, Any], argv: Sequence[str] = ()) -> EvalConfig:
    """Refuse bad combinations before any model or data is built; decide what eval.py does
    (``argv``: the command line as given, which report.html shows)."""
    from .pareto import parse_flops

    _check_sizes(args)
    if args.report_only:
        given = [f for f, on in (("--flops-only", args.flops_only), ("--compatibility", args.compatibility),
                                 ("--budget-flops", args.budget_flops is not None),
                                 ("--budget-latency", args.budget_latency is not None),
                                 ("--export", args.export is not None)) if on]  # fmt: skip
        if given:
            raise ConfigError(f"--report-only only rewrites DIR/report.html from DIR/stitches.csv: drop {given[0]}")
        if not args.out_dir:
            raise ConfigError("--report-only needs --output DIR, the folder with the sweep's stitches.csv")
    if args.budget_latency is not None and not args.measure_latency:
        raise ConfigError("--budget-latency needs latencies: add --measure-latency")
    export_id, export_ids = export_choice(args)
    refuse_without_effect(args, EVAL_RULES, defaults)
    if args.compatibility and (args.checkpoint or args.flops_only):
        raise ConfigError(
            "--compatibility scores an untrained SN-Net (anchors from --pretrained or --anchor-checkpoints, "
            "stitching layers from least squares): drop --resume / --flops-only"
        )
    if args.use_ema and not args.checkpoint:
        raise ConfigError("--use-ema needs --resume CKPT (a checkpoint with EMA weights)")
    if args.flops_only:
        if args.budget_flops is not None or args.budget_latency is not None or str(args.export) == "best":
            raise ConfigError("budget picking needs accuracies: drop --flops-only")
        if str(args.export).strip() == "frontier":
            raise ConfigError(
                "--export frontier exports the sweep's Pareto frontier, which needs accuracies: drop --flops-only"
            )
        if export_id is not None or export_ids is not None:
            raise ConfigError("--export needs weights: drop --flops-only and pass --resume CKPT")
    check_output_paths(args)
    if args.report_only:
        mode = EvalMode.REPORT_ONLY
    elif args.flops_only:
        mode = EvalMode.FLOPS_ONLY
    elif export_id is not None or export_ids is not None:
        mode = EvalMode.EXPORT_ONLY
    else:
        mode = EvalMode.COMPATIBILITY if args.compatibility else EvalMode.SWEEP
    budget = None if args.budget_flops is None else parse_flops(str(args.budget_flops))
    return from_namespace(
        EvalConfig,
        args,
        mode=mode,
        export_id=export_id,
        export_ids=export_ids,
        budget_flops_value=budget,
        defaults=defaults,
        argv=tuple(argv),
    )


def check_output_paths(args: Any) -> None:
    """Refuse outputs that would destroy an input or cannot be written (before any work)."""
    from ..io.paths import check_not_an_input, check_output_file

    check_output_dir(args.out_dir, "--output")
    if args.export_path:
        check_output_file(args.export_path, "--export-path")
        inputs = {"--resume checkpoint": args.checkpoint, "config": args.config}
        inputs.update({f"anchor checkpoint {c}": c for c in args.anchor_checkpoints or [] if str(c).lower() != "none"})
        check_not_an_input(args.export_path, "--export-path", inputs)
        check_not_an_input(args.export_path + ".json", "--export-path (its .json)", inputs)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None, on_chunk_saved: Sequence[ChunkCallback] = ()) -> int:
    """eval.py. ``on_chunk_saved`` callables get ``(chunks_done, chunks)`` after each chunk of
    the sweep is saved (e.g. a test simulating a crash there)."""
    cfg = parse_eval_config(argv)
    from ..distributed import init_distributed, set_cpu_threads

    set_cpu_threads(cfg.threads)

    info = init_distributed(cfg.device)
    try:
        return run(cfg, info, on_chunk_saved)
    finally:
        if is_distributed():
            dist.destroy_process_group()


def run(cfg: EvalConfig, info, on_chunk_saved: Sequence[ChunkCallback] = ()) -> int:
    """Load the checkpoint, then what ``cfg.mode`` says: FLOPs only, export only, or the sweep
    (with budget picking and export of the pick; LS init and junction scores first for
    ``--compatibility``)."""
    from ..io.checkpoint import load_checkpoint_file

    log = (lambda msg: print(msg, flush=True)) if info.is_primary else (lambda msg: None)
    if cfg.amp and cfg.amp_dtype == "float16" and info.device.type == "cpu" and cfg.mode != EvalMode.FLOPS_ONLY:
        log("warning: --amp with float16 on CPU is slow and coarse; --amp-dtype bfloat16 is the usual CPU choice")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg.checkpoint, cfg.use_ema, cfg.flops_only)
    check_output_dir(out_dir, "--output")
    if cfg.mode != EvalMode.EXPORT_ONLY:  # another eval.py writing DIR: refused before any work
        check_folder_free(out_dir, "--output")
    ckpt = None
    if cfg.checkpoint:
        ckpt = load_checkpoint_file(cfg.checkpoint)
        cfg = with_checkpoint_model(cfg, ckpt, log)
        if cfg.mode not in (EvalMode.FLOPS_ONLY, EvalMode.REPORT_ONLY):
            cfg, from_checkpoint = with_checkpoint_data(cfg, ckpt)
            if from_checkpoint:
                log(f"Data of the checkpoint's run: {cfg.dataset or cfg.data_dir} ({cfg.val_split})")
    trained_data = training_data(ckpt, cfg)  # preprocessing and class names saved with --export
    require_anchors(cfg.anchors, " or --resume CKPT")
    if cfg.mode in (EvalMode.FLOPS_ONLY, EvalMode.REPORT_ONLY):
        return run_flops_only(cfg, info, out_dir, log)
    with_data = cfg.mode != EvalMode.EXPORT_ONLY
    net, dataset, compat_scores = load_model(cfg, info, ckpt, log, with_data=with_data)
    if cfg.mode == EvalMode.EXPORT_ONLY:
        return run_export(cfg, net, info, log, trained_data)
    return run_sweep(cfg, net, dataset, info, out_dir, log, on_chunk_saved, trained_data, compat_scores)


def _flops_table(net: SNNet, ids: list[int]) -> list[dict[str, Any]]:
    import warnings

    with warnings.catch_warnings():  # fvcore calls the deprecated torch.jit.script when imported
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.script.*")
        from ..core.flops import flops_table
    return flops_table(net, ids)


def run_flops_only(cfg: EvalConfig, info, out_dir: Path, log: Callable[[str], None]) -> int:
    """--flops-only: FLOPs and params (and latency) of every selected network; no data, no
    weights. --report-only: DIR/report.html from DIR/stitches.csv with the same SN-Net."""
    from .pareto import format_table
    from .report import rows_of_this_snnet, write_report
    from .results import result_rows, write_csv

    model = dataclasses.replace(ModelConfig.from_args(cfg), pretrained=False, anchor_checkpoints=None)
    net = build_snnet(model, seed=cfg.seed)
    if cfg.mode == EvalMode.REPORT_ONLY:
        if info.is_primary:
            rows = rows_of_this_snnet(out_dir, net)
            log(f"Wrote {write_report(rows, net, out_dir, cfg.argv, 'top1' not in rows[0])} ({len(rows)} networks)")
        return 0
    ids = _select(cfg, net)
    if info.is_primary:
        hold_folder(out_dir, "--output")
        rows = _flops_table(net, ids)
        latency = cached_latencies(cfg, net.to(info.device), info, ids, None) if cfg.measure_latency else None
        rows = result_rows(rows, None, latency)
        write_csv(rows, out_dir / "stitches.csv")
        report = write_report(rows, net, out_dir, cfg.argv, flops_only=True)
        log(format_table(rows, [k for k in ("cfg_id", "name", "flops", "params", "latency_ms") if k in rows[0]]))
        log(f"\n{len(rows)} networks; wrote {out_dir / 'stitches.csv'} and {report}")
    return 0


def load_model(
    cfg: EvalConfig, info, ckpt: Optional[dict], log: Callable[[str], None], with_data: bool
) -> tuple[SNNet, Any, Optional[dict]]:
    """The SN-Net with the checkpoint's weights (or untrained, with a warning), the validation
    dataset when ``with_data``, and the junction scores of ``--compatibility`` (else None)."""
    from ..io.checkpoint import extract_state_dict

    state = extract_state_dict(ckpt, cfg.use_ema) if ckpt is not None else None
    dataset = None
    num_classes = cfg.num_classes
    if with_data:
        from ..data.datasets import create_dataset, resolve_num_classes

        dataset = create_dataset(cfg.dataset, cfg.data_dir, cfg.val_split, cfg.img_size, cfg.seed, cfg)
        num_classes = resolve_num_classes(num_classes, dataset)
    net = build_trained_snnet(cfg, num_classes, state, log)
    have = getattr(net.anchors[0], "num_classes", None)
    if dataset is not None and have is not None and have < num_classes:  # a checkpoint with a smaller head
        raise DataError(
            f"the checkpoint's classifiers have {have} classes but the data has {num_classes} "
            f"(labels 0..{num_classes - 1}): evaluate on the data it was trained for"
        )
    scores = None
    if cfg.mode == EvalMode.COMPATIBILITY:
        from .compat import ls_initialise_and_score

        if not (cfg.pretrained or cfg.anchor_checkpoints):
            log(
                "warning: --compatibility without --pretrained or --anchor-checkpoints scores randomly initialised "
                "anchors, which says nothing about trained ones: pass the anchors' weights"
            )
        scores = on_primary(
            lambda: ls_initialise_and_score(net, cfg.dataset, cfg.data_dir, cfg.compat_images, cfg.seed, cfg),
            info.is_primary,
        )
        log(f"Least-squares init and junction scores on {cfg.compat_images} training images")
    if ckpt is None:
        if cfg.mode != EvalMode.COMPATIBILITY:
            log(
                "warning: no --resume checkpoint: the stitching layers are untrained "
                + (
                    "(anchors: --pretrained / --anchor-checkpoints)"
                    if cfg.pretrained or cfg.anchor_checkpoints
                    else "and the anchors are randomly initialised"
                )
            )
        if info.distributed:
            from ..distributed import broadcast_state

            broadcast_state(net)
    return net, dataset, scores


def run_export(cfg: EvalConfig, net: SNNet, info, log: Callable[[str], None], trained_data: tuple) -> int:
    """Write network ``cfg.export_id``, or networks ``cfg.export_ids`` into one file (timed on the
    device first with ``--measure-latency``), as standalone models (rank 0); ``trained_data`` is
    the ``(dataset, data_dir)`` whose preprocessing and class names go beside it."""
    _select(cfg, net)  # refuses a --stitches that selects nothing, as every mode does
    if cfg.export_ids is not None:
        from .export_frontier import check_network_ids, write_network_set
        from .results import result_rows

        check_network_ids(net, cfg.export_ids)  # before any timing or writing
        latency = None
        if cfg.measure_latency:
            latency = cached_latencies(cfg, net.to(info.device).eval(), info, list(cfg.export_ids), None)
        if info.is_primary:
            rows = result_rows(_flops_table(net.cpu(), list(cfg.export_ids)), None, latency)
            write_network_set(
                net, rows, [r["cfg_id"] for r in rows], cfg.export_path, cfg.export_batch_size, trained_data, log
            )
    elif info.is_primary:
        _export(cfg, net, cfg.export_id, log, trained_data)
    return 0


def run_sweep(
    cfg: EvalConfig,
    net: SNNet,
    dataset,
    info,
    out_dir: Path,
    log: Callable[[str], None],
    on_chunk_saved: Sequence[ChunkCallback] = (),
    trained_data: tuple = ("", None),
    compat_scores: Optional[dict] = None,
) -> int:
    """Every selected network from one pass over the data per chunk (resuming DIR's partial
    results), the tables and frontier, the budget pick and its export (see :func:`run_export`),
    and ``compat.csv`` with the ``compat_scores`` of ``--compatibility``."""
    from .pareto import check_flops_budget, describe_pick, pick
    from .report import write_report
    from .results import PartialResults, evaluation_description, result_rows, write_outputs

    primary = info.is_primary
    ids = _select(cfg, net)
    flops_rows = _flops_table(net, ids) if primary else None  # before moving: fvcore traces on CPU
    if cfg.budget_flops_value is not None:  # fail before the data pass if nothing can fit
        on_primary(lambda: check_flops_budget(flops_rows, cfg.budget_flops_value), primary)
    if str(cfg.export).strip() == "frontier":  # an SN-Net that cannot be exported so: refused before the data pass
        from .export_frontier import check_network_ids

        check_network_ids(net, [])
    net.to(info.device).eval()
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    held: dict[str, Any] = {}

    def open_partial() -> list[int]:
        hold_folder(out_dir, "--output")  # one eval.py per results folder (snnet.io.lock)
        held["partial"] = PartialResults(out_dir, evaluation_description(cfg, net, dataset), overwrite=cfg.overwrite)
        return [i for i in ids if i not in held["partial"].accuracy]

    todo = on_primary(open_partial, primary)  # rank 0 reads DIR; every rank gets the networks to do
    partial = held.get("partial")
    if primary:
        done = len(ids) - len(todo)
        log(
            f"SN-Net over {net.config['anchors']}: {len(ids)} networks selected"
            + (" (official SN-Net forward)" if net.config.get("official_forward") else "")
            + (f", {done} already in {out_dir / 'sweep_partial.jsonl'}" if done else "")
            + f"; {len(dataset)} images ({cfg.val_split}), {info.world_size} process(es) on {info.device.type}"
        )
    if todo:
        with compiled_blocks(net, cfg.torchcompile, cfg.torchcompile_mode) if cfg.torchcompile else nullcontext():
            _sweep(cfg, net, dataset, todo, info, partial, log, on_chunk_saved)
    latency = cached_latencies(cfg, net, info, ids, partial) if cfg.measure_latency else None
    if info.distributed:
        dist.barrier()
    if not primary:
        return 0

    rows = result_rows(flops_rows, partial, latency)
    title = f"SN-Net over {' / '.join(net.config['anchors'])}: {len(rows)} networks"
    write_outputs(rows, out_dir, title, log)
    log(f"Wrote {write_report(rows, net, out_dir, cfg.argv)} (open it in a browser)")
    if cfg.mode == EvalMode.COMPATIBILITY:
        from .compat import compat_rows, write_compat_csv

        write_compat_csv(compat_rows(net, compat_scores, rows), out_dir / "compat.csv")
        log(f"Wrote {out_dir}/compat.csv (junction CKA, LS residual, top-1 of the LS-initialised networks)")
    chosen = None
    if cfg.budget_flops_value is not None or cfg.budget_latency is not None:
        chosen = pick(rows, cfg.budget_flops_value, cfg.budget_latency)
        log("\n" + describe_pick(chosen, cfg.budget_flops_value, cfg.budget_latency))
    if str(cfg.export).strip() == "frontier":
        from .export_frontier import write_network_set
        from .pareto import pareto_frontier

        frontier = [r["cfg_id"] for r in pareto_frontier(rows, "flops", "top1")]  # pareto.csv's networks
        write_network_set(net.cpu(), rows, frontier, cfg.export_path, cfg.export_batch_size, trained_data, log)
    elif cfg.export is not None:
        cfg_id = chosen["cfg_id"] if cfg.export_id is None else cfg.export_id
        _export(cfg, net.cpu(), cfg_id, log, trained_data)
    return 0


def _select(cfg: EvalConfig, net: SNNet) -> list[int]:
    if str(cfg.stitches).strip().lower() in ("all", ""):
        return list(range(net.num_stitches))
    ids = parse_stitch_ids(str(cfg.stitches), net.num_stitches)
    if not ids:
        raise ConfigError(f"--stitches '{cfg.stitches}' selects no network: use e.g. 0,3,10-20 or 'all'")
    return ids


def _sweep(
    cfg: EvalConfig,
    net: SNNet,
    dataset,
    todo: list[int],
    info,
    partial,
    log,
    on_chunk_saved: Sequence[ChunkCallback] = (),
) -> None:
    from ..data.loaders import Normalize, data_config_for, eval_loader, eval_transform, max_workers
    from .sweep import make_chunks, progress_logger, sweep_pass

    data_cfg = data_config_for(net, dataset)  # the trainer's validation transform (digits: no crop)
    dataset.transform = eval_transform(data_cfg)
    workers = max(0, min(cfg.workers, max_workers(info.world_size)[0]))
    loader = eval_loader(
        dataset, cfg.batch_size, workers, info.rank, info.world_size, pin_memory=info.device.type == "cuda"
    )
    prep = Normalize(data_cfg["mean"], data_cfg["std"], info.device, cfg.channels_last)
    autocast = autocast_for(cfg, info.device)
    chunks = make_chunks(net, todo, cfg.sweep_chunk)
    n_batches = len(loader)
    for c, chunk in enumerate(chunks):
        start = time.perf_counter()
        what = f"chunk {c + 1}/{len(chunks)} ({len(chunk)} networks)"
        progress = progress_logger(log, what, cfg.log_interval, n_batches, info.world_size, start)
        sums = sweep_pass(net, loader, chunk, prep, autocast, info.device, progress).all_reduce()
        records = sums.records()
        if any(r["count"] != len(dataset) for r in records):
            raise RuntimeError(f"counted {records[0]['count']} samples of {len(dataset)}: a bug, please report it")
        if info.is_primary:
            partial.add_accuracy(records)
            log(
                f"chunk {c + 1}/{len(chunks)}: {len(chunk)} networks on {len(dataset)} images in "
                f"{time.perf_counter() - start:.1f} s"
            )
        for callback in on_chunk_saved:
            callback(c + 1, len(chunks))


def _export(cfg: EvalConfig, net: SNNet, cfg_id: int, log, trained_data: tuple) -> None:
    from .export import export_network
    from .predict import prediction_info, write_prediction_info

    report = export_network(net.cpu().float(), cfg_id, cfg.export_path, cfg.export_batch_size, cfg.onnx_opset)
    info_path = write_prediction_info(report.path, prediction_info(net, *trained_data), cfg_id, report.name)
    kind = {"torchscript": "TorchScript", "exported_program": "torch.export program", "onnx": "ONNX"}[report.format]
    load = {
        "torchscript": f"torch.jit.load('{report.path}')",
        "exported_program": f"torch.export.load('{report.path}').module()",
        "onnx": f"onnxruntime.InferenceSession('{report.path}')",
    }[report.format]
    log(
        f"Exported cfg_id {cfg_id} ({report.name}) as {kind} to {report.path}: {report.params:,} parameters "
        f"(= the network's), max |output - SN-Net output| = {report.max_abs_diff:.2e}"
        + ("" if report.dynamic_batch else f"; batch size fixed at {max(2, cfg.export_batch_size)}")
        + f"\nLoad it without snnet: {load}; input (N, {', '.join(map(str, net.input_size))}) normalised images"
        + f"\nPreprocessing and class names: {info_path} (predict.py --exported {report.path} IMAGES)"
    )
