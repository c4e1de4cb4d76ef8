"""What serve.py serves: the networks of a trained SN-Net (``--resume``, with the rows of its
eval.py sweep) or of a frontier file (``--exported``: one TorchScript module holding every
frontier network, ``m.select(cfg_id); m(x)``, and its ``.json`` sidecar).

A source gives the rows budgets pick from (:func:`snnet.evaluate.pareto.pick`), the FLOPs
frontier the controller moves along, the preprocessing and class names of
:func:`snnet.evaluate.predict.prediction_info`, and ``forward(cfg_id, x)``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import CheckpointError, DataError
from ..evaluate.pareto import pareto_frontier

# what predicting needs from a sidecar (eval.py --export writes these, snnet.evaluate.predict reads them)
_SIDECAR_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "class_names", "networks")
_NETWORK_KEYS = ("cfg_id", "name", "flops", "params", "top1", "top5", "latency_ms")


@dataclass
class ModelSource:
    """The networks a server can run.

    ``rows``: every network budgets may pick (a sweep's ``stitches.csv`` rows, or the frontier
    file's networks), each with ``cfg_id``, ``name``, ``flops``, ``params``, ``top1`` and, when
    measured, ``latency_ms``. ``frontier``: the FLOPs frontier, ascending in FLOPs and accuracy.
    ``default_cfg_id``: the network served without a budget or load (the most accurate of the
    frontier, or the frontier file's ``default_cfg_id``). ``info``: preprocessing and class names.
    ``forward(cfg_id, x)``: logits of network ``cfg_id`` on a normalised batch.
    """

    rows: list[dict[str, Any]]
    frontier: list[dict[str, Any]]
    default_cfg_id: int
    info: dict[str, Any]
    forward: Callable[[int, torch.Tensor], torch.Tensor]
    description: str

    def row(self, cfg_id: int) -> dict[str, Any]:
        return next(r for r in self.rows if r["cfg_id"] == cfg_id)

    def has_latency(self) -> bool:
        return all(r.get("latency_ms") is not None for r in self.rows)


def sweep_rows(results: Path, checkpoint: str) -> list[dict[str, Any]]:
    """The rows of the eval.py sweep in ``results`` (its ``stitches.csv``, with accuracies)."""
    from ..evaluate.results import read_results

    table = results / "stitches.csv"
    if not table.is_file():
        raise DataError(
            f"serving picks networks from the sweep's {table}, which does not exist: run eval.py --resume "
            f"{checkpoint} --output {results} first (add --measure-latency for budget_ms), or pass --results DIR"
        )
    rows = read_results(table)
    if not rows or "top1" not in rows[0]:
        raise DataError(f"{table} has no accuracies (an eval.py --flops-only table): run the sweep with data")
    return rows


def snnet_source(cfg: Any) -> ModelSource:
    """``--resume CKPT``: the SN-Net (loaded as predict.py loads it) and the rows of its sweep."""
    from ..evaluate.load import default_out_dir
    from ..evaluate.predict import load_snnet

    results = Path(cfg.results) if cfg.results else default_out_dir(cfg.checkpoint, cfg.use_ema)
    rows = sweep_rows(results, cfg.checkpoint)
    net, info = load_snnet(cfg)
    for r in rows:
        if r["cfg_id"] >= net.num_stitches or net.stitches[r["cfg_id"]].name != r["name"]:
            raise DataError(
                f"{results / 'stitches.csv'} is not a sweep of this SN-Net (cfg_id {r['cfg_id']} is {r['name']} "
                f"there): pass the --results DIR of this checkpoint"
            )
    net.to(cfg.device).eval()

    def forward(cfg_id: int, x: torch.Tensor) -> torch.Tensor:
        net.select(cfg_id)
        return net(x)

    frontier = pareto_frontier(rows, "flops", "top1")
    return ModelSource(rows, frontier, frontier[-1]["cfg_id"], info, forward, f"{cfg.checkpoint} ({results})")


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = Path(str(path) + ".json")
    if not sidecar.is_file():
        raise CheckpointError(
            f"'{sidecar}' is missing: serving needs the networks, preprocessing and class names eval.py "
            f"--export frontier writes beside the file; export again, or serve with --resume CKPT"
        )
    try:
        info = json.loads(sidecar.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{sidecar}' is not valid JSON ({e}): export again with eval.py --export") from None
    missing = [k for k in _SIDECAR_KEYS if not isinstance(info, dict) or k not in info]
    if not missing and (not isinstance(info["networks"], list) or not info["networks"]):
        missing = ["networks"]
    if not missing:
        missing = sorted({k for n in info["networks"] for k in _NETWORK_KEYS if not isinstance(n, dict) or k not in n})
    if missing:
        raise CheckpointError(
            f"'{sidecar}' lacks {', '.join(missing)}: it is not a frontier file's sidecar; export again with "
            f"eval.py --export frontier"
        )
    return info


def _ranked(networks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sidecar's networks as rows budgets can pick from. They are a frontier, ascending in
    FLOPs and accuracy, so when accuracies are missing their rank in FLOPs orders them the same."""
    ranked = all(n["top1"] is not None for n in networks)
    rows = []
    for rank, n in enumerate(sorted(networks, key=lambda n: n["flops"])):
        row = {k: n[k] for k in _NETWORK_KEYS if n[k] is not None}
        row["top1"] = float(n["top1"]) if ranked else float(rank)
        rows.append(row)
    return rows


def exported_source(path: str | Path, device: str = "cpu") -> ModelSource:
    """``--exported FILE``: a TorchScript module holding every frontier network and its sidecar."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported file '{path}' does not exist: check the path")
    info = _read_sidecar(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # whatever the reader of a damaged or foreign file trips on
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise CheckpointError(
            f"'{path}' cannot be read as TorchScript ({first}): serve a frontier file of eval.py --export frontier"
        ) from None
    if not hasattr(module, "select"):
        raise CheckpointError(
            f"'{path}' holds one network (no select method): serve a frontier file (eval.py --export frontier) "
            f"or the checkpoint with --resume"
        )
    module.eval()

    def forward(cfg_id: int, x: torch.Tensor) -> torch.Tensor:
        module.select(cfg_id)
        return module(x)

    rows = _ranked(info["networks"])
    default = info.get("default_cfg_id")
    default = rows[-1]["cfg_id"] if default is None else int(default)
    if default not in {r["cfg_id"] for r in rows}:
        raise CheckpointError(f"'{path}.json' names default_cfg_id {default}, which is not among its networks")
    return ModelSource(rows, pareto_frontier(rows, "flops", "top1"), default, info, forward, str(path))


def load_source(cfg: Any) -> ModelSource:
    """The source ``cfg`` names: ``--resume`` or ``--exported``."""
    return exported_source(cfg.exported, cfg.device) if cfg.exported else snnet_source(cfg)


def network_entry(source: ModelSource, cfg_id: int) -> dict[str, Optional[Any]]:
    """One network as ``GET /networks`` lists it: the sweep's (or sidecar's) numbers."""
    row = source.row(cfg_id)
    entry: dict[str, Optional[Any]] = {k: row.get(k) for k in _NETWORK_KEYS}
    if source.info.get("networks"):  # a frontier file: its own numbers, nulls included
        entry = {k: v for k, v in next(n for n in source.info["networks"] if n["cfg_id"] == cfg_id).items()}
    return entry
