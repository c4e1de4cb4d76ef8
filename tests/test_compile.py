"""--torchcompile on CPU (backend aot_eager: compiled graphs, no C++ build): training and evaluation
give eager's losses and metrics, and switching networks after warm-up never recompiles."""

from __future__ import annotations

import csv

import pytest
from conftest import TINY_PAIRS, run_entry
from test_train import PLAIN, TINY, read_steps

from snnet import create_snnet
from snnet.core.compile import compile_blocks, compiled_blocks
from snnet.evaluate.main import main as eval_main
from snnet.train.main import main as train_main

BACKEND = "aot_eager"


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_training_and_evaluation_match_eager(tmp_path):
    common = (
        TINY
        + PLAIN
        + [
            "--seed",
            "3",
            "-b",
            "16",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "4",
            "--log-interval",
            "2",
            "--output",
            tmp_path,
        ]
    )
    assert run_entry(train_main, common + ["--experiment", "eager"]) == 0
    before = compiled_graphs()
    assert run_entry(train_main, common + ["--experiment", "compiled", "--torchcompile", BACKEND]) == 0
    assert compiled_graphs() > before  # the flag really compiled
    eager, compiled = read_steps(tmp_path / "eager"), read_steps(tmp_path / "compiled")
    assert [r["cfg_id"] for r in eager] == [r["cfg_id"] for r in compiled] and len(eager) == 4
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)

    ckpt = tmp_path / "eager" / "last.pth.tar"
    tables = {}
    for kind, extra in (("eager", []), ("compiled", ["--torchcompile", BACKEND])):
        out = tmp_path / f"eval-{kind}"
        before = compiled_graphs()
        assert (
            run_entry(
                eval_main,
                [
                    "--resume",
                    ckpt,
                    "--dataset",
                    "digits",
                    "--workers",
                    "0",
                    "-b",
                    "100",
                    "--output",
                    out,
                    "--log-interval",
                    "0",
                    *extra,
                ],
            )
            == 0
        )
        assert (compiled_graphs() > before) == bool(extra)
        with open(out / "stitches.csv") as f:
            tables[kind] = list(csv.DictReader(f))
    assert len(tables["eager"]) == len(tables["compiled"]) > 2
    for a, b in zip(tables["eager"], tables["compiled"]):
        assert a["cfg_id"] == b["cfg_id"] and a["top1"] == b["top1"] and a["top5"] == b["top5"]
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-4)


def test_switching_networks_after_warm_up_never_recompiles(one_thread):
    import torch._dynamo

    torch._dynamo.reset()
    net = create_snnet(**TINY_PAIRS["deit"], num_classes=10)
    reference = create_snnet(**TINY_PAIRS["deit"], num_classes=10)
    reference.load_state_dict(net.state_dict())
    modules = compile_blocks(net, BACKEND)
    assert len(modules) == sum(len(a.blocks) for a in net.anchor_adapters) + len(net.stitch_layers)
    x = torch.randn(2, 3, 32, 32)
    order = list(range(net.num_stitches))
    for cfg_id in order:  # warm-up: every network once
        net.select(cfg_id)(x).sum().backward()
    torch._dynamo.config.error_on_recompile = True
    try:
        for cfg_id in reversed(order):
            out = net.select(cfg_id)(x)
            out.sum().backward()
            assert torch.allclose(out, reference.select(cfg_id)(x), atol=1e-5)
    finally:
        torch._dynamo.config.error_on_recompile = False


def test_compiled_blocks_restores_the_eager_modules():
    net = create_snnet(**TINY_PAIRS["deit"], num_classes=10)
    with compiled_blocks(net, BACKEND):
        assert all(blk._compiled_call_impl is not None for blk in net.anchor_adapters[0].blocks)
    assert all(m._compiled_call_impl is None for a in net.anchor_adapters for m in a.blocks)
    assert all(m._compiled_call_impl is None for m in net.stitch_layers)
