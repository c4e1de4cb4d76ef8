"""eval.py end to end: training configs, checkpoints, --flops-only, budget picking, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_PAIRS, run_entry

from snnet import create_snnet
from snnet.evaluate.main import main
from snnet.evaluate.pareto import pareto_frontier
from snnet.evaluate.results import read_results
from snnet.io.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = [
    json.loads(line) for line in (REPO / "tests" / "data" / "snnet_deit_published.jsonl").read_text().splitlines()
]
TINY_MODEL = TINY_PAIRS["deit"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_main(args: list) -> int:
    return run_entry(main, args)


def tiny_net(seed):
    torch.manual_seed(seed)
    net = create_snnet(num_classes=10, **TINY_MODEL).eval()
    with torch.no_grad():
        for layer in net.stitch_layers:
            layer.transform.weight.normal_(0, 0.3)
    return net


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as train.py writes it (plain data + tensors), with distinct EMA weights."""
    path = tmp_path_factory.mktemp("run") / "last.pth.tar"
    net, ema = tiny_net(0), tiny_net(1)
    save_checkpoint(
        {
            "version": 1,
            "arch": "snnet",
            "epoch": 2,
            "epoch_complete": True,
            "args": {
                "anchors": TINY_MODEL["anchors"],
                "img_size": 32,
                "model_kwargs": ["patch_size=4", "depth=4"],
                "anchor_kwargs": ["embed_dim=32 num_heads=2", "embed_dim=64 num_heads=4"],
                "num_classes": None,
                "dataset": "digits",
                "lr": 1e-3,
                "epochs": 3,
            },
            "snnet_config": net.config,
            "state_dict": net.state_dict(),
            "state_dict_ema": ema.state_dict(),
        },
        path,
    )
    return path


def reference_top1(net, cfg_ids):
    """top-1 of each network, one at a time, on the digits with the trainer's validation transform."""
    from snnet.data.datasets import create_dataset
    from snnet.data.loaders import Normalize, data_config_for, eval_loader, eval_transform
    from snnet.evaluate.sweep import metrics_of, one_at_a_time

    ds = create_dataset("digits", None, "validation")
    cfg = data_config_for(net, ds)
    ds.transform = eval_transform(cfg)
    sums = one_at_a_time(net, eval_loader(ds, 120), cfg_ids, Normalize(cfg["mean"], cfg["std"], torch.device("cpu")))
    return {r["cfg_id"]: round(metrics_of(r)["top1"], 4) for r in sums.records()}


@pytest.fixture(scope="module")
def swept(checkpoint, tmp_path_factory):
    """eval.py --resume on the digits; anchors and kwargs come from the checkpoint."""
    out = tmp_path_factory.mktemp("eval")
    code = run_main(
        [
            "--resume",
            checkpoint,
            "--dataset",
            "digits",
            "--workers",
            "0",
            "-b",
            "120",
            "--output",
            out,
            "--log-interval",
            "0",
        ]
    )
    assert code == 0
    return out


def test_checkpoint_weights_and_arguments_are_used(swept):
    rows = read_results(swept / "stitches.csv")
    assert [r["cfg_id"] for r in rows] == list(range(12))
    ref = reference_top1(tiny_net(0), range(12))
    assert {r["cfg_id"]: r["top1"] for r in rows} == ref
    assert len(set(ref.values())) > 3


def test_use_ema_evaluates_the_ema_weights(checkpoint, tmp_path):
    assert (
        run_main(
            [
                "--resume",
                checkpoint,
                "--use-ema",
                "--dataset",
                "digits",
                "--workers",
                "0",
                "-b",
                "120",
                "--stitches",
                "0,5",
                "--output",
                tmp_path,
                "--log-interval",
                "0",
            ]
        )
        == 0
    )
    rows = read_results(tmp_path / "stitches.csv")
    assert {r["cfg_id"]: r["top1"] for r in rows} == reference_top1(tiny_net(1), [0, 5])


def test_budget_pick_is_the_best_frontier_network_within_budget(checkpoint, swept, tmp_path, capsys):
    rows = read_results(swept / "stitches.csv")
    flops = sorted(r["flops"] for r in rows)
    budget = (flops[5] + flops[6]) / 2
    capsys.readouterr()
    export = tmp_path / "best.pt2"
    # resumes the finished sweep (no data pass), picks, exports the pick
    assert (
        run_main(
            [
                "--resume",
                checkpoint,
                "--dataset",
                "digits",
                "--workers",
                "0",
                "--output",
                swept,
                "--budget-flops",
                f"{budget / 1e6:.4f}M",
                "--export",
                "best",
                "--export-path",
                export,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    within = [r for r in rows if r["flops"] <= budget]
    best = max(within, key=lambda r: (r["top1"], -r["flops"]))
    assert best in pareto_frontier(rows)
    assert "Best network within" in out and f"cfg_id {best['cfg_id']} (" in out.split("Best network within")[1]
    assert "chunk" not in out  # nothing re-evaluated
    assert f"Exported cfg_id {best['cfg_id']} " in out
    program = torch.export.load(str(export))
    x = torch.randn(2, 3, 32, 32)
    net = tiny_net(0)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net.select(best["cfg_id"])(x), atol=1e-5, rtol=1e-5)

    # nothing fits: exit code 2 and one line naming the cheapest network
    assert (
        run_main(
            ["--resume", checkpoint, "--dataset", "digits", "--workers", "0", "--output", swept, "--budget-flops", "1K"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no network fits --budget-flops 1.0K"), err
    cheapest = min(rows, key=lambda r: r["flops"])
    assert f"cfg_id {cheapest['cfg_id']}" in err[0]


def test_export_by_id_needs_no_data(checkpoint, tmp_path, capsys):
    path = tmp_path / "net5.pt"
    assert run_main(["--resume", checkpoint, "--export", "5", "--export-path", path]) == 0  # no --dataset
    assert "Exported cfg_id 5 " in capsys.readouterr().out
    model = torch.jit.load(str(path))
    net = tiny_net(0)
    assert sum(p.numel() for p in model.parameters()) == net.num_params(5)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.select(5)(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--budget-latency", "3"], "needs latencies: add --measure-latency"),
        (["--export", "3"], "--export needs --export-path"),
        (["--export", "best", "--export-path", "x.pt"], "exports the budget pick"),
        (["--export", "1", "--export-path", "x.zip"], "unknown suffix"),
        (["--budget-flops", "lots"], "is not a number"),
        (["--sweep-chunk", "-1"], "--sweep-chunk must be >= 0"),
    ],
)
def test_bad_arguments_fail_with_one_line(argv, message, capsys):
    assert run_main(["--dataset", "digits"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_training_config_keys_are_tolerated_unknown_keys_are_not(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        yaml.safe_dump({**TINY_MODEL, "lr": 1e-3, "epochs": 30, "resume": "auto", "output": "elsewhere", "mixup": 0.8})
    )
    assert run_main(["-c", cfg, "--flops-only", "--output", tmp_path / "f"]) == 0
    assert len(read_results(tmp_path / "f" / "stitches.csv")) == 12
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_MODEL, "lr": 1e-3, "ancors": ["x"]}))
    capsys.readouterr()
    assert run_main(["-c", bad, "--flops-only", "--output", tmp_path / "g"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'ancors'" in err[0], err


@pytest.mark.slow
def test_flops_only_on_deit_ti_s_b_config_gives_the_papers_anchor_flops(tmp_path):
    """The real script on the paper's config: full-size DeiT-Ti/S/B at 224, no data, no weights."""
    config = REPO / "configs" / "deit_ti_s_b.yaml"
    out = tmp_path / "flops"
    proc = subprocess.run(
        [sys.executable, "eval.py", "-c", str(config), "--flops-only", "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_results(out / "stitches.csv")
    assert list(rows[0])[:4] == ["cfg_id", "name", "flops", "params"]
    assert len(rows) == len(PUBLISHED) == 71
    anchors = [r for r in rows if r["is_anchor"]]
    assert [(r["cfg_id"], r["flops"], r["params"]) for r in anchors] == [
        (p["cfg_id"], p["flops"], p["params"]) for p in PUBLISHED[:3]
    ]
    assert [r["flops"] for r in anchors] == [1258411200, 4608338304, 17582740224]


def test_checkpoint_head_smaller_than_the_data_fails_clearly(tmp_path, capsys):
    torch.manual_seed(0)
    net = create_snnet(num_classes=5, **TINY_MODEL)
    path = tmp_path / "five.pth.tar"
    save_checkpoint(
        {
            "args": {
                "model_kwargs": ["patch_size=4", "depth=4"],
                "img_size": 32,
                "anchor_kwargs": ["embed_dim=32 num_heads=2", "embed_dim=64 num_heads=4"],
            },
            "snnet_config": net.config,
            "state_dict": net.state_dict(),
        },
        path,
    )
    assert run_main(["--resume", path, "--dataset", "digits", "--workers", "0", "--output", tmp_path / "e"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classifiers have 5 classes but the data has 10" in err[0], err
