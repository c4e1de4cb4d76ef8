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
   validation data (:mod:`snnet.sweep`), in chunks of ``--sweep-chunk`` networks (0: all in one
   pass). Each finished chunk is appended to ``DIR/sweep_partial.jsonl``; a rerun into the same
   DIR skips what is there. Under torchrun every rank evaluates its own shard, without padding.
3. ``--measure-latency`` times each network alone at ``--latency-batch-size`` on the device.
4. DIR gets ``stitches.csv``, ``stitches_res.txt`` (the official SN-Net JSON lines),
   ``pareto.csv`` and ``pareto.png`` (FLOPs vs top-1), and ``pareto_latency.csv``/``.png`` when
   latency was measured; the frontier is printed.
5. ``--budget-flops 2.5G`` / ``--budget-latency MS`` print the best network within budget;
   ``--export CFG_ID|best --export-path net.{pt,pt2,onnx}`` writes one network as a standalone
   model (:mod:`snnet.export`). ``--export CFG_ID`` alone only exports (no data pass).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import time
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

from .cli import add_data_args, add_model_args, build_snnet
from .config import parse_args_with_config, parse_kwargs
from .errors import CheckpointError, ConfigError, DataError, SNNetError, exit_on_user_error
from .model import SNNet
from .stitches import parse_stitch_ids

# Model arguments a checkpoint's own ``args`` fill in when the command line and config leave
# them at their defaults (the trainer saves its arguments as plain data).
_MODEL_KEYS = ("anchors", "model_kwargs", "anchor_kwargs", "img_size", "num_classes", "kernel_size", "stride",
               "nearest", "stages", "official_forward")
_CKPT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".safetensors", ".bin")


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
def build_eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate every network of an SN-Net from one pass over the data; Pareto frontier, "
                    "budget picking and export of one network.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-c", "--config", default="", metavar="FILE.yaml",
                        help="YAML file of argument defaults; train.py configs work (training-only keys are ignored)")
    add_model_args(parser)
    add_data_args(parser)

    g = parser.add_argument_group("evaluation")
    # Own dests (not 'resume'/'output'): a training config's resume/output keys mean something else.
    g.add_argument("--resume", "--checkpoint", dest="checkpoint", default="", metavar="CKPT",
                   help="train.py checkpoint to evaluate (its anchors/kwargs/image size are used when not given)")
    g.add_argument("--use-ema", action="store_true", default=False, help="evaluate the checkpoint's EMA weights")
    g.add_argument("--stitches", default="all", metavar="IDS", help="cfg_ids to evaluate, e.g. 0,3,10-20, or 'all'")
    g.add_argument("--output", dest="out_dir", default="", metavar="DIR",
                   help="results folder (default: next to the checkpoint, eval-<name>[-ema])")
    g.add_argument("-b", "--batch-size", type=int, default=256, metavar="N", help="images per batch per process")
    g.add_argument("--val-split", default="validation", help="dataset split to evaluate on")
    g.add_argument("--sweep-chunk", type=int, default=0, metavar="N",
                   help="networks per data pass; each finished chunk is saved (0: all in one pass)")
    g.add_argument("--overwrite", action="store_true", default=False,
                   help="discard partial results in DIR instead of resuming them")
    g.add_argument("--flops-only", action="store_true", default=False,
                   help="only count FLOPs and params of every network (no data, no weights)")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="batches between progress lines")

    g = parser.add_argument_group("compatibility before training")
    g.add_argument("--compatibility", action="store_true", default=False,
                   help="LS-initialise an untrained SN-Net, score every stitch (linear CKA at the junction, LS residual) "
                        "and sweep it: DIR/compat.csv (snnet/compat.py)")
    g.add_argument("--compat-images", type=int, default=100, metavar="N",
                   help="training images for the LS init and the scores")

    g = parser.add_argument_group("latency")
    g.add_argument("--measure-latency", action="store_true", default=False,
                   help="time each network's forward on this device (adds latency_ms and pareto_latency.csv)")
    g.add_argument("--latency-batch-size", type=int, default=1, metavar="N", help="batch size of the timed forwards")
    g.add_argument("--latency-warmup", type=int, default=10, metavar="N", help="untimed forwards first")
    g.add_argument("--latency-repeats", type=int, default=30, metavar="N", help="timed forwards (the median is kept)")

    g = parser.add_argument_group("picking and shipping")
    g.add_argument("--budget-flops", default=None, metavar="FLOPS",
                   help="print the most accurate network within this many FLOPs, e.g. 2.5G or 800M")
    g.add_argument("--budget-latency", type=float, default=None, metavar="MS",
                   help="print the most accurate network within this latency (needs --measure-latency)")
    g.add_argument("--export", default=None, metavar="CFG_ID|best",
                   help="write one network as a standalone model; 'best': the budget pick")
    g.add_argument("--export-path", default=None, metavar="PATH",
                   help="where to write it: .pt (TorchScript), .pt2 (torch.export) or .onnx")
    g.add_argument("--export-batch-size", type=int, default=2, metavar="N",
                   help="example batch for tracing (the exported batch dimension is dynamic)")
    g.add_argument("--onnx-opset", type=int, default=None, metavar="N", help="ONNX opset (default: torch's)")

    g = parser.add_argument_group("mechanics")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--amp", action="store_true", default=False, help="mixed precision (torch.autocast)")
    g.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"])
    g.add_argument("--channels-last", action="store_true", default=False)
    return parser


def _train_keys() -> set[str]:
    """Config keys train.py knows: a training config is a valid eval config."""
    from .training import build_train_parser

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
            raise ConfigError(f"--export-path '{args.export_path}' has an unknown suffix: use .pt (TorchScript), "
                              f".pt2 (torch.export) or .onnx")
        if str(args.export) == "best":
            if args.budget_flops is None and args.budget_latency is None:
                raise ConfigError("--export best exports the budget pick: add --budget-flops and/or --budget-latency")
        else:
            try:
                args.export = int(args.export)
            except ValueError:
                raise ConfigError(f"--export '{args.export}' is not a cfg_id: pass a number or 'best'") from None
    if args.compatibility and (args.checkpoint or args.flops_only):
        raise ConfigError("--compatibility scores an untrained SN-Net (anchors from --pretrained or --anchor-checkpoints, "
                          "stitching layers from least squares): drop --resume / --flops-only")
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
    from .official import official_state_of

    if official_state_of(ckpt) is not None:  # the official code's layout: its forward, our anchors' names
        args.official_forward = True
        if not args.anchors:
            raise CheckpointError(f"{args.checkpoint} is an official SN-Net checkpoint, which does not name its anchors: "
                                  f"pass the config of its run, e.g. -c configs/deit_ti_s_b.yaml")
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
        elif key in config and key != "anchors" and _plain(getattr(args, key)) != _plain(config[key]):
            raise CheckpointError(
                f"checkpoint {args.checkpoint} was trained with {key}={config[key]} but this run has "
                f"{key}={getattr(args, key)}: drop the option or use the checkpoint's value"
            )
    if not args.anchors:
        raise CheckpointError(f"checkpoint {args.checkpoint} names no anchors (not a train.py checkpoint?): pass --anchors")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str)) if value is not None else None


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
    from .checkpoint import describe_mismatch

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
    from .official import convert_official_state, is_official_state

    if is_official_state(state):
        state = convert_official_state(state, net)
    problem = describe_mismatch(state, net)
    if problem:
        raise CheckpointError(
            f"checkpoint {args.checkpoint} does not match the model: {problem}; check --anchors, --model-kwargs, "
            f"--anchor-kwargs, --img-size and --num-classes"
        )
    net.load_state_dict(state)
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
# distributed helpers
# ---------------------------------------------------------------------------------------------
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def on_primary(fn: Callable[[], Any], primary: bool) -> Any:
    """Run ``fn`` on rank 0 and give its result (or its user error) to every rank."""
    result: Any = None
    error: Optional[tuple[str, str]] = None
    if primary:
        try:
            result = fn()
        except SNNetError as e:
            error = (type(e).__name__, str(e))
    if _distributed():
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        from . import errors

        raise getattr(errors, error[0], SNNetError)(error[1])
    return result


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def result_rows(flops_rows: Sequence[dict], partial, latency: Optional[dict[int, float]]) -> list[dict[str, Any]]:
    """One row per network: FLOPs/params, metrics (rounded as written), latency when measured."""
    from .sweep import metrics_of

    rows = []
    for fr in flops_rows:
        row: dict[str, Any] = {"cfg_id": fr["cfg_id"], "name": fr["name"], "flops": fr["flops"], "params": fr["params"]}
        if partial is not None:
            m = metrics_of(partial.accuracy[fr["cfg_id"]])
            row.update(top1=round(m["top1"], 4), top5=round(m["top5"], 4), loss=round(m["loss"], 6))
        if latency is not None:
            row["latency_ms"] = round(latency[fr["cfg_id"]], 4)
        row["is_anchor"] = bool(fr["is_anchor"])
        rows.append(row)
    return rows


def write_csv(rows: Sequence[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["cfg_id"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_official(rows: Sequence[dict], path: Path) -> None:
    """The SN-Net authors' ``stitches_res.txt``: one JSON object per line, accuracy in percent."""
    text = "".join(json.dumps({"cfg_id": r["cfg_id"], "flops": r["flops"], "params": r["params"],
                               "acc1": round(r["top1"], 3)}) + "\n" for r in rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``stitches.csv`` written by eval.py, typed."""
    ints, floats = ("cfg_id", "flops", "params"), ("top1", "top5", "loss", "latency_ms")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for k in ints:
                if k in row:
                    row[k] = int(row[k])
            for k in floats:
                if k in row:
                    row[k] = float(row[k])
            if "is_anchor" in row:
                row["is_anchor"] = row["is_anchor"] == "True"
            rows.append(row)
    return rows


def write_outputs(rows: list[dict], out_dir: Path, title: str, log: Callable[[str], None]) -> None:
    from .pareto import format_flops, format_table, pareto_frontier, plot_frontier

    write_csv(rows, out_dir / "stitches.csv")
    write_official(rows, out_dir / "stitches_res.txt")
    frontier = pareto_frontier(rows, "flops", "top1")
    write_csv(frontier, out_dir / "pareto.csv")
    plot_frontier(rows, frontier, out_dir / "pareto.png", "flops", "top1", title=title)
    columns = ["cfg_id", "name", "flops", "params", "top1", "top5"]
    if "latency_ms" in rows[0]:
        lat_front = pareto_frontier(rows, "latency_ms", "top1")
        write_csv(lat_front, out_dir / "pareto_latency.csv")
        plot_frontier(rows, lat_front, out_dir / "pareto_latency.png", "latency_ms", "top1", title=title)
        columns.append("latency_ms")
    log(f"\nPareto frontier (FLOPs vs top-1): {len(frontier)} of {len(rows)} networks")
    log(format_table(frontier, columns))
    best = max(rows, key=lambda r: (r["top1"], -r["flops"]))
    log(f"\nMost accurate: cfg_id {best['cfg_id']} ({best['name']}) top-1 {best['top1']:.2f} at {format_flops(best['flops'])}")
    log(f"Wrote {out_dir}/stitches.csv, stitches_res.txt, pareto.csv, pareto.png"
        + (", pareto_latency.csv, pareto_latency.png" if "latency_ms" in rows[0] else ""))


def pick(rows: Sequence[dict], budget_flops: Optional[float], budget_latency: Optional[float]) -> dict:
    """The most accurate network within the budget(s); on the frontier of the budgeted cost."""
    from .errors import BudgetError
    from .pareto import format_flops, pick_for_budget

    if budget_latency is not None:
        within = [r for r in rows if r["latency_ms"] <= budget_latency]
        if budget_flops is None:
            return pick_for_budget(rows, budget_latency, cost="latency_ms", metric="top1")
        if not within:
            pick_for_budget(rows, budget_latency, cost="latency_ms", metric="top1")  # raises with the cheapest
        try:
            return pick_for_budget(within, budget_flops, cost="flops", metric="top1")
        except BudgetError:
            raise BudgetError(f"no network fits both --budget-flops {format_flops(budget_flops)} and --budget-latency "
                              f"{budget_latency:g} ms: relax one of them") from None
    return pick_for_budget(rows, budget_flops, cost="flops", metric="top1")


def describe_pick(row: dict, budget_flops: Optional[float], budget_latency: Optional[float]) -> str:
    from .pareto import format_flops

    budget = " and ".join(
        ([f"{format_flops(budget_flops)} FLOPs"] if budget_flops is not None else [])
        + ([f"{budget_latency:g} ms"] if budget_latency is not None else []))
    lat = f", {row['latency_ms']:.2f} ms" if "latency_ms" in row else ""
    return (f"Best network within {budget}: cfg_id {row['cfg_id']} ({row['name']}): top-1 {row['top1']:.2f}, "
            f"top-5 {row['top5']:.2f}, {format_flops(row['flops'])} FLOPs, {row['params'] / 1e6:.2f} M params{lat}")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_eval_args(argv)
    check_args(args)
    from .distributed import init_distributed

    info = init_distributed(args.device)
    try:
        return run(args, info)
    finally:
        if _distributed():
            dist.destroy_process_group()


def run(args: Namespace, info) -> int:
    import warnings

    from .checkpoint import extract_state_dict, load_checkpoint_file
    from .predict import training_data

    with warnings.catch_warnings():  # fvcore calls the deprecated torch.jit.script when imported
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.script.*")
        from .flops import flops_table

    primary = info.is_primary
    log = (lambda msg: print(msg, flush=True)) if primary else (lambda msg: None)
    if args.amp and args.amp_dtype == "float16" and info.device.type == "cpu" and not args.flops_only:
        log("warning: --amp with float16 on CPU is slow and coarse; --amp-dtype bfloat16 is the usual CPU choice")
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args)

    ckpt = None
    if args.checkpoint:
        ckpt = load_checkpoint_file(args.checkpoint)
        apply_checkpoint_args(args, ckpt)
    args.trained_data = training_data(ckpt, args)  # preprocessing and class names saved with --export
    if not args.anchors:
        raise ConfigError("no anchors given: pass --anchors NAME [NAME ...] (small to large), -c a config or --resume CKPT")

    # -- FLOPs only: no data, no weights ----------------------------------------------------
    if args.flops_only:
        torch.manual_seed(args.seed)
        model_args = Namespace(**vars(args))
        model_args.model_kwargs, model_args.anchor_checkpoints = parse_kwargs(args.model_kwargs), None
        net = build_snnet(model_args, num_classes=args.num_classes, pretrained=False)
        ids = _select(args, net)
        if primary:
            out_dir.mkdir(parents=True, exist_ok=True)
            rows = flops_table(net, ids)
            latency = _latency(args, net.to(info.device), info, ids, None) if args.measure_latency else None
            rows = result_rows(rows, None, latency)
            write_csv(rows, out_dir / "stitches.csv")
            from .pareto import format_table

            log(format_table(rows, [k for k in ("cfg_id", "name", "flops", "params", "latency_ms") if k in rows[0]]))
            log(f"\n{len(rows)} networks; wrote {out_dir / 'stitches.csv'}")
        return 0

    # -- model ---------------------------------------------------------------------------------
    state = extract_state_dict(ckpt, args.use_ema) if ckpt is not None else None
    export_only = isinstance(args.export, int)
    dataset = None
    num_classes = args.num_classes
    if not export_only:
        from .data import create_dataset, resolve_num_classes

        dataset = create_dataset(args.dataset, args.data_dir, args.val_split, args.img_size, args.seed)
        num_classes = resolve_num_classes(num_classes, dataset)
    net = build_model(args, num_classes, state)
    have = getattr(net.anchors[0], "num_classes", None)
    if dataset is not None and have is not None and have < num_classes:  # a checkpoint with a smaller head
        raise DataError(f"the checkpoint's classifiers have {have} classes but the data has {num_classes} "
                        f"(labels 0..{num_classes - 1}): evaluate on the data it was trained for")
    compat_scores = None
    if args.compatibility:
        from .compat import ls_initialise_and_score

        compat_scores = on_primary(lambda: ls_initialise_and_score(net, args.dataset, args.data_dir, args.compat_images,
                                                                   args.seed), primary)
        log(f"Least-squares init and junction scores on {args.compat_images} training images")
    if ckpt is None:
        if not args.compatibility:
            log("warning: no --resume checkpoint: the stitching layers are untrained "
                + ("(anchors: --pretrained / --anchor-checkpoints)" if args.pretrained or args.anchor_checkpoints
                   else "and the anchors are randomly initialised"))
        if info.distributed:
            from .distributed import broadcast_state

            broadcast_state(net)
    ids = _select(args, net)

    if export_only:
        if primary:
            _export(args, net, args.export, log)
        return 0

    # -- sweep ---------------------------------------------------------------------------------
    flops_rows = flops_table(net, ids) if primary else None  # before moving: fvcore traces on CPU
    if args.budget_flops_value is not None:  # fail before the data pass if nothing can fit
        on_primary(lambda: _check_flops_budget(flops_rows, args.budget_flops_value), primary)
    net.to(info.device).eval()
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    held: dict[str, Any] = {}

    def open_partial() -> list[int]:
        held["partial"] = _open_partial(args, net, dataset, out_dir)
        return [i for i in ids if i not in held["partial"].accuracy]

    todo = on_primary(open_partial, primary)  # rank 0 reads DIR; every rank gets the networks to do
    partial = held.get("partial")
    if primary:
        done = len(ids) - len(todo)
        log(f"SN-Net over {net.config['anchors']}: {len(ids)} networks selected"
            + (" (official SN-Net forward)" if net.config.get("official_forward") else "")
            + (f", {done} already in {out_dir / 'sweep_partial.jsonl'}" if done else "")
            + f"; {len(dataset)} images ({args.val_split}), {info.world_size} process(es) on {info.device.type}")
    if todo:
        _sweep(args, net, dataset, todo, info, partial, log)
    latency = _latency(args, net, info, ids, partial) if args.measure_latency else None
    if info.distributed:
        dist.barrier()
    if not primary:
        return 0

    rows = result_rows(flops_rows, partial, latency)
    title = f"SN-Net over {' / '.join(net.config['anchors'])}: {len(rows)} networks"
    write_outputs(rows, out_dir, title, log)
    if compat_scores is not None:
        from .compat import compat_rows, write_compat_csv

        write_compat_csv(compat_rows(net, compat_scores, rows), out_dir / "compat.csv")
        log(f"Wrote {out_dir}/compat.csv (junction CKA, LS residual, top-1 of the LS-initialised networks)")
    chosen = None
    if args.budget_flops_value is not None or args.budget_latency is not None:
        chosen = pick(rows, args.budget_flops_value, args.budget_latency)
        log("\n" + describe_pick(chosen, args.budget_flops_value, args.budget_latency))
    if args.export is not None:
        _export(args, net.cpu(), chosen["cfg_id"] if args.export == "best" else args.export, log)
    return 0


def _check_flops_budget(rows: Sequence[dict], budget: float) -> None:
    from .errors import BudgetError
    from .pareto import format_flops

    cheapest = min(rows, key=lambda r: r["flops"])
    if cheapest["flops"] > budget:
        raise BudgetError(f"no network fits --budget-flops {format_flops(budget)}: the cheapest network "
                          f"(cfg_id {cheapest['cfg_id']}, {cheapest['name']}) needs {format_flops(cheapest['flops'])}")


def _select(args: Namespace, net: SNNet) -> list[int]:
    if str(args.stitches).strip().lower() in ("all", ""):
        return list(range(net.num_stitches))
    ids = parse_stitch_ids(str(args.stitches), net.num_stitches)
    if not ids:
        raise ConfigError(f"--stitches '{args.stitches}' selects no network: use e.g. 0,3,10-20 or 'all'")
    return ids


def _anchor_kwargs_plain(value: Any) -> Any:
    """--anchor-kwargs as dicts, whether given as 'k=v' strings (command line) or mappings (YAML)."""
    if value is None:
        return None
    return [parse_kwargs(a if isinstance(a, dict) else str(a).split()) for a in value]


def _description(args: Namespace, net: SNNet, dataset) -> dict[str, Any]:
    """What the partial results depend on; a rerun with anything else refuses to mix them."""
    desc: dict[str, Any] = {
        "snnet_config": net.config,
        "model_kwargs": parse_kwargs(args.model_kwargs),
        "anchor_kwargs": _anchor_kwargs_plain(args.anchor_kwargs),
        "input_size": list(net.input_size),
        "num_classes": net.anchors[0].num_classes if hasattr(net.anchors[0], "num_classes") else None,
        "dataset": args.dataset or None,
        "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
        "split": args.val_split,
        "samples": len(dataset),
        "amp": args.amp_dtype if args.amp else False,
        "use_ema": args.use_ema,
    }
    if args.checkpoint:
        p = Path(args.checkpoint).resolve()
        st = p.stat()
        desc.update(checkpoint=str(p), checkpoint_bytes=st.st_size, checkpoint_mtime_ns=st.st_mtime_ns)
    else:
        desc.update(checkpoint=None, pretrained=args.pretrained, anchor_checkpoints=args.anchor_checkpoints,
                    seed=args.seed)
        if args.compatibility:  # LS-initialised layers, not random ones
            desc["compat_images"] = args.compat_images
    return _plain(desc)


def _open_partial(args: Namespace, net: SNNet, dataset, out_dir: Path):
    from .sweep import PartialResults

    return PartialResults(out_dir, _description(args, net, dataset), overwrite=args.overwrite)


def _autocast(args: Namespace, device: torch.device):
    if not args.amp:
        return contextlib.nullcontext
    dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _sweep(args: Namespace, net: SNNet, dataset, todo: list[int], info, partial, log) -> None:
    from .sweep import Normalize, eval_loader, eval_transform, make_chunks, sweep_pass
    from .training import data_config_for

    data_cfg = data_config_for(net, dataset)  # the trainer's validation transform (digits: no crop)
    dataset.transform = eval_transform(data_cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(info.world_size)))
    workers = max(0, min(args.workers, cores // max(1, local_world)))
    loader = eval_loader(dataset, args.batch_size, workers, info.rank, info.world_size,
                         pin_memory=info.device.type == "cuda")
    prep = Normalize(data_cfg["mean"], data_cfg["std"], info.device, args.channels_last)
    autocast = _autocast(args, info.device)
    chunks = make_chunks(net, todo, args.sweep_chunk)
    stop_after = int(os.environ.get("SNNET_TEST_EXIT_AFTER_CHUNKS", "0"))  # test hook: simulated crash
    n_batches = len(loader)
    for c, chunk in enumerate(chunks):
        start = time.perf_counter()
        seen = [0]

        def progress(b: int, n: int) -> None:
            seen[0] += n
            if args.log_interval and (b % args.log_interval == 0 or b == n_batches):
                rate = seen[0] * info.world_size / max(time.perf_counter() - start, 1e-9)
                log(f"  chunk {c + 1}/{len(chunks)} ({len(chunk)} networks): batch {b}/{n_batches}, {rate:.1f} img/s")

        sums = sweep_pass(net, loader, chunk, prep, autocast, info.device, progress).all_reduce()
        records = sums.records()
        if any(r["count"] != len(dataset) for r in records):
            raise RuntimeError(f"counted {records[0]['count']} samples of {len(dataset)}: a bug, please report it")
        if info.is_primary:
            partial.add_accuracy(records)
            log(f"chunk {c + 1}/{len(chunks)}: {len(chunk)} networks on {len(dataset)} images in "
                f"{time.perf_counter() - start:.1f} s")
        if stop_after and c + 1 >= stop_after and c + 1 < len(chunks):
            raise SystemExit(17)  # as if killed here: nothing else is written


def _latency(args: Namespace, net: SNNet, info, ids: list[int], partial) -> dict[int, float]:
    """Median forward time per network on rank 0's device (cached in the partial results)."""
    from .sweep import measure_latency

    out: dict[int, float] = {}
    if info.is_primary:
        device = next(net.parameters()).device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        setting = {"batch_size": args.latency_batch_size, "device": name, "amp": args.amp_dtype if args.amp else False,
                   "channels_last": args.channels_last, "threads": torch.get_num_threads() if device.type == "cpu" else None}
        autocast = _autocast(args, device)
        measured = 0
        for i in ids:
            cached = partial.latency_for(i, setting) if partial is not None else None
            if cached is None:
                cached = measure_latency(net, i, args.latency_batch_size, device, args.latency_warmup,
                                         args.latency_repeats, autocast, args.channels_last)
                measured += 1
                if partial is not None:
                    partial.add_latency(i, cached, setting)
            out[i] = cached
        print(f"Latency: {measured} networks timed at batch {args.latency_batch_size} on {name}"
              + (f" ({len(ids) - measured} from the partial results)" if measured < len(ids) else ""), flush=True)
    return out


def _export(args: Namespace, net: SNNet, cfg_id: int, log) -> None:
    from .export import export_network

    from .predict import prediction_info, write_prediction_info

    report = export_network(net.cpu().float(), cfg_id, args.export_path, args.export_batch_size, args.onnx_opset)
    info_path = write_prediction_info(report.path, prediction_info(net, *args.trained_data), cfg_id, report.name)
    kind = {"torchscript": "TorchScript", "exported_program": "torch.export program", "onnx": "ONNX"}[report.format]
    load = {"torchscript": f"torch.jit.load('{report.path}')",
            "exported_program": f"torch.export.load('{report.path}').module()",
            "onnx": f"onnxruntime.InferenceSession('{report.path}')"}[report.format]
    log(f"Exported cfg_id {cfg_id} ({report.name}) as {kind} to {report.path}: {report.params:,} parameters "
        f"(= the network's), max |output - SN-Net output| = {report.max_abs_diff:.2e}"
        + ("" if report.dynamic_batch else f"; batch size fixed at {max(2, args.export_batch_size)}")
        + f"\nLoad it without snnet: {load}; input (N, {', '.join(map(str, net.input_size))}) normalised images"
        + f"\nPreprocessing and class names: {info_path} (predict.py --exported {report.path} IMAGES)")
