"""The stitching lab (lab.py): outputs, a cell against the same cell trained alone by train.py,
resuming, torchrun, shards, config errors."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_PAIRS, run_entry

from snnet.io.checkpoint import load_checkpoint_file
from snnet.lab.main import main as lab_main
from snnet.lab.outputs import CELL_COLUMNS, TRAJECTORY_COLUMNS
from snnet.lab.spec import gap_routes

_DEIT = TINY_PAIRS["deit"]
TI, S = _DEIT["anchors"]
ROUTES = [f"{TI}[:2]>{S}[2:]", f"{TI}[:3]>{S}[3:]"]
# train.py keys of every cell: tiny DeiT-like anchors (random), digits, a few steps
RECIPE = {
    "dataset": "digits",
    "img_size": _DEIT["img_size"],
    "anchors": _DEIT["anchors"],
    "model_kwargs": _DEIT["model_kwargs"],
    "anchor_kwargs": _DEIT["anchor_kwargs"],
    "ls_init": True,
    "ls_init_images": 40,
    "batch_size": 16,
    "epochs": 2,
    "max_steps_per_epoch": 3,
    "max_val_batches": 2,
    "warmup_epochs": 0,
    "workers": 0,
    "device": "cpu",
    "log_interval": 3,
}
GRID = {
    "routes": ROUTES,
    "adapters": ["linear", {"name": "lora-4", "stitch_layer": "lora", "lora_rank": 4}],
    "lrs": [2.0e-3],
    "seeds": [0, 1],
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """RECIPE with the anchors' weights in files (a lab refuses random anchors)."""
    from snnet import create_snnet
    from snnet.io.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("anchors")
    torch.manual_seed(123)
    net = create_snnet(**_DEIT, num_classes=10)
    paths = []
    for i, model in enumerate(net.anchors):
        paths.append(str(tmp / f"anchor{i}.pth"))
        save_checkpoint({"state_dict": model.state_dict()}, paths[-1])
    return {**RECIPE, "anchor_checkpoints": paths}


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, recipe):
    """The 8-cell grid (2 routes x 2 adapters x 1 lr x 2 seeds), run once in one pass."""
    tmp = tmp_path_factory.mktemp("lab")
    config = _write(tmp / "tiny.yaml", {**recipe, **GRID})
    assert run_entry(lab_main, ["-c", config, "--output", tmp / "out"]) == 0
    return tmp, tmp / "out" / "tiny"


@pytest.mark.slow
def test_lab_writes_cells_trajectory_and_plots(grid_run):
    _, out = grid_run
    with open(out / "cells.csv") as f:
        assert next(csv.reader(f)) == list(CELL_COLUMNS)
    with open(out / "trajectory.csv") as f:
        assert next(csv.reader(f)) == list(TRAJECTORY_COLUMNS)
    cells, traj = _rows(out / "cells.csv"), _rows(out / "trajectory.csv")
    assert [int(r["cell"]) for r in cells] == list(range(8))
    assert [(r["route"], r["adapter"], r["seed"]) for r in cells[:4]] == [
        (ROUTES[0], "linear", "0"),
        (ROUTES[0], "linear", "1"),
        (ROUTES[0], "lora-4", "0"),
        (ROUTES[0], "lora-4", "1"),
    ]
    assert len(traj) == 8 * RECIPE["epochs"] and {r["step"] for r in traj} == {"3", "6"}
    # route [:2]>[2:]: front block 1, back block 2; the trained layer maps 32 -> 64 channels
    first = cells[0]
    assert (first["front_block"], first["back_block"]) == ("1", "2")
    assert int(first["trainable_params"]) == 32 * 64 + 64
    assert int(cells[2]["trainable_params"]) == 4 * 32 + 64 * 4 + 64  # lora: A, B and the bias (W frozen)
    for r in cells:
        assert float(r["best_top1"]) >= float(r["top1"])
        assert float(r["top1"]) == float([t for t in traj if t["cell"] == r["cell"]][-1]["val_top1"])
    for name in ("top1_vs_depth.png", "top1_vs_flops.png", "matrix_linear.png", "matrix_lora-4.png"):
        assert (out / name).stat().st_size > 1000
    header = json.loads((out / "lab.json").read_text())
    assert [c["route"] for c in header["cells"]] == [r for r in ROUTES for _ in range(4)]


@pytest.mark.slow
def test_lab_cell_params_and_flops_match_a_whole_network_count(grid_run):
    """params / FLOPs of a cell against the network built alone and traced whole (fvcore)."""
    from snnet import create_snnet
    from snnet.core.flops import network_flops

    _, out = grid_run
    row = _rows(out / "cells.csv")[4]  # route [:3]>[3:], linear
    net = create_snnet(**_DEIT, num_classes=10)
    cfg = next(s.cfg_id for s in net.stitches if s.name == row["route"])
    assert int(row["flops"]) == network_flops(net, cfg)
    own = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in net.stitch_layers.parameters())
    blocks_skipped = sum(
        p.numel() for a, blocks in ((0, range(3, 4)), (1, range(0, 3))) for b in blocks
        for p in net.anchor_adapters[a].blocks[b].parameters()
    )  # fmt: skip
    head_stem_skipped = net.anchor_adapters[0].head_params() + net.anchor_adapters[1].stem_params()
    assert int(row["params"]) == own - blocks_skipped - head_stem_skipped + 32 * 64 + 64


@pytest.mark.slow
def test_a_cell_equals_that_cell_trained_alone(grid_run, recipe, tmp_path):
    """Cell 6 (route [:3]>[3:], lora rank 4, lr 2e-3, seed 0) of the one-pass grid against
    ``train.py --routes R --stitch-layer lora --train-only stitching --lr L --seed S``: the same
    top-1 and the very same trained weights (torch.equal)."""
    from snnet.train.main import main as train_main

    _, out = grid_run
    row = _rows(out / "cells.csv")[6]
    assert (row["route"], row["adapter"], row["seed"]) == (ROUTES[1], "lora-4", "0")
    config = _write(tmp_path / "alone.yaml", recipe)
    argv = ["-c", config, "--routes", ROUTES[1], "--stitch-layer", "lora", "--lora-rank", "4", "--train-only",
            "stitching", "--lr", "2e-3", "--seed", "0", "--output", tmp_path, "--experiment", "alone"]  # fmt: skip
    assert run_entry(train_main, argv) == 0
    alone = _rows(tmp_path / "alone" / "summary.csv")[-1]
    assert float(alone["eval_top1_net2"]) == float(row["top1"])  # cfg 2: the route after the 2 anchors
    trained = load_checkpoint_file(tmp_path / "alone" / "last.pth.tar")["state_dict"]
    lab = load_checkpoint_file(out / "cells" / "cell-0006.pth")["state_dict"]
    assert lab and all(torch.equal(v, trained[k]) for k, v in lab.items())


@pytest.mark.slow
def test_killed_lab_resumes_keeping_finished_cells(grid_run, recipe, tmp_path):
    """chunks of 2 cells; killed after the first chunk; the rerun trains only the rest, and
    every cell ends as in the one-pass grid."""
    config = _write(tmp_path / "resume.yaml", {**recipe, **GRID, "seeds": [0], "chunk_cells": 2})
    argv = ["-c", config, "--output", tmp_path / "out"]

    def kill(cells):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_entry(lambda a: lab_main(a, on_chunk_done=kill), argv)
    cells_dir = tmp_path / "out" / "resume" / "cells"
    first = {p.name: p.read_bytes() for p in cells_dir.glob("cell-*.json")}
    assert len(first) == 2
    chunks = []
    assert run_entry(lambda a: lab_main(a, on_chunk_done=chunks.append), argv) == 0
    assert sorted(i for c in chunks for i in c) == sorted(set(range(4)) - {int(n[5:9]) for n in first})
    assert all((cells_dir / n).read_bytes() == b for n, b in first.items())
    key = ("route", "adapter", "lr", "seed")
    whole = {tuple(r[k] for k in key): r for r in _rows(grid_run[1] / "cells.csv")}
    for r in _rows(tmp_path / "out" / "resume" / "cells.csv"):
        assert (r["ls_top1"], r["top1"], r["best_top1"]) == tuple(
            whole[tuple(r[k] for k in key)][c] for c in ("ls_top1", "top1", "best_top1")
        )


def test_bad_lab_config_is_one_line(tmp_path, capsys):
    for bad, words in (
        ({"adapterz": ["linear"]}, "unknown key 'adapterz'"),
        ({"lr": 0.1}, "'lr' is set per cell by the grid: use 'lrs'"),
        ({"reprob": 0.25}, "reprob is not supported"),
        ({"anchor_checkpoints": None}, "random anchors is not supported"),
        ({"routes": None, "gaps": {"cuts": {TI: [2]}}}, "needs 'cuts' and 'entries'"),
    ):
        config = _write(tmp_path / "bad.yaml", {k: v for k, v in {**RECIPE, **GRID, **bad}.items() if v is not None})
        assert run_entry(lab_main, ["-c", config, "--output", tmp_path / "out"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and words in err, err
    assert not (tmp_path / "out").exists()


def test_gaps_generate_front_cuts_x_back_entries_both_ways():
    gaps = {"cuts": {"a": [1, 2], "b": [3]}, "entries": {"a": [0], "b": [2, 5]}, "directions": "both"}
    assert gap_routes(gaps, ["a", "b"], [4, 6]) == [
        "a[:1]>b[2:]",
        "a[:1]>b[5:]",
        "a[:2]>b[2:]",
        "a[:2]>b[5:]",
        "b[:3]>a[0:]",
    ]
    assert gap_routes({**gaps, "directions": "backward"}, ["a", "b"], [4, 6]) == ["b[:3]>a[0:]"]


@pytest.mark.slow
def test_torchrun_spreads_cells_over_ranks_and_gathers_them(grid_run, recipe, tmp_path):
    """lab.py on 2 processes: cell i on rank i % 2, rank 0 writes every row, each cell as in the
    one-process grid."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    config = _write(tmp_path / "ranks.yaml", {**recipe, **GRID, "seeds": [0]})
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TRAIN_SCRIPT": str(repo / "lab.py")}
    proc = subprocess.run(
        [str(repo / "distributed_train.sh"), "2", "-c", str(config), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=repo, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 on this process" in proc.stdout  # rank 0's share of the 4 cells
    key = ("route", "adapter", "lr", "seed")
    whole = {tuple(r[k] for k in key): r for r in _rows(grid_run[1] / "cells.csv")}
    rows = _rows(tmp_path / "out" / "ranks" / "cells.csv")
    assert [int(r["cell"]) for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert (r["ls_top1"], r["top1"]) == tuple(whole[tuple(r[k] for k in key)][c] for c in ("ls_top1", "top1"))


@pytest.mark.slow
def test_cell_shard_takes_index_mod_k(recipe, tmp_path):
    """--cell-shard 1/2 trains cells 1 and 3 of 4 (an array task's share); 2/2 is refused."""
    config = _write(tmp_path / "shard.yaml", {**recipe, **GRID, "seeds": [0]})
    assert run_entry(lab_main, ["-c", config, "--output", tmp_path / "out", "--cell-shard", "1/2"]) == 0
    rows = _rows(tmp_path / "out" / "shard" / "cells.csv")
    assert [int(r["cell"]) for r in rows] == [1, 3]
    assert run_entry(lab_main, ["-c", config, "--output", tmp_path / "out", "--cell-shard", "2/2"]) == 2


def test_lab_configs_load_and_their_routes_parse():
    """Every configs/lab/*.yaml passes the strict check, and its routes name existing blocks
    (block counts written out: ResNet-50 3+4+6+3, ViT-S 12, Swin-T 2+2+6+2, MobileNetV3-Large
    1+2+3+4+2+3+1, the demo's resnet18 2+2+2+2 and DeiT depth 4)."""
    from snnet.core.routes import parse_route
    from snnet.lab.spec import load_lab_spec

    depths = {"resnet50": 16, "vit_small_patch16_224": 12, "swin_tiny_patch4_window7_224": 12,
              "mobilenetv3_large_100": 16, "resnet18": 8, "deit_tiny_patch16_224": 4}  # fmt: skip
    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "lab").glob("*.yaml"))
    assert len(configs) == 5
    for path in configs:
        spec = load_lab_spec(path)
        names = spec.train["anchors"]
        d = [depths[n] for n in names]
        routes = spec.routes or gap_routes(spec.gaps, names, d)
        for route in routes:
            parsed = parse_route(route, names, d)
            assert len(parsed.segments) == 2 and parsed.first.anchor != parsed.last.anchor
