"""A checkpoint written before the package was reorganised (train.py at commit 8687b96, a two-way LoRA
SN-Net; tests/data/README.md) still evaluates to the table eval.py wrote for it then, and train.py
still resumes from it to the same steps."""

from __future__ import annotations

import csv
import json
import lzma
from pathlib import Path

import pytest
from conftest import run_entry

DATA = Path(__file__).resolve().parent / "data"
NAME = "two_way_lora_8687b96"

# The flags that wrote the checkpoint (tests/data/make_two_way_lora_8687b96.sh).
MODEL = [
    "--dataset", "digits", "--img-size", "8", "--anchors", "deit_tiny_patch16_224", "deit_small_patch16_224",
    "--model-kwargs", "patch_size=4", "mlp_ratio=1",
    "--anchor-kwargs", "embed_dim=8 num_heads=1 depth=3", "embed_dim=12 num_heads=2 depth=6",
    "--stitching", "two-way", "--stitch-layer", "lora", "--lora-rank", "2", "--workers", "0", "--device", "cpu",
]  # fmt: skip
TRAIN = [
    "-b", "32", "--opt", "adamw", "--lr", "3e-3", "--min-lr", "3e-3", "--warmup-epochs", "0", "--no-aug",
    "--smoothing", "0", "--max-val-batches", "1", "--log-interval", "15", "--seed", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("old") / "last.pth.tar"
    path.write_bytes(lzma.decompress((DATA / f"{NAME}.pth.tar.xz").read_bytes()))
    return path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_old_checkpoint_evaluates_to_the_table_it_had(old_checkpoint, tmp_path):
    from snnet.evaluate.main import main

    out = tmp_path / "eval"
    args = ["--resume", old_checkpoint, "--dataset", "digits", "--workers", "0", "-b", "120", "--device", "cpu"]
    assert run_entry(main, args + ["--log-interval", "0", "--output", out]) == 0
    got, want = _rows(out / "stitches.csv"), _rows(DATA / f"{NAME}_stitches.csv")
    # the same columns in the same order; two-way SN-Nets gained the official numbering (issue 21)
    assert list(got[0]) == ["cfg_id", "official_cfg_id", *list(want[0])[1:]]
    assert len(got) == len(want) == 8
    for g, w in zip(got, want):
        # the official ids skip the SL stitch after the small anchor's last block: never below ours
        assert int(g.pop("official_cfg_id")) >= int(g["cfg_id"])
        loss = float(g.pop("loss")), float(w.pop("loss"))
        assert g == w  # cfg_id, name, FLOPs, params, top-1, top-5, is_anchor exactly
        assert loss[0] == pytest.approx(loss[1], abs=2e-6)  # another CPU may round the 6th decimal
    assert len({r["top1"] for r in want}) > 4  # the networks differ: a wrong load would show


@pytest.mark.slow
def test_train_resumes_the_old_checkpoint_to_the_same_steps(old_checkpoint, tmp_path):
    from snnet.train.main import main

    args = MODEL + TRAIN + ["--epochs", "2", "--max-steps-per-epoch", "8", "--resume", old_checkpoint]
    assert run_entry(main, args + ["--output", tmp_path, "--experiment", "resumed"]) == 0
    got = [json.loads(line) for line in (tmp_path / "resumed" / "steps.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (DATA / f"{NAME}_resumed_steps.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["cfg_id"]) for r in got] == [(r["epoch"], r["step"], r["cfg_id"]) for r in want]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
