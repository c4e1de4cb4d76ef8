"""Training-free composition of networks from pretrained fragments (StitchNet, Teerapittayanon et
al., "Composing Neural Networks from Pre-Trained Fragments"): score every junction between the
pool's networks by linear CKA after a least-squares stitching layer, search chains of fragments,
fit a k-NN (or ridge) classifier on each composed network's outputs.

    from snnet import create_snnet
    from snnet.compose import generate, fit, evaluate, draw_svg
"""

from .build import compose_snnet, generate
from .draw import draw_svg
from .fit import evaluate, fit
from .junctions import JunctionTable
from .search import Candidate, SearchConfig, sample_network, search

__all__ = [
    "Candidate",
    "JunctionTable",
    "SearchConfig",
    "compose_snnet",
    "draw_svg",
    "evaluate",
    "fit",
    "generate",
    "sample_network",
    "search",
]
