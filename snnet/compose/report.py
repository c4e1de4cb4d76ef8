"""compose.py's ``report.html``: the candidates (top-1 against FLOPs and against their score),
their drawings and the pool, from what compose.py wrote to its folder (``candidates.csv``,
``pool.csv``, ``svg/<rank>.svg``), so that the page can be rebuilt from the folder alone."""

from __future__ import annotations

import csv
import shlex
from argparse import Namespace
from pathlib import Path
from typing import Any, Sequence

from ..report.page import meta_pairs, write_page, written_at

REPORT_NAME = "report.html"
_INTS, _FLOATS = ("rank", "network", "flops", "params"), ("score", "top1", "seconds")


def _read(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for k in _INTS:
                if k in row:
                    row[k] = int(row[k])
            for k in _FLOATS:
                if k in row:
                    row[k] = float(row[k])
            rows.append(row)
    return rows


def compose_report_data(out_dir: Path, args: Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """The page's data: candidates with their drawings, the pool, what the run was."""
    candidates = _read(out_dir / "candidates.csv")
    for c in candidates:
        svg = out_dir / "svg" / f"{c['rank']}.svg"
        c["svg"] = svg.read_text(encoding="utf-8") if svg.is_file() else ""
    pool = _read(out_dir / "pool.csv")
    data = args.dataset or args.data_dir
    return {
        "candidates": candidates,
        "pool": pool,
        "fit": args.fit,
        "meta": meta_pairs(
            [
                ("pool", " / ".join(args.anchors)),
                (
                    "search",
                    f"junction CKA >= {args.threshold}, network score >= {args.total_threshold}, "
                    f"at most {args.max_depth} fragments, top {args.top_k} per junction",
                ),  # fmt: skip
                (
                    "data",
                    f"{data}: junctions scored on {args.stitch_images} training images (seed {args.seed}); "
                    f"{args.fit} classifier fitted on the training split, top-1 on the validation split",
                ),  # fmt: skip
                ("results", str(out_dir / "candidates.csv")),
                ("command", shlex.join(["python", "compose.py", *map(str, argv)])),
                ("written", written_at()),
            ]
        ),
    }


def write_report(out_dir: Path, args: Namespace, argv: Sequence[str]) -> Path:
    """``out_dir/report.html`` for the composition ``compose.py argv`` wrote to ``out_dir``."""
    data = compose_report_data(out_dir, args, argv)
    title = f"Composed without training: {len(data['candidates'])} networks from a pool of {len(data['pool'])}"
    return write_page(out_dir / REPORT_NAME, "compose", title, data)
