"""The benchmark scripts run (tiny sizes) and their built-in cross-checks hold: the speed claims in
results/ are only as good as scripts that still work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "bench_compat.py": (
        [
            "--trained",
            "results/demo/stitches.csv",
            "--output",
            "{tmp}",
            "-c",
            "configs/demo_digits.yaml",
            "--compat-images",
            "20",
            "--workers",
            "0",
        ],
        ["| linear CKA at the junction | ", "all (20 stitches)"],
    ),
    "bench_compose.py": (
        [
            "--images",
            "4",
            "--widths",
            "16",
            "24",
            "--anchors",
            "deit_tiny_patch16_224",
            "deit_small_patch16_224",
            "--patch-size",
            "8",
            "--depth",
            "2",
            "--recompute",
            "3",
            "--repeats",
            "1",
        ],
        ["ratio cached / recomputed (candidates per second):", "identical scores: yes"],
    ),
    "bench_data.py": (
        [
            "--per-class",
            "8",
            "--size",
            "32",
            "--img-size",
            "32",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--shards",
            "2",
            "--repeats",
            "1",
        ],  # fmt: skip
        [
            "| WebDataset shards |",
            "| HF dataset (save_to_disk) |",
            "same images per epoch: yes; same label counts: yes",
        ],
    ),
    "bench_flops_table.py": (["--anchors", "levit_128s", "levit_192"], ["identical counts: yes"]),
    "bench_ls_combine.py": (
        ["-c", "configs/demo_digits.yaml", "--ls-init-images", "20"],
        ["| mean | |", "of 20 stitched networks"],
    ),
    "bench_ls_init.py": (
        ["--img-size", "32", "--images", "20", "--batch-size", "10", "--repeats", "1"],
        ["ratio LS init / forward:"],
    ),
    "bench_train_step.py": (
        ["--img-size", "32", "--warmup", "1", "--repeats", "2", "--ddp-warmup", "1", "--ddp-steps", "2"],
        [
            "ratio SN-Net / timm:",
            "all-reduce and DDP end with the same weights: yes",
            "overlapped and after-backward all-reduce end with identical weights: yes",
        ],
    ),
    "bench_sweep.py": (
        ["--images", "16", "--batch-size", "8", "--repeats", "1", "--workers", "0"],
        ["identical counts: yes"],
    ),
    "bench_sweep_two_way.py": (
        ["--images", "8", "--batch-size", "8", "--repeats", "1", "--workers", "0"],
        ["networks: 134 (DeiT3-S/L", "identical counts: yes"],
    ),
}


@pytest.mark.parametrize("script", sorted(CASES))
@pytest.mark.slow
def test_benchmark_runs_and_its_checks_hold(script, tmp_path):
    args, expected = CASES[script]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stdout, proc.stdout[-2000:]
