"""The run config: train.py's, eval.py's and predict.py's arguments as frozen, typed dataclasses,
made right after parsing, and the one builder of an SN-Net from them.

A script parses its command line (and ``-c`` YAML, :mod:`snnet.config`) into an
``argparse.Namespace`` and turns it at once into its config class (:data:`TrainConfig`,
:data:`EvalConfig`, :data:`PredictConfig`). Their fields are the parser's options, one per
``dest``, typed from the option, so a flag added to a parser is a field without further code;
values a run derives (the resolved learning rate, the class count, what eval.py does) make a
*new* config with :func:`dataclasses.replace`, never a write into the parsed arguments.
:class:`ModelConfig` is the part that describes the SN-Net, and :func:`build_snnet` the one
place that builds an SN-Net from it (train.py, eval.py, ``--flops-only``, predict.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import torch

from .anchors.base import set_uniform_drop_path
from .cli import build_eval_parser, build_predict_parser, build_serve_parser, build_train_parser
from .config import Needs, option_text, parse_kwargs, refuse_without_effect
from .core.junctions import DEFAULT_CLASS_TOKEN, DEFAULT_PREFIX_TOKENS
from .core.model import SNNet, create_snnet
from .errors import ConfigError

NO_ANCHORS = "no anchors given: pass --anchors NAME [NAME ...] (small to large) or -c a config"


def require_anchors(anchors: Optional[Sequence[str]], hint: str = "") -> None:
    """The one "no anchors" check: a run needs anchor names before anything is built or written."""
    if not anchors:
        raise ConfigError(NO_ANCHORS + hint)


def _anchor_kwargs(values: Optional[Sequence[Any]]) -> Optional[tuple[Mapping[str, Any], ...]]:
    if values is None:
        return None
    # YAML gives mappings, the command line gives 'k=v k=v' strings.
    return tuple(MappingProxyType(parse_kwargs(v if isinstance(v, Mapping) else str(v).split())) for v in values)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What an SN-Net is made of: :func:`snnet.create_snnet`'s arguments, normalised (keyword
    arguments parsed, 'none' anchor checkpoints as None, train.py's ``--drop-path``/``--drop`` in
    ``model_kwargs``)."""

    anchors: tuple[str, ...]
    pretrained: bool = False
    anchor_checkpoints: Optional[tuple[Optional[str], ...]] = None
    num_classes: Optional[int] = None
    img_size: Optional[int] = None
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    anchor_kwargs: Optional[tuple[Mapping[str, Any], ...]] = None
    kernel_size: int = 2
    stride: int = 1
    nearest: bool = True
    stages: Optional[tuple[int, ...]] = None
    stitching: Optional[str] = None
    stitch_layer: str = "linear"
    lora_rank: int = 64
    official_forward: bool = False
    routes: Optional[tuple[str, ...]] = None
    class_token: str = DEFAULT_CLASS_TOKEN
    prefix_tokens: str = DEFAULT_PREFIX_TOKENS
    stitch_stride: int = 1
    drop_path_schedule: str = "linear"  # train.py: 'uniform' puts each anchor's rate on every block
    train_only: str = "all"  # train.py: 'stitching' freezes the anchors

    @classmethod
    def from_args(cls, args: Any) -> ModelConfig:
        """The model part of a run config (or of a parsed Namespace)."""
        kwargs = parse_kwargs(args.model_kwargs)
        if getattr(args, "drop_path", None) is not None:  # train.py only
            kwargs.setdefault("drop_path_rate", args.drop_path)
        if getattr(args, "drop", None) is not None:
            kwargs.setdefault("drop_rate", args.drop)
        ckpts = args.anchor_checkpoints
        return cls(
            anchors=tuple(args.anchors or ()),
            pretrained=bool(args.pretrained),
            anchor_checkpoints=None if ckpts is None else tuple(None if str(c).lower() == "none" else c for c in ckpts),
            num_classes=args.num_classes,
            img_size=args.img_size,
            model_kwargs=MappingProxyType(kwargs),
            anchor_kwargs=_anchor_kwargs(args.anchor_kwargs),
            kernel_size=args.kernel_size,
            stride=args.stride,
            nearest=args.nearest,
            stages=None if args.stages is None else tuple(args.stages),
            stitching=args.stitching,
            stitch_layer=args.stitch_layer,
            lora_rank=args.lora_rank,
            official_forward=bool(args.official_forward),
            routes=None if args.routes is None else tuple(args.routes),
            class_token=args.class_token,
            prefix_tokens=args.prefix_tokens,
            stitch_stride=args.stitch_stride,
            drop_path_schedule=getattr(args, "drop_path_schedule", "linear"),
            train_only=getattr(args, "train_only", "all"),
        )


def build_snnet(
    model: ModelConfig | Any,
    num_classes: Optional[int] = None,
    pretrained: Optional[bool] = None,
    seed: Optional[int] = None,
    check_effects: bool = True,
) -> SNNet:
    """The SN-Net ``model`` describes (a :class:`ModelConfig`, or a run config / parsed arguments
    whose model part is taken). ``num_classes`` / ``pretrained`` override the config's;
    ``seed`` seeds torch first, so that untrained weights are the same on every process.
    ``check_effects``: refuse stitching options this SN-Net gives nothing to act on
    (:func:`check_model_effects`); off for a net of the anchors alone that others add routes to
    (the lab's shared anchors, compose.py's pool)."""
    cfg = model if isinstance(model, ModelConfig) else ModelConfig.from_args(model)
    require_anchors(cfg.anchors)
    if check_effects:
        refuse_without_effect(cfg, MODEL_RULES, MODEL_DEFAULTS)
    if seed is not None:
        torch.manual_seed(seed)
    net = create_snnet(
        list(cfg.anchors),
        pretrained=cfg.pretrained if pretrained is None else pretrained,
        num_classes=cfg.num_classes if num_classes is None else num_classes,
        img_size=cfg.img_size,
        model_kwargs=dict(cfg.model_kwargs),
        anchor_kwargs=None if cfg.anchor_kwargs is None else [dict(k) for k in cfg.anchor_kwargs],
        anchor_checkpoints=None if cfg.anchor_checkpoints is None else list(cfg.anchor_checkpoints),
        kernel_size=cfg.kernel_size,
        stride=cfg.stride,
        nearest=cfg.nearest,
        stages=None if cfg.stages is None else list(cfg.stages),
        stitching=cfg.stitching,
        stitch_layer=cfg.stitch_layer,
        lora_rank=cfg.lora_rank,
        official_forward=cfg.official_forward,
        routes=None if cfg.routes is None else list(cfg.routes),
        class_token=cfg.class_token,
        prefix_tokens=cfg.prefix_tokens,
        stitch_stride=cfg.stitch_stride,
    )
    if cfg.drop_path_schedule == "uniform":
        for adapter, own in zip(net.anchor_adapters, cfg.anchor_kwargs or [{}] * len(net.anchors)):
            rate = float({**cfg.model_kwargs, **own}.get("drop_path_rate", 0.0))
            set_uniform_drop_path(adapter.model, rate, adapter.name)
    if cfg.train_only == "stitching":
        net.freeze_anchors()
    if check_effects:
        check_model_effects(cfg, net)
    return net


def idle_weight_options(model: ModelConfig, replaced_by: str = "") -> Optional[str]:
    """A log line for anchor-weight options that load nothing the SN-Net keeps: ``replaced_by``
    (a checkpoint holding every weight, e.g. ``--initial-checkpoint FILE``) replaces them, or an
    ``--anchor-checkpoints`` file for every anchor replaces ``--pretrained``; None when all act."""
    files = model.anchor_checkpoints or ()
    given = [flag for flag, on in (("--pretrained", model.pretrained), ("--anchor-checkpoints", any(files))) if on]
    if replaced_by and given:
        return f"{' and '.join(given)}: not used, {replaced_by} holds every weight"
    if model.pretrained and files and all(f is not None for f in files):
        return "--pretrained: not used, every anchor loads its --anchor-checkpoints file instead of timm's weights"
    return None


def _sliding_windows(cfg: ModelConfig) -> bool:
    """Whether the stitching rules run paired stitching's sliding window somewhere (equal stage
    depths under the default rule), where --kernel-size and --stride act."""
    return cfg.routes is None and cfg.stitching != "unpaired" and cfg.stitching != "two-way"


# Model options judged from the config alone (the defaults: ModelConfig's, the parsers' own)
MODEL_RULES = (
    Needs("kernel_size", _sliding_windows, "sizes paired stitching's window, which --routes, --stitching unpaired "
          "and two-way do not use"),
    Needs("stride", _sliding_windows, "strides paired stitching's window, which --routes, --stitching unpaired and "
          "two-way do not use"),
    Needs("nearest", lambda m: m.routes is None and m.stitching != "two-way" and len(m.anchors) > 2,
          "chooses which of three or more anchors pair up under the stitching rules (not --routes or two-way)"),
    Needs("stages", lambda m: m.routes is None and m.stitching != "two-way",
          "selects the stages the stitching rules stitch in, which --routes and two-way do not use"),
    Needs("stitching", lambda m: m.routes is None, "is a stitching rule and --routes name the networks instead"),
    Needs("lora_rank", lambda m: m.stitch_layer == "lora", "sizes lora layers: add --stitch-layer lora"),
)  # fmt: skip
MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def check_model_effects(cfg: ModelConfig, net: SNNet) -> None:
    """Refuse the stitching options that this built SN-Net gives nothing to act on: a layer kind
    (or rank, stride, junction rule) with no stitching layer to apply it to, a LoRA rank that is
    not lower than the layer it factors, a class-token / prefix-token rule no junction uses."""
    junctions = [layer.junction for layer in net.stitch_layers]
    if not junctions:
        for dest in (
            *("stitch_layer", "lora_rank", "stitch_stride", "class_token", "prefix_tokens", "train_only"),
            *("official_forward", "kernel_size", "stride", "stages", "stitching"),
        ):
            value = getattr(cfg, dest)
            if value != MODEL_DEFAULTS[dest]:
                raise ConfigError(
                    f"{option_text('--' + dest.replace('_', '-'), value)} has no effect: this SN-Net has no "
                    f"stitching layer (one anchor, no --routes); drop it"
                )
    for i, layer in enumerate(net.stitch_layers):
        if hasattr(layer, "lora_A") and cfg.lora_rank >= min(layer.lora_A.shape[1], layer.lora_B.shape[0]):
            in_dim, out_dim = layer.lora_A.shape[1], layer.lora_B.shape[0]
            raise ConfigError(
                f"--lora-rank {cfg.lora_rank} is not lower than stitching layer {i} it factors ({in_dim} -> "
                f"{out_dim}): a full-rank update is no low-rank one; use --lora-rank below {min(in_dim, out_dim)} "
                f"or --stitch-layer linear"
            )
    makes_prefix = any(j.work.layout == "tokens" and j.work.prefix > (j.src.prefix if j.src.layout == "tokens" else 0)
                       for j in junctions)  # fmt: skip
    drops_prefix = any(j.dst.layout != "tokens" and j.src.layout == "tokens" and j.src.prefix > 0 for j in junctions)
    for dest, used, what in (
        ("class_token", makes_prefix, "makes the prefix tokens of a junction into tokens that lacks them"),
        ("prefix_tokens", drops_prefix, "handles the prefix tokens of a junction from tokens into feature maps"),
    ):
        value = getattr(cfg, dest)
        if junctions and not used and value != MODEL_DEFAULTS[dest]:
            raise ConfigError(
                f"--{dest.replace('_', '-')} {value} has no effect: it {what}, and no junction of this SN-Net is one; "
                f"drop it"
            )


# ---------------------------------------------------------------------------------------------
# the scripts' configs: one frozen dataclass per parser
# ---------------------------------------------------------------------------------------------
def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction))


def _field_type(action: argparse.Action) -> Any:
    """The type of an option's value as the parser produces it."""
    if _is_flag(action):
        return bool
    one = action.type if action.type in (int, float, str) else Any
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    kind = Any if many and isinstance(action.default, Mapping) else (list[one] if many else one)  # type: ignore[valid-type]
    return Optional[kind] if action.default is None else kind


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.dest not in (argparse.SUPPRESS, "help")]


def config_class(name: str, parser: argparse.ArgumentParser, extra: Sequence[tuple] = (), doc: str = "") -> type:
    """A frozen dataclass with one typed field per option of ``parser`` (``-c/--config``
    included), then the ``extra`` ``(name, type, dataclasses.field(...))`` fields a run derives."""
    fields = [(a.dest, _field_type(a)) for a in _options(parser)]
    cls = dataclasses.make_dataclass(name, fields + list(extra), frozen=True, namespace={"__doc__": doc})
    cls.__module__ = __name__
    return cls


def parser_fields(config: Any) -> dict[str, Any]:
    """The parsed options of a run config (its extra fields left out): what ``args.yaml`` and a
    checkpoint's ``args`` record."""
    extra = getattr(type(config), "EXTRA_FIELDS", ())
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in extra}


def from_namespace(cls: type, args: argparse.Namespace, **derived: Any) -> Any:
    """``cls`` (a :func:`config_class`) from parsed arguments, plus derived extra fields."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in derived}, **derived)


class EvalMode(enum.Enum):
    """What eval.py does, decided once from its options."""

    FLOPS_ONLY = "flops-only"  # FLOPs and params of every network; no data, no weights
    EXPORT_ONLY = "export"  # --export CFG_ID or CFG_ID,CFG_ID,...: write the network(s); no data pass
    SWEEP = "sweep"  # every selected network on the data, frontier, budget pick (and its export)
    COMPATIBILITY = "compatibility"  # LS-initialise an untrained SN-Net, score junctions, then sweep
    REPORT_ONLY = "report-only"  # rewrite DIR/report.html from DIR/stitches.csv; no data, no weights


TrainConfig = config_class(
    "TrainConfig",
    build_train_parser(),
    doc="train.py's resolved arguments (frozen); ``args.yaml`` and checkpoints record them.",
)
TrainConfig.EXTRA_FIELDS = ()

# the values options had before the command line (parser + -c config): a checkpoint fills those
_DEFAULTS_FIELD = ("defaults", Mapping[str, Any], dataclasses.field(default_factory=dict, compare=False, repr=False))
_EVAL_EXTRA = (
    ("mode", EvalMode, dataclasses.field(default=EvalMode.SWEEP)),
    ("export_id", Optional[int], dataclasses.field(default=None)),  # --export CFG_ID as a number
    ("export_ids", Optional[tuple], dataclasses.field(default=None)),  # --export 3,12,40 as numbers
    ("budget_flops_value", Optional[float], dataclasses.field(default=None)),  # --budget-flops parsed
    _DEFAULTS_FIELD,
    # the command line as given: report.html shows it and builds its commands from it
    ("argv", tuple, dataclasses.field(default=(), compare=False, repr=False)),
)
EvalConfig = config_class("EvalConfig", build_eval_parser(), _EVAL_EXTRA, doc="eval.py's checked arguments (frozen).")
EvalConfig.EXTRA_FIELDS = tuple(f[0] for f in _EVAL_EXTRA)

PredictConfig = config_class(
    "PredictConfig", build_predict_parser(), (_DEFAULTS_FIELD,), doc="predict.py's checked arguments (frozen)."
)
PredictConfig.EXTRA_FIELDS = ("defaults",)

ServeConfig = config_class(
    "ServeConfig", build_serve_parser(), (_DEFAULTS_FIELD,), doc="serve.py's checked arguments (frozen)."
)
ServeConfig.EXTRA_FIELDS = ("defaults",)


def defaults_of(parser: argparse.ArgumentParser, given: Sequence[str] = ()) -> Mapping[str, Any]:
    """Each option's default after ``-c`` set its own (call after parsing), leaving out the
    options in ``given`` (those the command line names, even at their default value: a value
    typed out is the user's, and e.g. a checkpoint's other stitching-layer kind must not replace it)."""
    return MappingProxyType({a.dest: a.default for a in _options(parser) if a.dest not in given})
