"""Pareto frontier of networks (cost vs accuracy), budget picking, and the frontier plot."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import BudgetError, ConfigError

Row = Mapping[str, Any]


def pareto_frontier(rows: Sequence[Row], cost: str = "flops", metric: str = "top1") -> list[Row]:
    """The non-dominated rows (no other row is as cheap and as accurate, one of them strictly),
    sorted by cost. Of exact ties (same cost and metric) the lowest ``cfg_id`` is kept.

    Sorting by (cost, -metric, cfg_id) and keeping each row that beats the best metric seen so
    far is O(n log n): a row is dominated exactly when a cheaper-or-equal row is at least as good.
    """
    ordered = sorted(rows, key=lambda r: (r[cost], -r[metric], r.get("cfg_id", 0)))
    frontier: list[Row] = []
    for row in ordered:
        if not frontier or row[metric] > frontier[-1][metric]:
            frontier.append(row)
    return frontier


def parse_flops(text: str | float | int) -> float:
    """``'2.5G'`` -> 2.5e9, ``'800M'`` -> 8e8, ``'1.2e9'``, ``'1500000000'``; 'FLOPs' suffix allowed."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*(?:flops)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"--budget-flops '{text}' is not a number: use e.g. 2.5G or 800M")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[match.group(2).lower()]
    return float(match.group(1)) * scale


def format_flops(n: float) -> str:
    """``1258411200`` -> ``'1.26G'``; ``850300000`` -> ``'850.3M'``."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}G"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}K"


def _format_cost(value: float, cost: str) -> str:
    return format_flops(value) if cost == "flops" else f"{value:.2f} ms"


def pick_for_budget(rows: Sequence[Row], budget: float, cost: str = "flops", metric: str = "top1") -> Row:
    """The most accurate network whose cost is within ``budget`` (on the frontier by construction)."""
    fitting = [r for r in pareto_frontier(rows, cost, metric) if r[cost] <= budget]
    if not fitting:
        cheapest = min(rows, key=lambda r: r[cost])
        flag = "--budget-flops" if cost == "flops" else "--budget-latency"
        raise BudgetError(
            f"no network fits {flag} {_format_cost(budget, cost)}: the cheapest network "
            f"(cfg_id {cheapest['cfg_id']}, {cheapest['name']}) needs {_format_cost(cheapest[cost], cost)}"
        )
    return fitting[-1]  # the frontier is sorted by cost with strictly increasing metric


def format_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """A fixed-width text table; FLOPs shown as G/M, floats with two decimals."""

    def cell(col: str, v: Any) -> str:
        if col == "flops":
            return format_flops(v)
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    cells = [[cell(c, r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def plot_frontier(rows: Sequence[Row], frontier: Sequence[Row], path: str | Path, cost: str = "flops",
                  metric: str = "top1", title: Optional[str] = None) -> None:
    """Every network as a point, anchors as labelled stars, the frontier as a line; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, xlabel = (1e9, "GFLOPs") if cost == "flops" else (1.0, "latency (ms)")
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    stitched = [r for r in rows if not r.get("is_anchor")]
    anchors = [r for r in rows if r.get("is_anchor")]
    ax.scatter([r[cost] / scale for r in stitched], [r[metric] for r in stitched], s=22, c="tab:blue",
               alpha=0.55, label=f"stitched networks ({len(stitched)})")
    ax.plot([r[cost] / scale for r in frontier], [r[metric] for r in frontier], "-o", c="tab:orange",
            ms=5, lw=1.6, label=f"Pareto frontier ({len(frontier)})")
    ax.scatter([r[cost] / scale for r in anchors], [r[metric] for r in anchors], s=160, marker="*",
               c="tab:red", edgecolors="k", zorder=5, label="anchors")
    for r in anchors:
        ax.annotate(r["name"], (r[cost] / scale, r[metric]), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or f"SN-Net: {len(rows)} networks")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
