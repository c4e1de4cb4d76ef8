"""One lab cell as train.py would train it alone, over anchors shared by every cell.

A cell is the train.py run ``--routes R --stitch-layer K --train-only stitching --lr L --seed S``
of the lab config's recipe. :func:`build_cell` builds it the way :class:`snnet.train.trainer.Trainer`
does (:func:`~snnet.run_config.build_snnet` seeded with the cell's seed, so that its
stitching layers start from the same random draws; the same least-squares init on the same
images; :func:`~snnet.train.recipe.build_optimizer`, :func:`~snnet.train.recipe.build_scheduler`,
:func:`~snnet.train.recipe.build_loss`), then points the cell's network at the lab's one frozen
copy of the anchors (eval mode, no gradients), so a grid of cells holds the anchors once.
:class:`CellNetworks` is every cell of a chunk as one set of routes over those anchors, which the
sweep's prefix tree (:mod:`snnet.evaluate.sweep`) runs with every shared front computed once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..core.model import SNNet
from ..core.routes import Route, Step, apply_step
from ..core.stitches import Stitch
from ..errors import ConfigError
from ..run_config import TrainConfig, build_snnet
from ..train.recipe import build_loss, build_optimizer, build_scheduler
from ..train.step import backward_and_step
from .spec import Cell


@dataclass
class FrozenAnchors:
    """The lab's one copy of the anchors: eval mode, no gradients (BatchNorm statistics, dropout
    and drop-path frozen), shared by every cell's network."""

    models: nn.ModuleList
    adapters: list

    @classmethod
    def take(cls, net: SNNet) -> "FrozenAnchors":
        net.freeze_anchors()
        return cls(net.anchors, net.anchor_adapters)

    def share_with(self, net: SNNet) -> None:
        """Make ``net`` run these anchors instead of its own copy."""
        net.anchors = self.models
        net.anchor_adapters = self.adapters

    def copy_of(self, net: SNNet) -> SNNet:
        """A deep copy of ``net`` (its stitching layers) that still shares these anchors."""
        shared = [self.models, self.adapters, *self.adapters, *self.models.modules()]
        shared += [*self.models.parameters(), *self.models.buffers()]
        return copy.deepcopy(net, memo={id(obj): obj for obj in shared})


@dataclass
class CellRun:
    """A cell while it trains: its network (over the frozen anchors), optimizer, schedule and
    loss, and what it has measured."""

    cell: Cell
    args: TrainConfig
    net: SNNet
    cfg_id: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: nn.Module
    global_step: int = 0
    seconds: float = 0.0
    trajectory: list[dict] = field(default_factory=list)
    ls_top1: float = float("nan")

    @property
    def route(self) -> Route:
        return self.net.stitches[self.cfg_id].route

    @property
    def layers(self) -> list[nn.Module]:
        return [self.net.stitch_layers[i] for i in self.route.layers]

    def step(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """train.py's step from the network's output: loss, backward, clip, optimizer step, the
        schedule's update; the loss (detached)."""
        loss = self.criterion(x, out, y)
        backward_and_step(loss, self.optimizer, self.args)
        self.global_step += 1
        self.scheduler.step_update(num_updates=self.global_step)
        return loss.detach()


def find_route(net: SNNet, route: str) -> int:
    """The cfg_id of the network named ``route``."""
    for stitch in net.stitches:
        if stitch.name == route:
            return stitch.cfg_id
    raise ConfigError(
        f"route '{route}' is not a network of anchors {net.config['anchors']}: "
        f"check the anchor names and block indices (e.g. {net.stitches[-1].name})"
    )


def build_cell(
    cell: Cell,
    args: TrainConfig,
    frozen: FrozenAnchors,
    num_classes: int,
    ls_images: Optional[torch.Tensor],
    steps_per_epoch: int,
    device: torch.device,
    twin: Optional[CellRun] = None,
) -> CellRun:
    """The cell's run, built as train.py builds it, over the shared frozen anchors. A ``twin``
    (a cell of the same route, adapter and seed, not trained yet) differs at most in its
    learning rate, so train.py would build the very same network: it is copied."""
    if twin is not None:
        net, cfg_id = frozen.copy_of(twin.net), twin.cfg_id
    else:
        net = build_snnet(args, num_classes, seed=args.seed)  # as Trainer: train.py's initial stitching layers
        frozen.share_with(net)
        cfg_id = find_route(net, cell.route)
        if args.ls_init and net.layer_specs:
            net.init_stitching_layers(ls_images, batch_size=args.ls_init_batch_size, combine=args.ls_init_combine)
        net.to(device)
    optimizer = build_optimizer(net, args)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch)
    scheduler.step(0)  # as Trainer: the lr of every group set from (epoch, update)
    scheduler.step_update(0)
    _, criterion = build_loss(args, None, num_classes)
    return CellRun(cell, args, net, cfg_id, optimizer, scheduler, criterion)


class CellNetworks(nn.Module):
    """Every cell of a chunk as one network set over the frozen anchors: ``stitches[i]`` is cell
    run ``i``'s route with its layers renumbered into ``stitch_layers`` (the cells' own layer
    modules), so the sweep's prefix tree (training and validation) runs a front shared by several
    cells once. The anchors stay in eval mode whatever :meth:`train` is asked."""

    def __init__(self, frozen: FrozenAnchors, runs: list[CellRun]):
        super().__init__()
        self.anchors = frozen.models
        self.anchor_adapters = frozen.adapters
        self.stitch_layers = nn.ModuleList()
        self.stitches: list[Stitch] = []
        for i, run in enumerate(runs):
            route = run.route
            first = len(self.stitch_layers)
            self.stitch_layers.extend(run.layers)
            renumbered = Route(route.segments, tuple(range(first, first + len(route.layers))))
            self.stitches.append(Stitch(i, run.cell.route, renumbered))

    def run_step(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        return apply_step(step, x, self.anchor_adapters, self.stitch_layers)

    def train(self, mode: bool = True) -> "CellNetworks":
        super().train(mode)
        self.anchors.eval()
        return self


def layer_state(run: CellRun) -> dict[str, torch.Tensor]:
    """The cell's trained stitching layers under their keys in the cell's SN-Net
    (``stitch_layers.<l>.*``, as train.py's checkpoints hold them), copied to the CPU."""
    return {
        f"stitch_layers.{i}.{k}": v.detach().cpu().clone()
        for i in run.route.layers
        for k, v in run.net.stitch_layers[i].state_dict().items()
    }
