"""Stitch compatibility scores: linear CKA against the kernel (HSIC) formula, the LS residual
against torch.linalg.lstsq, and eval.py --compatibility end to end."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import TINY_DEIT_ARGS, TINY_PAIRS, run_entry

from snnet import create_snnet
from snnet.core.layers import to_rows
from snnet.evaluate.compat import junction_scores
from snnet.evaluate.main import main as eval_main
from snnet.evaluate.results import read_results

pytestmark = pytest.mark.usefixtures("one_thread")


def cka_by_hsic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s linear CKA from the n x n kernels: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((kx * ky).sum() / ((kx * kx).sum() * (ky * ky).sum()).sqrt())


def junction(net, stitch, images):
    front, back = net.anchor_adapters[stitch.front], net.anchor_adapters[stitch.back]
    x = front.forward_until(images, stitch.front_block)
    y = back.forward_until(images, stitch.back_block - 1)  # features before block k
    return x, to_rows(x, front.layout), to_rows(y, back.layout)


def _relative_residual(a: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> float:
    y = y.double()
    return float((a @ w - y).norm() / (y - y.mean(0)).norm())


@pytest.mark.parametrize("family", ["deit", "resnet_swin"])
def test_cka_and_residual_match_independent_formulas(family):
    torch.manual_seed(0)
    pair = TINY_PAIRS[family]
    net = create_snnet(num_classes=10, **pair).eval()
    size = pair["img_size"]
    net.init_stitching_layers(torch.randn(8, 3, size, size))
    images = torch.randn(6, 3, size, size)
    scores = junction_scores(net, images, batch_size=4)  # two batches: the sums must combine
    stitched = [s for s in net.stitches if not s.is_anchor]
    assert sorted(scores) == [s.cfg_id for s in stitched]
    with torch.no_grad():
        for s in stitched[:: max(1, len(stitched) // 6)]:
            x, xr, yr = junction(net, s, images)
            if xr.shape[0] <= 3000:
                assert scores[s.cfg_id]["cka"] == pytest.approx(cka_by_hsic(xr, yr), rel=1e-6, abs=1e-9)
            a = torch.cat([xr.double(), torch.ones(len(xr), 1, dtype=torch.float64)], 1)
            layer = net.stitch_layers[s.route.layers[0]].transform
            w = torch.cat([layer.weight.double().T, layer.bias.double()[None]], 0)
            assert scores[s.cfg_id]["ls_residual"] == pytest.approx(_relative_residual(a, w, yr), rel=1e-6)
            # fitted on other images: never better than the optimum on these
            optimum = _relative_residual(a, torch.linalg.lstsq(a, yr.double()).solution, yr)
            assert scores[s.cfg_id]["ls_residual"] >= optimum - 1e-9


def test_unshared_layer_fitted_on_the_images_has_the_lstsq_residual():
    torch.manual_seed(0)
    net = create_snnet(num_classes=10, kernel_size=1, **TINY_PAIRS["deit"]).eval()  # one position per layer
    images = torch.randn(6, 3, 32, 32)
    net.init_stitching_layers(images)
    scores = junction_scores(net, images)
    with torch.no_grad():
        for s in [t for t in net.stitches if not t.is_anchor]:
            _, xr, yr = junction(net, s, images)
            a = torch.cat([xr.double(), torch.ones(len(xr), 1, dtype=torch.float64)], 1)
            optimum = _relative_residual(a, torch.linalg.lstsq(a, yr.double()).solution, yr)
            assert scores[s.cfg_id]["ls_residual"] == pytest.approx(optimum, rel=1e-4)


@pytest.mark.slow
def test_eval_compatibility_writes_compat_csv(tmp_path, capsys):
    out = tmp_path / "compat"
    code = run_entry(
        eval_main,
        TINY_DEIT_ARGS
        + ["--compatibility", "--compat-images", "20", "--output", out, "--log-interval", "0", "--num-classes", "10"],
    )
    assert code == 0
    with open(out / "compat.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sweep = {r["cfg_id"]: r for r in read_results(out / "stitches.csv")}
    assert [int(r["cfg_id"]) for r in rows] == sorted(sweep)
    for r in rows:
        assert float(r["ls_top1"]) == sweep[int(r["cfg_id"])]["top1"]
        if sweep[int(r["cfg_id"])]["is_anchor"]:
            assert r["cka"] == r["ls_residual"] == ""
        else:
            assert 0 <= float(r["cka"]) <= 1 + 1e-9 and float(r["ls_residual"]) >= 0
    assert "compat.csv" in capsys.readouterr().out
    code = run_entry(eval_main, TINY_DEIT_ARGS + ["--compatibility", "--resume", tmp_path / "x.pth.tar"])
    assert code == 2 and "--compatibility scores an untrained SN-Net" in capsys.readouterr().err


def test_two_way_routes_are_refused_with_one_line():
    from snnet.errors import ConfigError

    net = create_snnet(**TINY_PAIRS["deit"], num_classes=10, stitching="two-way")
    assert any(len(s.route.layers) > 1 for s in net.stitches)
    with pytest.raises(ConfigError, match="one junction"):
        junction_scores(net, torch.zeros(2, 3, 32, 32))
