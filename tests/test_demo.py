"""The demo end to end (shortened) through the real entry points, and the commands of the README and docs/."""

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The README and every page under docs/: their commands are checked alike.
DOC_PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.slow
def test_shortened_demo_runs_end_to_end(tmp_path):
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        DEMO_OUTPUT=str(tmp_path / "out"),
        DEMO_RESULTS=str(tmp_path / "res"),
        DEMO_ARGS="--epochs 1 --max-steps-per-epoch 3",
        DEMO_SNNET_ARGS="--ls-init-images 20",
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
    blocks = [b for page in DOC_PAGES for b in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)]
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def parser_flags() -> dict:
    """Each entry point's script name -> the option strings of its parser."""
    from snnet.cli import build_eval_parser, build_predict_parser, build_serve_parser, build_train_parser
    from snnet.compose.main import build_compose_parser
    from snnet.lab.main import build_lab_parser
    from snnet.launch import build_submit_parser

    parsers = {
        "train.py": build_train_parser,
        "eval.py": build_eval_parser,
        "predict.py": build_predict_parser,
        "serve.py": build_serve_parser,
        "lab.py": build_lab_parser,
        "compose.py": build_compose_parser,
        "submit.py": build_submit_parser,
    }
    return {name: {o for a in build()._actions for o in a.option_strings} for name, build in parsers.items()}


def unknown_flags(words: list, flags: set) -> list:
    launcher_flags = ("--nproc", "--nnodes", "--node_rank", "--rdzv", "--max-restarts")  # torchrun's own
    return [
        w for w in words if w.startswith("--") and "=" not in w and not w.startswith(launcher_flags) and w not in flags
    ]


def test_documented_configs_exist_and_flags_are_real():
    """Every ```bash command of the README and docs/: its configs exist and each flag is one its entry
    point's parser has (submit.py: its own flags before `--`, the job script's after)."""
    flags = parser_flags()
    flags["distributed_train.sh"] = flags["train.py"]
    assert len(DOC_PAGES) > 10  # the README and its topic pages
    commands = readme_commands()
    assert any("make demo" in c for c in commands) and any("make test" in c for c in commands)
    for command in commands:
        words = shlex.split(command.replace("<experiment>", "x"))
        for w in words:
            if w.startswith("configs/"):
                assert (ROOT / w).is_file(), w
        script = next((w.split("/")[-1] for w in words if w.split("/")[-1] in flags), None)
        if script is None:
            continue
        words = words[words.index(next(w for w in words if w.split("/")[-1] == script)) + 1 :]
        if script == "submit.py" and "--" in words:
            words, job_words = words[: words.index("--")], words[words.index("--") + 1 :]
            job = words[words.index("--job") + 1] if "--job" in words else "train"
            assert not unknown_flags(job_words, flags[f"{job}.py"]), command
        assert not unknown_flags(words, flags[script]), f"in a documented command: {command}"


def test_documentation_links_resolve():
    """Relative links of the README and docs/ name files that exist (pages moved between folders)."""
    for page in DOC_PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_readme_demo_table_is_the_committed_frontier():
    """docs/demo.md's frontier table is copied by hand from results/demo/pareto.csv: keep them in step."""
    section = (ROOT / "docs" / "demo.md").read_text()
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
