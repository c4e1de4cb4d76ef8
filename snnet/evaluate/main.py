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
   latency was measured; the frontier is printed.
5. ``--budget-flops 2.5G`` / ``--budget-latency MS`` print the best network within budget;
   ``--export CFG_ID|best --export-path net.{pt,pt2,onnx}`` writes one network as a standalone
   model (:mod:`snnet.evaluate.export`). ``--export CFG_ID`` alone only exports (no data pass).
"""

from __future__ import annotations

import os
import time
from argparse import Namespace
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

from ..cli import build_eval_parser, build_snnet, build_train_parser
from ..config import parse_args_with_config, parse_kwargs, plain
from ..core.compile import compiled_blocks
from ..core.model import SNNet
from ..core.stitches import parse_stitch_ids
from ..distributed import is_distributed, on_primary
from ..errors import CheckpointError, ConfigError, DataError, exit_on_user_error
from .latency import autocast_for, cached_latencies

# Model arguments a checkpoint's own ``args`` fill in when the command line and config leave
# them at their defaults (the trainer saves its arguments as plain data).
_MODEL_KEYS = (
    "anchors",
    "model_kwargs",
    "anchor_kwargs",
    "img_size",
    "num_classes",
    "kernel_size",
    "stride",
    "nearest",
    "stages",
    "stitching",
    "stitch_layer",
    "lora_rank",
    "official_forward",
    "routes",
    "class_token",
    "prefix_tokens",
    "stitch_stride",
)
_CKPT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".safetensors", ".bin")
ChunkCallback = Callable[[int, int], None]


def _train_keys() -> set[str]:
    """Config keys train.py knows: a training config is a valid eval config."""
    return {a.dest for a in build_train_parser()._actions}


def parse_eval_args(argv: Optional[Sequence[str]] = None) -> Namespace:
    parser = build_eval_parser()
    args, _ = parse_args_with_config(parser, argv, extra_known_keys=_train_keys())
    args._defaults = {a.dest: a.default for a in parser._actions}
    return args


def check_args(args: Namespace) -> None:
    """Refuse bad combinations before any model or data is built."""
    from .export import FORMATS
    from .pareto import parse_flops

    for name in ("batch_size", "latency_batch_size", "latency_repeats", "export_batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sweep_chunk < 0:
        raise ConfigError(f"--sweep-chunk must be >= 0 (0: all networks in one pass), got {args.sweep_chunk}")
    args.budget_flops_value = None if args.budget_flops is None else parse_flops(str(args.budget_flops))
    if args.budget_latency is not None and not args.measure_latency:
        raise ConfigError("--budget-latency needs latencies: add --measure-latency")
    if args.export is not None:
        if not args.export_path:
            raise ConfigError("--export needs --export-path PATH (.pt, .pt2 or .onnx)")
        if Path(args.export_path).suffix.lower() not in FORMATS:
            raise ConfigError(
                f"--export-path '{args.export_path}' has an unknown suffix: use .pt (TorchScript), "
                f".pt2 (torch.export) or .onnx"
            )
        if str(args.export) == "best":
            if args.budget_flops is None and args.budget_latency is None:
                raise ConfigError("--export best exports the budget pick: add --budget-flops and/or --budget-latency")
        else:
            try:
                args.export = int(args.export)
            except ValueError:
                raise ConfigError(f"--export '{args.export}' is not a cfg_id: pass a number or 'best'") from None
    if args.compatibility and (args.checkpoint or args.flops_only):
        raise ConfigError(
            "--compatibility scores an untrained SN-Net (anchors from --pretrained or --anchor-checkpoints, "
            "stitching layers from least squares): drop --resume / --flops-only"
        )
    if args.compat_images < 1:
        raise ConfigError(f"--compat-images must be >= 1, got {args.compat_images}")
    if args.use_ema and not args.checkpoint:
        raise ConfigError("--use-ema needs --resume CKPT (a checkpoint with EMA weights)")
    if args.export_path and args.export is None:
        raise ConfigError("--export-path needs --export CFG_ID (or 'best' with a budget)")
    if args.flops_only:
        if args.budget_flops is not None or args.budget_latency is not None or args.export == "best":
            raise ConfigError("budget picking needs accuracies: drop --flops-only")
        if isinstance(args.export, int):
            raise ConfigError("--export needs weights: drop --flops-only and pass --resume CKPT")


# ---------------------------------------------------------------------------------------------
# checkpoint and model
# ---------------------------------------------------------------------------------------------
def _is_default(args: Namespace, key: str) -> bool:
    value = getattr(args, key)
    return value == args._defaults.get(key) or value in (None, {}, [], "")


def apply_checkpoint_args(args: Namespace, ckpt: dict) -> None:
    """Fill model arguments the user left at their defaults from the checkpoint; refuse a
    checkpoint of other anchors or other stitching options."""
    from ..io.official_layout import official_state_of

    if official_state_of(ckpt) is not None:  # the official code's layout: its forward, our anchors' names
        args.official_forward = True
        if not args.anchors:
            raise CheckpointError(
                f"{args.checkpoint} is an official SN-Net checkpoint, which does not name its anchors: "
                f"pass the config of its run, e.g. -c configs/deit_ti_s_b.yaml"
            )
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    config = ckpt.get("snnet_config") if isinstance(ckpt.get("snnet_config"), dict) else {}
    if args.anchors and config.get("anchors") and list(config["anchors"]) != list(args.anchors):
        raise CheckpointError(
            f"checkpoint {args.checkpoint} holds anchors {list(config['anchors'])} but --anchors are {list(args.anchors)}: "
            f"drop --anchors (the checkpoint's are used) or pass the matching config"
        )
    for key in _MODEL_KEYS:
        source = config if key in config else saved
        if key not in source or source[key] is None:
            continue
        if _is_default(args, key):
            setattr(args, key, source[key])
        elif key in config and key != "anchors" and plain(getattr(args, key)) != plain(config[key]):
            raise CheckpointError(
                f"checkpoint {args.checkpoint} was trained with {key}={config[key]} but this run has "
                f"{key}={getattr(args, key)}: drop the option or use the checkpoint's value"
            )
    if not args.anchors:
        raise CheckpointError(
            f"checkpoint {args.checkpoint} names no anchors (not a train.py checkpoint?): pass --anchors"
        )


def _classifier_size(net: SNNet, state: dict) -> Optional[int]:
    """The class count the checkpoint's classifiers have (from the timm models' own classifier)."""
    for i, model in enumerate(net.anchors):
        clf = model.get_classifier()
        mods = clf if isinstance(clf, (tuple, list)) else (clf,)
        names = {id(m): n for n, m in model.named_modules()}
        for m in mods:
            for pname, p in m.named_parameters():
                if p.ndim >= 2 and id(m) in names:
                    key = f"anchors.{i}.{names[id(m)]}.{pname}".replace("..", ".")
                    if key in state:
                        return int(state[key].shape[0])
    return None


def build_model(args: Namespace, num_classes: Optional[int], state: Optional[dict]) -> SNNet:
    """The SN-Net of the arguments, with the checkpoint's weights when given."""
    model_args = Namespace(**vars(args))
    model_args.model_kwargs = parse_kwargs(args.model_kwargs)
    if state is not None:
        model_args.anchor_checkpoints = None  # the checkpoint holds every weight
    torch.manual_seed(args.seed)  # untrained layers: the same on every rank
    net = build_snnet(model_args, num_classes=num_classes, pretrained=False if state is not None else None)
    if state is None:
        return net
    if args.num_classes is None:  # e.g. --export without data: the checkpoint's classifier decides
        size = _classifier_size(net, state)
        if size is not None and size != _classifier_size(net, net.state_dict()):
            torch.manual_seed(args.seed)
            net = build_snnet(model_args, num_classes=size, pretrained=False)
    from ..io.official import load_snnet_state

    load_snnet_state(
        net,
        state,
        f"checkpoint {args.checkpoint}",
        "--anchors, --model-kwargs, --anchor-kwargs, --img-size and --num-classes",
    )
    return net


def default_out_dir(args: Namespace) -> Path:
    if args.checkpoint:
        name = Path(args.checkpoint).name
        for suffix in _CKPT_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return Path(args.checkpoint).parent / f"eval-{name}{'-ema' if args.use_ema else ''}"
    return Path("output/eval") / ("flops" if args.flops_only else "untrained")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None, on_chunk_saved: Sequence[ChunkCallback] = ()) -> int:
    """eval.py. ``on_chunk_saved`` callables get ``(chunks_done, chunks)`` after each chunk of
    the sweep is saved (e.g. a test simulating a crash there)."""
    args = parse_eval_args(argv)
    check_args(args)
    from ..distributed import init_distributed

    info = init_distributed(args.device)
    try:
        return run(args, info, on_chunk_saved)
    finally:
        if is_distributed():
            dist.destroy_process_group()


def run(args: Namespace, info, on_chunk_saved: Sequence[ChunkCallback] = ()) -> int:
    """Load the checkpoint, then one of three modes: FLOPs only, export only, or the sweep
    (with budget picking and export of the pick)."""
    from ..io.checkpoint import load_checkpoint_file
    from .predict import training_data

    log = (lambda msg: print(msg, flush=True)) if info.is_primary else (lambda msg: None)
    if args.amp and args.amp_dtype == "float16" and info.device.type == "cpu" and not args.flops_only:
        log("warning: --amp with float16 on CPU is slow and coarse; --amp-dtype bfloat16 is the usual CPU choice")
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args)
    ckpt = None
    if args.checkpoint:
        ckpt = load_checkpoint_file(args.checkpoint)
        apply_checkpoint_args(args, ckpt)
    args.trained_data = training_data(ckpt, args)  # preprocessing and class names saved with --export
    if not args.anchors:
        raise ConfigError(
            "no anchors given: pass --anchors NAME [NAME ...] (small to large), -c a config or --resume CKPT"
        )
    if args.flops_only:
        return run_flops_only(args, info, out_dir, log)
    export_only = isinstance(args.export, int)
    net, dataset = load_model(args, info, ckpt, log, with_data=not export_only)
    if export_only:
        return run_export(args, net, args.export, info, log)
    return run_sweep(args, net, dataset, info, out_dir, log, on_chunk_saved)


def _flops_table(net: SNNet, ids: list[int]) -> list[dict[str, Any]]:
    import warnings

    with warnings.catch_warnings():  # fvcore calls the deprecated torch.jit.script when imported
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.script.*")
        from ..core.flops import flops_table
    return flops_table(net, ids)


def run_flops_only(args: Namespace, info, out_dir: Path, log: Callable[[str], None]) -> int:
    """--flops-only: FLOPs and params (and latency) of every selected network; no data, no weights."""
    from .pareto import format_table
    from .results import result_rows, write_csv

    torch.manual_seed(args.seed)
    model_args = Namespace(**vars(args))
    model_args.model_kwargs, model_args.anchor_checkpoints = parse_kwargs(args.model_kwargs), None
    net = build_snnet(model_args, num_classes=args.num_classes, pretrained=False)
    ids = _select(args, net)
    if info.is_primary:
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = _flops_table(net, ids)
        latency = cached_latencies(args, net.to(info.device), info, ids, None) if args.measure_latency else None
        rows = result_rows(rows, None, latency)
        write_csv(rows, out_dir / "stitches.csv")
        log(format_table(rows, [k for k in ("cfg_id", "name", "flops", "params", "latency_ms") if k in rows[0]]))
        log(f"\n{len(rows)} networks; wrote {out_dir / 'stitches.csv'}")
    return 0


def load_model(
    args: Namespace, info, ckpt: Optional[dict], log: Callable[[str], None], with_data: bool
) -> tuple[SNNet, Any]:
    """The SN-Net with the checkpoint's weights (or untrained, with a warning), and the
    validation dataset when ``with_data``."""
    from ..io.checkpoint import extract_state_dict

    state = extract_state_dict(ckpt, args.use_ema) if ckpt is not None else None
    dataset = None
    num_classes = args.num_classes
    if with_data:
        from ..data.datasets import create_dataset, resolve_num_classes

        dataset = create_dataset(args.dataset, args.data_dir, args.val_split, args.img_size, args.seed)
        num_classes = resolve_num_classes(num_classes, dataset)
    net = build_model(args, num_classes, state)
    have = getattr(net.anchors[0], "num_classes", None)
    if dataset is not None and have is not None and have < num_classes:  # a checkpoint with a smaller head
        raise DataError(
            f"the checkpoint's classifiers have {have} classes but the data has {num_classes} "
            f"(labels 0..{num_classes - 1}): evaluate on the data it was trained for"
        )
    if args.compatibility:
        from .compat import ls_initialise_and_score

        args.compat_scores = on_primary(
            lambda: ls_initialise_and_score(net, args.dataset, args.data_dir, args.compat_images, args.seed),
            info.is_primary,
        )
        log(f"Least-squares init and junction scores on {args.compat_images} training images")
    if ckpt is None:
        if not args.compatibility:
            log(
                "warning: no --resume checkpoint: the stitching layers are untrained "
                + (
                    "(anchors: --pretrained / --anchor-checkpoints)"
                    if args.pretrained or args.anchor_checkpoints
                    else "and the anchors are randomly initialised"
                )
            )
        if info.distributed:
            from ..distributed import broadcast_state

            broadcast_state(net)
    return net, dataset


def run_export(args: Namespace, net: SNNet, cfg_id: int, info, log: Callable[[str], None]) -> int:
    """Write network ``cfg_id`` as a standalone model (rank 0)."""
    _select(args, net)  # refuses a --stitches that selects nothing, as every mode does
    if info.is_primary:
        _export(args, net, cfg_id, log)
    return 0


def run_sweep(
    args: Namespace,
    net: SNNet,
    dataset,
    info,
    out_dir: Path,
    log: Callable[[str], None],
    on_chunk_saved: Sequence[ChunkCallback] = (),
) -> int:
    """Every selected network from one pass over the data per chunk (resuming DIR's partial
    results), the tables and frontier, the budget pick and its export."""
    from .pareto import check_flops_budget, describe_pick, pick
    from .results import PartialResults, evaluation_description, result_rows, write_outputs

    primary = info.is_primary
    ids = _select(args, net)
    flops_rows = _flops_table(net, ids) if primary else None  # before moving: fvcore traces on CPU
    if args.budget_flops_value is not None:  # fail before the data pass if nothing can fit
        on_primary(lambda: check_flops_budget(flops_rows, args.budget_flops_value), primary)
    net.to(info.device).eval()
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    held: dict[str, Any] = {}

    def open_partial() -> list[int]:
        held["partial"] = PartialResults(out_dir, evaluation_description(args, net, dataset), overwrite=args.overwrite)
        return [i for i in ids if i not in held["partial"].accuracy]

    todo = on_primary(open_partial, primary)  # rank 0 reads DIR; every rank gets the networks to do
    partial = held.get("partial")
    if primary:
        done = len(ids) - len(todo)
        log(
            f"SN-Net over {net.config['anchors']}: {len(ids)} networks selected"
            + (" (official SN-Net forward)" if net.config.get("official_forward") else "")
            + (f", {done} already in {out_dir / 'sweep_partial.jsonl'}" if done else "")
            + f"; {len(dataset)} images ({args.val_split}), {info.world_size} process(es) on {info.device.type}"
        )
    if todo:
        with compiled_blocks(net, args.torchcompile, args.torchcompile_mode) if args.torchcompile else nullcontext():
            _sweep(args, net, dataset, todo, info, partial, log, on_chunk_saved)
    latency = cached_latencies(args, net, info, ids, partial) if args.measure_latency else None
    if info.distributed:
        dist.barrier()
    if not primary:
        return 0

    rows = result_rows(flops_rows, partial, latency)
    title = f"SN-Net over {' / '.join(net.config['anchors'])}: {len(rows)} networks"
    write_outputs(rows, out_dir, title, log)
    if args.compatibility:
        from .compat import compat_rows, write_compat_csv

        write_compat_csv(compat_rows(net, args.compat_scores, rows), out_dir / "compat.csv")
        log(f"Wrote {out_dir}/compat.csv (junction CKA, LS residual, top-1 of the LS-initialised networks)")
    chosen = None
    if args.budget_flops_value is not None or args.budget_latency is not None:
        chosen = pick(rows, args.budget_flops_value, args.budget_latency)
        log("\n" + describe_pick(chosen, args.budget_flops_value, args.budget_latency))
    if args.export is not None:
        _export(args, net.cpu(), chosen["cfg_id"] if args.export == "best" else args.export, log)
    return 0


def _select(args: Namespace, net: SNNet) -> list[int]:
    if str(args.stitches).strip().lower() in ("all", ""):
        return list(range(net.num_stitches))
    ids = parse_stitch_ids(str(args.stitches), net.num_stitches)
    if not ids:
        raise ConfigError(f"--stitches '{args.stitches}' selects no network: use e.g. 0,3,10-20 or 'all'")
    return ids


def _sweep(
    args: Namespace,
    net: SNNet,
    dataset,
    todo: list[int],
    info,
    partial,
    log,
    on_chunk_saved: Sequence[ChunkCallback] = (),
) -> None:
    from ..data.loaders import Normalize, data_config_for, eval_loader, eval_transform
    from .sweep import make_chunks, progress_logger, sweep_pass

    data_cfg = data_config_for(net, dataset)  # the trainer's validation transform (digits: no crop)
    dataset.transform = eval_transform(data_cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(info.world_size)))
    workers = max(0, min(args.workers, cores // max(1, local_world)))
    loader = eval_loader(
        dataset, args.batch_size, workers, info.rank, info.world_size, pin_memory=info.device.type == "cuda"
    )
    prep = Normalize(data_cfg["mean"], data_cfg["std"], info.device, args.channels_last)
    autocast = autocast_for(args, info.device)
    chunks = make_chunks(net, todo, args.sweep_chunk)
    n_batches = len(loader)
    for c, chunk in enumerate(chunks):
        start = time.perf_counter()
        what = f"chunk {c + 1}/{len(chunks)} ({len(chunk)} networks)"
        progress = progress_logger(log, what, args.log_interval, n_batches, info.world_size, start)
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


def _export(args: Namespace, net: SNNet, cfg_id: int, log) -> None:
    from .export import export_network
    from .predict import prediction_info, write_prediction_info

    report = export_network(net.cpu().float(), cfg_id, args.export_path, args.export_batch_size, args.onnx_opset)
    info_path = write_prediction_info(report.path, prediction_info(net, *args.trained_data), cfg_id, report.name)
    kind = {"torchscript": "TorchScript", "exported_program": "torch.export program", "onnx": "ONNX"}[report.format]
    load = {
        "torchscript": f"torch.jit.load('{report.path}')",
        "exported_program": f"torch.export.load('{report.path}').module()",
        "onnx": f"onnxruntime.InferenceSession('{report.path}')",
    }[report.format]
    log(
        f"Exported cfg_id {cfg_id} ({report.name}) as {kind} to {report.path}: {report.params:,} parameters "
        f"(= the network's), max |output - SN-Net output| = {report.max_abs_diff:.2e}"
        + ("" if report.dynamic_batch else f"; batch size fixed at {max(2, args.export_batch_size)}")
        + f"\nLoad it without snnet: {load}; input (N, {', '.join(map(str, net.input_size))}) normalised images"
        + f"\nPreprocessing and class names: {info_path} (predict.py --exported {report.path} IMAGES)"
    )
