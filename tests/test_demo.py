"""The demo end to end (shortened) through the real entry points, and the README's commands."""

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_shortened_demo_runs_end_to_end(tmp_path):
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        DEMO_OUTPUT=str(tmp_path / "out"),
        DEMO_RESULTS=str(tmp_path / "res"),
        DEMO_ARGS="--epochs 1 --max-steps-per-epoch 3 --ls-init-images 20",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = tmp_path / "res"
    for name in ("stitches.csv", "pareto.csv", "pareto.png", "report.html"):
        assert (res / name).stat().st_size > 0, name
    rows = list(csv.DictReader((res / "stitches.csv").open()))
    assert len(rows) == 23  # 3 anchors + 2 pairs x 10 stitches at depth 4, kernel 2
    assert {"cfg_id", "name", "flops", "params", "top1", "top5", "loss"} <= set(rows[0])
    # a second run reuses the trained anchors
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and proc.stdout.count("reusing") == 3


def readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_readme_configs_exist_and_flags_are_real():
    from snnet.cli import build_eval_parser, build_train_parser

    train_flags = {o for a in build_train_parser()._actions for o in a.option_strings}
    eval_flags = {o for a in build_eval_parser()._actions for o in a.option_strings}
    commands = readme_commands()
    assert any("make demo" in c for c in commands) and any("make test" in c for c in commands)
    for command in commands:
        words = shlex.split(command.replace("<experiment>", "x"))
        for w in words:
            if w.startswith("configs/"):
                assert (ROOT / w).is_file(), w
        if "train.py" in command or "distributed_train.sh" in command:
            flags = train_flags
        elif "eval.py" in command:
            flags = eval_flags
        else:
            continue
        for w in words:
            if (
                w.startswith("--")
                and "=" not in w
                and not w.startswith(("--nproc", "--nnodes", "--node_rank", "--rdzv", "--max-restarts"))
            ):
                assert w in flags, f"{w} in README command: {command}"


def test_readme_demo_table_is_the_committed_frontier():
    """The README's frontier table is copied by hand from results/demo/pareto.csv: keep them in step."""
    section = README.split("## The demo on digits", 1)[1]
    table = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if re.match(r"\|\s*\d+\s*\|", line)
    ]
    frontier = list(csv.DictReader((ROOT / "results" / "demo" / "pareto.csv").open()))
    assert [(int(r[0]), r[1].split(" (")[0], r[3].replace(",", ""), float(r[4])) for r in table] == [
        (int(r["cfg_id"]), r["name"], r["params"], round(float(r["top1"]), 2)) for r in frontier
    ]
    assert (ROOT / "results" / "demo" / "pareto.png").stat().st_size > 0
