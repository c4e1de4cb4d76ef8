"""The command lines: train.py's, eval.py's and predict.py's parsers and the arguments they share
(which anchors, how to stitch, which data). :mod:`snnet.run_config` turns what they parse into a
frozen run config and builds the SN-Net it describes."""

from __future__ import annotations

import argparse
from typing import Sequence

from .core.junctions import CLASS_TOKEN_RULES, DEFAULT_CLASS_TOKEN, DEFAULT_PREFIX_TOKENS, PREFIX_TOKEN_RULES
from .core.layers import STITCH_LAYER_KINDS
from .core.stitches import STITCHING_RULES
from .errors import OneLineArgumentParser
from .train.network_sampling import SAMPLE_BY

DROP_PATH_SCHEDULES = ("linear", "uniform")  # applied by snnet.run_config.build_snnet


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with each option's default, said once: a help text that already says its
    default (e.g. "default: the dataset's class count") is left as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


# The option tables below stay one option per line (``# fmt: off``): they read as tables.
def add_model_args(
    parser: argparse.ArgumentParser, anchor_flags: Sequence[str] = ("--anchors",), anchors_help: str = ""
) -> None:
    """The model options; ``anchor_flags`` name the anchors' option (compose.py: ``--pool``)."""
    # fmt: off
    group = parser.add_argument_group("SN-Net model")
    group.add_argument(*anchor_flags, dest="anchors", nargs="+", default=None, metavar="NAME",
                       help=anchors_help or "timm model names of the anchors, ordered small to large")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                       help="start the anchors from timm's pretrained weights (local HF cache first, then the hub)")
    group.add_argument("--anchor-checkpoints", nargs="+", default=None, metavar="FILE",
                       help="local weights file per anchor ('none' to skip one): timm/HF .safetensors or .bin, "
                            "DeiT/Swin {'model': ...} .pth, torchvision ResNet .pth")
    group.add_argument("--num-classes", type=int, default=None, metavar="N",
                       help="classifier size (default: the dataset's class count)")
    group.add_argument("--img-size", type=int, default=None, metavar="PX", help="input resolution")
    group.add_argument("--model-kwargs", nargs="*", default={}, metavar="K=V",
                       help="timm.create_model keyword arguments for every anchor")
    group.add_argument("--anchor-kwargs", nargs="+", default=None, metavar="'K=V ...'",
                       help="per-anchor timm keyword arguments, one quoted string per anchor")
    group.add_argument("--kernel-size", type=int, default=2, help="sliding window size of paired stitching")
    group.add_argument("--stride", type=int, default=1, help="sliding window stride of paired stitching")
    group.add_argument("--nearest", action=argparse.BooleanOptionalAction, default=True,
                       help="stitch only neighbouring anchors (the paper's nearest stitching)")
    group.add_argument("--stages", nargs="+", type=int, default=None,
                       help="stages to stitch in, hierarchical anchors (default: all but the last)")
    group.add_argument("--stitching", default=None, choices=STITCHING_RULES,
                       help="stitching rule: paired/unpaired (SN-Net; default: chosen per anchor pair by depth) or "
                            "two-way (SN-Netv2: two anchors, SL/LS/LSL/SLS routes)")
    group.add_argument("--stitch-layer", default="linear", choices=STITCH_LAYER_KINDS,
                       help="stitching layer kind: linear (SN-Net), lora (SN-Netv2: frozen LS base + low-rank update), "
                            "conv3x3, mlp, basic-block, bottleneck or transformer-block; each starts as the LS map")
    group.add_argument("--stitch-stride", type=int, default=1, metavar="S",
                       help="downsampling inside the conv stitching layers (conv3x3, basic-block, bottleneck): the "
                            "junction resamples to S times the back grid, the layer strides by S (1: the junction "
                            "resamples to the back grid)")
    group.add_argument("--lora-rank", type=int, default=64, metavar="R", help="rank of the lora stitching layers' update")
    group.add_argument("--routes", nargs="+", default=None, metavar="NAME",
                       help="the networks by name, e.g. 'resnet50[:7]>vit_small_patch16_224[6:]' (any layouts; one "
                            "anchor with a gap: 'resnet50[:5]>resnet50[9:]'): the anchors, then these, in this order, "
                            "instead of the stitching rules' networks")
    group.add_argument("--class-token", default=DEFAULT_CLASS_TOKEN, choices=CLASS_TOKEN_RULES,
                       help="feature maps -> tokens junctions (CNN -> ViT): the prefix (class) tokens the back anchor "
                            "expects, the mean of the patch tokens, zeros or ones")
    group.add_argument("--prefix-tokens", default=DEFAULT_PREFIX_TOKENS, choices=PREFIX_TOKEN_RULES,
                       help="tokens -> feature maps junctions (ViT -> CNN): drop the prefix tokens, or broadcast the "
                            "class token over HxW as extra channels")
    group.add_argument("--official-forward", action=argparse.BooleanOptionalAction, default=False,
                       help="run stitched networks as the official SN-Net code does (set by loading an official checkpoint)")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    # fmt: off
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", default=None, metavar="DIR",
                       help="ImageFolder root with train/ and val/ (timm layout)")
    group.add_argument("--dataset", default="", metavar="NAME",
                       help="'digits' (scikit-learn's, offline); timm's names: torch/<name>, hfds/<name or path>, "
                            "wds/<dir>; empty for an ImageFolder --data-dir (docs/data.md)")
    group.add_argument("--class-map", default="", metavar="FILE",
                       help="class names, one per line (index = line), as timm's: remaps a folder's or hfds labels")
    group.add_argument("--input-img-mode", default="RGB", metavar="MODE", help="image mode the images are read in")
    group.add_argument("--input-key", default=None, metavar="KEY",
                       help="image column (hfds, default image) or shard extension (wds, default jpg;png;webp)")
    group.add_argument("--target-key", default=None, metavar="KEY",
                       help="label column (hfds, default label; e.g. labels for beans) or json field (wds)")
    group.add_argument("--train-num-samples", type=int, default=None, metavar="N",
                       help="training images in a wds/ split (default: from its _info.json)")
    group.add_argument("--val-num-samples", type=int, default=None, metavar="N",
                       help="validation images in a wds/ split (default: from its _info.json)")
    group.add_argument("--dataset-download", action="store_true", default=False,
                       help="let a torch/<name> dataset download itself when not on disk")
    group.add_argument("--dataset-trust-remote-code", action="store_true", default=False,
                       help="let an hfds/ dataset run its loading script (refused otherwise)")
    group.add_argument("--workers", "-j", type=int, default=2, metavar="N", help="data loading processes")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads per process (default: $OMP_NUM_THREADS if set, else 1)")
    group.add_argument("--seed", type=int, default=42, help="random seed")


def add_compile_args(group: argparse._ArgumentGroup) -> None:
    # fmt: off
    group.add_argument("--torchcompile", nargs="?", type=str, default=None, const="inductor", metavar="BACKEND",
                       help="torch.compile every block and stitching layer once, for every network (backend: "
                            "inductor when the flag is given alone)")
    group.add_argument("--torchcompile-mode", type=str, default=None, metavar="MODE",
                       help="torch.compile mode, e.g. reduce-overhead (CUDA graphs: the fastest SN-Net training on "
                            "a GPU, see docs/speed.md) or max-autotune")
    # fmt: on


def build_train_parser() -> argparse.ArgumentParser:
    """train.py's parser; ``-c FILE.yaml`` sets its defaults (see :mod:`snnet.config`)."""
    # fmt: off
    parser = OneLineArgumentParser(
        prog="train.py",
        description="Train an SN-Net (or, with one anchor, a plain timm model) the way timm's train.py trains.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("-c", "--config", default="", metavar="FILE.yaml",
                        help="YAML file of argument defaults (keys are the long option names)")
    add_model_args(parser)
    add_data_args(parser)

    g = parser.add_argument_group("model extras")
    g.add_argument("--drop-path", type=float, default=None, metavar="P", help="drop-path rate of every anchor")
    g.add_argument("--drop-path-schedule", default="linear", choices=DROP_PATH_SCHEDULES,
                   help="per-block drop-path rates: linear (timm's ramp from 0 to the rate) or uniform (the rate "
                        "on every block, as DeiT-III and SN-Netv2)")
    g.add_argument("--drop", type=float, default=None, metavar="P", help="dropout rate of every anchor")
    g.add_argument("--ls-init", action=argparse.BooleanOptionalAction, default=False,
                   help="least-squares init of the stitching layers before training (not redone on resume)")
    g.add_argument("--ls-init-images", type=int, default=100, metavar="N",
                   help="training images (no augmentation) for --ls-init; the paper uses 100")
    g.add_argument("--ls-init-batch-size", type=int, default=50, metavar="N", help="images per forward in LS init")
    g.add_argument("--ls-init-combine", default="mean", choices=["mean", "joint"],
                   help="how a layer shared by several positions combines their solutions")

    g = parser.add_argument_group("data extras")
    g.add_argument("--train-split", default="train", help="dataset split to train on")
    g.add_argument("--val-split", default="validation", help="dataset split to validate on")
    g.add_argument("-b", "--batch-size", type=int, default=128, metavar="N",
                   help="batch size PER PROCESS (as timm); the global batch is this x world size")
    g.add_argument("--global-batch-size", type=int, default=None, metavar="N",
                   help="alternative to --batch-size: the global batch, divided over the processes")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=None, metavar="N",
                   help="validation batch size per process (default: --batch-size)")
    g.add_argument("--pin-mem", action="store_true", default=False, help="pin CPU memory in the data loader")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, metavar="N",
                   help="stop each epoch after N optimizer steps (short runs, tests)")
    g.add_argument("--max-val-batches", type=int, default=None, metavar="N",
                   help="validate on at most N batches per process")

    g = parser.add_argument_group("augmentation (timm)")
    g.add_argument("--no-aug", action="store_true", default=False, help="no training augmentation at all")
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], metavar="PCT", help="random resized crop scale")
    g.add_argument("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0], metavar="RATIO",
                   help="random resized crop aspect ratio")
    g.add_argument("--hflip", type=float, default=None, help="horizontal flip probability (default 0.5; 0 for digits)")
    g.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    g.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT", help="color jitter (off with --aa)")
    g.add_argument("--aa", type=str, default=None, metavar="NAME", help="auto-augment policy, e.g. rand-m9-mstd0.5-inc1")
    g.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random erasing probability")
    g.add_argument("--remode", type=str, default="pixel", help="random erasing mode")
    g.add_argument("--recount", type=int, default=1, help="random erasing count")
    g.add_argument("--resplit", action="store_true", default=False,
                   help="do not random-erase the first half of each batch (clean split)")
    g.add_argument("--train-interpolation", type=str, default="random", help="training interpolation")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (on if > 0)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (on if > 0)")
    g.add_argument("--cutmix-minmax", type=float, nargs=2, default=None, help="cutmix min/max ratio (overrides alpha)")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of cutmix instead of mixup")
    g.add_argument("--mixup-mode", type=str, default="batch", choices=["batch", "pair", "elem"])
    g.add_argument("--mixup-off-epoch", type=int, default=0, metavar="N", help="turn mixup off from this epoch (0: never)")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--split-bn", action="store_true", default=False,
                   help="separate BatchNorm statistics for the clean and erased halves (needs --resplit)")
    g.add_argument("--dist-bn", type=str, default="reduce", choices=["reduce", "broadcast", ""],
                   help="sync BatchNorm running stats over processes at the end of each epoch")

    g = parser.add_argument_group("optimizer (timm create_optimizer_v2)")
    g.add_argument("--opt", default="adamw", metavar="NAME", help="optimizer")
    g.add_argument("--opt-eps", type=float, default=None, metavar="EPS")
    g.add_argument("--opt-betas", type=float, nargs="+", default=None, metavar="BETA")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="gradient clipping (off if unset)")
    g.add_argument("--clip-mode", type=str, default="norm", choices=["norm", "value", "agc"])
    g.add_argument("--stitch-lr-scale", type=float, default=1.0,
                   help="learning-rate multiplier of the stitching layers relative to the anchors")

    g = parser.add_argument_group("learning rate schedule (timm create_scheduler_v2)")
    g.add_argument("--sched", type=str, default="cosine", metavar="NAME")
    g.add_argument("--sched-on-updates", action=argparse.BooleanOptionalAction, default=True,
                   help="step the schedule every optimizer update (else per epoch)")
    g.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="learning rate (default: --lr-base scaled by the global batch size)")
    g.add_argument("--lr-base", type=float, default=5e-4, metavar="LR", help="learning rate for --lr-base-size")
    g.add_argument("--lr-base-size", type=int, default=512, metavar="N")
    g.add_argument("--lr-base-scale", type=str, default="linear", choices=["linear", "sqrt"])
    g.add_argument("--lr-noise", type=float, nargs="+", default=None, metavar="PCT")
    g.add_argument("--lr-noise-pct", type=float, default=0.67)
    g.add_argument("--lr-noise-std", type=float, default=1.0)
    g.add_argument("--lr-cycle-mul", type=float, default=1.0)
    g.add_argument("--lr-cycle-decay", type=float, default=0.5)
    g.add_argument("--lr-cycle-limit", type=int, default=1)
    g.add_argument("--lr-k-decay", type=float, default=1.0)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--decay-epochs", type=float, default=90)
    g.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270])
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--warmup-prefix", action="store_true", default=False)
    g.add_argument("--cooldown-epochs", type=int, default=0)
    g.add_argument("--patience-epochs", type=int, default=10)
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1)

    g = parser.add_argument_group("SN-Net training")
    g.add_argument("--sample-per-rank", action="store_true", default=False,
                   help="each process draws its own network per step (default: all train the same one)")
    g.add_argument("--sample-weights", nargs="+", default=None, metavar="W",
                   help="'uniform' (default), 'flops', 'params' or one weight per network (cfg_id order)")
    g.add_argument("--sample-by", default="networks", choices=SAMPLE_BY,
                   help="draw a network per step (weighted by --sample-weights), or a FLOPs group and then a network "
                        "of it (SN-Netv2's FLOPs-balanced sampling)")
    g.add_argument("--flops-gap", type=float, default=1.0, metavar="G",
                   help="--sample-by flops-groups: a new group starts more than G GFLOPs above a group's first network")
    g.add_argument("--flops-sampling-k", type=float, default=None, metavar="K",
                   help="--sample-by flops-groups: group weights i/K + 1/groups (favouring larger networks; "
                        "default: uniform over groups)")
    g.add_argument("--train-only", default="all", choices=["all", "stitching"],
                   help="stitching: train the stitching layers only, the anchors frozen (no gradients, eval mode: "
                        "BatchNorm statistics, dropout and drop-path frozen)")
    g.add_argument("--val-stitches", type=str, default=None, metavar="IDS",
                   help="cfg_ids validated each epoch, e.g. '0,3,10' or 'all' (default: anchors + 3 evenly spaced)")
    g.add_argument("--eval-metric", type=str, default="top1", choices=["top1", "top5", "loss"],
                   help="best-checkpoint metric: its mean over the validated networks")
    g.add_argument("--teacher", type=str, default=None, metavar="NAME", help="timm teacher model for distillation")
    g.add_argument("--teacher-checkpoint", type=str, default=None, metavar="FILE",
                   help="teacher weights (default: timm's pretrained weights)")
    g.add_argument("--teacher-kwargs", nargs="*", default={}, metavar="K=V", help="timm.create_model kwargs of the teacher")
    g.add_argument("--distillation-type", type=str, default="none", choices=["none", "soft", "hard"])
    g.add_argument("--distillation-alpha", type=float, default=0.5)
    g.add_argument("--distillation-tau", type=float, default=1.0)
    g.add_argument("--grad-sync", type=str, default="allreduce", choices=["allreduce", "ddp"],
                   help="gradient averaging over processes: own bucketed all-reduce or DDP(find_unused_parameters)")

    g = parser.add_argument_group("mechanics")
    g.add_argument("--device", type=str, default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--amp", action="store_true", default=False, help="mixed precision (torch.autocast)")
    g.add_argument("--amp-dtype", type=str, default="float16", choices=["float16", "bfloat16"])
    g.add_argument("--amp-impl", type=str, default="native", choices=["native", "apex"])
    g.add_argument("--channels-last", action="store_true", default=False)
    g.add_argument("--model-ema", action="store_true", default=False, help="keep an EMA of the weights (timm ModelEmaV3)")
    g.add_argument("--model-ema-decay", type=float, default=0.9998)
    g.add_argument("--model-ema-warmup", action="store_true", default=False)
    g.add_argument("--model-ema-force-cpu", action="store_true", default=False)
    add_compile_args(g)

    g = parser.add_argument_group("output and checkpoints")
    g.add_argument("--output", default="", metavar="DIR", help="parent folder of the runs (default: ./output/train)")
    g.add_argument("--experiment", default="", metavar="NAME", help="run folder name (default: date-anchors-size)")
    g.add_argument("--resume", default="", metavar="FILE",
                   help="checkpoint to resume from, or 'auto' (the run folder's last.pth.tar; default when it exists)")
    g.add_argument("--initial-checkpoint", default="", metavar="FILE",
                   help="start from these weights (a train.py or an official SN-Net checkpoint; no optimizer state, no LS init)")
    g.add_argument("--no-resume-opt", action="store_true", default=False,
                   help="resume the weights only (fresh optimizer, scheduler, scaler, sampler)")
    g.add_argument("--checkpoint-hist", type=int, default=10, metavar="N", help="epoch checkpoints kept (top-k by metric)")
    g.add_argument("--checkpoint-interval", type=int, default=0, metavar="N",
                   help="also write last.pth.tar every N optimizer steps inside an epoch (0: epoch ends only)")
    g.add_argument("--stop-epoch", type=int, default=None, metavar="N",
                   help="stop after N epochs in total but keep the --epochs schedule (time-limited jobs: rerun the "
                        "same command to continue)")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="steps between log lines")
    g.add_argument("--check-args", action="store_true", default=False,
                   help="only check the arguments and the run to resume, then exit (distributed_train.sh does this "
                        "before starting the workers)")
    # fmt: on
    return parser


def build_eval_parser() -> argparse.ArgumentParser:
    """eval.py's parser; ``-c FILE.yaml`` sets its defaults, train.py configs included."""
    # fmt: off
    parser = OneLineArgumentParser(
        prog="eval.py",
        description="Evaluate every network of an SN-Net from one pass over the data; Pareto frontier, "
                    "budget picking and export of one network.",
        formatter_class=DefaultsHelpFormatter,
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
    g.add_argument("--report-only", action="store_true", default=False,
                   help="only rewrite DIR/report.html from DIR/stitches.csv (no data, no weights: the SN-Net "
                        "built from the config or checkpoint for the route drawings)")
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
    g.add_argument("--export", default=None, metavar="CFG_ID|best|frontier|ID,ID,...",
                   help="write one network as a standalone model ('best': the budget pick), or several into one "
                        "TorchScript file, each block once ('frontier': the sweep's Pareto frontier; or a list of cfg_ids)")
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
    add_compile_args(g)
    # fmt: on
    return parser


def build_predict_parser() -> argparse.ArgumentParser:
    """predict.py's parser; ``-c FILE.yaml`` (a training config) sets its defaults."""
    parser = OneLineArgumentParser(
        prog="predict.py",
        description="Top-5 classes of image files from one network of an SN-Net or an exported network.",
    )
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE_OR_DIR", help="image files and folders (searched recursively)"
    )
    parser.add_argument("-c", "--config", default="", metavar="FILE.yaml", help="the training config (optional)")
    add_model_args(parser)
    add_data_args(parser)
    g = parser.add_argument_group("prediction")
    g.add_argument(
        "--resume",
        "--checkpoint",
        dest="checkpoint",
        default="",
        metavar="CKPT",
        help="train.py checkpoint, or an official SN-Net / SN-Netv2 one (with the config of its run)",
    )
    g.add_argument("--use-ema", action="store_true", default=False, help="the checkpoint's EMA weights")
    g.add_argument(
        "--stitch",
        default=None,
        metavar="CFG_ID|best",
        help="the network: a cfg_id, or 'best' (most accurate of the sweep, within the budgets); with --exported "
        "a file of several networks, a cfg_id it holds (default: its most accurate)",
    )
    g.add_argument(
        "--budget-flops", default=None, metavar="FLOPS", help="with --stitch best: most accurate within this"
    )
    g.add_argument(
        "--budget-latency",
        type=float,
        default=None,
        metavar="MS",
        help="with --stitch best: most accurate within this latency (a sweep with --measure-latency)",
    )
    g.add_argument(
        "--results",
        default="",
        metavar="DIR",
        help="eval.py output folder with stitches.csv, for --stitch best (default: eval.py's default for CKPT)",
    )
    g.add_argument("--exported", default="", metavar="FILE", help="an eval.py --export file (.pt, .pt2 or .onnx)")
    g.add_argument("--csv", default="", metavar="FILE", help="also write the predictions to this CSV file")
    g.add_argument("--top-k", type=int, default=5, metavar="K", help="classes shown per image")
    g.add_argument("-b", "--batch-size", type=int, default=64, metavar="N", help="images per forward pass")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def build_serve_parser() -> argparse.ArgumentParser:
    """serve.py's parser; ``-c FILE.yaml`` (a training config) sets its defaults."""
    # fmt: off
    parser = OneLineArgumentParser(
        description="HTTP inference server for a trained SN-Net (or a frontier file) that batches requests and "
                    "switches networks to hold a p99 latency target.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("-c", "--config", default="", metavar="FILE.yaml", help="the training config (optional)")
    add_model_args(parser)
    add_data_args(parser)
    g = parser.add_argument_group("model source (one of)")
    g.add_argument("--resume", "--checkpoint", dest="checkpoint", default="", metavar="CKPT",
                   help="train.py checkpoint, served with the frontier of its eval.py sweep (--results)")
    g.add_argument("--use-ema", action="store_true", default=False, help="the checkpoint's EMA weights")
    g.add_argument("--results", default="", metavar="DIR",
                   help="eval.py output folder with stitches.csv (default: eval.py's default for CKPT)")
    g.add_argument("--exported", default="", metavar="FILE",
                   help="a frontier file (eval.py --export frontier: TorchScript, every network, .json beside it)")
    g = parser.add_argument_group("serving")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on")
    g.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free port, printed at start)")
    g.add_argument("--max-batch-size", type=int, default=16, metavar="N", help="images per forward pass, at most")
    g.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long the first request of a batch waits for more of the same network")
    g.add_argument("--slo-ms", type=float, default=None, metavar="P99",
                   help="p99 latency target: move to cheaper frontier networks under load, back up when it falls "
                        "(default: always the most accurate network)")
    g.add_argument("--top-k", type=int, default=5, metavar="K", help="classes returned per image")
    g.add_argument("--max-images", type=int, default=32, metavar="N", help="images per request, at most")
    g.add_argument("--max-image-bytes", type=int, default=20_000_000, metavar="N", help="bytes per image, at most")
    g.add_argument("--max-image-pixels", type=int, default=40_000_000, metavar="N",
                   help="width x height per image, at most (checked before decoding)")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--add-latency-ms", type=float, default=0.0, metavar="MS",
                   help="testing only: sleep MS x (network FLOPs / the largest's) per image in every forward, to "
                        "emulate a heavier model on a small one")
    # fmt: on
    return parser
