"""A lab grid from YAML: which cells to train.

A lab config is a train.py config (every key train.py takes: anchors, data, recipe, ``epochs``)
plus the grid's own keys:

* ``routes``: route names (``A[:i]>B[j:]``, the project's route-name syntax), or
* ``gaps``: routes generated over front cuts x back entries, per anchor::

      gaps:
        cuts: {resnet18: [2, 4]}              # A[:i]: the front runs A's first i blocks
        entries: {deit_tiny_patch16_224: [1, 3]}  # B[j:]: the back starts at B's block j
        directions: both                       # forward (config order), backward or both

  every ordered pair of different anchors in the allowed directions gives ``A[:i]>B[j:]`` for
  each cut of A and entry of B;
* ``adapters``: stitching-layer kinds (``linear``, ``lora``, ...), or mappings of train.py keys
  with a ``name`` (``{name: lora-8, stitch_layer: lora, lora_rank: 8}``);
* ``lrs`` and ``seeds``: lists;
* ``chunk_cells``: cells trained together in one pass, each finished chunk kept (0: all).

The cells are routes x adapters x lrs x seeds, in that nesting order. The keys the grid sets per
cell (``lr``, ``seed``, ``stitch_layer``) and what a cell cannot share with its neighbours (batch
random erasing, Mixup/CutMix, distillation, EMA: they draw from the process RNG or run extra
models per step) are refused with one line.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import config_defaults, load_config_file
from ..core.routes import Route, Segment, route_name
from ..errors import ConfigError

LAB_KEYS = ("routes", "gaps", "adapters", "lrs", "seeds", "chunk_cells")
# train.py keys the grid sets for each cell -> the lab key that lists them
GRID_OWNED = {"lr": "lrs", "seed": "seeds", "stitch_layer": "adapters", "train_only": "(always stitching)"}
DIRECTIONS = ("forward", "backward", "both")


@dataclass(frozen=True)
class Adapter:
    """One adapter of the grid: its label in the outputs and the train.py keys it sets."""

    name: str
    overrides: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Cell:
    """One cell: a route trained with one adapter, learning rate and seed."""

    index: int
    route: str
    adapter: Adapter
    lr: float
    seed: int

    def key(self) -> dict[str, Any]:
        """What identifies the cell in the finished-cell files."""
        return {"cell": self.index, "route": self.route, "adapter": self.adapter.name, "lr": self.lr, "seed": self.seed}


@dataclass
class LabSpec:
    path: str
    train: dict[str, Any]  # checked train.py defaults
    adapters: list[Adapter]
    lrs: list[float]
    seeds: list[int]
    routes: Optional[list[str]] = None
    gaps: Optional[dict[str, Any]] = None
    chunk_cells: int = 0
    raw: dict[str, Any] = field(default_factory=dict)  # the file as read, for the run's fingerprint


def _list(where: str, value: Any, kind: type) -> list:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"{where} is empty: give at least one value")
    out = []
    for item in items:
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            item = float(item)
        if not isinstance(item, kind) or isinstance(item, bool):
            raise ConfigError(f"{where} holds {item!r}: use {kind.__name__} values")
        out.append(item)
    return out


def _adapters(where: str, value: Any, parser) -> list[Adapter]:
    out = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            item = {"name": item, "stitch_layer": item}
        if not isinstance(item, dict) or "stitch_layer" not in item:
            raise ConfigError(f"{where}: {item!r} is no adapter: give a kind name or a mapping with stitch_layer")
        item = {str(k).replace("-", "_"): v for k, v in item.items()}
        name = str(item.pop("name", item["stitch_layer"]))
        checked = config_defaults(parser, item, f"{where} '{name}'")
        out.append(Adapter(name, tuple(sorted(checked.items()))))
    if len({a.name for a in out}) != len(out):
        raise ConfigError(f"{where} repeats a name: give each adapter its own name")
    return out


def load_lab_spec(path: str | Path) -> LabSpec:
    """The lab config at ``path``, every key checked (one line naming the key on a mistake)."""
    from ..cli import build_train_parser

    raw = load_config_file(path)
    where = f"config {path}"
    grid = {k: raw[k] for k in LAB_KEYS if k in raw}
    train = {k: v for k, v in raw.items() if k not in LAB_KEYS}
    for key, lab_key in GRID_OWNED.items():
        if key in train:
            raise ConfigError(f"{where}: '{key}' is set per cell by the grid: use '{lab_key}'")
    parser = build_train_parser()
    checked = config_defaults(parser, train, where)
    for key in ("adapters", "lrs", "seeds"):
        if key not in grid:
            raise ConfigError(f"{where}: '{key}' is missing: a lab grid needs adapters, lrs and seeds")
    if ("routes" in grid) == ("gaps" in grid):
        raise ConfigError(f"{where}: give either 'routes' (a list of route names) or 'gaps', not both or neither")
    chunk = grid.get("chunk_cells", 0)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
        raise ConfigError(f"{where}: chunk_cells is {chunk!r}: use a whole number >= 0 (0: every cell in one pass)")
    spec = LabSpec(
        path=str(path),
        train=checked,
        adapters=_adapters(f"{where}: adapters", grid["adapters"], parser),
        lrs=_list(f"{where}: lrs", grid["lrs"], float),
        seeds=_list(f"{where}: seeds", grid["seeds"], int),
        routes=_list(f"{where}: routes", grid["routes"], str) if "routes" in grid else None,
        gaps=_check_gaps(f"{where}: gaps", grid["gaps"]) if "gaps" in grid else None,
        chunk_cells=chunk,
        raw=raw,
    )
    check_shareable(Namespace(**{**vars(parser.parse_args([])), **checked}), where)
    return spec


def check_shareable(args: Namespace, where: str) -> None:
    """Refuse what would make a cell's batches or steps differ from its neighbours'."""
    refused = [
        (args.reprob > 0, "reprob", "random erasing draws from the process RNG per batch: set reprob: 0"),
        (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None, "mixup/cutmix", "set them to 0"),
        (args.distillation_type != "none", "distillation_type", "the lab trains without a teacher: set none"),
        (args.model_ema, "model_ema", "the lab keeps no EMA: set false"),
        (args.split_bn, "split_bn", "anchors are frozen in eval mode: set false"),
        (args.amp, "amp", "a lab trains in float32 for now: set false"),
        (bool(args.torchcompile), "torchcompile", "a lab runs eagerly for now: remove the key"),
        (bool(args.resume) or bool(args.initial_checkpoint), "resume", "a lab resumes by itself: remove the key"),
        (
            not args.pretrained and not any(c and str(c).lower() != "none" for c in args.anchor_checkpoints or ()),
            "random anchors",
            "stitching joins trained anchors, each cell the same ones: set pretrained: true or anchor_checkpoints",
        ),
    ]
    for bad, key, fix in refused:
        if bad:
            raise ConfigError(f"{where}: {key} is not supported in a lab grid: {fix}")


def _check_gaps(where: str, gaps: Any) -> dict[str, Any]:
    if not isinstance(gaps, dict) or not {"cuts", "entries"} <= set(gaps):
        raise ConfigError(f"{where} needs 'cuts' and 'entries', mappings of anchor name -> block indices")
    unknown = set(gaps) - {"cuts", "entries", "directions"}
    if unknown:
        raise ConfigError(f"{where}: unknown key '{sorted(unknown)[0]}': use cuts, entries, directions")
    directions = gaps.get("directions", "both")
    if directions not in DIRECTIONS:
        raise ConfigError(f"{where}: directions is {directions!r}: use one of {', '.join(DIRECTIONS)}")
    out: dict[str, Any] = {"directions": directions}
    for key in ("cuts", "entries"):
        if not isinstance(gaps[key], dict) or not gaps[key]:
            raise ConfigError(f"{where}: {key} must map anchor names to lists of block indices")
        out[key] = {str(name): _list(f"{where}: {key}: {name}", v, int) for name, v in gaps[key].items()}
    return out


def gap_routes(gaps: dict[str, Any], names: Sequence[str], depths: Sequence[int]) -> list[str]:
    """The route names ``gaps`` generates over anchors ``names`` (config order) of ``depths``."""
    for key in ("cuts", "entries"):
        for name in gaps[key]:
            if name not in names:
                raise ConfigError(f"gaps: {key}: '{name}' is not an anchor: use one of {', '.join(names)}")
    n = len(names)
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    if gaps["directions"] == "forward":
        pairs = [(a, b) for a, b in pairs if a < b]
    elif gaps["directions"] == "backward":
        pairs = [(a, b) for a, b in pairs if a > b]
    routes = []
    for a, b in pairs:
        for i in gaps["cuts"].get(names[a], []):
            if not 1 <= i <= depths[a]:
                raise ConfigError(f"gaps: cut {i} of {names[a]} is outside 1..{depths[a]} (its block count)")
            for j in gaps["entries"].get(names[b], []):
                if not 0 <= j < depths[b]:
                    raise ConfigError(f"gaps: entry {j} of {names[b]} is outside 0..{depths[b] - 1}")
                route = Route((Segment(a, 0, i), Segment(b, j, depths[b])), layers=(0,))
                routes.append(route_name(route, names, depths))
    if not routes:
        raise ConfigError("gaps generate no route: give cuts of a front anchor and entries of another anchor")
    return routes


def expand_cells(spec: LabSpec, routes: Sequence[str]) -> list[Cell]:
    """routes x adapters x lrs x seeds, numbered in that nesting order."""
    cells = []
    for route in routes:
        for adapter in spec.adapters:
            for lr in spec.lrs:
                for seed in spec.seeds:
                    cells.append(Cell(len(cells), route, adapter, lr, seed))
    return cells


def parse_shard(text: Optional[str]) -> tuple[int, int]:
    """``--cell-shard I/K`` -> (I, K); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--cell-shard {text!r} is not I/K: e.g. 0/4 for the first of 4 array tasks") from None
    if not 0 <= i < k:
        raise ConfigError(f"--cell-shard {text}: I must be in 0..K-1")
    return i, k
