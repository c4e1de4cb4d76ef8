"""train.py on tiny anchors (CPU, digits): it learns, writes timm's run folder, refuses bad input clearly."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_DEIT_ARGS, run_entry
from hooked_train import nan_at_step

from snnet.train.main import main

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# Two DeiT-shaped anchors of distinct widths, 32x32 digits, patch 4 (64 tokens), depth 4.
TINY = TINY_DEIT_ARGS + ["--log-interval", "5", "--max-val-batches", "2", "--warmup-epochs", "0"]
# Nothing random that differs between process counts: no augmentation, no drop-path.
PLAIN = ["--no-aug", "--smoothing", "0", "--reprob", "0"]


def run_main(args: list) -> int:
    return run_entry(main, args)


def read_steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_loss_goes_down_and_run_folder_is_timms(tmp_path):
    # Tiny ViTs on 1-pixel tokens sit on a plateau for hundreds of steps; 16x16 patches (4 tokens
    # of a quarter digit each) learn within ~100 steps.
    code = run_main(
        TINY
        + PLAIN
        + [
            "--model-kwargs",
            "patch_size=16",
            "depth=4",
            "--lr",
            "2e-3",
            "--min-lr",
            "2e-3",
            "-b",
            "32",
            "--epochs",
            "3",
            "--max-steps-per-epoch",
            "40",
            "--log-interval",
            "20",
            "--output",
            tmp_path,
            "--experiment",
            "run",
        ]
    )
    assert code == 0
    run = tmp_path / "run"
    losses = [r["loss"] for r in read_steps(run)]
    assert len(losses) == 120
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.8 * first, (first, last)

    for name in (
        "args.yaml",
        "summary.csv",
        "last.pth.tar",
        "checkpoint-0.pth.tar",
        "checkpoint-2.pth.tar",
        "model_best.pth.tar",
        "train.log",
    ):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    rows = (run / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,eval_top1") and rows[0].endswith(",lr") and len(rows) == 4
    assert "Net: " in (run / "train.log").read_text()

    ckpt = load(run / "last.pth.tar")  # weights_only: tensors and plain data only
    for key in (
        "args",
        "snnet_config",
        "state_dict",
        "optimizer",
        "scheduler",
        "epoch",
        "global_step",
        "network_sampler",
        "rng_states",
        "saver",
    ):
        assert key in ckpt, key
    assert isinstance(ckpt["args"], dict) and ckpt["args"]["lr"] == 2e-3
    assert ckpt["snnet_config"]["anchors"] == ["deit_tiny_patch16_224", "deit_small_patch16_224"]
    assert ckpt["epoch"] == 2 and ckpt["epoch_complete"] and ckpt["global_step"] == 120


def test_single_anchor_run_feeds_anchor_checkpoints(tmp_path):
    """A one-anchor train.py run is plain timm training; its checkpoint loads as --anchor-checkpoints."""
    from snnet.cli import build_train_parser
    from snnet.run_config import build_snnet

    code = run_main(
        [
            "--dataset",
            "digits",
            "--img-size",
            "32",
            "--anchors",
            "deit_tiny_patch16_224",
            "--model-kwargs",
            "patch_size=4",
            "depth=4",
            "embed_dim=32",
            "num_heads=2",
            "--workers",
            "0",
            "--max-val-batches",
            "1",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "3",
            "-b",
            "16",
            "--output",
            tmp_path,
            "--experiment",
            "anchor",
        ]
        + PLAIN
    )
    assert code == 0
    ckpt_path = tmp_path / "anchor" / "last.pth.tar"
    trained = load(ckpt_path)["state_dict"]
    assert all(k.startswith("anchors.0.") for k in trained)

    args = build_train_parser().parse_args(TINY + ["--anchor-checkpoints", str(ckpt_path), "none"])
    net = build_snnet(args, num_classes=10)
    got = net.anchors[0].state_dict()
    assert set(got) == {k[len("anchors.0.") :] for k in trained}
    assert all(torch.equal(got[k[len("anchors.0.") :]], v) for k, v in trained.items())


def test_divergence_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path, capsys):
    # realistic: a huge learning rate
    code = run_main(
        TINY
        + PLAIN
        + [
            "--lr",
            "1e10",
            "--opt",
            "sgd",
            "-b",
            "16",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "20",
            "--output",
            tmp_path,
            "--experiment",
            "lr",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "non-finite loss" in err[0] and "cfg_id" in err[0]

    # a NaN at a known step (a step callback) after a step-level checkpoint
    code = run_entry(
        functools.partial(main, step_callbacks=[nan_at_step(6)]),
        TINY
        + PLAIN
        + [
            "--lr",
            "1e-3",
            "-b",
            "16",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "20",
            "--checkpoint-interval",
            "4",
            "--output",
            tmp_path,
            "--experiment",
            "nan",
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    steps = read_steps(tmp_path / "nan")
    assert code == 2 and len(err) == 1
    assert "global step 6" in err[0] and "epoch 0 step 6/20" in err[0]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]  # the diverged step and those after it are not recorded
    ckpt = load(tmp_path / "nan" / "last.pth.tar")
    assert ckpt["global_step"] == 4 and not ckpt["epoch_complete"]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_unknown_yaml_key_is_a_one_line_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("anchors: [deit_tiny_patch16_224]\nlearning_rate_typo: 0.1\n")
    proc = subprocess.run(
        [PYTHON, str(REPO / "train.py"), "-c", str(cfg), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "learning_rate_typo" in lines[0], proc.stderr


@pytest.mark.slow
def test_every_config_parses_and_builds(monkeypatch):
    from snnet.cli import build_train_parser
    from snnet.config import parse_args_with_config
    from snnet.run_config import build_snnet

    configs = sorted((REPO / "configs").glob("*.yaml"))
    names = {c.stem for c in configs}
    assert {
        "deit_ti_s_b",
        "swin_t_s_b",
        "resnet18_resnet50",
        "resnet18_swin_t",
        "levit_192_256",
        "demo_digits",
    } <= names
    for path in configs:
        extra = ["--anchors", "deit_tiny_patch16_224"] if path.stem == "demo_anchor" else []  # as demo.sh adds
        args, text = parse_args_with_config(build_train_parser(), ["-c", str(path)] + extra)
        assert args.anchors, path
        assert text.strip()
        net = build_snnet(args, num_classes=args.num_classes or 10, pretrained=False)
        assert net.num_stitches >= len(args.anchors), path
    deit = parse_args_with_config(build_train_parser(), ["-c", str(REPO / "configs" / "deit_ti_s_b.yaml")])[0]
    assert (
        deit.epochs,
        deit.lr,
        deit.warmup_epochs,
        deit.teacher,
        deit.distillation_type,
        deit.opt,
        deit.weight_decay,
        deit.ls_init,
        deit.ls_init_images,
    ) == (50, 5e-5, 5, "regnety_160.deit_in1k", "hard", "adamw", 0.05, True, 100)


def test_size_and_option_checks():
    from snnet.cli import build_train_parser
    from snnet.distributed import DistInfo
    from snnet.errors import ConfigError
    from snnet.run_config import TrainConfig
    from snnet.train.main import resolve_args

    parser = build_train_parser()

    def resolve(extra, world=1):
        return resolve_args(parser.parse_args(TINY + extra), DistInfo(world_size=world))

    with pytest.raises(ConfigError, match="does not divide by the 3 processes"):
        resolve(["--global-batch-size", "64"], world=3)
    assert resolve(["--global-batch-size", "64"], world=2).batch_size == 32
    with pytest.raises(ConfigError, match="even per-process batch"):
        resolve(["--mixup", "0.8", "-b", "7"])
    with pytest.raises(ConfigError, match="--split-bn needs --resplit"):
        resolve(["--split-bn"])
    with pytest.raises(ConfigError, match="needs --teacher"):
        resolve(["--distillation-type", "hard"])
    try:
        import apex  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="apex"):
            resolve(["--amp", "--amp-impl", "apex"])
    args = resolve(["--workers", "999"])
    assert args.workers <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    assert isinstance(args, TrainConfig) and args.lr > 0


def test_ls_init_images_more_than_the_dataset(tmp_path, capsys):
    code = run_main(
        TINY
        + PLAIN
        + ["--ls-init", "--ls-init-images", "100000", "--epochs", "1", "--output", tmp_path, "--experiment", "ls"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--ls-init-images 100000" in err[0]


def test_distillation_and_stitch_lr_scale(tmp_path):
    """Hard distillation from a (local-checkpoint) teacher runs; stitching layers get lr x scale."""
    teacher_run = tmp_path / "teacher"
    assert (
        run_main(
            [
                "--dataset",
                "digits",
                "--img-size",
                "32",
                "--anchors",
                "deit_tiny_patch16_224",
                "--model-kwargs",
                "patch_size=4",
                "depth=1",
                "embed_dim=32",
                "num_heads=2",
                "--workers",
                "0",
                "--epochs",
                "1",
                "--max-steps-per-epoch",
                "2",
                "-b",
                "16",
                "--max-val-batches",
                "1",
                "--output",
                tmp_path,
                "--experiment",
                "teacher",
            ]
            + PLAIN
        )
        == 0
    )
    code = run_main(
        TINY
        + PLAIN
        + [
            "--lr",
            "1e-3",
            "-b",
            "16",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "4",
            "--teacher",
            "deit_tiny_patch16_224",
            "--teacher-checkpoint",
            teacher_run / "last.pth.tar",
            "--teacher-kwargs",
            "patch_size=4",
            "depth=1",
            "embed_dim=32",
            "num_heads=2",
            "img_size=32",
            "--distillation-type",
            "hard",
            "--stitch-lr-scale",
            "10",
            "--output",
            tmp_path,
            "--experiment",
            "distill",
        ]
    )
    assert code == 0
    opt = load(tmp_path / "distill" / "last.pth.tar")["optimizer"]
    scaled = [g for g in opt["param_groups"] if g.get("lr_scale") == 10]
    plain = [g for g in opt["param_groups"] if "lr_scale" not in g]
    assert scaled and plain
    assert scaled[0]["lr"] == pytest.approx(10 * plain[0]["lr"])
