"""Ship several networks of an SN-Net in ONE TorchScript file, each block and stitching layer once.

``eval.py --export frontier`` (the sweep's Pareto frontier) or ``--export 3,12,40`` writes a
:class:`NetworkSet`: the distinct steps of the chosen networks' routes (an anchor's stem, a
block, a stitching layer, an anchor's head), each traced on its own as the single-network export
traces a whole network, in one ``ModuleList``, plus a routing table (per cfg_id, the indices of
the units its route runs). The file needs no snnet::

    m = torch.jit.load("frontier.pt")
    m.networks()              # the cfg_ids it holds, in frontier order (ascending FLOPs)
    m(x, 12)                  # network 12
    m.select(12); m(x)        # the same; m(x) runs the selected (at first: the default) network

An anchor runs as stem -> its blocks -> head, so that its blocks are the ones the stitched
networks share. A block two networks run is one module in the file, so the file holds exactly the
parameters of the distinct steps (:func:`held_params`), checked after writing, as are the outputs
of every network it holds against the SN-Net's.

Only TorchScript can hold them: ``torch.export`` programs and ONNX graphs are one computation
each, and torch's archive of several programs (``torch.export.pt2_archive``) stores each
program's weights apart, so a block shared by N networks would be written N times.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import torch
from torch import nn

from ..core.model import SNNet
from ..core.routes import Step
from ..errors import ConfigError
from ..io.paths import atomic_path
from .export import _clear_caches, _example, _rebind, _reference, keep_what_runs

UnitKey = tuple  # ("stem", anchor) / ("block", anchor, block) / ("layer", index) / ("head", anchor)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice, at import

    @torch.jit.interface
    class _UnitInterface(nn.Module):
        """What every unit of a :class:`NetworkSet` is: features in, features out (TorchScript picks
        a ``ModuleList`` entry by a run-time index only through an interface type)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pass


class _StepModule(nn.Module):
    """One step of a route as a module: ``run`` (a plain callable over ``module``'s parts, e.g. an
    adapter's stem) or ``module`` itself."""

    def __init__(self, module: nn.Module, run: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        super().__init__()
        self.module = module
        self.__dict__["_run"] = run  # not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) if self._run is None else self._run(x)


class NetworkSet(nn.Module):
    """Several networks over shared units: ``forward(x, cfg_id)`` runs the units of ``cfg_id``'s
    route in order; without ``cfg_id`` the selected network (:meth:`select`, at first ``default``)."""

    def __init__(self, units: Sequence[nn.Module], routes: dict[int, list[int]], names: dict[int, str], default: int):
        super().__init__()
        self.units = nn.ModuleList(units)
        self.cfg_ids: List[int] = list(routes)
        self.routes: List[List[int]] = [list(r) for r in routes.values()]
        self.names: List[str] = [names[c] for c in routes]
        self.default_cfg_id: int = int(default)
        self.cfg_id: int = int(default)

    def _route_index(self, cfg_id: int) -> int:
        for i, held in enumerate(self.cfg_ids):
            if held == cfg_id:
                return i
        raise ValueError("cfg_id " + str(cfg_id) + " is not in this file: it holds cfg_ids " + str(self.cfg_ids))

    @torch.jit.export
    def networks(self) -> List[int]:
        """The cfg_ids this file holds."""
        return self.cfg_ids

    @torch.jit.export
    def select(self, cfg_id: int) -> None:
        """Make ``forward(x)`` run network ``cfg_id``."""
        self._route_index(cfg_id)
        self.cfg_id = cfg_id

    def forward(self, x: torch.Tensor, cfg_id: Optional[int] = None) -> torch.Tensor:
        chosen = self.cfg_id if cfg_id is None else cfg_id
        for u in self.routes[self._route_index(chosen)]:
            unit: _UnitInterface = self.units[u]
            x = unit.forward(x)
        return x


def unit_key(step: Step) -> UnitKey:
    """The unit a step runs; a stitched network's head is its anchor's (the official forward,
    whose heads differ, is refused by :func:`check_network_ids`)."""
    if step.kind == "block":
        return ("block", step.index, step.block)
    return ("head" if step.kind == "stitched_head" else step.kind, step.index)


def _unit_module(net: SNNet, key: UnitKey, x: torch.Tensor) -> nn.Module:
    """A new module computing the step ``key`` of the SN-Net on its own copies of the weights:
    a block or stitching layer as it is, a stem or head on a copy of its anchor pruned to what it
    runs on ``x``."""
    kind, index = key[0], key[1]
    if kind == "block":
        return _StepModule(copy.deepcopy(net.anchor_adapters[index].blocks[key[2]]))
    if kind == "layer":
        return _StepModule(net.stitch_layers[index].deployed())
    model = copy.deepcopy(net.anchors[index])
    _clear_caches(model)
    adapter = _rebind(net.anchor_adapters[index], model)
    return keep_what_runs(_StepModule(model, adapter.stem if kind == "stem" else adapter.head), [model], x)


def route_units(net: SNNet, cfg_ids: Sequence[int], x: torch.Tensor) -> tuple[dict[UnitKey, torch.Tensor], dict]:
    """The distinct units of the networks' routes, each with the features it gets on images ``x``
    (its example input for tracing), and per cfg_id its units' keys in route order."""
    inputs: dict[UnitKey, torch.Tensor] = {}
    routes: dict[int, list[UnitKey]] = {}
    with torch.no_grad():
        for cfg_id in cfg_ids:
            h, keys = x, []
            for step in net.stitches[cfg_id].route.steps():
                key = unit_key(step)
                inputs.setdefault(key, h)
                keys.append(key)
                h = net.run_step(step, h)
            routes[cfg_id] = keys
    return inputs, routes


def held_params(net: SNNet, cfg_ids: Sequence[int]) -> int:
    """Parameters of the distinct steps of the networks (as :meth:`SNNet.num_params` counts one
    network's): each stem, block, stitching layer and head once."""
    routes = [net.stitches[c].route for c in cfg_ids]
    stems = {r.first.anchor for r in routes}
    heads = {r.last.anchor for r in routes}
    blocks = {(s.anchor, b) for r in routes for s in r.segments for b in range(s.start, s.stop)}
    layers = {i for r in routes for i in r.layers}
    ad = net.anchor_adapters
    return (
        sum(ad[a].stem_params() for a in stems)
        + sum(ad[a].num_params([ad[a].blocks[b]]) for a, b in blocks)
        + sum(net.stitch_layers[i].deployed_params for i in layers)
        + sum(ad[a].head_params() for a in heads)
    )


def check_network_ids(net: SNNet, cfg_ids: Sequence[int], flag: str = "--export") -> None:
    """Refuse ids the SN-Net lacks, repeated ids, and SN-Nets whose stitched networks end in
    another head than their anchors (official forward), whose heads one file cannot share."""
    bad = [c for c in cfg_ids if not 0 <= c < net.num_stitches]
    if bad:
        raise ConfigError(
            f"{flag} {','.join(map(str, cfg_ids))}: cfg_id {bad[0]} does not exist: this SN-Net has cfg_ids "
            f"0..{net.num_stitches - 1}"
        )
    if len(set(cfg_ids)) != len(cfg_ids):
        raise ConfigError(f"{flag} {','.join(map(str, cfg_ids))} names a network twice: give each cfg_id once")
    if net.config.get("official_forward"):
        raise ConfigError(
            f"{flag} of several networks: an official-forward SN-Net ends stitched networks in another head "
            f"than its anchors; export its networks one at a time (--export CFG_ID)"
        )


@dataclass
class NetworkSetReport:
    path: Path
    cfg_ids: list[int]
    params: int
    max_abs_diff: float


def build_network_set(net: SNNet, cfg_ids: Sequence[int], default: int, batch_size: int = 2) -> torch.jit.ScriptModule:
    """The scripted :class:`NetworkSet` of networks ``cfg_ids`` (in that order), every unit
    traced at batch ``max(2, batch_size)`` (no batch-size-1 special case recorded)."""
    check_network_ids(net, cfg_ids)
    if default not in cfg_ids:
        raise ValueError(f"the default network {default} is not one of the networks {list(cfg_ids)}")
    device = next(net.parameters()).device
    inputs, routes = route_units(net, cfg_ids, _example(net, max(2, batch_size), device))
    keys = list(inputs)
    units = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        for key in keys:
            module = _unit_module(net, key, inputs[key]).eval()
            with torch.no_grad():
                units.append(torch.jit.trace(module, inputs[key], check_trace=False))
        index = {k: i for i, k in enumerate(keys)}
        table = {c: [index[k] for k in route] for c, route in routes.items()}
        names = {c: net.stitches[c].name for c in cfg_ids}
        return torch.jit.script(NetworkSet(units, table, names, default))


def export_network_set(
    net: SNNet, cfg_ids: Sequence[int], path: str | Path, default: int, batch_size: int = 2, atol: float = 1e-4
) -> NetworkSetReport:
    """Write networks ``cfg_ids`` (frontier order) to the TorchScript file ``path``, atomically,
    after checking the written file: it holds :func:`held_params` parameters and every network's
    outputs equal the SN-Net's (``atol``) on a batch of another size than the traced one."""
    path = Path(path)
    if path.suffix.lower() not in (".pt", ".ts"):
        raise ConfigError(
            f"--export-path '{path}': several networks go into one TorchScript file (.pt); torch.export (.pt2) "
            f"and ONNX hold one network per file (docs/evaluation.md)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    module = build_network_set(net, cfg_ids, default, batch_size)
    device = next(net.parameters()).device
    check = _example(net, max(2, batch_size) + 1, device)
    worst = 0.0
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module.save(str(tmp))
        loaded = torch.jit.load(str(tmp), map_location=device)
        params = sum(p.numel() for p in loaded.parameters())
        expected_params = held_params(net, cfg_ids)
        if params != expected_params or list(loaded.networks()) != list(cfg_ids):
            raise RuntimeError(
                f"the file holds {params} parameters for networks {list(loaded.networks())}, their distinct "
                f"steps have {expected_params}: a bug, please report it"
            )
        for cfg_id in cfg_ids:
            with torch.no_grad():
                got = loaded(check, cfg_id).float()
            expected = _reference(net, cfg_id, check)
            worst = max(worst, float((got - expected).abs().max()))
            if not torch.allclose(got, expected, atol=atol, rtol=1e-4):
                raise RuntimeError(
                    f"network {cfg_id} of the file differs from the SN-Net by {worst:.3g} (atol {atol}): "
                    f"a bug, please report it"
                )
    return NetworkSetReport(path, list(cfg_ids), params, worst)


def network_rows(rows: Sequence[dict[str, Any]], cfg_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The sidecar's ``networks``: one dict per network of ``cfg_ids`` from the results ``rows``
    (top-1 / top-5 / latency null where the run did not measure them), ascending FLOPs."""
    by_id = {r["cfg_id"]: r for r in rows}
    out = []
    for c in cfg_ids:
        r = by_id[c]
        out.append(
            {
                "cfg_id": int(c),
                "name": str(r["name"]),
                "flops": int(r["flops"]),
                "params": int(r["params"]),
                **{k: (None if r.get(k) is None else float(r[k])) for k in ("top1", "top5", "latency_ms")},
            }
        )
    return sorted(out, key=lambda n: (n["flops"], n["cfg_id"]))


def default_network(networks: Sequence[dict[str, Any]]) -> int:
    """The most accurate network (fewer FLOPs, then lower cfg_id, on ties); without accuracies
    (an export without a data pass) the costliest."""
    if all(n["top1"] is not None for n in networks):
        return max(networks, key=lambda n: (n["top1"], -n["flops"], -n["cfg_id"]))["cfg_id"]
    return max(networks, key=lambda n: (n["flops"], -n["cfg_id"]))["cfg_id"]


def write_network_set(
    net: SNNet,
    rows: Sequence[dict[str, Any]],
    cfg_ids: Sequence[int],
    path: str | Path,
    batch_size: int,
    trained_data: tuple,
    log: Callable[[str], None],
) -> NetworkSetReport:
    """eval.py's export of several networks: ``cfg_ids`` into one TorchScript file ``path``
    (ascending FLOPs) and ``<path>.json`` beside it: the preprocessing and class names of
    ``trained_data`` (``(dataset, data_dir)``), ``networks`` with their numbers in the results
    ``rows``, and ``default_cfg_id``, the most accurate."""
    from .predict import prediction_info, write_prediction_info

    networks = network_rows(rows, cfg_ids)
    ids, default = [n["cfg_id"] for n in networks], default_network(networks)
    report = export_network_set(net.cpu().float(), ids, path, default, batch_size)
    info = prediction_info(net, *trained_data)
    info_path = write_prediction_info(
        report.path, info, default, net.stitches[default].name, networks=networks, default_cfg_id=default
    )
    alone = sum(net.num_params(c) for c in ids)
    lines = [
        f"Exported {len(ids)} networks (cfg_ids {', '.join(map(str, ids))}; default {default}) as one TorchScript "
        f"file to {report.path} ({report.path.stat().st_size / 1e6:.1f} MB): {report.params:,} parameters, each "
        f"block and stitching layer once ({alone:,} in the networks one by one), max |output - SN-Net output| = "
        f"{report.max_abs_diff:.2e}",
        f"Load it without snnet: m = torch.jit.load('{report.path}'); m(x, CFG_ID), or m.select(CFG_ID); m(x); "
        f"m.networks() lists the cfg_ids",
        f"Preprocessing, class names and the networks: {info_path} "
        f"(predict.py --exported {report.path} --stitch CFG_ID IMAGES)",
    ]
    log("\n".join(lines))
    return report
