"""Pareto frontier of networks (cost vs accuracy), budget picking, and the frontier plot.

A row is one network of an SN-Net results table: a mapping with at least ``cfg_id``, ``name``, the
cost column (``flops`` or ``latency_ms``) and the metric column (``top1``); ``is_anchor`` marks the
plain anchor models.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import BudgetError, ConfigError
from ..io.paths import atomic_path

Row = Mapping[str, Any]

_FLOPS_RE = re.compile(r"\s*(\d*\.?\d+(?:e[-+]?\d+)?)\s*([kmgt]?)\s*(?:flops)?\s*", re.IGNORECASE)
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_COST_AXIS = {"flops": ("GFLOPs", 1e9), "latency_ms": ("latency (ms)", 1.0)}
_METRIC_AXIS = {"top1": "top-1 accuracy (%)", "top5": "top-5 accuracy (%)"}


def pareto_frontier(rows: Sequence[Row], cost: str = "flops", metric: str = "top1") -> list[Row]:
    """The non-dominated rows, sorted by cost ascending (and so by metric strictly ascending).

    A row is dominated when another row has cost <= and metric >=, one of them strictly. Of rows
    that tie exactly (same cost and same metric) only the one with the lowest ``cfg_id`` is kept,
    so the frontier never lists two networks with the same trade-off.

    O(n log n): after sorting by (cost, -metric, cfg_id) every row that could dominate a row comes
    before it, so a row is on the frontier exactly when it beats the best metric seen so far.
    """
    ordered = sorted(rows, key=lambda r: (r[cost], -r[metric], r["cfg_id"]))
    frontier: list[Row] = []
    for row in ordered:
        if not frontier or row[metric] > frontier[-1][metric]:
            frontier.append(row)
    return frontier


def parse_flops(text: str | float | int) -> float:
    """A FLOPs budget: ``'2.5G'`` -> 2.5e9, ``'800M'`` -> 8e8, ``'1.2e9'``, ``'1500000000'``.

    Case-insensitive; K/M/G/T suffixes and a trailing ``FLOPs`` are allowed. Numbers go through the
    same parser, so NaN, infinities, negatives and booleans are refused like bad text.
    """
    match = _FLOPS_RE.fullmatch(str(text))
    if not match:
        raise ConfigError(f"--budget-flops '{text}' is not a number: use e.g. 2.5G or 800M")
    return float(match.group(1)) * _SCALE[match.group(2).lower()]


def format_flops(n: float) -> str:
    """``1258411200`` -> ``'1.26G'``; ``850300000`` -> ``'850.3M'``; ``41200`` -> ``'41.2K'``."""
    # switch where the smaller unit would round up to 1000, so 999.97M reads '1.00G', not '1000.0M'
    if n >= 999.95e6:
        return f"{n / 1e9:.2f}G"
    if n >= 999.95e3:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}K"


def _format_cost(value: float, cost: str) -> str:
    return format_flops(value) if cost == "flops" else f"{value:.2f} ms"


def pick_for_budget(rows: Sequence[Row], budget: float, cost: str = "flops", metric: str = "top1") -> Row:
    """The best network with cost <= ``budget``: highest metric, then lowest cost, then lowest cfg_id.

    That network is always on the frontier, so it is the costliest frontier row within budget.
    Raises :class:`BudgetError` naming the cheapest network when nothing fits.
    """
    frontier = pareto_frontier(rows, cost, metric)
    flag = "--budget-flops" if cost == "flops" else "--budget-latency"
    if not frontier:
        raise BudgetError(f"no networks to pick from for {flag}: the results table is empty")
    fitting = [r for r in frontier if r[cost] <= budget]
    if not fitting:
        cheapest = frontier[0]  # the frontier starts at the lowest cost of all rows
        raise BudgetError(
            f"no network fits {flag} {_format_cost(budget, cost)}: the cheapest network "
            f"(cfg_id {cheapest['cfg_id']}, {cheapest['name']}) needs {_format_cost(cheapest[cost], cost)}"
        )
    return fitting[-1]


def _cell(column: str, value: Any) -> str:
    if column == "flops":
        return format_flops(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``columns``: FLOPs as G/M, floats with two decimals.

    Numeric columns are right-aligned so digits line up; a missing value is left blank.
    """
    cells = [[_cell(c, r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(r.get(c)) for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(c) for c in cells])


def plot_frontier(
    rows: Sequence[Row],
    frontier: Sequence[Row],
    path: str | Path,
    cost: str = "flops",
    metric: str = "top1",
    title: Optional[str] = None,
) -> None:
    """Save a PNG of every network (anchors as labelled stars) with the frontier drawn as a line."""
    # Figure + Agg canvas rather than pyplot: renders headless without switching the caller's
    # backend (matplotlib.use would close a notebook's figures) and leaks no global figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xlabel, scale = _COST_AXIS.get(cost, (cost, 1.0))
    fig = Figure(figsize=(9, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    stitched = [r for r in rows if not r.get("is_anchor")]
    anchors = [r for r in rows if r.get("is_anchor")]
    ax.scatter(
        [r[cost] / scale for r in stitched],
        [r[metric] for r in stitched],
        s=22,
        c="tab:blue",
        alpha=0.55,
        zorder=2,
        label=f"stitched networks ({len(stitched)})",
    )
    ax.plot(
        [r[cost] / scale for r in frontier],
        [r[metric] for r in frontier],
        "-o",
        c="tab:orange",
        lw=1.8,
        ms=7,
        mec="k",
        mew=0.6,
        zorder=3,
        label=f"Pareto frontier ({len(frontier)})",
    )
    ax.scatter(
        [r[cost] / scale for r in anchors],
        [r[metric] for r in anchors],
        s=200,
        marker="*",
        c="tab:red",
        edgecolors="k",
        zorder=4,
        label=f"anchors ({len(anchors)})",
    )

    # labels of anchors in the right half point left, so long model names stay inside the figure
    xs = [r[cost] / scale for r in rows]
    middle = (min(xs) + max(xs)) / 2 if xs else 0.0
    for r in anchors:
        x = r[cost] / scale
        right_half = x > middle
        ax.annotate(
            r["name"],
            (x, r[metric]),
            textcoords="offset points",
            xytext=(-9 if right_half else 9, -13),
            ha="right" if right_half else "left",
            fontsize=8,
            zorder=5,
        )

    ax.set_xlabel(xlabel)
    ax.set_ylabel(_METRIC_AXIS.get(metric, metric))
    # long titles (e.g. three anchor names) are wrapped, not cut off at the figure edge
    ax.set_title(textwrap.fill(title or f"SN-Net: {len(rows)} networks", 80), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


# ---------------------------------------------------------------------------------------------
# picking within budgets (eval.py --budget-flops / --budget-latency)
# ---------------------------------------------------------------------------------------------
def pick(rows: Sequence[dict], budget_flops: Optional[float], budget_latency: Optional[float]) -> dict:
    """The most accurate network within the budget(s); on the frontier of the budgeted cost."""
    if budget_latency is not None:
        within = [r for r in rows if r["latency_ms"] <= budget_latency]
        if budget_flops is None:
            return pick_for_budget(rows, budget_latency, cost="latency_ms", metric="top1")
        if not within:
            pick_for_budget(rows, budget_latency, cost="latency_ms", metric="top1")  # raises with the cheapest
        try:
            return pick_for_budget(within, budget_flops, cost="flops", metric="top1")
        except BudgetError:
            raise BudgetError(
                f"no network fits both --budget-flops {format_flops(budget_flops)} and --budget-latency "
                f"{budget_latency:g} ms: relax one of them"
            ) from None
    return pick_for_budget(rows, budget_flops, cost="flops", metric="top1")


def describe_pick(row: dict, budget_flops: Optional[float], budget_latency: Optional[float]) -> str:
    """One line naming the picked network and its numbers."""
    budget = " and ".join(
        ([f"{format_flops(budget_flops)} FLOPs"] if budget_flops is not None else [])
        + ([f"{budget_latency:g} ms"] if budget_latency is not None else [])
    )
    lat = f", {row['latency_ms']:.2f} ms" if "latency_ms" in row else ""
    return (
        f"Best network within {budget}: cfg_id {row['cfg_id']} ({row['name']}): top-1 {row['top1']:.2f}, "
        f"top-5 {row['top5']:.2f}, {format_flops(row['flops'])} FLOPs, {row['params'] / 1e6:.2f} M params{lat}"
    )


def check_flops_budget(rows: Sequence[dict], budget: float) -> None:
    """Refuse a FLOPs budget below the cheapest network (before any data is read)."""
    cheapest = min(rows, key=lambda r: r["flops"])
    if cheapest["flops"] > budget:
        raise BudgetError(
            f"no network fits --budget-flops {format_flops(budget)}: the cheapest network "
            f"(cfg_id {cheapest['cfg_id']}, {cheapest['name']}) needs {format_flops(cheapest['flops'])}"
        )
