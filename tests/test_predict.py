"""predict.py: image files in, top-5 classes out; the sweep's accuracy is reproduced from PNG files."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_DEIT_ARGS, run_entry
from test_failures import one_error_line

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


def test_bad_paths_fail_with_one_line(trained, tmp_path, capsys):
    ckpt, sweep, images = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    # the script itself, once: its stderr is the one line, nothing else
    args = ["--resume", ckpt, "--stitch", "0", tmp_path / "missing.png"]
    proc = subprocess.run(
        [sys.executable, "predict.py", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.fullmatch("error: image '.*missing.png' does not exist.*", lines[0]), lines[0]
    # the rest through its main in this process (a subprocess each cost 6 s of imports)
    cases = [
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
        line = one_error_line(run_entry(predict_main, args), capsys)
        assert re.search(message, line), line


def swept_copy(sweep: Path, tmp_path: Path) -> Path:
    """The fixture's sweep folder copied (its partial results: a rerun there needs no data pass)."""
    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)
    return out


def read_sidecar(path: Path) -> dict:
    return json.loads(Path(str(path) + ".json").read_text())


def test_frontier_file_holds_pareto_csv_and_predicts_like_the_checkpoint(trained, tmp_path, capsys):
    ckpt, sweep, images = trained
    out, exported = swept_copy(sweep, tmp_path), tmp_path / "frontier.pt"
    args = ["--resume", ckpt, "--output", out, "--log-interval", "0", "--export", "frontier"]
    assert run_entry(eval_main, args + ["--export-path", exported]) == 0
    frontier = read_results(out / "pareto.csv")
    info = read_sidecar(exported)
    assert [n["cfg_id"] for n in info["networks"]] == [r["cfg_id"] for r in frontier]
    for n, r in zip(info["networks"], frontier):
        assert n == {k: r[k] for k in ("cfg_id", "name", "flops", "params", "top1", "top5")} | {"latency_ms": None}
    best = max(frontier, key=lambda r: r["top1"])
    assert info["default_cfg_id"] == best["cfg_id"] == info["cfg_id"] and info["class_names"] == list("0123456789")
    capsys.readouterr()
    for r in frontier:
        direct = predict_csv(["--resume", ckpt, "--stitch", r["cfg_id"], images / "3"], tmp_path / "a.csv")
        shipped = predict_csv(["--exported", exported, "--stitch", r["cfg_id"], images / "3"], tmp_path / "b.csv")
        assert [x["class_1"] for x in shipped] == [x["class_1"] for x in direct]
        assert all(abs(float(a["prob_1"]) - float(b["prob_1"])) < 1e-5 for a, b in zip(direct, shipped))
    plain = predict_csv(["--exported", exported, images / "3"], tmp_path / "c.csv")
    assert f"through {exported} (cfg_id {best['cfg_id']}, {best['name']}) (the file's default network)" in (
        capsys.readouterr().out
    )
    direct = predict_csv(["--resume", ckpt, "--stitch", best["cfg_id"], images / "3"], tmp_path / "a.csv")
    assert [x["class_1"] for x in plain] == [x["class_1"] for x in direct]


def test_list_export_orders_by_flops_and_refuses_ids_it_lacks(trained, tmp_path, capsys):
    ckpt, sweep, images = trained
    exported = tmp_path / "some.pt"
    timing = ["--measure-latency", "--latency-warmup", "1", "--latency-repeats", "2"]
    assert run_entry(eval_main, ["--resume", ckpt, "--export", "5,0,2", "--export-path", exported, *timing]) == 0
    rows = {r["cfg_id"]: r for r in read_results(sweep / "stitches.csv")}
    info = read_sidecar(exported)
    by_flops = sorted((0, 2, 5), key=lambda c: (rows[c]["flops"], c))
    assert [n["cfg_id"] for n in info["networks"]] == by_flops
    for n in info["networks"]:
        assert n["top1"] is None and n["top5"] is None and n["latency_ms"] > 0
        assert (n["name"], n["flops"], n["params"]) == tuple(rows[n["cfg_id"]][k] for k in ("name", "flops", "params"))
    assert info["default_cfg_id"] == by_flops[-1]  # no accuracies without a data pass: the costliest
    capsys.readouterr()
    assert run_entry(predict_main, ["--exported", exported, "--stitch", 3, images / "3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"error: --stitch 3: '{exported}' does not hold that network; it holds cfg_ids " + ", ".join(map(str, by_flops))
    ]


def test_bad_exports_of_several_networks_write_nothing(trained, tmp_path, capsys):
    ckpt, sweep, images = trained
    target, link = tmp_path / "set.pt", tmp_path / "checkpoint.pt"
    link.symlink_to(ckpt)  # the checkpoint under a .pt name
    base = ["--resume", ckpt, "--output", tmp_path / "out", "--export-path"]
    cases = [
        (base + [target, "--export", "0,99"], r"cfg_id 99 does not exist: this SN-Net has cfg_ids 0\.\.11"),
        (base + [target, "--export", "3,1,3"], "names a network twice"),
        (base + [target, "--export", "3,x"], "is not a cfg_id"),
        (base + [target, "--export", "frontier", "--flops-only"], "needs accuracies: drop --flops-only"),
        (base + [link, "--export", "0,1"], "is the --resume checkpoint this command reads"),
        (base + [tmp_path / "set.onnx", "--export", "frontier"], "one TorchScript file: use --export-path NAME.pt"),
        (base + [tmp_path / "set.pt2", "--export", "0,1"], "one TorchScript file"),
    ]
    before = ckpt.read_bytes()
    for args, message in cases:
        capsys.readouterr()
        assert run_entry(eval_main, args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), lines
        assert list(tmp_path.iterdir()) == [link], args
    assert ckpt.read_bytes() == before
