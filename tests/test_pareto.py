"""Pareto frontier, budget picking, FLOPs parsing/formatting, table and plot, against brute force."""

import re

import matplotlib.image
import numpy as np
import pytest

from snnet.errors import BudgetError, ConfigError
from snnet.evaluate.pareto import (
    format_flops,
    format_table,
    pareto_frontier,
    parse_flops,
    pick_for_budget,
    plot_frontier,
)


def random_rows(seed, n=60):
    """A results table with many duplicate costs, duplicate accuracies and exact duplicates."""
    rng = np.random.RandomState(seed)
    flops = rng.randint(1, 25, n) * 100_000_000
    top1 = rng.randint(50, 80, n) / 2.0
    latency = rng.randint(1, 15, n) / 4.0
    rows = [
        {
            "cfg_id": 0,
            "name": "",
            "flops": int(f),
            "params": int(f) // 300,
            "top1": float(t),
            "latency_ms": float(lat),
            "is_anchor": False,
        }
        for f, t, lat in zip(flops, top1, latency)
    ]
    rows += [dict(rows[i]) for i in rng.randint(0, n, n // 5)]  # exact (cost, metric) ties
    # cfg_ids in random order, so "lowest cfg_id wins a tie" is not the same as "first in the list"
    for cfg_id, row in zip(rng.permutation(len(rows)), rows):
        row.update(cfg_id=int(cfg_id), name=f"net{cfg_id}", is_anchor=bool(cfg_id < 3))
    return rows


def brute_force_frontier(rows, cost="flops", metric="top1"):
    """O(n^2) reference: rows no other row dominates; of exact ties the lowest cfg_id."""

    def dominates(o, r):
        return o[cost] <= r[cost] and o[metric] >= r[metric] and (o[cost] < r[cost] or o[metric] > r[metric])

    keep = [r for r in rows if not any(dominates(o, r) for o in rows)]
    firsts = {}
    for r in sorted(keep, key=lambda r: r["cfg_id"]):
        firsts.setdefault((r[cost], r[metric]), r)
    return sorted(firsts.values(), key=lambda r: r[cost])


def brute_force_pick(rows, budget, cost="flops", metric="top1"):
    """Reference: highest metric, then lowest cost, then lowest cfg_id among all rows within budget."""
    fits = [r for r in rows if r[cost] <= budget]
    return min(fits, key=lambda r: (-r[metric], r[cost], r["cfg_id"])) if fits else None


def ids(rows):
    return [r["cfg_id"] for r in rows]


@pytest.mark.parametrize("cost", ["flops", "latency_ms"])
@pytest.mark.parametrize("seed", range(25))
def test_frontier_equals_brute_force(seed, cost):
    for n in (1, 2, 5, 60):
        rows = random_rows(seed, n)
        front = pareto_frontier(rows, cost)
        assert ids(front) == ids(brute_force_frontier(rows, cost)), n
        # sorted by cost, strictly increasing in both cost and metric (no duplicates survive)
        assert all(a[cost] < b[cost] and a["top1"] < b["top1"] for a, b in zip(front, front[1:]))


def test_frontier_keeps_lowest_cfg_id_of_exact_ties():
    rows = [{"cfg_id": i, "flops": 10, "top1": 70.0} for i in (5, 2, 9)] + [{"cfg_id": 1, "flops": 10, "top1": 69.0}]
    assert ids(pareto_frontier(rows)) == [2]
    assert pareto_frontier([]) == []


@pytest.mark.parametrize("cost", ["flops", "latency_ms"])
@pytest.mark.parametrize("seed", range(15))
def test_budget_pick_equals_brute_force(seed, cost):
    rows = random_rows(seed)
    front = pareto_frontier(rows, cost)
    lowest = min(r[cost] for r in rows)
    budgets = sorted({r[cost] for r in rows}) + [lowest / 2, lowest * 0.999, 1e30]
    for budget in budgets:
        expected = brute_force_pick(rows, budget, cost)
        if expected is None:
            with pytest.raises(BudgetError, match="the cheapest network"):
                pick_for_budget(rows, budget, cost)
            continue
        pick = pick_for_budget(rows, budget, cost)
        assert pick["cfg_id"] == expected["cfg_id"], budget
        # the best network within any budget is always a frontier network
        assert pick["cfg_id"] in ids(front)


def test_budget_below_everything_names_the_cheapest_network():
    rows = [
        {"cfg_id": 1, "name": "b", "flops": 4_600_000_000, "top1": 79.0},
        {"cfg_id": 3, "name": "deit_tiny>deit_small", "flops": 1_258_411_200, "top1": 60.0},
        {"cfg_id": 0, "name": "deit_tiny", "flops": 1_258_411_200, "top1": 72.0},
    ]
    with pytest.raises(
        BudgetError,
        match=r"^no network fits --budget-flops 500.0M: the cheapest network "
        r"\(cfg_id 0, deit_tiny\) needs 1.26G$",
    ):
        pick_for_budget(rows, 5e8)
    lat = [dict(r, latency_ms=r["flops"] / 1e9) for r in rows]
    with pytest.raises(BudgetError, match=r"--budget-latency 0.50 ms: .*\(cfg_id 0, deit_tiny\) needs 1.26 ms$"):
        pick_for_budget(lat, 0.5, cost="latency_ms")
    with pytest.raises(BudgetError, match="empty"):
        pick_for_budget([], 5e8)


@pytest.mark.parametrize(
    "text,value",
    [
        ("2.5G", 2.5e9),
        ("800M", 8e8),
        ("800m", 8e8),
        ("1.2e9", 1.2e9),
        ("1500000000", 1.5e9),
        ("3GFLOPs", 3e9),
        ("3 gflops", 3e9),
        (" 0.5g ", 5e8),
        ("1.2E9 FLOPS", 1.2e9),
        ("12k", 1.2e4),
        (".5T", 5e11),
        (2.5e9, 2.5e9),
        (1_500_000_000, 1.5e9),
    ],
)
def test_parse_flops(text, value):
    assert parse_flops(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "",
        "G",
        "FLOPs",
        "2.5X",
        "2.5GB",
        "1..2G",
        "-1G",
        "2.5 G G",
        "nan",
        "inf",
        float("nan"),
        float("inf"),
        -5,
        True,
    ],
)
def test_parse_flops_refuses_bad_text(text):
    with pytest.raises(ConfigError, match=r"^--budget-flops '.*' is not a number: use e.g. 2.5G or 800M$"):
        parse_flops(text)


@pytest.mark.parametrize(
    "n,text",
    [
        (1_258_411_200, "1.26G"),
        (850_300_000, "850.3M"),
        (4_608_338_304, "4.61G"),
        (41_200, "41.2K"),
        (999_960_000, "1.00G"),
        (999_940_000, "999.9M"),
        (999_960, "1.0M"),
        (9_099_216, "9.1M"),
    ],
)
def test_format_flops(n, text):
    assert format_flops(n) == text


def test_format_table_is_fixed_width_and_aligned():
    rows = [
        {"cfg_id": 0, "name": "deit_tiny_patch16_224", "flops": 1_258_411_200, "top1": 72.1234},
        {"cfg_id": 12, "name": "t>s", "flops": 850_300_000, "top1": 8.5},
    ]
    lines = format_table(rows, ["cfg_id", "name", "flops", "top1", "latency_ms"]).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0].split() == ["cfg_id", "name", "flops", "top1", "latency_ms"]
    assert lines[2].split() == ["0", "deit_tiny_patch16_224", "1.26G", "72.12"]  # no latency: blank
    assert lines[3].split() == ["12", "t>s", "850.3M", "8.50"]
    # each column sits in the span of its dashes: text flush left, numbers flush right
    spans = [(m.start(), m.end()) for m in re.finditer("-+", lines[1])]
    for line in [lines[0]] + lines[2:]:
        for (a, b), numeric in zip(spans[:4], (True, False, True, True)):
            cell = line[a:b]
            assert cell[-1] != " " if numeric else cell[0] != " ", (line, cell)
            assert line[b : b + 2].strip() == ""  # nothing spills past the column


def _has_colour(img, rgb, tol=0.06, min_pixels=20):
    return int((np.abs(img[..., :3] - np.array(rgb)) < tol).all(axis=-1).sum()) >= min_pixels


@pytest.mark.parametrize("cost", ["flops", "latency_ms"])
def test_plot_writes_a_readable_png(tmp_path, cost):
    import matplotlib.pyplot as plt

    rows = random_rows(0)
    path = tmp_path / f"pareto_{cost}.png"
    plot_frontier(
        rows,
        pareto_frontier(rows, cost),
        path,
        cost,
        title="SN-Net over "
        + " / ".join(f"deit_{s}_patch16_224" for s in ("tiny", "small", "base"))
        + f": {len(rows)} networks",
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    img = matplotlib.image.imread(path)
    h, w = img.shape[:2]
    assert 900 <= w <= 3000 and 600 <= h <= 2000
    assert _has_colour(img, (1.0, 0.498, 0.055))  # the frontier line (tab:orange)
    assert _has_colour(img, (0.839, 0.153, 0.157))  # the anchor stars (tab:red)
    assert plt.get_fignums() == []  # no pyplot figure left open by the library
