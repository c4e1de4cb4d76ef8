"""compose.py: compose networks from a pool's fragments, fit and evaluate them, write the results.

    python compose.py --pool deit_tiny_patch16_224 deit_small_patch16_224 --pretrained \\
        --dataset digits --stitch-images 32 --threshold 0.9 --total-threshold 0.5 --max-depth 3 \\
        --top-k 5 --output output/compose

Writes to ``--output DIR``: ``candidates.csv`` (one row per composed network, best score first),
``pool.csv`` (the pool's own networks, fitted and evaluated the same way), ``pareto.png`` (FLOPs
against top-1, the pool's networks as stars), ``svg/<rank>.svg`` and ``report.html`` (all of it on
one interactive page, :mod:`snnet.compose.report`); ``--export RANK`` writes that
network with its fitted classifier through eval.py's export, for ``predict.py --exported``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..config import Needs, refuse_without_effect
from ..core.flops import anchor_flops, count_flops, route_flops
from ..core.model import SNNet
from ..errors import ConfigError, OneLineArgumentParser, exit_on_user_error
from ..io.checkpoint import atomic_write
from ..run_config import ModelConfig
from .build import compose_snnet
from .draw import draw_svg
from .fit import FIT_METHODS, fit_head, head_top1, network_outputs
from .junctions import JunctionTable
from .report import write_report
from .search import Candidate, SearchConfig, best_candidates, sample_network, search

COLUMNS = ("rank", "name", "score", "junction_scores", "fragments", "flops", "params", "top1", "seconds")
POOL_COLUMNS = ("network", "name", "flops", "params", "top1")


def build_compose_parser() -> argparse.ArgumentParser:
    from ..cli import add_data_args, add_model_args

    # fmt: off
    parser = OneLineArgumentParser(
        prog="compose.py",
        description="Compose networks from fragments of a pool of pretrained networks without training (StitchNet): "
                    "junctions scored by linear CKA after least-squares stitching, a k-NN classifier on the outputs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_args(parser, ("--pool", "--anchors"), "timm model names of the pool's networks (any order)")
    add_data_args(parser)
    g = parser.add_argument_group("composition")
    g.add_argument("--stitch-images", type=int, default=32, metavar="N",
                   help="training images that score the junctions and solve their least-squares layers")
    g.add_argument("--threshold", type=float, default=0.9, metavar="T", help="least CKA score of a junction, in [0, 1]")
    g.add_argument("--total-threshold", type=float, default=0.5, metavar="TT",
                   help="least score of a network (the product of its junctions' scores), in [0, 1]")
    g.add_argument("--max-depth", type=int, default=3, metavar="D", help="most fragments in a network (>= 2)")
    g.add_argument("--top-k", type=int, default=5, metavar="K", help="best next fragments kept at each junction")
    g.add_argument("--self-junctions", action=argparse.BooleanOptionalAction, default=True,
                   help="junctions back into the network they leave (skipping or repeating its blocks), as "
                        "StitchNet allows; --no-self-junctions joins different pool networks only")
    g.add_argument("--sample", action="store_true", default=False,
                   help="one random network of the search (the same for the same --seed) instead of all")
    g.add_argument("--max-networks", type=int, default=20, metavar="N",
                   help="fit and evaluate the N best-scored networks (0: all the search finds)")
    g.add_argument("--fit", default="knn", choices=FIT_METHODS,
                   help="classifier on each network's outputs: k-nearest neighbours (StitchNet) or a ridge probe")
    g.add_argument("--k-neighbors", type=int, default=5, metavar="K", help="neighbours of the k-NN classifier")
    g.add_argument("--fit-images", type=int, default=0, metavar="N",
                   help="fit on N training images drawn from --seed (0: the whole training split)")
    g.add_argument("--output", dest="out_dir", required=True, metavar="DIR", help="results folder")
    g.add_argument("--export", type=int, default=None, metavar="RANK",
                   help="write the network of this rank of candidates.csv, classifier included, as a standalone model")
    g.add_argument("--export-path", default=None, metavar="PATH",
                   help="where --export writes (.pt, .pt2 or .onnx; default DIR/network-<RANK>.pt)")
    g.add_argument("-b", "--batch-size", type=int, default=256, metavar="N", help="images per forward pass")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    # fmt: on
    return parser


# SN-Net options add_model_args brings that a composition has no use for: it searches its own
# routes and joins them with linear least-squares layers
NOT_FOR_COMPOSE = (
    "routes", "stitching", "stages", "kernel_size", "stride", "nearest", "stitch_layer", "stitch_stride", "lora_rank",
    "official_forward",
)  # fmt: skip


# compose.py's options that act only with others: given where they cannot act, refused
COMPOSE_RULES = (
    Needs("k_neighbors", lambda a: a.fit == "knn", "sizes the k-NN classifier: acts only with --fit knn"),
    Needs("max_networks", lambda a: not a.sample, "keeps the best-scored networks and --sample keeps one random one"),
    Needs("export_path", lambda a: a.export is not None, "says where --export writes: add --export RANK"),
    Needs("workers", lambda a: False, "would start loading processes, and compose.py holds its batches in memory"),
)  # fmt: skip


def check_args(args: Namespace, defaults: dict[str, Any]) -> SearchConfig:
    """Refuse bad values before anything is built or written (one line each)."""
    if not args.anchors:
        raise ConfigError("no pool given: pass --pool NAME [NAME ...], the pool's timm model names")
    for dest in NOT_FOR_COMPOSE:
        if getattr(args, dest) != defaults[dest]:
            raise ConfigError(
                f"--{dest.replace('_', '-')} does not apply to compose.py (it searches its own routes and joins "
                f"them with linear least-squares layers): drop it"
            )
    refuse_without_effect(args, COMPOSE_RULES, defaults)
    cfg = SearchConfig(args.threshold, args.total_threshold, args.max_depth, args.top_k, args.self_junctions)
    for flag, value, least in (
        ("--stitch-images", args.stitch_images, 1),
        ("--k-neighbors", args.k_neighbors, 1),
        ("--batch-size", args.batch_size, 1),
        ("--max-networks", args.max_networks, 0),
        ("--fit-images", args.fit_images, 0),
    ):
        if value < least:
            raise ConfigError(f"{flag} {value} must be at least {least}")
    if args.export is not None and args.export < 1:
        raise ConfigError(f"--export {args.export}: ranks start at 1 (the best-scored network)")
    if args.export_path and args.export is None:
        raise ConfigError("--export-path needs --export RANK")
    check_outputs(args)
    return cfg


def export_path(args: Namespace) -> Path:
    """Where ``--export RANK`` writes."""
    return Path(args.export_path or Path(args.out_dir) / f"network-{args.export}.pt")


def check_outputs(args: Namespace) -> None:
    """Refuse, before any work, outputs that cannot be written or would destroy an input (a pool
    file), and a results folder another compose.py is writing."""
    from ..evaluate.export import FORMATS
    from ..io.lock import check_folder_free
    from ..io.paths import check_not_an_input, check_output_dir, check_output_file

    out_dir = Path(args.out_dir)
    check_output_dir(out_dir, "--output")
    check_folder_free(out_dir, "--output")
    inputs = {f"pool file {c}": c for c in args.anchor_checkpoints or () if str(c).lower() != "none"}
    outputs = {"--output": [out_dir / n for n in ("candidates.csv", "pool.csv", "pareto.png")]}
    if args.export is not None:
        path = export_path(args)
        if path.suffix.lower() not in FORMATS:
            raise ConfigError(f"--export-path '{path}' has an unknown suffix: use .pt (TorchScript), .pt2 or .onnx")
        check_output_file(path, "--export-path")
        outputs["--export-path"] = [path, Path(f"{path}.json")]
    for flag, paths in outputs.items():
        for path in paths:
            check_not_an_input(path, flag, inputs)


def load_batches(dataset, net: SNNet, batch_size: int, device: str, limit: int = 0, seed: int = 0) -> list:
    """The (normalised images, targets) batches of ``dataset`` under eval.py's transform, held in
    memory: every composed network is fitted and evaluated on the same tensors."""
    from ..data.loaders import Normalize, data_config_for, eval_loader, eval_transform
    from ..data.streams import ShardStream

    cfg = data_config_for(net, dataset)
    dataset.transform = eval_transform(cfg)
    if 0 < limit < len(dataset) and isinstance(dataset, ShardStream):  # no random access: the first images
        prep = Normalize(cfg["mean"], cfg["std"], torch.device(device))
        return [prep(x, y) for x, y in itertools.islice(eval_loader(dataset, batch_size), -(-limit // batch_size))]
    if 0 < limit < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
        dataset = torch.utils.data.Subset(dataset, sorted(order.tolist()))
    prep = Normalize(cfg["mean"], cfg["std"], torch.device(device))
    return [prep(x, y) for x, y in eval_loader(dataset, batch_size)]


class FlopsCounter:
    """FLOPs of composed networks from per-part counts: every pool network's stem, blocks and
    head counted once, every junction's layer once (``snnet.core.flops``)."""

    def __init__(self, pool: SNNet):
        self.parts = [anchor_flops(a) for a in pool.anchor_adapters]
        self.layers: dict[tuple, int] = {}

    def __call__(self, net: SNNet, cfg_id: int) -> int:
        route = net.stitches[cfg_id].route
        counts = {}
        for layer in route.layers:
            spec = net.layer_specs[layer]
            key = (spec.front, spec.back, spec.positions[0])
            if key not in self.layers:
                shape = net.anchor_adapters[spec.front].feature_shapes[spec.positions[0][0] + 1]
                probe = torch.zeros(1, *shape, device=next(net.parameters()).device)
                self.layers[key] = count_flops(net.stitch_layers[layer], probe)
            counts[layer] = self.layers[key]
        return route_flops(route, self.parts, counts)


def fragments_text(net: SNNet, cfg_id: int) -> str:
    """``name[start:stop]`` of every fragment, ';'-separated."""
    names = [a.name for a in net.anchor_adapters]
    return ";".join(f"{names[s.anchor]}[{s.start}:{s.stop}]" for s in net.stitches[cfg_id].route.segments)


def fit_and_score(net: SNNet, cfg_id: int, train: list, val: list, args: Namespace, classes: int):
    """Fit the head on network ``cfg_id``'s training outputs; its validation top-1 and the head."""
    features, targets = network_outputs(net, train, cfg_id)
    head = fit_head(features, targets, args.fit, args.k_neighbors, classes)
    return head_top1(head, *network_outputs(net, val, cfg_id)), head


def write_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())


def evaluate_candidates(
    pool: SNNet, table: JunctionTable, chosen: Sequence[Candidate], data: tuple, args: Namespace, log: Callable
) -> tuple[list[dict], list[dict], dict]:
    """Fit and evaluate the pool's networks and every chosen candidate; their rows, and the head
    of the network to export."""
    train, val, classes = data
    flops = FlopsCounter(pool)
    pool_rows = []
    for a in range(len(pool.anchor_adapters)):
        top1, _ = fit_and_score(pool, a, train, val, args, classes)
        name = pool.stitches[a].name
        pool_rows.append(
            {"network": a, "name": name, "flops": flops(pool, a), "params": pool.num_params(a), "top1": round(top1, 4)}
        )
        log(f"pool network {a} {name}: top-1 {top1:.2f}% ({args.fit})")
    rows, export = [], {}
    svg_dir = Path(args.out_dir) / "svg"
    svg_dir.mkdir(parents=True, exist_ok=True)
    for stale in svg_dir.glob("*.svg"):  # an earlier run's drawings of ranks this run does not have
        if stale.stem.isdigit() and int(stale.stem) > len(chosen):
            stale.unlink()
    for rank, candidate in enumerate(chosen, 1):
        start = time.perf_counter()
        net = compose_snnet(pool, table, [candidate])
        cfg_id = len(pool.anchor_adapters)
        top1, head = fit_and_score(net, cfg_id, train, val, args, classes)
        seconds = time.perf_counter() - start
        row = {
            "rank": rank,
            "name": net.stitches[cfg_id].name,
            "score": round(candidate.score, 6),
            "junction_scores": ";".join(f"{c:.6f}" for c in candidate.junction_scores),
            "fragments": fragments_text(net, cfg_id),
            "flops": flops(net, cfg_id),
            "params": net.num_params(cfg_id),
            "top1": round(top1, 4),
            "seconds": round(seconds, 3),
        }
        rows.append(row)
        draw_svg(
            net, cfg_id, svg_dir / f"{rank}.svg", title=f"rank {rank}: score {candidate.score:.4f}, top-1 {top1:.2f}%"
        )
        log(f"{rank:>4}  score {candidate.score:.4f}  top-1 {top1:6.2f}%  {row['name']}")
        if rank == args.export:
            export = {"net": net, "cfg_id": cfg_id, "head": head}
    return rows, pool_rows, export


def choose(table: JunctionTable, cfg: SearchConfig, args: Namespace) -> list[Candidate]:
    """The networks to fit: one random one (``--sample``), or the ``--max-networks`` best scored."""
    if args.sample:
        return [sample_network(table, cfg, args.seed)]
    chosen = best_candidates(search(table, cfg), args.max_networks or None)
    if not chosen:
        raise ConfigError(
            f"no composed network passes --threshold {cfg.threshold} and --total-threshold {cfg.total_threshold} "
            f"within --max-depth {cfg.max_depth}: lower the thresholds"
        )
    return chosen


def write_outputs(rows: list[dict], pool_rows: list[dict], out_dir: Path) -> None:
    """candidates.csv, pool.csv and pareto.png (the pool's networks as stars)."""
    from ..evaluate.pareto import pareto_frontier, plot_frontier

    write_csv(rows, COLUMNS, out_dir / "candidates.csv")
    write_csv(pool_rows, POOL_COLUMNS, out_dir / "pool.csv")
    points = [{**r, "is_anchor": False} for r in rows] + [{**r, "is_anchor": True} for r in pool_rows]
    points = [{**p, "cfg_id": i} for i, p in enumerate(points)]  # the frontier's tie-break
    title = f"composed without training: {len(rows)} networks from a pool of {len(pool_rows)}"
    plot_frontier(points, pareto_frontier(points), out_dir / "pareto.png", title=title)  # written atomically


def export(export: dict, args: Namespace, val_ds, classes: int, log: Callable) -> None:
    """The chosen network with its fitted head, through eval.py's export, and the info beside it
    that predict.py --exported reads (preprocessing, the dataset's class names)."""
    from ..data.sources import DataOptions
    from ..evaluate.export import export_network
    from ..evaluate.predict import class_names, prediction_info, write_prediction_info

    net, cfg_id = export["net"].cpu().float(), export["cfg_id"]
    path = export_path(args)
    report = export_network(net, cfg_id, path, head=export["head"].cpu())
    info = {
        **prediction_info(net, args.dataset, args.data_dir, opts=DataOptions.from_args(args)),
        "class_names": class_names(classes, val_ds),
    }
    info_path = write_prediction_info(report.path, info, cfg_id, report.name)
    log(
        f"Exported rank {args.export} ({report.name}) with its {args.fit} classifier to {report.path} "
        f"(max |output - network| {report.max_abs_diff:.2e}); predict.py --exported {report.path} IMAGES "
        f"(info: {info_path})"
    )


def pool_config(model: ModelConfig, log: Callable[[str], None]) -> ModelConfig:
    """The pool's model config with each network's classifier size taken from its weights file
    (a network fine-tuned on 10 classes keeps its 10-class head; pool members may differ): no
    classifier is part of a fragment, only the last fragment's head makes a composed network's
    outputs, on which compose.py fits its own classifier for the dataset's classes. Networks
    without a file keep ``--num-classes`` (default timm's). Said once in the log."""
    from ..anchors.registry import checkpoint_num_classes

    files = [c if c and str(c).lower() != "none" else None for c in model.anchor_checkpoints or ()]
    model = dataclasses.replace(model, routes=())
    if not any(files):
        return model
    own = [dict(k) for k in model.anchor_kwargs or [{}] * len(model.anchors)]
    said = []
    for i, (name, path) in enumerate(zip(model.anchors, files)):
        if path is None:
            own[i].setdefault("num_classes", model.num_classes)
            continue
        own[i]["num_classes"] = checkpoint_num_classes(name, path, {**model.model_kwargs, **own[i]})
        said.append(f"{name} {own[i]['num_classes']}")
    if len(said) < len(files):
        said.append(f"the others {'timm default' if model.num_classes is None else model.num_classes} (--num-classes)")
    elif model.num_classes is not None:
        said.append(f"--num-classes {model.num_classes} not used")
    log(f"pool heads: classifier sizes from the pool files: {', '.join(said)}")
    own = [{k: v for k, v in kw.items() if v is not None} for kw in own]
    return dataclasses.replace(model, num_classes=None, anchor_kwargs=tuple(own))


def run(args: Namespace, defaults: dict[str, Any], log: Callable[[str], None] = print, argv: Sequence[str] = ()) -> int:
    """compose.py with parsed ``args`` (``argv``: the command line as given, which report.html shows)."""
    from ..data.datasets import create_dataset, num_classes_of
    from ..data.loaders import sample_train_images
    from ..data.sources import DataOptions
    from ..io.lock import hold_folder
    from ..run_config import build_snnet

    cfg = check_args(args, defaults)
    opts = DataOptions.from_args(args)
    train_ds = create_dataset(args.dataset, args.data_dir, "train", opts=opts, training=True)
    val_ds = create_dataset(args.dataset, args.data_dir, "validation", opts=opts)
    if args.stitch_images > len(train_ds):
        raise ConfigError(f"--stitch-images {args.stitch_images} is above the {len(train_ds)} training images")
    # the pool's networks only: junctions come from the search
    pool = build_snnet(pool_config(ModelConfig.from_args(args), log), check_effects=False).to(args.device).eval()
    start = time.perf_counter()
    images = sample_train_images(pool, args.dataset, args.data_dir, args.stitch_images, args.seed, opts)
    table = JunctionTable(pool.anchor_adapters, images, class_token=args.class_token, prefix_tokens=args.prefix_tokens)
    chosen = choose(table, cfg, args)
    log(
        f"search: {len(chosen)} networks chosen, {table.num_solved} junctions scored in "
        f"{time.perf_counter() - start:.1f} s"
    )
    if args.export is not None and args.export > len(chosen):
        raise ConfigError(f"--export {args.export}: only {len(chosen)} networks were composed (ranks 1..{len(chosen)})")
    classes = num_classes_of(val_ds)
    train = load_batches(train_ds, pool, args.batch_size, args.device, args.fit_images, args.seed)
    val = load_batches(val_ds, pool, args.batch_size, args.device)
    out_dir = Path(args.out_dir)
    hold_folder(out_dir, "--output")  # one compose.py per results folder (snnet.io.lock)
    rows, pool_rows, chosen_export = evaluate_candidates(pool, table, chosen, (train, val, classes), args, log)
    write_outputs(rows, pool_rows, out_dir)
    report = write_report(out_dir, args, argv)
    log(f"Wrote {out_dir / 'candidates.csv'}, pool.csv, pareto.png, svg/ ({len(rows)} drawings) and {report}")
    if chosen_export:
        export(chosen_export, args, val_ds, classes, log)
    return 0


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    torch.manual_seed(0)
    parser = build_compose_parser()
    argv = list(map(str, sys.argv[1:] if argv is None else argv))
    return run(parser.parse_args(argv), {a.dest: a.default for a in parser._actions}, argv=argv)
