"""One-pass sweep: identical to one network at a time, counts every sample once, resumes exactly."""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DEIT_ARGS, TINY_PAIRS, run_entry
from PIL import Image

from snnet import create_snnet
from snnet.data.datasets import create_dataset
from snnet.data.loaders import Normalize, ShardSampler, data_config_for, eval_loader, eval_transform
from snnet.evaluate.main import main
from snnet.evaluate.results import PartialResults
from snnet.evaluate.sweep import SweepPlan, forward_networks, make_chunks, one_at_a_time, sweep_pass

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TINY = TINY_DEIT_ARGS + ["--log-interval", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_main(args: list) -> int:
    return run_entry(main, args)


def tiny_net(family="deit", num_classes=10):
    torch.manual_seed(0)
    net = create_snnet(num_classes=num_classes, **TINY_PAIRS[family]).eval()
    with torch.no_grad():  # make the stitching layers (and so the stitched networks) clearly different
        for layer in net.stitch_layers:
            layer.transform.weight.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("family", ["deit", "swin", "levit", "resnet_swin"])
def test_shared_prefix_logits_equal_select_forward(family):
    net = tiny_net(family, num_classes=7)
    x = torch.randn(3, 3, *net.input_size[1:])
    ids = list(range(net.num_stitches))
    with torch.no_grad():
        got = dict(forward_networks(net, SweepPlan(net, ids), x))
        assert sorted(got) == ids
        for i in ids:
            assert torch.equal(got[i], net.select(i)(x)), net.stitches[i].name
        # and a subset only runs (and returns) the selected networks
        sub = ids[1::3]
        assert sorted(dict(forward_networks(net, SweepPlan(net, sub), x))) == sub


def digits_loader(net, batch_size, n=150):
    ds = create_dataset("digits", None, "validation")
    cfg = data_config_for(net, ds)  # the trainer's validation data config
    ds.transform = eval_transform(cfg)
    ds = torch.utils.data.Subset(ds, range(n))
    return ds, eval_loader(ds, batch_size), Normalize(cfg["mean"], cfg["std"], torch.device("cpu"))


def test_one_pass_metrics_equal_one_network_at_a_time():
    net = tiny_net()
    ds, loader, prep = digits_loader(net, batch_size=64)  # 150 images: the last batch is partial
    ids = list(range(net.num_stitches))
    ours = sweep_pass(net, loader, ids, prep).records()
    ref = one_at_a_time(net, loader, ids, prep).records()
    for a, b in zip(ours, ref):
        assert (a["cfg_id"], a["correct1"], a["correct5"], a["count"]) == (
            b["cfg_id"],
            b["correct1"],
            b["correct5"],
            b["count"],
        )
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-9)
        assert a["count"] == len(ds)
    assert len({r["correct1"] for r in ref}) > 3, "networks should differ"


def test_chunks_follow_prefix_order_and_cover_everything():
    net = tiny_net()
    ids = list(range(net.num_stitches))
    chunks = make_chunks(net, ids, 5)
    assert sorted(i for c in chunks for i in c) == ids and [len(c) for c in chunks] == [5, 5, 2]
    flat = [i for c in chunks for i in c]
    keys = [(net.stitches[i].front, net.stitches[i].route.first.stop - 1) for i in flat]  # first anchor, its exit block
    assert keys == sorted(keys) and keys[0] == (0, 0) and (0, 3) in keys  # anchor 0 leaves after its block 3
    assert make_chunks(net, ids, 0) == [flat]


@pytest.mark.parametrize("n,world", [(47, 2), (10, 3), (5, 8), (360, 2)])
def test_shards_cover_every_index_once(n, world):
    seen = sorted(i for r in range(world) for i in ShardSampler(n, r, world))
    assert seen == list(range(n))


def test_partial_file_ignores_a_torn_last_line_and_refuses_another_run(tmp_path):
    p = PartialResults(tmp_path, {"checkpoint": "a"})
    p.add_accuracy([{"cfg_id": 3, "correct1": 1, "correct5": 2, "count": 4, "loss_sum": 1.5}])
    with open(p.path, "a") as f:
        f.write('{"type": "accuracy", "cfg_id": 4, "corr')  # killed mid-write
    again = PartialResults(tmp_path, {"checkpoint": "a"})
    assert sorted(again.accuracy) == [3]
    again.add_accuracy([{"cfg_id": 5, "correct1": 1, "correct5": 2, "count": 4, "loss_sum": 1.5}])
    assert sorted(PartialResults(tmp_path, {"checkpoint": "a"}).accuracy) == [3, 5]
    from snnet.errors import ConfigError

    with pytest.raises(ConfigError, match="another evaluation.*--overwrite"):
        PartialResults(tmp_path, {"checkpoint": "b"})
    assert PartialResults(tmp_path, {"checkpoint": "b"}, overwrite=True).accuracy == {}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def brute_force_frontier(rows, cost):
    def dominated(r):
        return any(
            o[cost] <= r[cost] and o["top1"] >= r["top1"] and (o[cost], o["top1"]) != (r[cost], r["top1"]) for o in rows
        )

    firsts = {}
    for r in sorted((r for r in rows if not dominated(r)), key=lambda r: r["cfg_id"]):
        firsts.setdefault((r[cost], r["top1"]), r)
    return sorted(firsts.values(), key=lambda r: r[cost])


def typed(rows):
    return [
        {
            **r,
            "cfg_id": int(r["cfg_id"]),
            "flops": int(r["flops"]),
            "top1": float(r["top1"]),
            **({"latency_ms": float(r["latency_ms"])} if "latency_ms" in r else {}),
        }
        for r in rows
    ]


def test_written_pareto_sets_equal_brute_force_of_written_table(tmp_path):
    out = tmp_path / "r"
    assert (
        run_main(
            TINY
            + ["--output", out, "-b", "100", "--measure-latency", "--latency-warmup", "1", "--latency-repeats", "3"]
        )
        == 0
    )
    rows = typed(read_csv(out / "stitches.csv"))
    assert [r["cfg_id"] for r in rows] == list(range(12))
    assert list(read_csv(out / "stitches.csv")[0]) == [
        "cfg_id",
        "name",
        "flops",
        "params",
        "top1",
        "top5",
        "loss",
        "latency_ms",
        "is_anchor",
    ]
    for cost, name in (("flops", "pareto.csv"), ("latency_ms", "pareto_latency.csv")):
        written = [int(r["cfg_id"]) for r in read_csv(out / name)]
        assert written == [r["cfg_id"] for r in brute_force_frontier(rows, cost)], cost
    official = [json.loads(line) for line in (out / "stitches_res.txt").read_text().splitlines()]
    assert [list(o) for o in official] == [["cfg_id", "flops", "params", "acc1"]] * 12
    assert [(o["cfg_id"], o["flops"], o["acc1"]) for o in official] == [
        (r["cfg_id"], r["flops"], round(r["top1"], 3)) for r in rows
    ]
    assert (out / "pareto.png").stat().st_size > 10_000 and (out / "pareto_latency.png").is_file()


def test_interrupted_sweep_resumes_to_the_full_sweep(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_main(TINY + ["--output", full, "-b", "128"]) == 0
    # a crash right after the first chunk of 5 networks was saved (of 3 chunks)

    def crash_after_first_chunk(done: int, chunks: int) -> None:
        if done == 1 and chunks > 1:
            raise SystemExit(17)  # as if killed here: nothing else is written

    crashing_main = functools.partial(main, on_chunk_saved=[crash_after_first_chunk])
    assert run_entry(crashing_main, TINY + ["--output", part, "-b", "128", "--sweep-chunk", "5"]) == 17
    records = [json.loads(line) for line in (part / "sweep_partial.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["header"] + ["accuracy"] * 5
    assert not (part / "stitches.csv").exists()
    # the rerun evaluates the 7 others only (chunks of 5 and 2) and writes the same table
    assert run_main(TINY + ["--output", part, "-b", "128", "--sweep-chunk", "5"]) == 0
    records = [json.loads(line) for line in (part / "sweep_partial.jsonl").read_text().splitlines()]
    assert len(records) == 13 and sorted(r["cfg_id"] for r in records[1:]) == list(range(12))
    for name in ("stitches.csv", "pareto.csv", "stitches_res.txt"):
        assert (part / name).read_text() == (full / name).read_text(), name
    # a run over other data or weights refuses to mix results into the folder
    assert run_main(TINY + ["--output", part, "--seed", "7"]) == 2


def write_image_folder(root: Path, n: int, classes: int = 3) -> None:
    rng = np.random.RandomState(0)
    for i in range(n):
        d = root / "val" / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.mark.slow
def test_two_processes_count_every_sample_once(tmp_path):
    """47 images, batch 8 per rank: timm's eval sampler would pad rank 1 with a repeated image."""
    write_image_folder(tmp_path / "data", 47)
    args = [a for a in TINY if a not in ("--dataset", "digits")] + [
        "--data-dir",
        tmp_path / "data",
        "--val-split",
        "val",
        "-b",
        "8",
        "--sweep-chunk",
        "7",
    ]
    args = [str(a) for a in args]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_main(args + ["--output", one]) == 0
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "eval.py",
        *args,
        "--output",
        str(two),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout

    def sums(d):
        recs = [json.loads(line) for line in (d / "sweep_partial.jsonl").read_text().splitlines()[1:]]
        return {r["cfg_id"]: r for r in recs}

    a, b = sums(one), sums(two)
    assert sorted(a) == sorted(b) == list(range(12))
    for i in a:
        assert (a[i]["correct1"], a[i]["correct5"], a[i]["count"]) == (
            b[i]["correct1"],
            b[i]["correct5"],
            b[i]["count"],
        )
        assert a[i]["count"] == 47
        assert a[i]["loss_sum"] == pytest.approx(b[i]["loss_sum"], rel=1e-5)
    assert (one / "stitches.csv").read_text().replace("\r", "").splitlines()[0] == (
        two / "stitches.csv"
    ).read_text().replace("\r", "").splitlines()[0]
