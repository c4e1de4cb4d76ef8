"""compose.py / snnet.compose: StitchNet's training-free composition over a pool of networks.

References are independent of the code under test: junction solutions against
``torch.linalg.lstsq`` on the rows, CKA against its kernel (Gram-matrix) definition, the search
against a brute-force filter over every chain of fragments, composed forwards against a
hand-written forward of their pieces, FLOPs against a whole-network trace, the heads against
scikit-learn, and the duplicated-pool score and top-1 against the network's own k-NN top-1 by
scikit-learn.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn.functional as F
from conftest import run_entry

from snnet import create_snnet
from snnet.compose import Candidate, JunctionTable, SearchConfig, compose_snnet, draw_svg, generate
from snnet.compose import main as compose_main
from snnet.compose.fit import KNNHead, RidgeHead, evaluate, fit
from snnet.compose.main import COLUMNS, FlopsCounter, load_batches
from snnet.compose.search import best_candidates, sample_network, search
from snnet.core.flops import network_flops
from snnet.core.routes import Segment, parse_route

# two tiny DeiT-like networks of different widths (17 tokens: patch 8 on 32x32)
POOL = dict(
    img_size=32,
    num_classes=10,
    model_kwargs=dict(patch_size=8, depth=4),
    anchor_kwargs=[dict(embed_dim=24, num_heads=2), dict(embed_dim=32, num_heads=2)],
)
NAMES = ["deit_tiny_patch16_224", "deit_small_patch16_224"]


def _pool(**kwargs):
    return create_snnet(NAMES, **{**POOL, **kwargs}).eval()


@pytest.fixture(scope="module")
def random_pool():
    torch.manual_seed(0)
    pool = _pool()
    images = torch.randn(4, 3, 32, 32)
    return pool, images, JunctionTable(pool.anchor_adapters, images, batch_size=3)


# ------------------------------------------------------------------------------------------
# junctions: features, least squares, CKA
# ------------------------------------------------------------------------------------------
def _kernel_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA by its definition over n x n Gram matrices (Kornblith et al. 2019, linear kernel)."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((kx * ky).sum() / (kx.norm() * ky.norm()))


def test_junctions_match_lstsq_and_the_kernel_definition_of_cka(random_pool):
    pool, images, table = random_pool
    for src, dst in [((0, 2), (1, 1)), ((1, 4), (0, 0)), ((0, 1), (0, 3))]:
        front, back = pool.anchor_adapters[src[0]], pool.anchor_adapters[dst[0]]
        with torch.no_grad():
            x = front.forward_until(images, src[1] - 1).reshape(-1, front.channels(src[1])).double()
            y = back.forward_until(images, dst[1] - 1).reshape(-1, back.channels(dst[1])).double()
        assert torch.allclose(table.features[src].flatten(0, 1).double(), x, atol=1e-5)
        a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        sol = torch.linalg.lstsq(a, y, driver="gelsd").solution
        solved = table.junction(src, dst)
        assert torch.allclose(solved.weight.double(), sol[:-1].T, atol=1e-4)
        assert torch.allclose(solved.bias.double(), sol[-1], atol=1e-4)
        assert solved.cka == pytest.approx(_kernel_cka(a @ sol, y), abs=1e-6)
        assert 0.0 <= solved.cka <= 1.0
    assert table.junction((0, 2), (1, 1)) is table.junction((0, 2), (1, 1))  # solved once


def test_junctions_across_layouts_match_ls_init_through_the_stitching_layer():
    """A ResNet and a DeiT in one pool: each junction's solution is the one
    ``init_stitching_layers`` finds for an SN-Net holding that route (through its layout change),
    and its score the kernel CKA of that layer's outputs against the receiver's features."""
    from snnet.core.layers import to_rows
    from snnet.core.model import SNNet

    torch.manual_seed(0)
    kwargs = [{}, dict(patch_size=8, depth=4, embed_dim=32, num_heads=2)]
    pool = create_snnet(["resnet18", NAMES[0]], img_size=32, num_classes=10, routes=[], anchor_kwargs=kwargs).eval()
    images = torch.randn(8, 3, 32, 32)
    table = JunctionTable(pool.anchor_adapters, images)
    names = [a.name for a in pool.anchor_adapters]
    for (a, i), (b, k) in [((1, 2), (0, 3)), ((0, 2), (1, 1)), ((0, 1), (0, 2))]:
        ref = SNNet(pool.anchor_adapters, routes=[f"{names[a]}[:{i}]>{names[b]}[{k}:]"])
        ref.eval().init_stitching_layers(images)
        layer = ref.stitch_layers[0]
        solved = table.junction((a, i), (b, k))
        assert torch.allclose(solved.weight, layer.transform.weight, atol=1e-4)
        assert torch.allclose(solved.bias, layer.transform.bias, atol=1e-4)
        with torch.no_grad():
            mapped = to_rows(
                layer(pool.anchor_adapters[a].forward_until(images, i - 1)), pool.anchor_adapters[b].layout
            )
            target = to_rows(pool.anchor_adapters[b].forward_until(images, k - 1), pool.anchor_adapters[b].layout)
        assert solved.cka == pytest.approx(_kernel_cka(mapped.double(), target.double()), abs=1e-5)
    # 8 images x 17 tokens from the 1x1 map after ResNet-18's last block: fewer rows than its 512 channels
    assert not table.can_join((0, 8), (1, 3)) and ((0, 8), (1, 3)) in table.underdetermined
    assert all(dst != (1, 3) for _, dst in table.ranked((0, 8)))


def test_identical_features_score_one(random_pool):
    _, images, _ = random_pool
    twin = create_snnet([NAMES[0]] * 2, **{**POOL, "anchor_kwargs": [POOL["anchor_kwargs"][0]] * 2})
    twin.anchors[1].load_state_dict(twin.anchors[0].state_dict())
    table = JunctionTable(twin.anchor_adapters, images)
    for i in range(1, 4):
        assert table.score((0, i), (1, i)) >= 0.999999


# ------------------------------------------------------------------------------------------
# the search
# ------------------------------------------------------------------------------------------
class _Adapter:
    def __init__(self, depth: int):
        self.num_blocks = depth


class _ScoredTable(JunctionTable):
    """A table with given junction scores (no networks run)."""

    def __init__(self, depths, seed=0):
        self.adapters = [_Adapter(d) for d in depths]
        rng = random.Random(seed)
        points = [(a, i) for a, d in enumerate(depths) for i in range(d + 1)]
        # one decimal: many ties, and scores equal to the thresholds (ties and ">=" are tested too)
        self.scores = {(s, t): round(rng.uniform(0.3, 1.0), 1) for s in points for t in points if s != t}
        self._ranked = {}

    def can_join(self, src, dst):
        return True

    def score(self, src, dst):
        return self.scores[(src, dst)]


def _brute_force(table: _ScoredTable, cfg: SearchConfig) -> set:
    """Every chain of fragments allowed by the rules, by filtering all chains up to max_depth."""
    depths = [a.num_blocks for a in table.adapters]
    entries = [(b, k) for b, d in enumerate(depths) for k in range(d)]

    def kept(src):  # the top-k entries by score (ties: lower entry) at least threshold
        others = [e for e in entries if e != src and (cfg.self_junctions or e[0] != src[0])]
        ranked = sorted(others, key=lambda e: (-table.scores[(src, e)], e))
        return [e for e in ranked if table.scores[(src, e)] >= cfg.threshold][: cfg.top_k]

    found = set()
    for n in range(2, cfg.max_depth + 1):
        for first in [(a, i) for a, d in enumerate(depths) for i in range(1, d + 1)]:
            for path in itertools.product(entries, repeat=n - 1):
                # a middle fragment leaves at a later boundary before its network's head
                for exits in itertools.product(*[range(k + 1, depths[b]) for b, k in path[:-1]]):
                    segs = [Segment(first[0], 0, first[1])]
                    segs += [Segment(b, k, m) for (b, k), m in zip(path[:-1], exits)]
                    segs.append(Segment(path[-1][0], path[-1][1], depths[path[-1][0]]))
                    ok, total = True, 1.0
                    for s, t in zip(segs[:-1], segs[1:]):
                        src, dst = (s.anchor, s.stop), (t.anchor, t.start)
                        total *= table.scores.get((src, dst), 0.0)
                        ok = ok and dst in kept(src) and total >= cfg.total_threshold
                    if ok:
                        found.add(tuple(segs))
    return found


@pytest.mark.parametrize(
    "cfg",
    [
        SearchConfig(0.6, 0.3, 3, 3),
        SearchConfig(0.0, 0.0, 2, 2),
        SearchConfig(0.8, 0.6, 3, 20),
        SearchConfig(0.5, 0.2, 3, 2, self_junctions=False),
    ],
)
def test_search_finds_exactly_the_chains_the_rules_allow(cfg):
    table = _ScoredTable([3, 2], seed=1)
    found = list(search(table, cfg))
    assert {c.segments for c in found} == _brute_force(table, cfg)
    assert len({c.segments for c in found}) == len(found)  # each network once
    for c in found:
        assert len(c.segments) <= cfg.max_depth
        assert cfg.self_junctions or all(s.anchor != t.anchor for s, t in zip(c.segments[:-1], c.segments[1:]))
        assert all(s >= cfg.threshold for s in c.junction_scores)
        assert cfg.total_threshold <= c.score <= 1.0
        assert c.score == pytest.approx(math.prod(table.scores[j] for j in c.junctions))
    ranked = best_candidates(found, 5)
    assert [c.score for c in ranked] == sorted((c.score for c in found), reverse=True)[:5]


def test_sample_gives_one_network_of_the_search_the_same_for_the_same_seed():
    table = _ScoredTable([3, 2], seed=2)
    cfg = SearchConfig(0.5, 0.2, 3, 3)
    allowed = {c.segments for c in search(table, cfg)}
    draws = [sample_network(table, cfg, seed) for seed in range(12)]
    assert all(d.segments in allowed for d in draws)
    assert sample_network(table, cfg, 7) == draws[7]
    assert len({d.segments for d in draws}) > 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold=1.5), "--threshold 1.5 is outside [0, 1]"),
        (dict(threshold=-0.1), "--threshold -0.1 is outside [0, 1]"),
        (dict(total_threshold=2.0), "--total-threshold 2.0 is outside [0, 1]"),
        (dict(max_depth=0), "--max-depth 0 allows no junction"),
    ],
)
def test_search_config_refuses_bad_values(kwargs, message):
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]")):
        SearchConfig(**kwargs)


# ------------------------------------------------------------------------------------------
# composed networks: forward, FLOPs, export, drawing
# ------------------------------------------------------------------------------------------
def test_composed_network_runs_its_fragments_and_counts_its_flops(random_pool, tmp_path):
    pool, images, table = random_pool
    candidate = Candidate((Segment(0, 0, 2), Segment(1, 1, 3), Segment(0, 2, 4)), (0.9, 0.8))
    net = compose_snnet(pool, table, [candidate])
    cfg_id = 2
    assert net.stitches[cfg_id].name == f"{NAMES[0]}[:2]>{NAMES[1]}[1:3]>{NAMES[0]}[2:]"
    a, b = pool.anchor_adapters
    j1, j2 = table.junction((0, 2), (1, 1)), table.junction((1, 3), (0, 2))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = a.forward_until(x, 1)
        h = F.linear(h, j1.weight, j1.bias)
        h = b.blocks[2](b.blocks[1](h))
        expected = a.forward_from(F.linear(h, j2.weight, j2.bias), 2)
        got = net.select(cfg_id)(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert FlopsCounter(pool)(net, cfg_id) == network_flops(net, cfg_id)
    svg = draw_svg(net, cfg_id, tmp_path / "net.svg")
    root = ET.parse(tmp_path / "net.svg").getroot()
    assert root.tag.endswith("svg") and svg.count("CKA 0.") == 2
    assert "CKA 0.900" in svg and "CKA 0.800" in svg and f"{NAMES[1]}[1:3]" in svg


def test_generate_yields_scored_snnets_that_export_with_their_head(random_pool, tmp_path):
    from snnet.evaluate.export import export_network

    pool, images, table = random_pool
    found = list(generate(pool, images, threshold=0.0, total_threshold=0.0, max_depth=2, top_k=2, table=table))
    assert len(found) == sum(d for d in (4, 4)) * 2  # every first fragment, two entries each
    names, depths = [a.name for a in pool.anchor_adapters], [a.num_blocks for a in pool.anchor_adapters]
    for _, other in found:  # the names compose.py writes are routes by name (--routes)
        assert parse_route(other.selected.name, names, depths).segments == other.selected.route.segments
    score, net = found[0]
    assert net.cfg_id == 2 and net.num_stitches == 3 and 0.0 <= score <= 1.0
    assert score == pytest.approx(net.compositions[2].score)
    batches = [(torch.randn(8, 3, 32, 32), torch.arange(8) % 3)]
    head = fit(net, batches, "knn", k_neighbors=1)
    assert evaluate(net, head, batches) == 100.0  # 1-NN on its own training images
    report = export_network(net, 2, tmp_path / "net.pt", head=head)
    loaded = torch.jit.load(str(report.path))
    with torch.no_grad():
        assert torch.equal(loaded(batches[0][0]).argmax(1), batches[0][1])
    draws = [list(generate(pool, images, 0.0, 0.0, 3, 3, sample=True, seed=5, table=table)) for _ in range(2)]
    assert [len(d) for d in draws] == [1, 1] and draws[0][0][1].selected.name == draws[1][0][1].selected.name


def test_heads_match_scikit_learn():
    from sklearn.linear_model import Ridge
    from sklearn.neighbors import KNeighborsClassifier

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 6, generator=g), torch.randint(0, 4, (200,), generator=g)
    q = torch.randn(50, 6, generator=g)
    knn = KNeighborsClassifier(n_neighbors=5).fit(x.numpy(), y.numpy())
    assert KNNHead(x, y, 4, 5)(q).argmax(1).tolist() == knn.predict(q.numpy()).tolist()
    head = RidgeHead(x, y, 4, alpha=1e-3)
    xc = x.double() - x.double().mean(0)
    lam = 1e-3 * float((xc.T @ xc).diagonal().mean())
    ridge = Ridge(alpha=lam).fit(x.double().numpy(), F.one_hot(y, 4).double().numpy())
    assert torch.allclose(head(q).double(), torch.from_numpy(ridge.predict(q.double().numpy())), atol=1e-4)


# ------------------------------------------------------------------------------------------
# compose.py
# ------------------------------------------------------------------------------------------
def _pool_args(names=NAMES, kwargs=POOL["anchor_kwargs"]):
    return [
        "--pool",
        *names,
        "--img-size",
        "32",
        "--num-classes",
        "10",
        "--model-kwargs",
        "patch_size=8",
        "depth=4",
        "--anchor-kwargs",
        *[" ".join(f"{k}={v}" for k, v in kw.items()) for kw in kwargs],
        "--dataset",
        "digits",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pool", "deit_tinny_patch16_224", "--dataset", "digits"], "deit_tinny_patch16_224"),
        (_pool_args() + ["--threshold", "1.5"], "--threshold 1.5 is outside [0, 1]"),
        (_pool_args() + ["--total-threshold", "-1"], "--total-threshold -1.0 is outside [0, 1]"),
        (_pool_args() + ["--max-depth", "0"], "--max-depth 0 allows no junction"),
        (_pool_args() + ["--stitch-images", "5000"], "--stitch-images 5000 is above"),
        (_pool_args() + ["--routes", f"{NAMES[0]}[:2]>{NAMES[1]}[2:]"], "--routes does not apply to compose.py"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_entry(compose_main.main, argv + ["--output", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def _train(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, epochs: int = 3) -> None:
    """A few epochs of plain AdamW: small anchors that do better than chance."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(images[idx]), targets[idx]).backward()
            opt.step()
    model.eval()


@pytest.fixture(scope="module")
def trained_pool(tmp_path_factory):
    """Two small anchors trained on the digits in the test, as safetensors files."""
    from safetensors.torch import save_file

    from snnet.data.datasets import create_dataset

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pool = _pool()
        train = load_batches(create_dataset("digits", None, "train"), pool, 2000, "cpu")
        images, targets = train[0]
        folder = tmp_path_factory.mktemp("anchors")
        files = []
        for a, model in enumerate(pool.anchors):
            _train(model, images, targets)
            files.append(folder / f"anchor{a}.safetensors")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, files[-1])
    finally:
        torch.set_num_threads(threads)
    return files


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_compose_on_a_pool_with_one_network_twice(trained_pool, tmp_path):
    """compose.py writes its files; the duplicated network's junction scores 1 and the composed
    network has that network's own k-NN top-1 (scikit-learn on its plain timm outputs)."""
    from sklearn.neighbors import KNeighborsClassifier

    from snnet.data.datasets import create_dataset

    out = tmp_path / "out"
    names = [NAMES[0], NAMES[0], NAMES[1]]
    kwargs = [POOL["anchor_kwargs"][0]] * 2 + [POOL["anchor_kwargs"][1]]
    argv = _pool_args(names, kwargs) + ["--anchor-checkpoints", trained_pool[0], trained_pool[0], trained_pool[1]]
    argv += ["--threshold", "0.3", "--total-threshold", "0.1", "--max-depth", "3", "--top-k", "2"]
    argv += ["--max-networks", "4", "--output", out, "--export", "1"]
    assert run_entry(compose_main.main, argv) == 0
    rows = _read(out / "candidates.csv")
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 4
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert all(0.0 <= float(s) <= 1.0 for r in rows for s in r["junction_scores"].split(";"))
    best = rows[0]
    assert float(best["score"]) >= 0.999
    assert best["name"].startswith(f"{NAMES[0]}[:") and best["name"].count(">") == 1
    # the junction between the two copies at one boundary (a network's own boundary is no junction)
    first, second = best["fragments"].split(";")
    assert first.startswith(f"{NAMES[0]}[0:") and second.startswith(NAMES[0])
    assert first.split(":")[1].rstrip("]") == second.split("[")[1].split(":")[0]
    assert (out / "pareto.png").stat().st_size > 0
    for r in rows:
        ET.parse(out / "svg" / f"{r['rank']}.svg")

    # the reference: scikit-learn's k-NN on the plain timm model's own outputs
    pool = create_snnet(
        [NAMES[0]],
        **{**POOL, "anchor_kwargs": None, "model_kwargs": {**POOL["model_kwargs"], **kwargs[0]}},
        anchor_checkpoints=[trained_pool[0]],
    )
    model = pool.anchors[0].eval()
    data = {s: load_batches(create_dataset("digits", None, s), pool, 2000, "cpu") for s in ("train", "validation")}
    with torch.no_grad():
        (xt, yt), (xv, yv) = data["train"][0], data["validation"][0]
        knn = KNeighborsClassifier(n_neighbors=5).fit(model(xt).numpy(), yt.numpy())
        reference = 100.0 * float((torch.from_numpy(knn.predict(model(xv).numpy())) == yv).double().mean())
    assert float(best["top1"]) == pytest.approx(reference, abs=1e-3)
    assert float(_read(out / "pool.csv")[0]["top1"]) == pytest.approx(reference, abs=1e-3)
    assert (out / "network-1.pt").is_file() and (out / "network-1.pt.json").is_file()


@pytest.mark.slow
def test_sample_writes_one_network_the_same_for_the_same_seed(trained_pool, tmp_path):
    argv = _pool_args() + ["--anchor-checkpoints", *trained_pool, "--sample", "--seed", "3"]
    argv += ["--threshold", "0.3", "--total-threshold", "0.1", "--fit-images", "300"]
    names = []
    for run in ("a", "b"):
        assert run_entry(compose_main.main, argv + ["--output", tmp_path / run]) == 0
        rows = _read(tmp_path / run / "candidates.csv")
        assert len(rows) == 1
        names.append(rows[0]["name"])
    assert names[0] == names[1]
