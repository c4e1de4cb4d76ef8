"""What eval.py writes and reads: the partial results of an interrupted sweep, ``stitches.csv``,
the official ``stitches_res.txt``, ``pareto.csv`` and the plots.

``DIR/sweep_partial.jsonl`` is how a sweep resumes: each finished chunk's metric sums are
appended (and fsynced) as soon as it is complete, and a rerun skips what is there, so an
interrupted sweep loses at most one chunk.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

from ..config import plain
from ..errors import ConfigError
from ..io.checkpoint import atomic_write
from ..io.paths import write_text
from .sweep import metrics_of

if TYPE_CHECKING:
    from ..core.model import SNNet

PARTIAL_NAME = "sweep_partial.jsonl"
PARTIAL_VERSION = 1


# ---------------------------------------------------------------------------------------------
# partial results (resuming)
# ---------------------------------------------------------------------------------------------
def fingerprint(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PartialResults:
    """``DIR/sweep_partial.jsonl``: a header naming what is evaluated, then one JSON line per
    finished network (``type: accuracy``, the sums) or latency measurement (``type: latency``).

    Lines are appended and fsynced as soon as a chunk is complete; a truncated last line (a
    process killed mid-write) is ignored. A header that describes another evaluation (other
    checkpoint, data, model...) is refused unless ``overwrite`` discards the file.
    """

    def __init__(self, out_dir: str | Path, description: Mapping[str, Any], overwrite: bool = False):
        self.path = Path(out_dir) / PARTIAL_NAME
        self.description = json.loads(json.dumps(dict(description), sort_keys=True, default=str))
        self.key = fingerprint(self.description)
        self.accuracy: dict[int, dict[str, Any]] = {}
        self.latency: dict[int, dict[str, Any]] = {}
        if overwrite and self.path.exists():
            self.path.unlink()
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append(
                [
                    {
                        "type": "header",
                        "version": PARTIAL_VERSION,
                        "fingerprint": self.key,
                        "description": self.description,
                    }
                ]
            )

    def _load(self) -> None:
        lines = self.path.read_text().splitlines()
        records = []
        for n, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(lines) - 1:
                    break  # the last line of a killed write
                raise ConfigError(f"{self.path} line {n + 1} is corrupt: delete the file or pass --overwrite") from None
        if not records or records[0].get("type") != "header":
            raise ConfigError(f"{self.path} is not a partial sweep file: delete it or pass --overwrite")
        header = records[0]
        if header.get("fingerprint") != self.key:
            theirs = header.get("description", {})
            diff = sorted(k for k in set(theirs) | set(self.description) if theirs.get(k) != self.description.get(k))
            what = ", ".join(f"{k}: {theirs.get(k)!r} there vs {self.description.get(k)!r} now" for k in diff[:3])
            raise ConfigError(
                f"{self.path.parent} holds partial results of another evaluation ({what}): "
                f"pass --overwrite to discard them, or choose another --output"
            )
        for r in records[1:]:
            if r.get("type") == "accuracy":
                self.accuracy[int(r["cfg_id"])] = r
            elif r.get("type") == "latency":
                self.latency[int(r["cfg_id"])] = r
        if len(lines) and not self.path.read_text().endswith("\n"):
            # drop the torn line so that appends start on a fresh line
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def _append(self, records: Iterable[Mapping[str, Any]]) -> None:
        try:
            with open(self.path, "a") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # e.g. ENOSPC, which names no file (a torn last line is ignored on reading)
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from None

    def add_accuracy(self, records: Iterable[Mapping[str, Any]]) -> None:
        records = [{"type": "accuracy", **r} for r in records]
        self._append(records)
        for r in records:
            self.accuracy[int(r["cfg_id"])] = r

    def add_latency(self, cfg_id: int, latency_ms: float, setting: Mapping[str, Any]) -> None:
        record = {"type": "latency", "cfg_id": int(cfg_id), "latency_ms": float(latency_ms), **setting}
        self._append([record])
        self.latency[int(cfg_id)] = record

    def latency_for(self, cfg_id: int, setting: Mapping[str, Any]) -> Optional[float]:
        r = self.latency.get(cfg_id)
        if r is None or any(r.get(k) != v for k, v in setting.items()):
            return None
        return float(r["latency_ms"])


def evaluation_description(args: Any, net: SNNet, dataset) -> dict[str, Any]:
    """What eval.py's partial results depend on (its arguments, the model, the data); a rerun
    with anything else refuses to mix them."""
    from ..run_config import ModelConfig

    model = ModelConfig.from_args(args)  # keyword arguments as dicts, however they were given
    desc: dict[str, Any] = {
        "snnet_config": net.config,
        "model_kwargs": model.model_kwargs,
        "anchor_kwargs": model.anchor_kwargs,
        "input_size": list(net.input_size),
        "num_classes": net.anchors[0].num_classes if hasattr(net.anchors[0], "num_classes") else None,
        "dataset": args.dataset or None,
        "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
        "split": args.val_split,
        "samples": len(dataset),
        "amp": args.amp_dtype if args.amp else False,
        "use_ema": args.use_ema,
    }
    if args.checkpoint:
        p = Path(args.checkpoint).resolve()
        st = p.stat()
        desc.update(checkpoint=str(p), checkpoint_bytes=st.st_size, checkpoint_mtime_ns=st.st_mtime_ns)
    else:
        desc.update(
            checkpoint=None, pretrained=args.pretrained, anchor_checkpoints=args.anchor_checkpoints, seed=args.seed
        )
        if getattr(args, "compatibility", False):  # LS-initialised layers, not random ones
            desc["compat_images"] = args.compat_images
    return plain(desc)


# ---------------------------------------------------------------------------------------------
# result tables
# ---------------------------------------------------------------------------------------------
def result_rows(flops_rows: Sequence[dict], partial, latency: Optional[dict[int, float]]) -> list[dict[str, Any]]:
    """One row per network: FLOPs/params, metrics (rounded as written), latency when measured."""
    rows = []
    for fr in flops_rows:
        row: dict[str, Any] = {k: fr[k] for k in ("cfg_id", "official_cfg_id", "name", "flops", "params") if k in fr}
        if partial is not None:
            m = metrics_of(partial.accuracy[fr["cfg_id"]])
            row.update(top1=round(m["top1"], 4), top5=round(m["top5"], 4), loss=round(m["loss"], 6))
        if latency is not None:
            row["latency_ms"] = round(latency[fr["cfg_id"]], 4)
        row["is_anchor"] = bool(fr["is_anchor"])
        rows.append(row)
    return rows


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """``rows`` as a csv file with a header, written atomically."""
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["cfg_id"])
        writer.writeheader()
        writer.writerows(rows)


def write_official(rows: Sequence[dict], path: Path) -> None:
    """The SN-Net authors' ``stitches_res.txt``: one JSON object per line, accuracy in percent,
    under the official ids (``official_cfg_id`` where the numbering differs: two-way SN-Nets)."""
    text = "".join(
        json.dumps(
            {
                "cfg_id": r.get("official_cfg_id", r["cfg_id"]),
                "flops": r["flops"],
                "params": r["params"],
                "acc1": round(r["top1"], 3),
            }
        )
        + "\n"
        for r in rows
    )
    write_text(path, text)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``stitches.csv`` written by eval.py, typed."""
    ints, floats = ("cfg_id", "official_cfg_id", "flops", "params"), ("top1", "top5", "loss", "latency_ms")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for k in ints:
                if k in row:
                    row[k] = int(row[k])
            for k in floats:
                if k in row:
                    row[k] = float(row[k])
            if "is_anchor" in row:
                row["is_anchor"] = row["is_anchor"] == "True"
            rows.append(row)
    return rows


def write_outputs(rows: list[dict], out_dir: Path, title: str, log: Callable[[str], None]) -> None:
    """stitches.csv, stitches_res.txt, pareto.csv/.png (and the latency frontier when measured);
    logs the frontier and the most accurate network."""
    from .pareto import format_flops, format_table, pareto_frontier, plot_frontier

    write_csv(rows, out_dir / "stitches.csv")
    write_official(rows, out_dir / "stitches_res.txt")
    frontier = pareto_frontier(rows, "flops", "top1")
    write_csv(frontier, out_dir / "pareto.csv")
    plot_frontier(rows, frontier, out_dir / "pareto.png", "flops", "top1", title=title)
    columns = ["cfg_id", "name", "flops", "params", "top1", "top5"]
    if "latency_ms" in rows[0]:
        lat_front = pareto_frontier(rows, "latency_ms", "top1")
        write_csv(lat_front, out_dir / "pareto_latency.csv")
        plot_frontier(rows, lat_front, out_dir / "pareto_latency.png", "latency_ms", "top1", title=title)
        columns.append("latency_ms")
    log(f"\nPareto frontier (FLOPs vs top-1): {len(frontier)} of {len(rows)} networks")
    log(format_table(frontier, columns))
    best = max(rows, key=lambda r: (r["top1"], -r["flops"]))
    log(
        f"\nMost accurate: cfg_id {best['cfg_id']} ({best['name']}) top-1 {best['top1']:.2f} at {format_flops(best['flops'])}"
    )
    log(
        f"Wrote {out_dir}/stitches.csv, stitches_res.txt, pareto.csv, pareto.png"
        + (", pareto_latency.csv, pareto_latency.png" if "latency_ms" in rows[0] else "")
    )
