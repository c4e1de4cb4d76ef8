"""lab.py's ``report.html``: the stitching matrices per adapter kind (front block x back block,
coloured by top-1), every cell's trajectory, top-1 against destination depth and against FLOPs,
and a sortable table of the cells; the same numbers as ``cells.csv``, ``trajectory.csv`` and the
PNGs (mean +- std over seeds at each route and adapter's best learning rate)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Sequence

from ..report.page import meta_pairs, write_page, written_at
from .outputs import CELL_COLUMNS, TRAJECTORY_COLUMNS, seed_means

REPORT_NAME = "report.html"


def lab_report_data(
    records: dict[int, dict[str, Any]], total_cells: int, about: Sequence[tuple[str, Any]], argv: Sequence[str]
) -> dict[str, Any]:
    """The page's data from the finished cells' ``records`` (as ``cells/cell-NNNN.json`` holds them)."""
    ordered = [records[i] for i in sorted(records)]
    cells = [{**{k: r["row"][k] for k in CELL_COLUMNS}, **r["pair"]} for r in ordered]
    trajectories = {
        r["row"]["cell"]: [{k: t[k] for k in TRAJECTORY_COLUMNS if k != "cell"} for t in r["trajectory"]]
        for r in ordered
    }
    return {
        "cells": cells,
        "trajectories": trajectories,
        "points": seed_means(ordered) if ordered else [],
        "meta": meta_pairs(
            [
                *about,
                ("cells", f"{len(ordered)} of {total_cells} finished"),
                ("command", shlex.join(["python", "lab.py", *map(str, argv)])),
                ("written", written_at()),
            ]
        ),
    }


def write_report(
    out_dir: Path,
    records: dict[int, dict[str, Any]],
    total_cells: int,
    about: Sequence[tuple[str, Any]],
    argv: Sequence[str],
) -> Path:
    """``out_dir/report.html`` of the lab's finished cells; ``about``: what the page's header says
    about the run (``(what, value)`` pairs)."""
    data = lab_report_data(records, total_cells, about, argv)
    title = f"Stitching lab {out_dir.name}: {len(data['cells'])} cells"
    return write_page(out_dir / REPORT_NAME, "lab", title, data)
