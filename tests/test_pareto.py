"""Pareto frontier and budget picking against brute force."""
import numpy as np
import pytest

from snnet.errors import BudgetError, ConfigError
from snnet.pareto import format_flops, parse_flops, pareto_frontier, pick_for_budget, plot_frontier


def random_rows(seed, n=60):
    rng = np.random.RandomState(seed)
    flops = rng.choice(np.arange(1, 25), n) * 1e8  # many duplicate costs
    top1 = rng.choice(np.arange(50, 80), n).astype(float)  # and duplicate accuracies
    return [{"cfg_id": i, "name": f"n{i}", "flops": float(f), "top1": float(t), "is_anchor": i < 3}
            for i, (f, t) in enumerate(zip(flops, top1))]


def brute_force(rows):
    def dominated(r):
        return any(o["flops"] <= r["flops"] and o["top1"] >= r["top1"] and (o["flops"], o["top1"]) != (r["flops"], r["top1"])
                   for o in rows)
    keep = [r for r in rows if not dominated(r)]
    firsts = {}
    for r in sorted(keep, key=lambda r: r["cfg_id"]):
        firsts.setdefault((r["flops"], r["top1"]), r)
    return sorted(firsts.values(), key=lambda r: r["flops"])


@pytest.mark.parametrize("seed", range(20))
def test_frontier_equals_brute_force(seed):
    rows = random_rows(seed)
    front = pareto_frontier(rows)
    assert [r["cfg_id"] for r in front] == [r["cfg_id"] for r in brute_force(rows)]
    assert all(a["flops"] < b["flops"] and a["top1"] < b["top1"] for a, b in zip(front, front[1:]))


@pytest.mark.parametrize("seed", range(10))
def test_budget_pick_equals_brute_force(seed):
    rows = random_rows(seed)
    for budget in (3e8, 1e9, 2e9, 3e9):
        fits = [r for r in rows if r["flops"] <= budget]
        if not fits:
            with pytest.raises(BudgetError, match="the cheapest network"):
                pick_for_budget(rows, budget)
            continue
        best = max(r["top1"] for r in fits)
        pick = pick_for_budget(rows, budget)
        assert pick["top1"] == best and pick["flops"] == min(r["flops"] for r in fits if r["top1"] == best)


def test_budget_below_everything_names_cheapest():
    rows = [{"cfg_id": 0, "name": "deit_tiny", "flops": 1.26e9, "top1": 70.0}, {"cfg_id": 1, "name": "b", "flops": 4e9, "top1": 79.0}]
    with pytest.raises(BudgetError, match=r"no network fits --budget-flops 500.0M: the cheapest network \(cfg_id 0, deit_tiny\) needs 1.26G"):
        pick_for_budget(rows, 5e8)


def test_parse_and_format_flops():
    assert parse_flops("2.5G") == 2.5e9 and parse_flops("800m") == 8e8 and parse_flops("1.2e9") == 1.2e9
    assert parse_flops("1500000000") == 1.5e9 and parse_flops("3GFLOPs") == 3e9
    with pytest.raises(ConfigError, match="is not a number"):
        parse_flops("abc")
    assert format_flops(1258411200) == "1.26G" and format_flops(850.3e6) == "850.3M"


def test_plot_writes_png(tmp_path):
    rows = random_rows(0)
    plot_frontier(rows, pareto_frontier(rows), tmp_path / "p.png")
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    h, w, _ = matplotlib.image.imread(tmp_path / "p.png").shape
    assert w > 600 and h > 400
