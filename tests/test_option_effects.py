"""No option without effect: every option of every entry point either always acts, or is refused
(one ``error:`` line, exit 2) or logged once where it cannot act as given, never accepted silently.

:data:`ROWS` is the table: per option that can fail to act, the entry point, the arguments that
put it where it cannot act, and what happens ('refused: <fragment of the error line>' or 'logged:
<fragment of the log line>'). :data:`ALWAYS_ACTS` lists the options that act whatever else is
given; :data:`NOT_YET_JUDGED` the options known to act only sometimes whose refusal is still to
be written (with why). A new option in no list fails :func:`test_every_option_is_in_the_table`.
The rows run in-process and stop before any work (``--check-args`` or the parse-time checks),
but for the few marked slow, which need a tiny training run to reach the point where the option
would have acted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY_DEIT_ARGS, run_entry

from snnet.cli import build_eval_parser, build_predict_parser, build_train_parser
from snnet.compose.main import build_compose_parser
from snnet.compose.main import main as compose_main
from snnet.evaluate.main import main as eval_main
from snnet.evaluate.predict import main as predict_main
from snnet.lab.main import build_lab_parser
from snnet.launch import build_submit_parser
from snnet.launch import main as submit_main
from snnet.train.main import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

ROUTE = "deit_tiny_patch16_224[:2]>deit_small_patch16_224[2:]"
ONE_ANCHOR = ["--anchors", "deit_tiny_patch16_224", "--anchor-kwargs", "embed_dim=32 num_heads=2"]
NO_WORKERS = TINY_DEIT_ARGS[: TINY_DEIT_ARGS.index("--workers")]  # the tiny pair without --workers 0
CHECK = ["--check-args"]


@dataclass(frozen=True)
class Row:
    entry: str  # train, eval, predict, compose, submit
    option: str  # the option's dest
    args: tuple  # '{ckpt}', '{out}', '{anchor0}', '{anchor1}' filled in at run time
    outcome: str  # 'refused: ...' or 'logged: ...'
    slow: bool = False


def row(entry: str, option: str, args: list, outcome: str, slow: bool = False) -> Row:
    return Row(entry, option, tuple(args), outcome, slow)


GROUPS = "sets the gap between FLOPs groups and acts only with --sample-by flops-groups (no grouped sampler runs)"
NO_AUG = "--no-aug turns augmentation off"
ROWS = [
    # -- train.py: the recipe (snnet/train/effects.py), judged by --check-args before any work
    row("train", "flops_gap", ["--flops-gap", "0.5", *CHECK], f"refused: --flops-gap 0.5 has no effect: it {GROUPS}"),
    row("train", "flops_sampling_k", ["--flops-sampling-k", "2", *CHECK], "refused: --flops-sampling-k weighs FLOPs groups"),
    row("train", "sample_weights", ["--sample-by", "flops-groups", "--sample-weights", "flops", *CHECK],
        "refused: --sample-weights weighs single networks"),
    row("train", "sample_by", ["--sample-by", "flops-groups", "--flops-gap", "100", *CHECK],
        "refused: puts all 12 networks"),
    row("train", "sample_per_rank", ["--sample-per-rank", *CHECK], "logged: --sample-per-rank: one process draws"),
    row("train", "grad_sync", ["--grad-sync", "ddp", *CHECK], "logged: --grad-sync ddp: one process averages no"),
    row("train", "dist_bn", ["--dist-bn", "broadcast", *CHECK], "logged: --dist-bn 'broadcast': one process has no"),
    row("train", "ls_init_images", ["--ls-init-images", "10", *CHECK], "refused: --ls-init-images 10 has no effect: it acts only with --ls-init"),
    row("train", "ls_init_batch_size", ["--ls-init-batch-size", "10", *CHECK], "refused: --ls-init-batch-size 10 has no effect"),
    row("train", "ls_init_combine", ["--ls-init-combine", "joint", *CHECK], "refused: --ls-init-combine joint has no effect"),
    row("train", "ls_init", ["--ls-init", "--initial-checkpoint", "{ckpt}", "--stitch-layer", "lora", "--lora-rank", "4",
                             "--epochs", "1", "--max-steps-per-epoch", "1", "--output", "{out}"],
        "logged: --ls-init: not run, the stitching layers start from --initial-checkpoint", slow=True),
    row("train", "drop_path_schedule", ["--drop-path-schedule", "uniform", *CHECK],
        "refused: --drop-path-schedule uniform has no effect: it spreads a drop-path rate and no anchor has one"),
    row("train", "batch_size", ["-b", "8", "--global-batch-size", "16", *CHECK], "refused: --batch-size 8 has no effect: it is replaced by --global-batch-size"),
    row("train", "validation_batch_size", ["-vb", "0", *CHECK], "refused: --validation-batch-size must be >= 1"),
    row("train", "scale", ["--no-aug", "--scale", "0.5", "1.0", *CHECK], f"refused: --scale 0.5 1.0 has no effect: it is an augmentation and {NO_AUG}"),
    row("train", "ratio", ["--no-aug", "--ratio", "0.5", "2.0", *CHECK], "refused: --ratio 0.5 2.0 has no effect"),
    row("train", "hflip", ["--no-aug", "--hflip", "0.5", *CHECK], "refused: --hflip 0.5 has no effect"),
    row("train", "vflip", ["--no-aug", "--vflip", "0.5", *CHECK], "refused: --vflip 0.5 has no effect"),
    row("train", "aa", ["--no-aug", "--aa", "rand-m9-mstd0.5", *CHECK], "refused: --aa rand-m9-mstd0.5 has no effect"),
    row("train", "color_jitter", ["--aa", "rand-m9-mstd0.5", "--color-jitter", "0.3", *CHECK],
        "refused: --color-jitter 0.3 has no effect: it is an augmentation that --no-aug turns off and timm leaves out under --aa"),
    row("train", "reprob", ["--no-aug", "--reprob", "0.25", *CHECK], "refused: --reprob 0.25 has no effect"),
    row("train", "remode", ["--remode", "const", *CHECK], "refused: --remode const has no effect: it sets random erasing"),
    row("train", "recount", ["--recount", "2", *CHECK], "refused: --recount 2 has no effect: it sets random erasing"),
    row("train", "resplit", ["--resplit", *CHECK], "refused: --resplit has no effect: it sets random erasing"),
    row("train", "split_bn", ["--split-bn", *CHECK], "refused: --split-bn needs --resplit with --reprob > 0"),
    row("train", "mixup", ["--no-aug", "--mixup", "0.8", *CHECK], "refused: --mixup 0.8 has no effect"),
    row("train", "cutmix", ["--cutmix", "1.0", "--cutmix-minmax", "0.2", "0.8", *CHECK], "refused: --cutmix 1.0 has no effect: it is an augmentation that --no-aug turns off and --cutmix-minmax overrides"),
    row("train", "cutmix_minmax", ["--no-aug", "--cutmix-minmax", "0.2", "0.8", *CHECK], "refused: --cutmix-minmax 0.2 0.8 has no effect"),
    row("train", "mixup_prob", ["--mixup-prob", "0.5", *CHECK], "refused: --mixup-prob 0.5 has no effect: it acts only with --mixup or --cutmix"),
    row("train", "mixup_switch_prob", ["--mixup", "0.8", "--mixup-switch-prob", "0.3", *CHECK], "refused: --mixup-switch-prob 0.3 has no effect: it chooses between mixup and cutmix"),
    row("train", "mixup_mode", ["--mixup-mode", "pair", *CHECK], "refused: --mixup-mode pair has no effect"),
    row("train", "mixup_off_epoch", ["--mixup-off-epoch", "3", *CHECK], "refused: --mixup-off-epoch 3 has no effect"),
    row("train", "teacher", ["--teacher", "resnet18", *CHECK], "refused: --teacher resnet18 has no effect: it is built only for distillation"),
    row("train", "teacher_checkpoint", ["--teacher-checkpoint", "t.pth", *CHECK], "refused: --teacher-checkpoint t.pth has no effect"),
    row("train", "teacher_kwargs", ["--teacher-kwargs", "drop_rate=0.1", *CHECK], "refused: --teacher-kwargs drop_rate=0.1 has no effect"),
    row("train", "distillation_type", ["--distillation-type", "soft", *CHECK], "refused: --distillation-type soft needs --teacher NAME"),
    row("train", "distillation_alpha", ["--distillation-alpha", "0.3", *CHECK], "refused: --distillation-alpha 0.3 has no effect"),
    row("train", "distillation_tau", ["--distillation-type", "hard", "--teacher", "resnet18", "--distillation-tau", "2", *CHECK],
        "refused: --distillation-tau 2.0 has no effect: it acts only with --distillation-type soft"),
    row("train", "clip_mode", ["--clip-mode", "agc", *CHECK], "refused: --clip-mode agc has no effect: it acts only with --clip-grad"),
    row("train", "lr_base", ["--lr", "1e-3", "--lr-base", "1e-3", *CHECK], "refused: --lr-base 0.001 has no effect: it scales into the learning rate only when --lr is not given"),
    row("train", "lr_base_size", ["--lr", "1e-3", "--lr-base-size", "256", *CHECK], "refused: --lr-base-size 256 has no effect"),
    row("train", "lr_base_scale", ["--lr", "1e-3", "--lr-base-scale", "sqrt", *CHECK], "refused: --lr-base-scale sqrt has no effect"),
    row("train", "lr_noise_pct", ["--lr-noise-pct", "0.5", *CHECK], "refused: --lr-noise-pct 0.5 has no effect: it acts only with --lr-noise"),
    row("train", "lr_noise_std", ["--lr-noise-std", "0.5", *CHECK], "refused: --lr-noise-std 0.5 has no effect"),
    row("train", "lr_cycle_mul", ["--sched", "step", "--lr-cycle-mul", "2", *CHECK], "refused: --lr-cycle-mul 2.0 has no effect: it acts only with --sched cosine/tanh/poly"),
    row("train", "lr_cycle_decay", ["--sched", "step", "--lr-cycle-decay", "0.2", *CHECK], "refused: --lr-cycle-decay 0.2 has no effect"),
    row("train", "lr_cycle_limit", ["--sched", "step", "--lr-cycle-limit", "2", *CHECK], "refused: --lr-cycle-limit 2 has no effect"),
    row("train", "lr_k_decay", ["--sched", "step", "--lr-k-decay", "0.5", *CHECK], "refused: --lr-k-decay 0.5 has no effect"),
    row("train", "decay_epochs", ["--decay-epochs", "30", *CHECK], "refused: --decay-epochs 30.0 has no effect: it acts only with --sched step"),
    row("train", "decay_milestones", ["--decay-milestones", "10", "20", *CHECK], "refused: --decay-milestones 10 20 has no effect: it acts only with --sched multistep"),
    row("train", "patience_epochs", ["--patience-epochs", "3", *CHECK], "refused: --patience-epochs 3 has no effect: it acts only with --sched plateau"),
    row("train", "decay_rate", ["--decay-rate", "0.5", *CHECK], "refused: --decay-rate 0.5 has no effect"),
    row("train", "warmup_lr", ["--warmup-epochs", "0", "--warmup-lr", "1e-5", *CHECK], "refused: --warmup-lr 1e-05 has no effect: it acts only with --warmup-epochs > 0"),
    row("train", "warmup_prefix", ["--warmup-epochs", "0", "--warmup-prefix", *CHECK], "refused: --warmup-prefix has no effect"),
    row("train", "amp_dtype", ["--amp-dtype", "bfloat16", *CHECK], "refused: --amp-dtype bfloat16 has no effect: it acts only with --amp"),
    row("train", "amp_impl", ["--amp-impl", "apex", *CHECK], "refused: --amp-impl apex has no effect"),
    row("train", "model_ema_decay", ["--model-ema-decay", "0.99", *CHECK], "refused: --model-ema-decay 0.99 has no effect: it acts only with --model-ema"),
    row("train", "model_ema_warmup", ["--model-ema-warmup", *CHECK], "refused: --model-ema-warmup has no effect"),
    row("train", "model_ema_force_cpu", ["--model-ema-force-cpu", *CHECK], "refused: --model-ema-force-cpu has no effect"),
    row("train", "torchcompile_mode", ["--torchcompile-mode", "max-autotune", *CHECK], "refused: --torchcompile-mode max-autotune has no effect: it acts only with --torchcompile"),
    row("train", "no_resume_opt", ["--no-resume-opt", "--epochs", "1", "--max-steps-per-epoch", "1", "--output", "{out}"],
        "logged: --no-resume-opt: no checkpoint to resume", slow=True),
    row("train", "anchor_checkpoints", ["--initial-checkpoint", "{ckpt}", "--stitch-layer", "lora", "--lora-rank", "4",
                                        "--anchor-checkpoints", "{anchor0}", "{anchor1}",
                                        "--epochs", "1", "--max-steps-per-epoch", "1", "--output", "{out}"],
        "logged: --anchor-checkpoints: not used, --initial-checkpoint", slow=True),
    row("train", "pretrained", ["--pretrained", "--anchor-checkpoints", "{anchor0}", "{anchor1}",
                                "--epochs", "1", "--max-steps-per-epoch", "1", "--output", "{out}"],
        "logged: --pretrained: not used, every anchor loads its --anchor-checkpoints file", slow=True),
    row("train", "data_dir", ["--data-dir", "{out}", "--output", "{out}"], "refused: has no effect: --dataset digits is scikit-learn's embedded set"),
    # -- train.py: the model's options (snnet/run_config.py: MODEL_RULES, check_model_effects)
    row("train", "kernel_size", ["--routes", ROUTE, "--kernel-size", "3", *CHECK], "refused: --kernel-size 3 has no effect: it sizes paired stitching's window"),
    row("train", "stride", ["--routes", ROUTE, "--stride", "2", *CHECK], "refused: --stride 2 has no effect: it strides paired stitching's window"),
    row("train", "nearest", ["--no-nearest", *CHECK], "refused: --no-nearest has no effect: it chooses which of three or more anchors"),
    row("train", "stages", ["--routes", ROUTE, "--stages", "0", *CHECK], "refused: --stages 0 has no effect"),
    row("train", "stitching", ["--routes", ROUTE, "--stitching", "paired", *CHECK], "refused: --stitching paired has no effect: it is a stitching rule and --routes name the networks"),
    row("train", "lora_rank", ["--lora-rank", "8", *CHECK], "refused: --lora-rank 8 has no effect: it sizes lora layers"),
    row("train", "lora_rank", ["--stitch-layer", "lora", "--lora-rank", "32", *CHECK], "refused: --lora-rank 32 is not lower than stitching layer"),
    row("train", "stitch_layer", [*ONE_ANCHOR, "--stitch-layer", "lora", "--lora-rank", "4", *CHECK], "refused: --stitch-layer lora has no effect: this SN-Net has no stitching layer"),
    row("train", "stitch_stride", ["--stitch-stride", "2", *CHECK], "refused: --stitch-stride 2 downsamples inside the layer, which --stitch-layer linear cannot"),
    row("train", "class_token", ["--class-token", "zeros", *CHECK], "refused: --class-token zeros has no effect: it makes the prefix tokens"),
    row("train", "prefix_tokens", ["--prefix-tokens", "broadcast", *CHECK], "refused: --prefix-tokens broadcast has no effect"),
    row("train", "train_only", [*ONE_ANCHOR, "--train-only", "stitching", *CHECK], "refused: --train-only stitching has no effect: this SN-Net has no stitching layer"),
    row("train", "official_forward", [*ONE_ANCHOR, "--official-forward", "--stitch-layer", "linear", "--train-only", "stitching", *CHECK],
        "refused: --train-only stitching has no effect"),
    # -- eval.py (snnet/evaluate/main.py: EVAL_RULES; the model's rules as train.py's)
    row("eval", "report_only", ["--report-only", "--flops-only", "--output", "{out}"], "refused: --report-only only rewrites DIR/report.html from DIR/stitches.csv: drop --flops-only"),
    row("eval", "pretrained", ["--flops-only", "--pretrained"], "refused: --pretrained has no effect: it loads weights and --flops-only loads none"),
    row("eval", "pretrained", ["--resume", "{ckpt}", "--pretrained", "--stitches", "0", "--workers", "0", "--output", "{out}"],
        "logged: --pretrained: not used, checkpoint", slow=True),
    row("eval", "anchor_checkpoints", ["--flops-only", "--anchor-checkpoints", "a.pth", "b.pth"], "refused: --anchor-checkpoints a.pth b.pth has no effect"),
    row("eval", "seed", ["--resume", "{ckpt}", "--seed", "1"], "refused: --seed 1 has no effect: it seeds an untrained SN-Net's layers"),
    row("eval", "seed", ["--resume", "{ckpt}", "--seed", "42"], "refused: --seed 42 has no effect"),  # typed out at its default
    row("eval", "workers", ["--flops-only", "--workers", "1"], "refused: --workers 1 has no effect: it loads data and --flops-only"),
    row("eval", "batch_size", ["--flops-only", "-b", "8"], "refused: --batch-size 8 has no effect"),
    row("eval", "val_split", ["--flops-only", "--val-split", "train"], "refused: --val-split train has no effect"),
    row("eval", "sweep_chunk", ["--flops-only", "--sweep-chunk", "2"], "refused: --sweep-chunk 2 has no effect"),
    row("eval", "log_interval", ["--flops-only", "--log-interval", "2"], "refused: --log-interval 2 has no effect"),
    row("eval", "stitches", ["--resume", "{ckpt}", "--export", "0", "--export-path", "{out}/n.pt", "--stitches", "1"],
        "refused: --stitches 1 has no effect: it selects the networks to sweep and --export CFG_ID sweeps none"),
    row("eval", "budget_flops", ["--resume", "{ckpt}", "--export", "0", "--export-path", "{out}/n.pt", "--budget-flops", "1G"],
        "refused: --budget-flops 1G has no effect"),
    row("eval", "budget_latency", ["--budget-latency", "5"], "refused: --budget-latency needs latencies: add --measure-latency"),
    row("eval", "compat_images", ["--compat-images", "10"], "refused: --compat-images 10 has no effect: it acts only with --compatibility"),
    row("eval", "compatibility", ["--compatibility", "--flops-only"], "refused: --compatibility scores an untrained SN-Net"),
    row("eval", "latency_batch_size", ["--latency-batch-size", "4"], "refused: --latency-batch-size 4 has no effect: it acts only with --measure-latency"),
    row("eval", "latency_warmup", ["--latency-warmup", "4"], "refused: --latency-warmup 4 has no effect"),
    row("eval", "latency_repeats", ["--latency-repeats", "4"], "refused: --latency-repeats 4 has no effect"),
    row("eval", "export_batch_size", ["--export-batch-size", "4"], "refused: --export-batch-size 4 has no effect: it acts only with --export"),
    row("eval", "export_path", ["--export-path", "{out}/n.pt"], "refused: --export-path needs --export CFG_ID"),
    row("eval", "onnx_opset", ["--resume", "{ckpt}", "--export", "0", "--export-path", "{out}/n.pt", "--onnx-opset", "17"],
        "refused: --onnx-opset 17 has no effect: it acts only with an --export-path ending .onnx"),
    row("eval", "use_ema", ["--use-ema"], "refused: --use-ema needs --resume CKPT"),
    row("eval", "amp_dtype", ["--amp-dtype", "bfloat16"], "refused: --amp-dtype bfloat16 has no effect: it acts only with --amp"),
    row("eval", "torchcompile_mode", ["--torchcompile-mode", "max-autotune"], "refused: --torchcompile-mode max-autotune has no effect"),
    row("eval", "stitch_layer", ["--resume", "{ckpt}", "--stitch-layer", "linear", "--flops-only"],
        "refused: was trained with stitch_layer=lora but this run has stitch_layer=linear"),  # typed out at its default
    row("eval", "lora_rank", ["--resume", "{ckpt}", "--lora-rank", "8", "--flops-only"], "refused: was trained with lora_rank=4 but this run has lora_rank=8"),
    row("eval", "kernel_size", ["--flops-only", "--routes", ROUTE, "--kernel-size", "3"], "refused: --kernel-size 3 has no effect"),
    row("eval", "stride", ["--flops-only", "--routes", ROUTE, "--stride", "2"], "refused: --stride 2 has no effect"),
    row("eval", "nearest", ["--flops-only", "--no-nearest"], "refused: --no-nearest has no effect"),
    row("eval", "stages", ["--flops-only", "--routes", ROUTE, "--stages", "0"], "refused: --stages 0 has no effect"),
    row("eval", "stitching", ["--flops-only", "--routes", ROUTE, "--stitching", "paired"], "refused: --stitching paired has no effect"),
    row("eval", "class_token", ["--flops-only", "--class-token", "zeros"], "refused: --class-token zeros has no effect"),
    row("eval", "prefix_tokens", ["--flops-only", "--prefix-tokens", "broadcast"], "refused: --prefix-tokens broadcast has no effect"),
    row("eval", "stitch_stride", ["--flops-only", "--stitch-stride", "2"], "refused: --stitch-stride 2 downsamples inside the layer"),
    row("eval", "official_forward", ["--flops-only", *ONE_ANCHOR, "--official-forward"], "refused: --official-forward has no effect: this SN-Net has no stitching layer"),
    row("eval", "data_dir", ["--resume", "{ckpt}", "--data-dir", "{out}", "--stitches", "0"], "refused: has no effect: --dataset digits is scikit-learn's embedded set"),
    # -- predict.py (snnet/evaluate/predict.py: PREDICT_RULES)
    row("predict", "results", ["--resume", "{ckpt}", "--stitch", "0", "--results", "{out}", "x.png"], "refused: --results"),
    row("predict", "use_ema", ["--exported", "n.pt", "--use-ema", "x.png"], "refused: --use-ema has no effect: it selects a checkpoint's EMA weights"),
    row("predict", "seed", ["--resume", "{ckpt}", "--stitch", "0", "--seed", "3", "x.png"], "refused: --seed 3 has no effect"),
    row("predict", "workers", ["--resume", "{ckpt}", "--stitch", "0", "--workers", "0", "x.png"], "refused: --workers 0 has no effect"),
    row("predict", "stitch", ["--exported", "n.pt", "--stitch", "best", "x.png"], "refused: with --exported: pass a cfg_id the file holds"),
    row("predict", "budget_flops", ["--resume", "{ckpt}", "--stitch", "0", "--budget-flops", "1G", "x.png"], "refused: --budget-flops / --budget-latency pick the network"),
    row("predict", "budget_latency", ["--resume", "{ckpt}", "--stitch", "0", "--budget-latency", "3", "x.png"], "refused: --budget-flops / --budget-latency pick the network"),
    *(
        row("predict", dest, ["x.png", "--exported", "n.pt", *flag], f"refused: {flag[0]}")
        for dest, flag in (
            ("anchors", ["--anchors", "resnet18"]), ("pretrained", ["--pretrained"]),
            ("anchor_checkpoints", ["--anchor-checkpoints", "a.pth"]), ("num_classes", ["--num-classes", "3"]),
            ("img_size", ["--img-size", "64"]), ("model_kwargs", ["--model-kwargs", "depth=2"]),
            ("anchor_kwargs", ["--anchor-kwargs", "depth=2"]), ("kernel_size", ["--kernel-size", "3"]),
            ("stride", ["--stride", "2"]), ("nearest", ["--no-nearest"]), ("stages", ["--stages", "1"]),
            ("stitching", ["--stitching", "paired"]), ("stitch_layer", ["--stitch-layer", "mlp"]),
            ("stitch_stride", ["--stitch-stride", "2"]), ("lora_rank", ["--lora-rank", "4"]),
            ("routes", ["--routes", ROUTE]), ("class_token", ["--class-token", "zeros"]),
            ("prefix_tokens", ["--prefix-tokens", "broadcast"]), ("official_forward", ["--official-forward"]),
            ("dataset", ["--dataset", "digits"]), ("data_dir", ["--data-dir", "d"]),
        )
    ),
    # -- timm's dataset options (snnet/data/sources.py): refused where the dataset kind has no use for them
    *(
        row(entry, dest, [*flag, *where], f"refused: {message}")
        for entry, where in (("train", ["--output", "{out}"]), ("eval", ["--resume", "{ckpt}", "--stitches", "0"]),
                             ("compose", ["--dataset", "digits"]))
        for dest, flag, message in (
            ("class_map", ["--class-map", "m.txt"], "--class-map/--input-img-mode have no effect on --dataset digits"),
            ("input_img_mode", ["--input-img-mode", "L"], "--class-map/--input-img-mode have no effect on --dataset digits"),
            ("input_key", ["--input-key", "img"], "--input-key has no effect: it names a column of an hfds/ or wds/"),
            ("target_key", ["--target-key", "labels"], "--target-key has no effect: it names a column"),
            ("train_num_samples", ["--train-num-samples", "9"], "--train-num-samples has no effect: it sizes a wds/ stream"),
            ("val_num_samples", ["--val-num-samples", "9"], "--val-num-samples has no effect: it sizes a wds/ stream"),
            ("dataset_download", ["--dataset-download"], "--dataset-download has no effect: only torch/<name>"),
            ("dataset_trust_remote_code", ["--dataset-trust-remote-code"], "--dataset-trust-remote-code has no effect"),
        )
    ),
    *(
        row("predict", dest, ["x.png", "--exported", "n.pt", *flag], f"refused: {flag[0]}")
        for dest, flag in (
            ("class_map", ["--class-map", "m.txt"]), ("input_img_mode", ["--input-img-mode", "L"]),
            ("input_key", ["--input-key", "img"]), ("target_key", ["--target-key", "labels"]),
            ("train_num_samples", ["--train-num-samples", "9"]), ("val_num_samples", ["--val-num-samples", "9"]),
            ("dataset_download", ["--dataset-download"]), ("dataset_trust_remote_code", ["--dataset-trust-remote-code"]),
        )
    ),
    # -- compose.py (snnet/compose/main.py: COMPOSE_RULES, NOT_FOR_COMPOSE)
    row("compose", "k_neighbors", ["--fit", "linear", "--k-neighbors", "3"], "refused: --k-neighbors 3 has no effect: it sizes the k-NN classifier"),
    row("compose", "max_networks", ["--sample", "--max-networks", "3"], "refused: --max-networks 3 has no effect"),
    row("compose", "export_path", ["--export-path", "{out}/n.pt"], "refused: --export-path {out}/n.pt has no effect: it says where --export writes"),
    row("compose", "workers", ["--workers", "1"], "refused: --workers 1 has no effect"),
    *(
        row("compose", dest, flag, f"refused: --{dest.replace('_', '-')} does not apply to compose.py")
        for dest, flag in (
            ("routes", ["--routes", ROUTE]), ("stitching", ["--stitching", "paired"]), ("stages", ["--stages", "0"]),
            ("kernel_size", ["--kernel-size", "3"]), ("stride", ["--stride", "2"]), ("nearest", ["--no-nearest"]),
            ("stitch_layer", ["--stitch-layer", "mlp"]), ("stitch_stride", ["--stitch-stride", "2"]),
            ("lora_rank", ["--lora-rank", "4"]), ("official_forward", ["--official-forward"]),
        )
    ),
    # -- submit.py (snnet/launch.py: check_args, check_slurm_only)
    *(
        row("submit", dest, ["--cluster", "local", *flag, "--", "--epochs", "1"], f"refused: {flag[0]} {flag[1]} has no effect: it is a Slurm setting")
        for dest, flag in (
            ("partition", ["--partition", "gpu"]), ("account", ["--account", "me"]), ("qos", ["--qos", "high"]),
            ("constraint", ["--constraint", "h100"]), ("signal_delay", ["--signal-delay", "60"]),
            ("cpus_per_task", ["--cpus-per-task", "4"]),
        )
    ),
    row("submit", "array_tasks", ["--cluster", "local", "--array-tasks", "2", "--", "--epochs", "1"], "refused: --array-tasks splits lab.py's cells"),
    row("submit", "nodes", ["--cluster", "local", "--nodes", "2", "--", "--epochs", "1"], "refused: --cluster local runs on this machine: use --nodes 1"),
    row("submit", "ngpus", ["--cluster", "debug", "--ngpus", "2", "--", "--epochs", "1"], "refused: --cluster debug runs one task in this process"),
    row("submit", "device", ["--cluster", "local", "--device", "cpu", "--ngpus", "2", "--", "--epochs", "1"], "refused: --device cpu asks for no GPUs"),
    row("submit", "tasks_per_node", ["--cluster", "local", "--ngpus", "2", "--tasks-per-node", "3", "--", "--epochs", "1"], "refused: --tasks-per-node 3 with --ngpus 2: a GPU job runs one task per GPU"),
]  # fmt: skip

# Options that act whatever else is given (each checked for its own value where it can be bad).
_MODEL_AND_DATA = {"config", "anchors", "pretrained", "anchor_checkpoints", "num_classes", "img_size", "model_kwargs",
                   "anchor_kwargs", "routes", "dataset", "data_dir", "workers", "threads", "seed"}  # fmt: skip
ALWAYS_ACTS = {
    "train": _MODEL_AND_DATA | {
        "drop_path", "drop", "train_split", "val_split", "global_batch_size", "pin_mem", "max_steps_per_epoch",
        "max_val_batches", "no_aug", "train_interpolation", "smoothing", "opt", "weight_decay", "clip_grad",
        "stitch_lr_scale", "sched", "sched_on_updates", "lr", "lr_noise", "min_lr", "epochs", "warmup_epochs",
        "cooldown_epochs", "val_stitches", "eval_metric", "device", "amp", "channels_last", "model_ema",
        "torchcompile", "output", "experiment", "resume", "initial_checkpoint", "checkpoint_hist",
        "checkpoint_interval", "log_interval", "check_args", "ls_init",
    },
    "eval": _MODEL_AND_DATA | {
        "checkpoint", "out_dir", "overwrite", "flops_only", "measure_latency", "export", "device", "amp",
        "channels_last", "torchcompile", "use_ema", "stitches", "budget_flops",
    },
    "predict": {"images", "config", "checkpoint", "stitch", "exported", "csv", "top_k", "batch_size", "device",
                "threads", "results", "use_ema"},
    "compose": _MODEL_AND_DATA - {"config", "routes", "workers"} | {
        "stitch_images", "threshold", "total_threshold", "max_depth", "top_k", "self_junctions", "sample", "fit",
        "fit_images", "out_dir", "export", "batch_size", "device",
    },
    "submit": {"cluster", "job", "nodes", "ngpus", "timeout", "job_dir", "array_tasks"},
    "lab": {"config", "output", "experiment", "cell_shard", "overwrite", "device", "check_args", "data_dir", "dataset"},
}  # fmt: skip

# Known to act only sometimes, refusal still to be written (issue 28 item 2 follow-up).
NOT_YET_JUDGED = {
    "train": {
        "momentum": "read by timm's SGD-family optimizers only (--opt decides; timm's table, not ours)",
        "opt_betas": "read by Adam-family optimizers only",
        "opt_eps": "read by most optimizers but not all (timm's table)",
        "stop_epoch": "at or above --epochs it stops nothing (harmless: the run ends at --epochs)",
    },
    "compose": {
        "class_token": "acts only when the pool has a feature-map -> token junction (the search's own layers)",
        "prefix_tokens": "acts only when the pool has a token -> feature-map junction",
    },
}


def test_every_option_is_in_the_table():
    parsers = {
        "train": build_train_parser(),
        "eval": build_eval_parser(),
        "predict": build_predict_parser(),
        "compose": build_compose_parser(),
        "submit": build_submit_parser(),
        "lab": build_lab_parser(),
    }
    for entry, parser in parsers.items():
        dests = {a.dest for a in parser._actions if a.dest != "help"}
        listed = {r.option for r in ROWS if r.entry == entry} | ALWAYS_ACTS[entry] | set(NOT_YET_JUDGED.get(entry, {}))
        assert dests - listed == set(), f"{entry}: options in no list: {sorted(dests - listed)}"
        assert listed - dests == set(), f"{entry}: listed options the parser lacks: {sorted(listed - dests)}"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A tiny lora train.py checkpoint (1 epoch, 2 steps) and its anchors' weights as files."""
    import torch
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("effects")
    argv = TINY_DEIT_ARGS + ["--stitch-layer", "lora", "--lora-rank", "4", "--epochs", "1", "--max-steps-per-epoch",
                             "2", "--max-val-batches", "1", "--warmup-epochs", "0", "--output", out, "--experiment", "r"]  # fmt: skip
    assert run_entry(train_main, argv) == 0
    ckpt = out / "r" / "last.pth.tar"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    paths = {"ckpt": str(ckpt)}
    for i in range(2):
        prefix = f"anchors.{i}."
        anchor = {k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
        save_file(anchor, out / f"anchor{i}.safetensors")
        paths[f"anchor{i}"] = str(out / f"anchor{i}.safetensors")
    return paths


def _run(r: Row, files: dict[str, str], out: Path) -> int:
    args = [str(a).format(out=out, **files) for a in r.args]
    if r.entry == "train":
        return run_entry(train_main, TINY_DEIT_ARGS + ["--experiment", "run"] + args)
    if r.entry == "eval":
        return run_entry(eval_main, NO_WORKERS + args)
    if r.entry == "predict":
        return run_entry(predict_main, args)
    if r.entry == "compose":
        pool = ["--pool", *NO_WORKERS[NO_WORKERS.index("--anchors") + 1 :]]
        return run_entry(compose_main, pool + args + ["--output", str(out / "compose")])
    return run_entry(submit_main, args)


@pytest.mark.parametrize(
    "r",
    [pytest.param(r, marks=[pytest.mark.slow] if r.slow else []) for r in ROWS],
    ids=lambda r: f"{r.entry}-{r.option}",
)
def test_an_option_that_cannot_act_is_refused_or_logged(r: Row, files, tmp_path, capsys):
    kind, fragment = r.outcome.split(": ", 1)
    fragment = fragment.format(out=tmp_path)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    train_log = logging.getLogger("train")
    train_log.addHandler(handler)
    try:
        code = _run(r, files, tmp_path)
    finally:
        train_log.removeHandler(handler)
    captured = capsys.readouterr()
    if kind == "refused":
        errors = [line for line in captured.err.splitlines() if line.strip()]
        assert code == 2 and len(errors) == 1 and errors[0].startswith("error: "), captured.err
        assert fragment in errors[0], errors[0]
    else:
        assert kind == "logged"
        said = lines if r.entry == "train" else captured.out.splitlines()  # train.py logs to stdout too
        assert code == 0, captured.err
        assert sum(fragment in line for line in said) == 1, said  # once
