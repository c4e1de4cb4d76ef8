"""Resuming: a run stopped after epoch 1 and resumed to epoch 3 equals an uninterrupted 3-epoch run,
with augmentation, Mixup/CutMix, random erasing, drop-path, EMA and a data-loading worker on."""

from __future__ import annotations

import pytest
import torch
from test_train import TINY, load, read_steps, run_main

RECIPE = TINY + [
    "--seed",
    "3",
    "--epochs",
    "3",
    "--max-steps-per-epoch",
    "6",
    "-b",
    "16",
    "--lr",
    "1e-3",
    "--warmup-epochs",
    "1",
    "--aa",
    "rand-m9-mstd0.5-inc1",
    "--reprob",
    "0.25",
    "--resplit",
    "--mixup",
    "0.8",
    "--cutmix",
    "1.0",
    "--drop-path",
    "0.1",
    "--model-ema",
    "--model-ema-decay",
    "0.9",
    "--ls-init",
    "--workers",
    "1",
]


def _equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    assert run_main(RECIPE + ["--output", out, "--experiment", "full"]) == 0
    return out


def test_stop_after_epoch_1_then_resume_to_3_equals_uninterrupted(uninterrupted):
    out = uninterrupted
    assert run_main(RECIPE + ["--output", out, "--experiment", "split", "--stop-epoch", "1"]) == 0
    first = load(out / "split" / "last.pth.tar")
    assert first["epoch"] == 0 and first["epoch_complete"] and first["global_step"] == 6
    # the same command again: the run folder has last.pth.tar, so it resumes by default
    assert run_main(RECIPE + ["--output", out, "--experiment", "split"]) == 0

    full, split = load(out / "full" / "last.pth.tar"), load(out / "split" / "last.pth.tar")
    assert [r["loss"] for r in read_steps(out / "split")] == [r["loss"] for r in read_steps(out / "full")]
    assert [r["cfg_id"] for r in read_steps(out / "split")] == [r["cfg_id"] for r in read_steps(out / "full")]
    _equal_states(full["state_dict"], split["state_dict"])
    _equal_states(full["state_dict_ema"], split["state_dict_ema"])
    assert full["optimizer"]["state"].keys() == split["optimizer"]["state"].keys()
    for k, s in full["optimizer"]["state"].items():
        _equal_states(s, split["optimizer"]["state"][k])
    assert full["saver"] == split["saver"]
    summary = (out / "split" / "summary.csv").read_text().splitlines()
    assert len(summary) == 4 and [r.split(",")[0] for r in summary[1:]] == ["0", "1", "2"]


def test_resume_file_into_a_new_folder_and_no_resume_opt(uninterrupted, tmp_path):
    ckpt = uninterrupted / "full" / "checkpoint-1.pth.tar"
    assert run_main(RECIPE + ["--output", tmp_path, "--experiment", "from-file", "--resume", ckpt]) == 0
    steps = read_steps(tmp_path / "from-file")
    assert [r["step"] for r in steps] == list(range(13, 19))  # epoch 2 only
    full = [r["loss"] for r in read_steps(uninterrupted / "full")][12:]
    assert [r["loss"] for r in steps] == full

    assert (
        run_main(
            RECIPE
            + [
                "--output",
                tmp_path,
                "--experiment",
                "weights-only",
                "--resume",
                ckpt,
                "--no-resume-opt",
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    steps = read_steps(tmp_path / "weights-only")
    assert [r["step"] for r in steps] == list(range(1, 7))  # a fresh schedule from epoch 0


def test_checkpoint_of_other_anchors_is_refused(uninterrupted, tmp_path, capsys):
    other = [a if a != "deit_small_patch16_224" else "deit_base_patch16_224" for a in RECIPE]
    code = run_main(
        other + ["--output", tmp_path, "--experiment", "x", "--resume", uninterrupted / "full" / "last.pth.tar"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "was trained with anchors ['deit_tiny_patch16_224', 'deit_small_patch16_224']" in err[0]
    assert "but --anchors are ['deit_tiny_patch16_224', 'deit_base_patch16_224']" in err[0]
