"""Fitting a composed network without backprop: a classifier on its outputs.

StitchNet fits a k-nearest-neighbour classifier on the composed network's outputs for the
target task's training images (:class:`KNNHead`: Euclidean distance, majority vote of the ``k``
nearest, ties to the lower class, as scikit-learn's ``KNeighborsClassifier``); ``linear`` is a
closed-form ridge probe on the same outputs (:class:`RidgeHead`). A head is an ``nn.Module``
whose training data are buffers, so ``nn.Sequential(network, head)`` exports as one model; its
output is a score per class (the k-NN head: log of the vote shares, so that a softmax gives the
shares back).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.model import SNNet
from ..errors import ConfigError

FIT_METHODS = ("knn", "linear")


class KNNHead(nn.Module):
    """k-nearest-neighbour vote over stored (float64) training outputs."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, num_classes: int, k: int = 5):
        super().__init__()
        if not 1 <= k <= len(targets):
            raise ConfigError(f"--k-neighbors {k} must lie in 1..{len(targets)} (the training images)")
        self.k, self.num_classes = k, num_classes
        self.register_buffer("features", features.detach().double().flatten(1))
        self.register_buffer("targets", targets.detach().long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exact distances (no matrix-product shortcut): neighbour order as a plain subtraction gives
        d = torch.cdist(x.double().flatten(1), self.features, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = d.topk(self.k, dim=1, largest=False).indices
        votes = F.one_hot(self.targets[nearest], self.num_classes).sum(1).float()
        return (votes / self.k).clamp_min(1e-12).log()


class RidgeHead(nn.Module):
    """Closed-form ridge regression from outputs to one-hot targets (a linear probe)."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, num_classes: int, alpha: float = 1e-3):
        super().__init__()
        x = features.detach().double().flatten(1)
        mean = x.mean(0)
        xc = x - mean
        gram = xc.T @ xc
        # ridge strength relative to the features' scale, so that one alpha suits any network
        ridge = alpha * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(x.shape[1], dtype=x.dtype)
        y = F.one_hot(targets.long(), num_classes).double()
        weight = torch.linalg.solve(gram + ridge, xc.T @ (y - y.mean(0)))
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", (y.mean(0) - mean @ weight).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float() @ self.weight + self.bias


@torch.no_grad()
def network_outputs(
    net: SNNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg_id: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of network ``cfg_id`` (default: the selected one) on normalised ``(images,
    targets)`` batches, in eval mode, and the targets (both on the CPU)."""
    was_training = net.training
    net.eval()
    outs, targets = [], []
    try:
        with net.selecting(net.cfg_id if cfg_id is None else cfg_id):
            for x, y in batches:
                outs.append(net(x).float().cpu())
                targets.append(y.cpu())
    finally:
        net.train(was_training)
    return torch.cat(outs), torch.cat(targets)


def fit_head(
    features: torch.Tensor, targets: torch.Tensor, method: str = "knn", k_neighbors: int = 5, num_classes: int = 0
) -> nn.Module:
    """A :class:`KNNHead` (``knn``) or :class:`RidgeHead` (``linear``) on ``features``."""
    classes = max(num_classes, int(targets.max()) + 1)
    if method == "knn":
        return KNNHead(features, targets, classes, k_neighbors)
    if method == "linear":
        return RidgeHead(features, targets, classes)
    raise ConfigError(f"unknown --fit '{method}': use one of {', '.join(FIT_METHODS)}")


def fit(
    net: SNNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    method: str = "knn",
    k_neighbors: int = 5,
    cfg_id: Optional[int] = None,
    num_classes: int = 0,
) -> nn.Module:
    """Fit a head on network ``cfg_id``'s (default: the selected one's) outputs for the training
    ``batches`` (normalised images, targets): no backprop, the network is unchanged."""
    features, targets = network_outputs(net, batches, cfg_id)
    return fit_head(features, targets, method, k_neighbors, num_classes)


@torch.no_grad()
def head_top1(head: nn.Module, features: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 (percent) of ``head`` on precomputed network outputs."""
    correct = sum(
        int((head(f).argmax(1) == t).sum()) for f, t in zip(features.split(batch_size), targets.split(batch_size))
    )
    return 100.0 * correct / max(len(targets), 1)


def evaluate(
    net: SNNet, head: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg_id: Optional[int] = None
) -> float:
    """Top-1 (percent) of network ``cfg_id`` (default: the selected one) followed by ``head``."""
    features, targets = network_outputs(net, batches, cfg_id)
    return head_top1(head, features, targets)
