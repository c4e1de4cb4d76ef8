"""Shared tiny anchor settings: small enough for 2 CPU cores, real timm architectures."""

import warnings
from typing import Callable, Sequence

import pytest
import torch

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")

# name -> create_snnet kwargs of a tiny two-anchor SN-Net of that family.
TINY_PAIRS = {
    "deit": dict(
        anchors=["deit_tiny_patch16_224", "deit_small_patch16_224"],
        img_size=32,
        model_kwargs=dict(patch_size=4, depth=4),
        anchor_kwargs=[dict(embed_dim=32, num_heads=2), dict(embed_dim=64, num_heads=4)],
    ),
    "swin": dict(
        anchors=["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224"],
        img_size=64,
        model_kwargs=dict(window_size=4),
        anchor_kwargs=[
            dict(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4)),
            dict(embed_dim=24, depths=(2, 2, 6, 1), num_heads=(1, 2, 3, 6)),
        ],
    ),
    "resnet": dict(anchors=["resnet18", "resnet50"], img_size=64),
    "resnet_swin": dict(
        anchors=["resnet18", "swin_tiny_patch4_window7_224"],
        img_size=64,
        anchor_kwargs=[{}, dict(window_size=4, embed_dim=24, depths=(2, 2, 6, 2), num_heads=(1, 2, 3, 4))],
    ),
    "levit": dict(anchors=["levit_128s", "levit_192"], img_size=64),
    "mobilenetv3": dict(anchors=["mobilenetv3_small_050", "mobilenetv3_small_075"], img_size=64),
}


# A tiny DeiT3-S/L-shaped pair for SN-Netv2's two-way stitching (depths 4 / 8: ratio 2 as S/L).
TINY_TWO_WAY = dict(
    anchors=["deit3_small_patch16_224", "deit3_large_patch16_224"],
    img_size=32,
    model_kwargs=dict(patch_size=8, init_values=0.5),  # LayerScale far from timm's 1e-6 init: blocks matter
    anchor_kwargs=[dict(embed_dim=32, num_heads=2, depth=4), dict(embed_dim=48, num_heads=2, depth=8)],
    stitching="two-way",
)


def families(names, slow: Sequence[str] = ()) -> list:
    """Parametrize values over anchor families, those in ``slow`` marked ``slow`` (their tiny
    models are still heavy on 2 cores; ``make test-fast`` skips them, ``make test`` runs all)."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in sorted(names)]


def _flag_values(kwargs: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in kwargs.items())


# TINY_PAIRS["deit"] as train.py / eval.py flags, on the digits, loading in the main process.
_DEIT = TINY_PAIRS["deit"]
TINY_DEIT_ARGS = [
    "--dataset",
    "digits",
    "--img-size",
    str(_DEIT["img_size"]),
    "--anchors",
    *_DEIT["anchors"],
    "--model-kwargs",
    *_flag_values(_DEIT["model_kwargs"]).split(),
    "--anchor-kwargs",
    *map(_flag_values, _DEIT["anchor_kwargs"]),
    "--workers",
    "0",
]


def run_entry(main: Callable[[list[str]], int], args: Sequence) -> int:
    """An entry point's ``main`` in this process, on one thread (tiny models on 2 shared cores run
    several times faster so, and like each torchrun worker); returns its exit code (errors exit 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def deit_ti_s_b():
    """The paper's DeiT Ti/S/B SN-Net at full size (random weights), built once."""
    from snnet import create_snnet

    return create_snnet(["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"], num_classes=1000)


@pytest.fixture
def one_thread():
    """Tiny models on 2 shared cores run several times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm on this machine (tests/slurm_cluster.py), shared by the Slurm tests: up
    once ``sinfo`` and ``srun hostname`` work, every daemon it started stopped at the end."""
    from slurm_cluster import start_cluster

    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()
