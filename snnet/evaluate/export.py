"""Ship one network of an SN-Net as a standalone model that loads with plain torch.

:func:`standalone_network` builds an ``nn.Module`` holding exactly what network ``cfg_id`` runs,
along its route: the first anchor's stem, every segment's blocks, the stitching layers (a LoRA
layer merged into one linear map) and the last anchor's head. It works for every family and for
routes of any number of segments without family-specific code: the route's timm models are
deep-copied, the network is run once on the copies with every module and parameter watched
(forward hooks, gradients), and every module it never calls and every parameter it never uses
is removed (a module becomes ``nn.Identity``, a parameter of a module that is not called becomes
``None``). An anchor is exported as its whole timm model. The result has exactly
``net.num_params(cfg_id)`` parameters and the same outputs as the SN-Net for that network.

:func:`export_network` writes it as TorchScript (``.pt``/``.ts``, ``torch.jit.trace``), an
exported program (``.pt2``, ``torch.export``) or ONNX (``.onnx``), with a dynamic batch size
where the exporter allows it, and checks the written file against the SN-Net.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..core.model import SNNet
from ..core.routes import Route, apply_step
from ..errors import ConfigError
from ..io.paths import atomic_path
from ..runtime import eval_mode

FORMATS = {".pt": "torchscript", ".ts": "torchscript", ".pt2": "exported_program", ".onnx": "onnx"}


class StitchedNetwork(nn.Module):
    """The steps of one route (stem, blocks, stitching layers, head) on its own modules.

    ``models`` holds pruned copies of the route's anchors' timm models (only the modules this
    network runs are left), keyed by anchor index; ``stitches`` the route's stitching layers in
    route order. ``front``/``back`` are the first and last segment's models.
    """

    __jit_unused_properties__ = ["front", "back"]

    def __init__(
        self, route: Route, models: dict[int, nn.Module], adapters: dict[int, object], layers: list[nn.Module]
    ):
        super().__init__()
        self.models = nn.ModuleDict({str(a): m for a, m in models.items()})
        self.stitches = nn.ModuleList(layers)
        # plain attributes: not registered again as submodules
        self.__dict__["_adapters"] = adapters
        local = Route(route.segments, tuple(range(len(route.layers))))  # layer i of the route = stitches[i]
        self.__dict__["_steps"] = local.steps()
        self.__dict__["_route"] = route

    @property
    def front(self) -> nn.Module:
        return self.models[str(self._route.first.anchor)]

    @property
    def back(self) -> nn.Module:
        return self.models[str(self._route.last.anchor)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._steps:
            x = apply_step(step, x, self._adapters, self.stitches)
        return x


def _rebind(adapter, model: nn.Module):
    """The same family's adapter over a copy of the model (blocks are the copy's modules)."""
    rebound = type(adapter)(model, adapter.name, adapter.input_size)
    rebound.official_forward = adapter.official_forward
    return rebound


def _clear_caches(module: nn.Module) -> None:
    """Drop eval-mode caches of derived tensors (timm's LeViT attention biases), so that tracing
    records them as computed from the parameters."""
    for m in module.modules():
        if isinstance(getattr(m, "attention_bias_cache", None), dict):
            m.attention_bias_cache = {}


@torch.no_grad()
def _zero_like_state(module: nn.Module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _prune_unused(model: nn.Module, called: set[int], used_params: set[int]) -> None:
    """Replace never-called modules without used parameters by ``nn.Identity`` (top-down, so a
    removed subtree goes whole) and drop unused parameters of never-called modules."""

    def visit(module: nn.Module) -> None:
        module_called = id(module) in called
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            child_used = any(id(p) in used_params for p in child.parameters())
            if id(child) not in called and not child_used and not module_called:
                module._modules[name] = nn.Identity()
            else:
                visit(child)
        if not module_called:
            for name, p in list(module._parameters.items()):
                if p is not None and id(p) not in used_params:
                    module._parameters[name] = None

    visit(model)


def standalone_network(net: SNNet, cfg_id: int) -> nn.Module:
    """A new ``nn.Module`` (eval mode, float32, on the SN-Net's device) that computes network
    ``cfg_id`` and holds only the modules and parameters it runs."""
    if not 0 <= cfg_id < net.num_stitches:
        raise ConfigError(f"--export {cfg_id} is out of range: this SN-Net has cfg_ids 0..{net.num_stitches - 1}")
    route = net.stitches[cfg_id].route
    if route.is_anchor:
        model = copy.deepcopy(net.anchors[route.first.anchor]).eval()
        _clear_caches(model)
        return model
    models = {a: copy.deepcopy(net.anchors[a]) for a in route.anchors}
    for m in models.values():
        _clear_caches(m)
    adapters = {a: _rebind(net.anchor_adapters[a], m) for a, m in models.items()}
    module = StitchedNetwork(route, models, adapters, [net.stitch_layers[i].deployed() for i in route.layers])
    p0 = next(module.parameters())
    return keep_what_runs(module, models.values(), torch.randn(2, *net.input_size, device=p0.device, dtype=p0.dtype))


def keep_what_runs(module: nn.Module, models: Iterable[nn.Module], x: torch.Tensor) -> nn.Module:
    """``module`` in eval mode, with every module of ``models`` (copies it runs parts of) that its
    forward on ``x`` never calls, and every parameter it never uses, removed (see
    :func:`_prune_unused`)."""
    # Watch one forward: which modules are called, which parameters get a gradient. Train mode
    # so that eval-mode caches cannot hide a parameter; BatchNorm statistics restored after.
    saved = _zero_like_state(module)
    called: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, _: called.add(id(mod))) for m in module.modules()]
    flags = {id(p): p.requires_grad for p in module.parameters()}
    try:
        module.train()
        for p in module.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            module(x).float().sum().backward()
    finally:
        for h in hooks:
            h.remove()
    used = {id(p) for p in module.parameters() if p.grad is not None}
    for p in module.parameters():
        p.grad = None
        p.requires_grad_(flags[id(p)])
    module.load_state_dict(saved)
    for m in models:
        _prune_unused(m, called, used)
        _clear_caches(m)
    return module.eval()


@dataclass
class ExportReport:
    path: Path
    format: str
    cfg_id: int
    name: str
    params: int
    max_abs_diff: float
    dynamic_batch: bool


def _example(net: SNNet, batch: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, *net.input_size, generator=g).to(device)


def _reference(net: SNNet, cfg_id: int, x: torch.Tensor, head: Optional[nn.Module] = None) -> torch.Tensor:
    with eval_mode(net):
        with torch.no_grad(), net.selecting(cfg_id):
            out = net(x)
            return (out if head is None else head(out)).float()


def _export_program(module: nn.Module, x: torch.Tensor):
    from torch.export import Dim, export

    try:
        return export(module, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=65536)},)), True
    except Exception as e:  # some models specialise on the batch size; a static program still ships
        warnings.warn(
            f"torch.export with a dynamic batch failed ({str(e).splitlines()[0][:200]}); "
            f"exporting for batch {x.shape[0]} only",
            stacklevel=2,
        )
        return export(module, (x,)), False


def export_network(
    net: SNNet,
    cfg_id: int,
    path: str | Path,
    batch_size: int = 2,
    opset: Optional[int] = None,
    atol: float = 1e-4,
    head: Optional[nn.Module] = None,
) -> ExportReport:
    """Write network ``cfg_id`` to ``path`` (format from the suffix) and check the written file:
    its outputs equal the SN-Net's for that network (``atol``) and, for TorchScript and exported
    programs, its parameter count equals ``net.num_params(cfg_id)``. ``head``: a module without
    parameters run on the network's outputs (a composed network's fitted classifier, see
    :mod:`snnet.compose.fit`), exported with it."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"--export-path '{path}' has an unknown suffix: use .pt (TorchScript), .pt2 (torch.export) or .onnx"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    module = standalone_network(net, cfg_id)
    device = next(module.parameters()).device
    if head is not None:
        module = nn.Sequential(module, copy.deepcopy(head).to(device)).eval()
    # trace at batch >= 2 so that no batch-size-1 special case is recorded
    x = _example(net, max(2, batch_size), device)
    check = _example(net, max(2, batch_size) + 1, device)  # another batch size: the export is not batch-specific
    expected = _reference(net, cfg_id, check, head)
    with atomic_path(path) as tmp:  # checked before the rename: a failed export leaves the old file
        params, got, dynamic, check, expected = _write_and_run(
            module, net, cfg_id, fmt, tmp, x, check, expected, opset, head
        )
        diff = float((got - expected).abs().max())
        if not torch.allclose(got, expected, atol=atol, rtol=1e-4):
            raise RuntimeError(
                f"exported network {cfg_id} differs from the SN-Net by {diff:.3g} (atol {atol}): a bug, please report it"
            )
        expected_params = net.num_params(cfg_id)
        if params != expected_params:
            raise RuntimeError(
                f"exported network {cfg_id} holds {params} parameters, the network runs {expected_params}: "
                f"a bug, please report it"
            )
    return ExportReport(path, fmt, cfg_id, net.stitches[cfg_id].name, params, diff, dynamic)


def _write_and_run(
    module: nn.Module, net: SNNet, cfg_id: int, fmt: str, path: Path, x, check, expected, opset, head=None
):
    """Write ``module`` to ``path`` in format ``fmt``, load the file back and run it on ``check``:
    (parameters in the file, its outputs, dynamic batch, the check batch and the SN-Net's outputs)."""
    device = x.device
    params, dynamic = sum(p.numel() for p in module.parameters()), True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(module, x, check_trace=False)
            traced.save(str(path))
            loaded = torch.jit.load(str(path), map_location=device)
            params = sum(p.numel() for p in loaded.parameters())
            with torch.no_grad():
                got = loaded(check).float()
        elif fmt == "exported_program":
            program, dynamic = _export_program(module, x)
            torch.export.save(program, str(path))
            loaded = torch.export.load(str(path))
            params = sum(loaded.state_dict[n].numel() for n in loaded.graph_signature.parameters)
            if not dynamic:
                check, expected = x, _reference(net, cfg_id, x, head)
            with torch.no_grad():
                got = loaded.module()(check).float()
        else:
            _export_onnx(module, x, path, opset)
            params, got = _check_onnx(path, module, check)
    return params, got, dynamic, check, expected


def _export_onnx(module: nn.Module, x: torch.Tensor, path: Path, opset: Optional[int]) -> None:
    """torch.onnx's exporter (torch.export based), batch dimension dynamic. Graph optimisation is
    left to the runtime (``optimize=False``) so that the file's initializers are exactly the
    network's parameters, under their module names."""
    import onnx
    from torch.export import Dim

    kwargs = {} if opset is None else {"opset_version": opset}
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (x,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: Dim("batch", min=1, max=65536)},),
            optimize=False,
            external_data=False,
            verbose=False,
            **kwargs,
        )
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _check_onnx(path: Path, module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Parameters held by the ONNX file (its initializers named as the module's parameters,
    every one of which must be there) and its outputs on ``x``, run with onnxruntime when
    installed, else with onnx's reference evaluator."""
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    inits = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    names = [n for n, _ in module.named_parameters()]
    missing = [n for n in names if n not in inits]
    if missing:
        raise RuntimeError(
            f"the ONNX file lacks {len(missing)} parameters (e.g. {missing[0]}): a bug, please report it"
        )
    params = sum(inits[n] for n in names)
    return params, run_onnx(path, x)


def onnx_forward(path: str | Path):
    """A function running the ONNX network of ``path`` on a batch, with onnxruntime when
    installed, else with onnx's reference evaluator; the file is read once, here."""
    import numpy as np
    import onnx

    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name, run = session.get_inputs()[0].name, session.run
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(path))
        name, run = model.graph.input[0].name, ReferenceEvaluator(model).run

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = run(None, {name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(np.asarray(out)).float().to(x.device)

    return forward


def run_onnx(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """Outputs of an ONNX network on ``x`` (see :func:`onnx_forward`)."""
    return onnx_forward(path)(x)


def export_choice(args: Any) -> tuple[Optional[int], Optional[tuple[int, ...]]]:
    """``--export`` as ``(cfg_id, None)`` for one number, ``(None, ids)`` for a list of cfg_ids,
    ``(None, None)`` for 'best', 'frontier' or no export; checks the export options."""
    if args.export is None:
        if args.export_path:
            raise ConfigError("--export-path needs --export CFG_ID (or 'best' with a budget, or 'frontier')")
        return None, None
    if not args.export_path:
        raise ConfigError("--export needs --export-path PATH (.pt, .pt2 or .onnx)")
    suffix = Path(args.export_path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"--export-path '{args.export_path}' has an unknown suffix: use .pt (TorchScript), "
            f".pt2 (torch.export) or .onnx"
        )
    text = str(args.export).strip()
    if text == "best":
        if args.budget_flops is None and args.budget_latency is None:
            raise ConfigError("--export best exports the budget pick: add --budget-flops and/or --budget-latency")
        return None, None
    several = text == "frontier" or "," in text
    if several and FORMATS[suffix] != "torchscript":
        raise ConfigError(
            f"--export {text} writes several networks into one TorchScript file: use --export-path NAME.pt "
            f"(a torch.export program or an ONNX graph is one network; docs/evaluation.md says why)"
        )
    if text == "frontier":
        return None, None
    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--export '{args.export}' is not a cfg_id: pass a number, a list like 3,12,40, 'best' or 'frontier'"
        ) from None
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--export {text} names a network twice: give each cfg_id once")
    return (ids[0], None) if len(ids) == 1 else (None, ids)
