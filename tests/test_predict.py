"""predict.py: image files in, top-5 classes out; the sweep's accuracy is reproduced from PNG files."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_DEIT_ARGS, run_entry

from snnet.data.datasets import load_digits_split
from snnet.evaluate.main import main as eval_main
from snnet.evaluate.predict import main as predict_main
from snnet.evaluate.results import read_results
from snnet.train.main import main as train_main

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # trains a small SN-Net first


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained tiny SN-Net on the digits, its eval.py sweep, and the validation
    images written as PNG files into class folders."""
    root = tmp_path_factory.mktemp("predict")
    code = run_entry(
        train_main,
        TINY_DEIT_ARGS
        + [
            "--no-aug",
            "--smoothing",
            "0",
            "--reprob",
            "0",
            "--warmup-epochs",
            "0",
            "--lr",
            "2e-3",
            "--min-lr",
            "2e-3",
            "--opt",
            "adamw",
            "-b",
            "32",
            "--epochs",
            "2",
            "--max-steps-per-epoch",
            "40",
            "--ls-init",
            "--max-val-batches",
            "1",
            "--output",
            root,
            "--experiment",
            "run",
        ],
    )
    assert code == 0
    ckpt = root / "run" / "last.pth.tar"
    sweep = root / "sweep"
    assert (
        run_entry(
            eval_main,
            ["--resume", ckpt, "--dataset", "digits", "--workers", "0", "--output", sweep, "--log-interval", "0"],
        )
        == 0
    )
    images = root / "val"
    for i, (image, label) in enumerate(load_digits_split("validation")):
        folder = images / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:03d}.png")
    return ckpt, sweep, images


def predict_csv(args: list, out: Path) -> list[dict]:
    assert run_entry(predict_main, args + ["--csv", out]) == 0
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def accuracy(rows: list[dict]) -> float:
    """top-1 against the class folder each PNG lies in (the digit)."""
    return round(100 * sum(r["class_1"] == Path(r["image"]).parent.name for r in rows) / len(rows), 4)


def test_predicting_the_validation_pngs_reproduces_the_sweep(trained, tmp_path, capsys):
    ckpt, sweep, images = trained
    results = {r["cfg_id"]: r for r in read_results(sweep / "stitches.csv")}
    # the most accurate anchor and stitched network: they do not give one class to every image
    anchor = max((c for c in results if results[c]["is_anchor"]), key=lambda c: results[c]["top1"])
    stitched = max((c for c in results if not results[c]["is_anchor"]), key=lambda c: results[c]["top1"])
    for cfg_id in (anchor, stitched):
        rows = predict_csv(["--resume", ckpt, "--stitch", cfg_id, images], tmp_path / f"{cfg_id}.csv")
        assert len(rows) == 360 and len({r["class_1"] for r in rows}) > 1
        assert accuracy(rows) == results[cfg_id]["top1"]
        assert all(r["class_1"] in [str(d) for d in range(10)] for r in rows)  # the digits' class names
        assert all(float(r["prob_1"]) >= float(r["prob_2"]) >= float(r["prob_5"]) for r in rows)
    out = capsys.readouterr().out
    assert f"360 images through cfg_id {stitched} (" in out
    assert f"{rows[0]['image']}: {rows[0]['class_1']} ({100 * float(rows[0]['prob_1']):.1f}%), " in out


def test_best_and_budget_pick_from_the_sweep(trained, tmp_path):
    ckpt, sweep, images = trained
    rows = read_results(sweep / "stitches.csv")
    best = max(rows, key=lambda r: (r["top1"], -r["flops"], -r["cfg_id"]))
    budget = sorted(r["flops"] for r in rows)[len(rows) // 2]
    within = max((r for r in rows if r["flops"] <= budget), key=lambda r: (r["top1"], -r["flops"], -r["cfg_id"]))
    for extra, row in (([], best), (["--budget-flops", str(budget)], within)):
        preds = predict_csv(
            ["--resume", ckpt, "--stitch", "best", "--results", sweep, *extra, images], tmp_path / "p.csv"
        )
        assert accuracy(preds) == row["top1"]


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".onnx"])
def test_exported_network_gives_the_checkpoints_predictions(trained, tmp_path, suffix):
    ckpt, sweep, images = trained
    cfg_id = 4
    exported = tmp_path / f"net{suffix}"
    assert run_entry(eval_main, ["--resume", ckpt, "--export", cfg_id, "--export-path", exported]) == 0
    assert Path(str(exported) + ".json").is_file()
    direct = predict_csv(["--resume", ckpt, "--stitch", cfg_id, images / "3"], tmp_path / "a.csv")
    shipped = predict_csv(["--exported", exported, images / "3"], tmp_path / "b.csv")
    assert [r["class_1"] for r in shipped] == [r["class_1"] for r in direct]
    assert all(abs(float(a["prob_1"]) - float(b["prob_1"])) < 1e-4 for a, b in zip(direct, shipped))


def test_bad_paths_fail_with_one_line(trained, tmp_path):
    ckpt, sweep, images = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    cases = [
        (["--resume", ckpt, "--stitch", "0", tmp_path / "missing.png"], "image '.*missing.png' does not exist"),
        (["--resume", ckpt, "--stitch", "0", tmp_path / "empty"], "folder '.*empty' holds no image files"),
        (["--resume", ckpt, "--stitch", "0", tmp_path / "notes.png"], "cannot read image '.*notes.png'"),
        (
            ["--resume", tmp_path / "nope.pth.tar", "--stitch", "0", images],
            "checkpoint '.*nope.pth.tar' does not exist",
        ),
        (["--resume", ckpt, "--stitch", "best", "--results", tmp_path, images], "stitches.csv, which does not exist"),
        (["--exported", tmp_path / "net.pt", images], "exported file '.*net.pt' does not exist"),
        (["--resume", ckpt, images], "--resume needs --stitch"),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, "predict.py", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ")
        assert re.search(message, lines[0]), lines[0]
