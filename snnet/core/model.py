"""The SN-Net module: anchors, stitching layers, and the choice of one network to run."""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..anchors import Anchor, create_anchor
from ..errors import ConfigError, IncompatibleAnchorsError
from ..runtime import eval_mode
from .junctions import DEFAULT_CLASS_TOKEN, DEFAULT_PREFIX_TOKENS, Junction, check_rules, feature_spec
from .layers import BaseStitchingLayer, check_kind, create_stitching_layer, to_rows
from .lstsq import augment, solve_normal_equations
from .routes import Route, Step, apply_step, run_route
from .stitches import Stitch, StitchingLayerSpec, enumerate_stitches, route_stitches


class SNNet(nn.Module):
    """Stitchable Neural Network over anchors ordered small -> large.

    ``net.stitches[cfg_id]`` describes every network it holds (anchors first), its ``route``
    what the network runs; ``net.select(cfg_id)`` chooses the one ``forward`` runs (``with
    net.selecting(cfg_id):`` for a while, restoring the previous choice).

    Two views of the anchors, not to be confused:

    * ``net.anchors[i]``: the i-th timm model itself (an ``nn.Module``; the state dict holds it
      under ``anchors.<i>.`` with timm's own keys, so checkpoints load into plain timm);
    * ``net.anchor_adapters[i]``: its :class:`~snnet.anchors.Anchor` adapter (a plain object,
      not a module), the stem / blocks / head view over that same model that stitching uses.

    The stitching layers are ``net.stitch_layers`` (state dict ``stitch_layers.<l>.``).
    """

    def __init__(
        self,
        anchors: Sequence[Anchor],
        kernel_size: int = 2,
        stride: int = 1,
        nearest: bool = True,
        stages: Optional[Sequence[int]] = None,
        stitching: Optional[str] = None,
        stitch_layer: str = "linear",
        lora_rank: int = 64,
        official_forward: bool = False,
        routes: Optional[Sequence[str | Route]] = None,
        class_token: str = DEFAULT_CLASS_TOKEN,
        prefix_tokens: str = DEFAULT_PREFIX_TOKENS,
        stitch_stride: int = 1,
    ):
        super().__init__()
        check_rules(class_token, prefix_tokens)
        check_kind(stitch_layer, stitch_stride)
        sizes = {a.input_size for a in anchors}
        if len(sizes) > 1:
            desc = ", ".join(f"{a.name}: {'x'.join(map(str, a.input_size[1:]))}" for a in anchors)
            raise IncompatibleAnchorsError(f"anchors take different input sizes ({desc}); pass one --img-size for all")
        self.anchor_adapters = list(anchors)
        for adapter in self.anchor_adapters:  # how stitched networks end (snnet.io.official)
            adapter.official_forward = official_forward
        self.anchors = nn.ModuleList(a.model for a in anchors)
        if routes is not None:
            self.stitches, self.layer_specs = route_stitches(anchors, routes)
        else:
            self.stitches, self.layer_specs = enumerate_stitches(
                anchors, kernel_size, stride, nearest, stages, stitching, official_sharing=official_forward
            )
        self.class_token, self.prefix_tokens, self.stitch_stride = class_token, prefix_tokens, stitch_stride
        self.stitch_layers = nn.ModuleList(self._make_layer(spec, stitch_layer, lora_rank) for spec in self.layer_specs)
        self.config = {
            "anchors": [a.name for a in anchors],
            "kernel_size": kernel_size,
            "stride": stride,
            "nearest": nearest,
            "stages": None if stages is None else list(stages),
            "stitching": stitching,
            "stitch_layer": stitch_layer,
            "lora_rank": lora_rank,
        }
        # only when set: older checkpoints' configs stay comparable
        if official_forward:
            self.config["official_forward"] = True
        if routes is not None:
            self.config["routes"] = [s.name for s in self.stitches[len(anchors) :]]
        if class_token != DEFAULT_CLASS_TOKEN:
            self.config["class_token"] = class_token
        if prefix_tokens != DEFAULT_PREFIX_TOKENS:
            self.config["prefix_tokens"] = prefix_tokens
        if stitch_stride != 1:
            self.config["stitch_stride"] = stitch_stride
        self.cfg_id = 0

    def _make_layer(self, spec: StitchingLayerSpec, kind: str, lora_rank: int) -> BaseStitchingLayer:
        front, back = self.anchor_adapters[spec.front], self.anchor_adapters[spec.back]
        j, k = spec.positions[0]
        junction = Junction(
            feature_spec(front, j + 1),
            feature_spec(back, k),
            self.class_token,
            self.prefix_tokens,
            self.stitch_stride,
            where=f"{front.name} block {j} -> {back.name} block {k}",
        )
        return create_stitching_layer(
            kind, junction.in_channels, back.channels(k), lora_rank=lora_rank, junction=junction
        )

    @property
    def anchors_frozen(self) -> bool:
        return getattr(self, "_anchors_frozen", False)

    def freeze_anchors(self) -> "SNNet":
        """Train the stitching layers only (``--train-only stitching``): the anchors' parameters
        get no gradients, and the anchors stay in eval mode whatever ``train()`` is called with
        (BatchNorm statistics, dropout and drop-path frozen), so they end bit-equal to how they began."""
        self._anchors_frozen = True
        self.anchors.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "SNNet":
        super().train(mode)
        if self.anchors_frozen:
            self.anchors.eval()
        return self

    @property
    def input_size(self) -> tuple[int, ...]:
        return self.anchor_adapters[0].input_size

    @property
    def num_stitches(self) -> int:
        return len(self.stitches)

    def select(self, cfg_id: int) -> "SNNet":
        """Choose the network ``forward`` runs."""
        if not 0 <= cfg_id < len(self.stitches):
            raise ConfigError(
                f"stitch id {cfg_id} is out of range: this SN-Net has cfg_ids 0..{len(self.stitches) - 1}"
            )
        self.cfg_id = int(cfg_id)
        return self

    @contextmanager
    def selecting(self, cfg_id: int) -> Iterator["SNNet"]:
        """``with net.selecting(cfg_id): net(x)`` runs network ``cfg_id``; the previously
        selected network is selected again afterwards, also on errors."""
        previous = self.cfg_id
        self.select(cfg_id)
        try:
            yield self
        finally:
            self.cfg_id = previous

    @property
    def selected(self) -> Stitch:
        return self.stitches[self.cfg_id]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_route(x, self.stitches[self.cfg_id].route)

    def forward_route(self, x: torch.Tensor, route: Route) -> torch.Tensor:
        """Run one network; an anchor runs as its plain timm model."""
        if route.is_anchor:
            return self.anchors[route.first.anchor](x)
        return run_route(route, x, self.run_step)

    def run_step(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        """One step of a route (stem, block, stitching layer or head) on this SN-Net's modules."""
        return apply_step(step, x, self.anchor_adapters, self.stitch_layers)

    def num_params(self, cfg_id: int) -> int:
        """Parameters the network ``cfg_id`` runs, as deployed: the first anchor's stem, every
        segment's blocks (a block that a route runs twice, as a composed network may, held
        once), the stitching layers (a LoRA layer merged into one linear map) and the last
        anchor's head."""
        route = self.stitches[cfg_id].route
        first, last = self.anchor_adapters[route.first.anchor], self.anchor_adapters[route.last.anchor]
        held = {(s.anchor, b) for s in route.segments for b in range(s.start, s.stop)}
        blocks = sum(self.anchor_adapters[a].num_params([self.anchor_adapters[a].blocks[b]]) for a, b in held)
        layers = sum(self.stitch_layers[i].deployed_params for i in route.layers)
        return first.stem_params() + blocks + layers + last.head_params()

    @torch.no_grad()
    def init_stitching_layers(
        self,
        images: torch.Tensor | Iterable[torch.Tensor],
        batch_size: int = 32,
        combine: str = "mean",
        progress: bool = False,
    ) -> None:
        """Least-squares initialisation of every stitching layer (the paper uses 100 images).

        For each position ``(j, k)`` of a layer we solve ``min ||[X_j 1] W - Y_k||`` where
        ``X_j`` are the front anchor's features after block j and ``Y_k`` the back anchor's
        features before block k, over all images and spatial positions. A layer shared by
        several positions gets the mean of their solutions (``combine='mean'``, the paper's
        rule) or the one solution of all positions stacked (``combine='joint'``).
        The anchors run in eval mode (no dropout / drop-path, BatchNorm running stats).

        Args:
            images: an ``(N, 3, H, W)`` tensor, or an iterable of such batches.
            batch_size: images per forward pass when ``images`` is one tensor.
            combine: ``'mean'`` or ``'joint'``.
            progress: show a progress bar.
        """
        if combine not in ("mean", "joint"):
            raise ConfigError(f"combine must be 'mean' or 'joint', got '{combine}'")
        if not self.layer_specs:
            return
        needed: dict[int, set[int]] = defaultdict(set)  # anchor -> feature indices
        for spec in self.layer_specs:
            for j, k in spec.positions:
                needed[spec.front].add(j + 1)
                needed[spec.back].add(k)
        grams: dict[tuple, torch.Tensor] = {}
        crosses: dict[tuple, torch.Tensor] = {}

        batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="least-squares init", unit="batch")
        with eval_mode(self):
            for batch in batches:
                feats = {
                    (a, i): f for a, indices in needed.items() for i, f in self._features(a, batch, indices).items()
                }
                front_rows: dict[tuple, torch.Tensor] = {}  # the layer's input rows, after its junction
                for spec, layer in zip(self.layer_specs, self.stitch_layers):
                    junction = layer.junction
                    for j, k in spec.positions:
                        key = (spec.front, j + 1, junction.signature)
                        if key not in front_rows:
                            front_rows[key] = augment(junction.fit_rows(junction.enter(feats[(spec.front, j + 1)])))
                            _accumulate(grams, key, front_rows[key].T @ front_rows[key])
                        target = to_rows(feats[(spec.back, k)], self.anchor_adapters[spec.back].layout)
                        _accumulate(crosses, (*key, spec.back, k), front_rows[key].T @ target.to(torch.float64))

        for spec, layer in zip(self.layer_specs, self.stitch_layers):
            sig = layer.junction.signature
            keys = [((spec.front, j + 1, sig), (spec.front, j + 1, sig, spec.back, k)) for j, k in spec.positions]
            if combine == "joint":
                w, b = solve_normal_equations(sum(grams[g] for g, _ in keys), sum(crosses[c] for _, c in keys))
            else:
                sols = [solve_normal_equations(grams[g], crosses[c]) for g, c in keys]
                w = torch.stack([s[0] for s in sols]).mean(0)
                b = torch.stack([s[1] for s in sols]).mean(0)
            layer.set_weights(w, b)

    def _features(self, a: int, images: torch.Tensor, indices: set[int]) -> dict[int, torch.Tensor]:
        """Anchor ``a``'s features at the given indices (0: after the stem, i: after block i-1)."""
        adapter = self.anchor_adapters[a]
        param = next(adapter.model.parameters())
        x = adapter.stem(images.to(device=param.device, dtype=param.dtype))
        out = {0: x} if 0 in indices else {}
        for i, blk in enumerate(adapter.blocks[: max(indices)]):
            x = blk(x)
            if i + 1 in indices:
                out[i + 1] = x
        return out


def _accumulate(store: dict, key: Any, value: torch.Tensor) -> None:
    store[key] = store[key] + value if key in store else value


def create_snnet(
    anchors: Sequence[str],
    pretrained: bool = False,
    num_classes: Optional[int] = None,
    img_size: Optional[int] = None,
    model_kwargs: Optional[dict[str, Any]] = None,
    anchor_kwargs: Optional[Sequence[Optional[dict[str, Any]]]] = None,
    anchor_checkpoints: Optional[Sequence[Optional[str | Path]]] = None,
    kernel_size: int = 2,
    stride: int = 1,
    nearest: bool = True,
    stages: Optional[Sequence[int]] = None,
    stitching: Optional[str] = None,
    stitch_layer: str = "linear",
    lora_rank: int = 64,
    official_forward: bool = False,
    routes: Optional[Sequence[str | Route]] = None,
    class_token: str = DEFAULT_CLASS_TOKEN,
    prefix_tokens: str = DEFAULT_PREFIX_TOKENS,
    stitch_stride: int = 1,
) -> SNNet:
    """Build an SN-Net from timm model names ordered small -> large.

    Args:
        anchors: timm model names, e.g. ``["deit_tiny_patch16_224", "deit_small_patch16_224"]``.
        pretrained: load timm's pretrained weights for every anchor.
        num_classes: classifier size of every anchor (None: timm's default).
        img_size: input resolution of every anchor (None: the models' default).
        model_kwargs: ``timm.create_model`` keyword arguments for every anchor.
        anchor_kwargs: per-anchor keyword arguments, merged over ``model_kwargs``.
        anchor_checkpoints: per-anchor local weights files (None entries are skipped).
        kernel_size, stride: the sliding window of paired stitching.
        nearest: stitch only neighbouring anchors (the paper's default).
        stages: stages to stitch in (hierarchical anchors); None: every stage but the last.
        stitching: None (the paper's rule per anchor pair), ``paired``, ``unpaired`` or
            ``two-way`` (SN-Netv2: two anchors, SL/LS/LSL/SLS routes).
        stitch_layer: the stitching-layer kind (:func:`~snnet.core.layers.stitch_layer_kinds`):
            ``linear`` (SN-Net), ``lora`` (SN-Netv2: frozen LS base + low-rank update),
            ``conv3x3``, ``mlp``, ``basic-block``, ``bottleneck``, ``transformer-block``.
        lora_rank: rank of the low-rank update of ``lora`` layers.
        official_forward: run stitched networks as the official SN-Net code does (an imported
            official checkpoint needs it; :mod:`snnet.io.official`).
        routes: the networks by name (``resnet50[:7]>vit_small_patch16_224[6:]``, see
            :func:`~snnet.core.routes.parse_route`): the SN-Net then holds the anchors and these
            routes, cfg_ids in this order, instead of the stitching rules' networks; any layouts
            may meet (see :mod:`snnet.core.junctions`).
        class_token: how a junction from feature maps into tokens makes the prefix (class)
            tokens: ``mean`` of the patch tokens, ``zeros`` or ``ones``.
        prefix_tokens: what a junction from tokens into feature maps does with the prefix
            tokens: ``drop`` them or ``broadcast`` the class token as extra channels.
        stitch_stride: downsampling inside the conv kinds (``conv3x3``, ``basic-block``,
            ``bottleneck``): the junction resamples to ``stride`` times the back grid and the
            layer's convolutions stride back down.
    """
    if not anchors:
        raise ConfigError("no anchors given: pass --anchors NAME [NAME ...] ordered small to large")
    for what, per in (("--anchor-kwargs", anchor_kwargs), ("--anchor-checkpoints", anchor_checkpoints)):
        if per is not None and len(per) != len(anchors):
            raise ConfigError(f"{what} has {len(per)} entries for {len(anchors)} anchors: give one per anchor")
    built = []
    for i, name in enumerate(anchors):
        kwargs = {**(model_kwargs or {}), **((anchor_kwargs or [None] * len(anchors))[i] or {})}
        ckpt = (anchor_checkpoints or [None] * len(anchors))[i]
        built.append(create_anchor(name, pretrained, ckpt, num_classes, img_size, kwargs))
    return SNNet(
        built,
        kernel_size=kernel_size,
        stride=stride,
        nearest=nearest,
        stages=stages,
        stitching=stitching,
        stitch_layer=stitch_layer,
        lora_rank=lora_rank,
        official_forward=official_forward,
        routes=routes,
        class_token=class_token,
        prefix_tokens=prefix_tokens,
        stitch_stride=stitch_stride,
    )
