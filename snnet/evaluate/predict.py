"""predict.py: run one network of an SN-Net (or an exported file) on image files.

    python predict.py --resume CKPT --stitch 12 photo.jpg more_photos/
    python predict.py --resume CKPT --stitch best --budget-flops 2.5G --csv predictions.csv photos/
    python predict.py --exported deit-2.5g.pt photos/          # eval.py --export wrote deit-2.5g.pt.json
    python predict.py --exported frontier.pt --stitch 12 photos/  # network 12 of eval.py --export frontier

The images get the evaluation transform of ``eval.py`` (timm's resize / centre crop of the first
anchor's data config at the SN-Net's input size; the digits: no crop), so predicting the
validation images reproduces the sweep's accuracy. ``--stitch best`` and the budgets pick from
the ``stitches.csv`` of an ``eval.py`` sweep: ``--results DIR`` (default: eval.py's default
output folder of the checkpoint, ``eval-<name>`` beside it). Class names: ImageNet's
(timm's ``ImageNetInfo``) for 1000 classes, else the dataset's (the digits: the digit; an
ImageFolder ``--data-dir``: its folder names), else the class index.
An exported file (``eval.py --export``) is run with the preprocessing and class names that
eval.py saved beside it as ``<file>.json``; ``.onnx`` files need onnxruntime (``pip install
'.[onnx]'``) or fall back to onnx's slow reference evaluator.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..config import Needs, given_on_command_line, parse_args_with_config, refuse_without_effect
from ..errors import CheckpointError, ConfigError, DataError, exit_on_user_error
from ..io.checkpoint import atomic_write
from ..run_config import PredictConfig, defaults_of, from_namespace
from .load import build_trained_snnet, default_out_dir, train_keys, training_data, with_checkpoint_model

INFO_SUFFIX = ".json"


def parse_predict_config(argv: Optional[Sequence[str]] = None) -> PredictConfig:
    """predict.py's command line (and ``-c`` config) as a checked, frozen :class:`PredictConfig`."""
    from ..cli import build_predict_parser

    parser = build_predict_parser()
    args, _ = parse_args_with_config(parser, argv, extra_known_keys=train_keys())
    if not args.images:
        raise ConfigError(
            "no images given: pass image files or folders, e.g. predict.py --resume CKPT --stitch 0 photo.jpg"
        )
    if bool(args.checkpoint) == bool(args.exported):
        raise ConfigError("pass either --resume CKPT (with --stitch) or --exported FILE")
    if args.checkpoint and args.stitch is None:
        raise ConfigError(
            "--resume needs --stitch CFG_ID or --stitch best (optionally with --budget-flops / --budget-latency)"
        )
    if args.exported and args.stitch is not None and not str(args.stitch).lstrip("-").isdigit():
        raise ConfigError(
            f"--stitch '{args.stitch}' with --exported: pass a cfg_id the file holds (its .json lists them), "
            f"or no --stitch for the file's default network"
        )
    if (args.budget_flops is not None or args.budget_latency is not None) and args.stitch != "best":
        raise ConfigError("--budget-flops / --budget-latency pick the network: use them with --stitch best")
    if args.top_k < 1 or args.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be >= 1")
    defaults = defaults_of(parser, given_on_command_line(build_predict_parser(), argv))
    refuse_without_effect(args, PREDICT_RULES, defaults)
    return from_namespace(PredictConfig, args, defaults=defaults)


def _from_checkpoint(a: Any) -> bool:
    return bool(a.checkpoint)


_EXPORTED = "describes the SN-Net of a checkpoint, and an --exported file is one network with its own preprocessing"
# predict.py's options that act only with others, judged against the defaults after -c
PREDICT_RULES = (
    Needs("results", lambda a: a.stitch == "best", "finds the sweep --stitch best picks from: use --stitch best"),
    Needs("use_ema", _from_checkpoint, "selects a checkpoint's EMA weights: use --resume CKPT"),
    Needs("seed", lambda a: False, "would seed untrained layers, and predict.py runs trained networks only"),
    Needs("workers", lambda a: False, "would start loading processes, and predict.py reads its images itself"),
    *(
        Needs(dest, _from_checkpoint, _EXPORTED)
        for dest in (
            "anchors", "pretrained", "anchor_checkpoints", "num_classes", "img_size", "model_kwargs", "anchor_kwargs",
            "kernel_size", "stride", "nearest", "stages", "stitching", "stitch_layer", "stitch_stride", "lora_rank",
            "routes", "class_token", "prefix_tokens", "official_forward", "dataset", "data_dir", "class_map",
            "input_img_mode", "input_key", "target_key", "dataset_download", "dataset_trust_remote_code",
        )
    ),
    *(
        Needs(dest, lambda a: False, "sizes a wds/ training or validation stream, and predict.py reads class names only")
        for dest in ("train_num_samples", "val_num_samples")
    ),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named, and those inside the folders named (recursively, sorted)."""
    from timm.data.readers.img_extensions import get_img_extensions

    suffixes = {e.lower() for e in get_img_extensions(as_set=True)}
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise DataError(f"folder '{p}' holds no image files ({', '.join(sorted(suffixes))})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"image '{p}' does not exist: check the path")
    return files


def to_rgb(image):
    """An 8-bit RGB copy of a PIL image of any mode, read faithfully: 16-bit and 32-bit integer
    images scaled to 8 bits by their range (``convert('RGB')`` would clip them to white), float
    images in [0, 1] scaled by 255, transparency composited onto white, palettes and CMYK
    through PIL's own conversion."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        elif image.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_batch(files: Sequence[Path], transform: Callable) -> torch.Tensor:
    """uint8 NCHW batch of the transformed images (the sweep's ``fast_collate`` layout)."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                image = to_rgb(im)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(
                f"cannot read image '{f}' ({type(e).__name__}): give image files (JPEG, PNG, ...)"
            ) from None
        out.append(torch.as_tensor(transform(image)))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# preprocessing and class names
# ---------------------------------------------------------------------------------------------
def class_names(num_classes: int, dataset) -> list[str]:
    """ImageNet's names for 1000 classes, else the dataset's class (folder) names, else indices."""
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    names = getattr(dataset, "classes", None)
    reader = getattr(dataset, "reader", None)
    if names is None and reader is not None and getattr(reader, "class_to_idx", None):
        names = [c for c, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])]
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def prediction_info(
    net, dataset_name: str, data_dir: Optional[str], split: str = "validation", opts: Any = None
) -> dict[str, Any]:
    """What running one network on images needs besides its weights: the evaluation transform's
    settings and the class names (from the dataset when it can be opened)."""
    from ..data.datasets import create_dataset
    from ..data.loaders import data_config_for

    try:
        dataset = create_dataset(dataset_name, data_dir, split, opts=opts) if (dataset_name or data_dir) else None
    except DataError:  # the data is not on this machine: fall back to class indices
        dataset = None
    cfg = data_config_for(net, dataset)
    num_classes = int(getattr(net.anchors[0], "num_classes", 0))
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    info = {k: (list(cfg[k]) if isinstance(cfg.get(k), tuple) else cfg.get(k)) for k in keys}
    info["class_names"] = class_names(num_classes, dataset)
    return info


def write_prediction_info(export_path: str | Path, info: dict[str, Any], cfg_id: int, name: str, **extra: Any) -> Path:
    """``<export_path>.json`` beside an exported file, for ``predict.py --exported`` (atomically);
    ``extra``: more keys (a file of several networks: ``networks``, ``default_cfg_id``)."""
    from ..io.paths import write_text

    path = Path(str(export_path) + INFO_SUFFIX)
    write_text(path, json.dumps({"cfg_id": cfg_id, "name": name, **info, **extra}, indent=1) + "\n")
    return path


def _transform(info: dict[str, Any]):
    from ..data.loaders import eval_transform

    return eval_transform({**info, "input_size": tuple(info["input_size"])})


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
def choose_network(args: PredictConfig, net) -> int:
    """``--stitch``: a cfg_id, or the budget pick / the most accurate network of the sweep."""
    from .pareto import parse_flops, pick, pick_for_budget
    from .results import read_results

    if args.stitch != "best":
        try:
            cfg_id = int(args.stitch)
        except ValueError:
            raise ConfigError(f"--stitch '{args.stitch}' is not a cfg_id: pass a number or 'best'") from None
        net.select(cfg_id)
        return cfg_id
    results = Path(args.results) if args.results else default_out_dir(args.checkpoint, args.use_ema)
    table = results / "stitches.csv"
    if not table.is_file():
        raise DataError(
            f"--stitch best picks from the sweep's {table}, which does not exist: run eval.py --resume "
            f"{args.checkpoint} --output {results} first, or pass --results DIR"
        )
    rows = read_results(table)
    if rows and "top1" not in rows[0]:
        raise DataError(f"{table} has no accuracies (an eval.py --flops-only table): run the sweep with data")
    if args.budget_latency is not None and "latency_ms" not in rows[0]:
        raise DataError(f"{table} has no latencies: sweep with eval.py --measure-latency for --budget-latency")
    flops = None if args.budget_flops is None else parse_flops(str(args.budget_flops))
    if flops is None and args.budget_latency is None:
        row = pick_for_budget(rows, float("inf"))
    else:
        row = pick(rows, flops, args.budget_latency)
    if row["cfg_id"] >= net.num_stitches or net.stitches[row["cfg_id"]].name != row["name"]:
        raise DataError(
            f"{table} is not a sweep of this SN-Net (cfg_id {row['cfg_id']} is {row['name']} there): "
            f"pass the --results DIR of this checkpoint"
        )
    net.select(row["cfg_id"])
    return row["cfg_id"]


def load_snnet(args: PredictConfig):
    """The SN-Net of ``--resume`` (with its own anchors and options) and its prediction info."""
    from ..io.checkpoint import extract_state_dict, load_checkpoint_file

    ckpt = load_checkpoint_file(args.checkpoint)
    args = with_checkpoint_model(args, ckpt, lambda msg: print(msg, flush=True))
    net = build_trained_snnet(args, None, extract_state_dict(ckpt, args.use_ema)).eval()
    return net, prediction_info(net, *training_data(ckpt, args))


_INFO_KEYS = ("cfg_id", "name", "input_size", "interpolation", "mean", "std", "crop_pct", "class_names")


def _read_info(info_path: Path) -> dict[str, Any]:
    """The ``<file>.json`` eval.py --export wrote, checked to hold what predicting needs."""
    try:
        info = json.loads(info_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{info_path}' is not valid JSON ({e}): export again with eval.py --export") from None
    missing = [k for k in _INFO_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise CheckpointError(f"'{info_path}' lacks {', '.join(missing)}: export again with eval.py --export")
    return info


def load_exported(
    path: str | Path, cfg_id: Optional[int] = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """A forward function of an eval.py --export file and the info saved beside it, whose
    ``cfg_id`` / ``name`` are the network the function runs: ``cfg_id`` (None: the file's default
    network) of a file of several (``eval.py --export frontier``). A file that does not load, or
    that refuses the input its ``.json`` describes, is a :class:`CheckpointError`; a ``cfg_id`` the
    file does not hold a :class:`ConfigError` naming those it does."""
    from .export import FORMATS

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported file '{path}' does not exist: check the path")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--exported '{path}' has an unknown suffix: use an eval.py --export file (.pt, .pt2, .onnx)")
    info_path = Path(str(path) + INFO_SUFFIX)
    if not info_path.is_file():
        raise CheckpointError(
            f"'{info_path}' is missing: predict.py needs the preprocessing and class names eval.py "
            f"--export writes beside the file; export again with eval.py, or predict with --resume CKPT"
        )
    info = _read_info(info_path)
    module = _load_module(path, fmt)
    run = _network_runner(module, path, info_path, info, cfg_id)

    def forward(x: torch.Tensor) -> torch.Tensor:
        try:
            out = run(x)
        except Exception as e:  # e.g. a 224-px network given 32-px images by a mismatched .json
            raise CheckpointError(
                f"exported file '{path}' refuses input {tuple(x.shape)} (the size {info_path} gives: "
                f"{_first_line(e)}): the file and its .json do not belong together; export again with eval.py"
            ) from None
        if out.ndim != 2 or out.shape[-1] != len(info["class_names"]):
            raise CheckpointError(
                f"exported file '{path}' gives outputs of shape {tuple(out.shape)} but {info_path} names "
                f"{len(info['class_names'])} classes: the file and its .json do not belong together"
            )
        return out

    return forward, info


def _load_module(path: Path, fmt: str):
    """The model in ``path``: a TorchScript module, an exported program's module or an ONNX runner."""
    from .export import onnx_forward

    kind = {"torchscript": "TorchScript", "exported_program": "torch.export program", "onnx": "ONNX"}[fmt]
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                return torch.jit.load(str(path), map_location="cpu")
        if fmt == "exported_program":
            reader_log = logging.getLogger("torch.export")  # logs a damaged file's traceback, then raises
            reader_log.disabled = True
            try:
                return torch.export.load(str(path)).module()
            finally:
                reader_log.disabled = False
        return onnx_forward(path)
    except Exception as e:  # whatever the reader of a damaged or foreign file trips on
        raise CheckpointError(
            f"exported file '{path}' cannot be read as {kind} ({_first_line(e)}): export it again with eval.py --export"
        ) from None


def _network_runner(module, path: Path, info_path: Path, info: dict[str, Any], cfg_id: Optional[int]) -> Callable:
    """``module``'s forward for network ``cfg_id``; sets ``info``'s ``cfg_id`` and ``name`` to it."""
    networks = info.get("networks")
    if networks is None:  # one network
        if cfg_id is not None and cfg_id != info["cfg_id"]:
            raise ConfigError(f"--stitch {cfg_id}: '{path}' holds one network, cfg_id {info['cfg_id']}: drop --stitch")
        return module
    held = [int(n["cfg_id"]) for n in networks]
    try:
        in_file = [int(c) for c in module.networks()]
    except Exception:  # not a file of several networks: a .json of another export beside it
        in_file = None
    if in_file != held:
        raise CheckpointError(
            f"'{info_path}' lists networks {held} but '{path}' holds {in_file or 'one network'}: the file and its "
            f".json do not belong together; export again with eval.py --export"
        )
    chosen = int(info["default_cfg_id"]) if cfg_id is None else cfg_id
    if chosen not in held:
        raise ConfigError(
            f"--stitch {cfg_id}: '{path}' does not hold that network; it holds cfg_ids {', '.join(map(str, held))}"
        )
    info.update(cfg_id=chosen, name=networks[held.index(chosen)]["name"])
    return lambda x: module(x, chosen)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0].split('. ')[0][:200]}" if lines else type(e).__name__


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    forward: Callable[[torch.Tensor], torch.Tensor],
    files: Sequence[Path],
    info: dict[str, Any],
    top_k: int = 5,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Per image: its top-k class indices, names and probabilities."""
    from ..data.loaders import Normalize

    transform = _transform(info)
    prep = Normalize(info["mean"], info["std"], torch.device(device))
    names = info["class_names"]
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x, _ = prep(load_batch(chunk, transform), torch.zeros(len(chunk)))
        for f, top in zip(chunk, top_classes(forward(x), names, top_k)):
            rows.append({"image": str(f), **top})
    return rows


def top_classes(logits: torch.Tensor, names: Sequence[str], top_k: int = 5) -> list[dict[str, Any]]:
    """Per row of ``logits``: its top-k class ``indices``, ``classes`` (names) and ``probs`` (softmax)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [
        {"indices": i, "classes": [names[c] for c in i], "probs": p}
        for p, i in zip(top.values.tolist(), top.indices.tolist())
    ]


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:

    k = max(len(r["indices"]) for r in rows)
    header = ["image"] + [f"{what}_{r}" for r in range(1, k + 1) for what in ("class", "index", "prob")]
    with atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(
                [r["image"]]
                + [v for c, i, p in zip(r["classes"], r["indices"], r["probs"]) for v in (c, i, f"{p:.6f}")]
            )


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..distributed import set_cpu_threads
    from ..io.paths import check_not_an_input, check_output_file

    args = parse_predict_config(argv)
    set_cpu_threads(args.threads)
    files = image_files(args.images)
    check_output_file(args.csv, "--csv")
    inputs = {"checkpoint": args.checkpoint, "exported file": args.exported, "config": args.config}
    check_not_an_input(args.csv, "--csv", {**inputs, **{f"image {f}": f for f in files}})
    if args.exported:
        forward, info = load_exported(args.exported, None if args.stitch is None else int(args.stitch))
        default = " (the file's default network)" if "networks" in info and args.stitch is None else ""
        what = f"{args.exported} (cfg_id {info['cfg_id']}, {info['name']}){default}"
    else:
        net, info = load_snnet(args)
        cfg_id = choose_network(args, net)
        net.to(args.device)
        forward = net
        what = f"cfg_id {cfg_id} ({net.stitches[cfg_id].name}) of {args.checkpoint}"
    rows = predict(forward, files, info, args.top_k, args.batch_size, args.device)
    print(f"{len(rows)} images through {what}", flush=True)
    for r in rows:
        print(f"{r['image']}: " + ", ".join(f"{c} ({100 * p:.1f}%)" for c, p in zip(r["classes"], r["probs"])))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"Wrote {args.csv}")
    return 0
