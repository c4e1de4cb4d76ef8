"""Stitch compatibility before training: how well the front features at each junction match
what the back anchor expects there.

For every stitch ``A[:j+1]>B[k:]`` of an untrained SN-Net, on a set of images:

* ``cka``: linear Centered Kernel Alignment (:mod:`snnet.core.measures`) between the front anchor's
  features after block ``j`` and the back anchor's own features before block ``k``, with every
  image position (token / pixel) a sample, as the least-squares init sees them:
  ``||Cxy||_F^2 / (||Cxx||_F ||Cyy||_F)`` with ``C`` the centred (cross-)covariances.
  1 means the two representations agree up to rotation and scale; it ignores the stitching layer.
* ``ls_residual``: the relative residual of the stitching layer as least squares initialised it
  (shared layers: the mean solution), ``||layer(X) - Y||_F / ||Y - mean(Y)||_F``, i.e.
  ``sqrt(1 - R^2)`` of the fit: 0 is a perfect fit, 1 no better than the mean.

eval.py --compatibility adds the top-1 of each LS-initialised network (its sweep) and writes
``compat.csv``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..core.layers import to_rows
from ..core.measures import RowMoments
from ..core.model import SNNet
from ..data.loaders import sample_train_images
from ..errors import ConfigError
from ..io.checkpoint import atomic_write
from ..runtime import eval_mode

COLUMNS = ("cfg_id", "name", "stage", "cka", "ls_residual", "ls_top1")


@torch.no_grad()
def junction_scores(
    net: SNNet, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 32
) -> dict[int, dict[str, float]]:
    """``{cfg_id: {"cka": ..., "ls_residual": ...}}`` for every stitched network of ``net`` on
    ``images`` (an ``(N, 3, H, W)`` tensor or an iterable of batches), in eval mode."""
    stitched = [s for s in net.stitches if not s.is_anchor]
    multi = [s for s in stitched if len(s.route.layers) > 1]
    if multi:
        raise ConfigError(
            f"--compatibility scores networks with one junction (SN-Net stitches), but {multi[0].name} (cfg_id "
            f"{multi[0].cfg_id}) has {len(multi[0].route.layers)}: evaluate a paired/unpaired SN-Net, not a two-way one"
        )
    needed: dict[int, set[int]] = defaultdict(set)  # anchor -> feature indices (i: before block i)
    for s in stitched:
        needed[s.front].add(s.front_block + 1)
        needed[s.back].add(s.back_block)
    moments = {s.cfg_id: RowMoments() for s in stitched}
    residual = defaultdict(float)
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    with eval_mode(net):
        for batch in batches:
            feats = {(a, i): f for a, idx in needed.items() for i, f in net._features(a, batch, idx).items()}
            for s in stitched:
                back, layer = net.anchor_adapters[s.back], net.stitch_layers[s.route.layers[0]]
                x, y = feats[(s.front, s.front_block + 1)], feats[(s.back, s.back_block)]
                y_rows = to_rows(y, back.layout)
                moments[s.cfg_id].add(layer.junction.fit_rows(layer.junction.enter(x)), y_rows)  # after its junction
                fitted = to_rows(layer(x), back.layout)
                residual[s.cfg_id] += float((fitted.double() - y_rows.double()).pow(2).sum())
    out = {}
    for s in stitched:
        m = moments[s.cfg_id]
        spread = float(m.yy.diagonal().sum() - (m.sy**2).sum() / m.n)  # ||Y - mean(Y)||_F^2
        out[s.cfg_id] = {"cka": m.cka(), "ls_residual": (residual[s.cfg_id] / spread) ** 0.5}
    return out


def ls_initialise_and_score(
    net: SNNet, dataset: str, data_dir: str | None, n_images: int, seed: int, opts: Any = None
) -> dict[int, dict[str, float]]:
    """Least-squares init of every stitching layer on ``n_images`` training images (as train.py's
    ``--ls-init``: same sampling from ``seed``, same transform), then :func:`junction_scores` on them."""
    images = sample_train_images(net, dataset, data_dir, n_images, seed, opts)
    net.init_stitching_layers(images)
    return junction_scores(net, images)


def compat_rows(
    net: SNNet, scores: dict[int, dict[str, float]], results: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per network: the junction scores (empty for anchors) and the sweep's top-1."""
    top1 = {r["cfg_id"]: r["top1"] for r in results}
    rows = []
    for s in net.stitches:
        if s.cfg_id not in top1:
            continue
        score = scores.get(s.cfg_id, {})
        rows.append(
            {
                "cfg_id": s.cfg_id,
                "name": s.name,
                "stage": "" if s.stage is None else s.stage,
                "cka": round(score["cka"], 6) if score else "",
                "ls_residual": round(score["ls_residual"], 6) if score else "",
                "ls_top1": top1[s.cfg_id],
            }
        )
    return rows


def write_compat_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
