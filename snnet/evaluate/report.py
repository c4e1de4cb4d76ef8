"""eval.py's ``report.html`` beside ``stitches.csv``: every network on the FLOPs-accuracy plane
(and latency when measured), the frontier, the anchors, a budget slider picking as
``--budget-flops`` / ``--budget-latency`` do, the commands that ship the pick, a sortable table.

What the page says about the run (checkpoint, data, latency setting) comes from
``DIR/sweep_partial.jsonl``, which the sweep leaves there; ``eval.py --report-only`` rewrites the
page from ``DIR/stitches.csv`` without weights or data (the SN-Net built from the config as
``--flops-only`` builds it, for the route drawings).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..errors import DataError
from ..report.page import file_time, meta_pairs, write_page, written_at
from ..report.routes import route_svg
from .results import PARTIAL_NAME

if TYPE_CHECKING:
    from ..core.model import SNNet

REPORT_NAME = "report.html"
# eval.py options the page's commands set themselves (-> how many values follow each)
_SET_BY_PAGE = {
    "--budget-flops": 1,
    "--budget-latency": 1,
    "--export": 1,
    "--export-path": 1,
    "--overwrite": 0,
    "--report-only": 0,
}
_COLUMNS = ("cfg_id", "name", "flops", "params", "top1", "top5", "latency_ms", "is_anchor")


def rerun_args(argv: Sequence[str]) -> list[str]:
    """eval.py's arguments without those the page's commands set (budgets, export, --overwrite);
    abbreviated options (``--budget-f``) are recognised as argparse recognises them."""
    from ..cli import build_eval_parser

    options = build_eval_parser()._option_string_actions
    out, skip = [], 0
    for token in map(str, argv):
        if skip:
            skip -= 1
            continue
        flag, equals, _ = token.partition("=")
        if flag.startswith("--"):
            matches = [flag] if flag in options else [o for o in options if o.startswith(flag)]
            if len(matches) == 1 and matches[0] in _SET_BY_PAGE:
                skip = 0 if equals else _SET_BY_PAGE[matches[0]]
                continue
        out.append(token)
    return out


def _option_given(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; the last one), else None."""
    value = None
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value


def _rerun_with_checkpoint(args: list[str], out_dir: Path, flops_only: bool) -> tuple[list[str], str]:
    """The rerun's arguments naming the evaluated checkpoint (``--report-only`` runs need not
    name it; the sweep's record does), and a note when it is not known."""
    if flops_only or _option_given(args, "--resume") or _option_given(args, "--checkpoint"):
        return args, ""
    header, _ = run_description(out_dir)
    if header is not None and header.get("checkpoint"):
        return [*args, "--resume", str(header["checkpoint"])], ""
    if header is not None:  # the sweep evaluated an untrained SN-Net: rerun it as it was
        return args, ""
    return [*args, "--resume", "CKPT"], "CKPT: the checkpoint this sweep evaluated (this folder does not record it)."


def run_description(out_dir: Path) -> tuple[Optional[dict], Optional[dict]]:
    """What the sweep in ``out_dir`` evaluated (the header of its partial results) and the
    setting of its latency measurements; ``(None, None)`` when the file is not there."""
    path = out_dir / PARTIAL_NAME
    if not path.is_file():
        return None, None
    header, latency = None, None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn last line of a killed write
        if record.get("type") == "header":
            header = record.get("description")
        elif record.get("type") == "latency":
            latency = record
    return header, latency


def _describe(rows: list[dict], out_dir: Path, flops_only: bool) -> list[tuple[str, Any]]:
    if flops_only:
        return [("weights, data", "none: FLOPs and params only (eval.py --flops-only), no accuracies")]
    header, latency = run_description(out_dir)
    if header is None:
        return [("checkpoint, data", f"not recorded (no {PARTIAL_NAME} in {out_dir})")]
    ckpt = header.get("checkpoint")
    if ckpt:
        ckpt = f"{ckpt} (modified {file_time(ckpt) or 'when evaluated; the file is gone now'})"
        ckpt += ", EMA weights" if header.get("use_ema") else ""
    else:
        ckpt = "none: untrained stitching layers" + (
            "" if header.get("pretrained") or header.get("anchor_checkpoints") else ", randomly initialised anchors"
        )
    data = header.get("dataset") or header.get("data_dir")
    pairs = [("checkpoint", ckpt), ("data", f"{data}, split '{header.get('split')}', {header.get('samples')} images")]
    if header.get("amp"):
        pairs.append(("precision", f"autocast {header['amp']}"))
    if latency is not None and "latency_ms" in rows[0]:
        threads = f", {latency['threads']} threads" if latency.get("threads") else ""
        pairs.append(
            ("latency", f"median forward at batch {latency.get('batch_size')} on {latency.get('device')}{threads}")
        )
    return pairs


def sweep_report_data(
    rows: Sequence[dict], net: SNNet, out_dir: Path, argv: Sequence[str], flops_only: bool = False
) -> dict[str, Any]:
    """What the page shows: the rows (with each route's drawing), the run, the commands."""
    names = [a.name for a in net.anchor_adapters]
    page_rows = []
    for r in rows:
        route = net.stitches[r["cfg_id"]].route
        page_rows.append({**{k: r[k] for k in _COLUMNS if k in r}, "svg": route_svg(route, names, (), r["name"])})
    args, note = _rerun_with_checkpoint(rerun_args(argv), out_dir, flops_only)
    config = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-c", "--config")]
    ckpt = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--resume", "--checkpoint")]
    predict = (
        ["python", "predict.py"] + (["-c", config[-1]] if config else []) + (["--resume", ckpt[-1]] if ckpt else [])
    )
    if ckpt and "--use-ema" in args:
        predict.append("--use-ema")
    return {
        "rows": page_rows,
        "anchors": names,
        "meta": meta_pairs(
            [
                ("networks", f"{len(rows)} of an SN-Net over {' / '.join(names)}"),
                *_describe(list(rows), out_dir, flops_only),
                ("results", f"{out_dir / 'stitches.csv'}"),
                ("command", shlex.join(["python", "eval.py", *map(str, argv)])),
                ("written", written_at()),
            ]
        ),
        "commands": {
            "eval": shlex.join(["python", "eval.py", *args]),
            "predict": shlex.join(predict) if ckpt else "",
            "note": note,
        },
    }


def write_report(
    rows: Sequence[dict], net: SNNet, out_dir: Path, argv: Sequence[str], flops_only: bool = False
) -> Path:
    """``out_dir/report.html`` for the results ``rows`` of ``net`` made by ``eval.py argv``."""
    title = f"SN-Net sweep: {len(rows)} networks over {' / '.join(net.config['anchors'])}"
    data = sweep_report_data(rows, net, out_dir, argv, flops_only)
    return write_page(out_dir / REPORT_NAME, "sweep", title, data)


def rows_of_this_snnet(out_dir: Path, net: SNNet) -> list[dict]:
    """``out_dir/stitches.csv``, checked to be a sweep of ``net`` (same cfg_ids and names)."""
    from .results import read_results

    table = out_dir / "stitches.csv"
    if not table.is_file():
        raise DataError(f"--report-only rewrites the report of {table}, which does not exist: run the sweep first")
    rows = read_results(table)
    for r in rows:
        if r["cfg_id"] >= net.num_stitches or net.stitches[r["cfg_id"]].name != r["name"]:
            raise DataError(
                f"{table} is not a sweep of this SN-Net (cfg_id {r['cfg_id']} is {r['name']} there): "
                f"pass the config or --resume checkpoint it was made with"
            )
    if not rows:
        raise DataError(f"{table} lists no networks")
    return rows
