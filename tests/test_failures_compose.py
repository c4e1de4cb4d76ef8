"""compose.py's failure handling (issue 28): every bad flag, pool file, output path, full disk,
read-only folder, second process and SIGKILL is one `error:` line, exit 2, and leaves every file
as it was; a killed composition rerun gives the same outputs; pool files of other class counts
compose without a flag (each network's classifier size from its file, said once in the log)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_entry
from test_failures import (
    REPO,
    Payload,
    full_disk,
    hashes,
    locked_by_another_process,
    one_error_line,
    read_only,
    sigkill_when,
)

from snnet.compose import main as compose_main

NAMES = ["deit_tiny_patch16_224", "deit_small_patch16_224"]
WIDTHS = [dict(embed_dim=24, num_heads=2), dict(embed_dim=32, num_heads=2)]
CLASSES = (10, 7)  # the pool's heads: fine-tuned on 10 classes, and on 7


def _plain_model(i: int, num_classes: int, path=None):
    """Pool network ``i`` as a plain timm model (the reference), its weights from ``path``."""
    from snnet import create_snnet

    kwargs = dict(patch_size=8, depth=4, **WIDTHS[i])
    net = create_snnet([NAMES[i]], img_size=32, num_classes=num_classes, model_kwargs=kwargs,
                       anchor_checkpoints=None if path is None else [path])  # fmt: skip
    return net.anchors[0].eval()


@pytest.fixture(scope="module")
def pool_files(tmp_path_factory) -> list[Path]:
    """The two pool networks' weights (random), with 10- and 7-class heads, as .pt checkpoints."""
    from snnet.io.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("pool")
    files = []
    for i, classes in enumerate(CLASSES):
        torch.manual_seed(i)
        files.append(folder / f"pool{i}.pt")
        save_checkpoint({"state_dict": _plain_model(i, classes).state_dict()}, files[-1])
    return files


def argv(files, out: Path, *extra) -> list:
    return [
        "--pool", *NAMES, "--img-size", "32", "--model-kwargs", "patch_size=8", "depth=4",
        "--anchor-kwargs", *[" ".join(f"{k}={v}" for k, v in w.items()) for w in WIDTHS],
        "--dataset", "digits", "--anchor-checkpoints", *files,
        "--threshold", "0", "--total-threshold", "0", "--max-depth", "2", "--top-k", "1", "--max-networks", "2",
        "--export", "1", "--output", out, *extra,
    ]  # fmt: skip


def _compose(args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_entry(compose_main.main, args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def composed(pool_files, tmp_path_factory) -> tuple[Path, str]:
    """A finished composition over the two pool files (10 and 7 classes); its folder and log."""
    out = tmp_path_factory.mktemp("compose") / "out"
    code, log = _compose(argv(pool_files, out))
    assert code == 0, log
    return out, log


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _knn_top1(model, features_of=None) -> float:
    """scikit-learn's 5-NN on the plain model's outputs: train split fitted, validation scored."""
    from sklearn.neighbors import KNeighborsClassifier

    from snnet import create_snnet
    from snnet.compose.main import load_batches
    from snnet.data.datasets import create_dataset

    shape = create_snnet([NAMES[0]], img_size=32, model_kwargs=dict(patch_size=8, depth=4, **WIDTHS[0]))
    (xt, yt), (xv, yv) = (load_batches(create_dataset("digits", None, s), shape, 2000, "cpu")[0]
                          for s in ("train", "validation"))  # fmt: skip
    with torch.no_grad():
        knn = KNeighborsClassifier(n_neighbors=5).fit(model(xt).numpy(), yt.numpy())
        return 100.0 * float((torch.from_numpy(knn.predict(model(xv).numpy())) == yv).double().mean())


@pytest.mark.slow
def test_pool_files_of_other_class_counts_compose_with_their_own_heads(composed, pool_files, tmp_path):
    out, log = composed
    assert log.count("pool heads:") == 1, log
    assert f"classifier sizes from the pool files: {NAMES[0]} 10, {NAMES[1]} 7" in log
    pool = _rows(out / "pool.csv")
    for i, classes in enumerate(CLASSES):  # each network's outputs are its own file's head
        reference = _knn_top1(_plain_model(i, classes, pool_files[i]))
        assert float(pool[i]["top1"]) == pytest.approx(reference, abs=1e-3), i
    assert len(_rows(out / "candidates.csv")) == 2 and (out / "network-1.pt").is_file()

    # a pool file without a classifier: the network's outputs are its features
    from snnet.io.checkpoint import save_checkpoint

    headless = _plain_model(1, 0)
    state = {k: v for k, v in torch.load(pool_files[1], weights_only=True)["state_dict"].items() if "head" not in k}
    save_checkpoint({"state_dict": state}, tmp_path / "headless.pt")
    code, log = _compose(argv([pool_files[0], tmp_path / "headless.pt"], tmp_path / "out"))
    assert code == 0 and f"{NAMES[0]} 10, {NAMES[1]} 0" in log, log
    headless.load_state_dict(state)
    assert float(_rows(tmp_path / "out" / "pool.csv")[1]["top1"]) == pytest.approx(_knn_top1(headless), abs=1e-3)


@pytest.mark.slow
def test_bad_compose_inputs_are_one_line_and_change_nothing(composed, pool_files, tmp_path, capsys):
    out, _ = composed
    folders = [out, pool_files[0].parent]
    before = [hashes(f) for f in folders]
    garbage, payload, marker = tmp_path / "garbage.pt", tmp_path / "payload.pt", tmp_path / "ran"
    garbage.write_bytes(os.urandom(4096))
    state = torch.load(pool_files[0], weights_only=True)["state_dict"]
    torch.save({"state_dict": state, "note": Payload(marker)}, payload)
    fresh = tmp_path / "fresh"
    cases = [
        (argv(pool_files, fresh, "--bogus"), "unrecognized arguments: --bogus"),
        (argv(pool_files, fresh, "--export-path", tmp_path / "net.txt"), "has an unknown suffix"),
        (argv(pool_files, fresh, "--export-path", pool_files[0]), "is the pool file"),
        (argv(pool_files, pool_files[0]), "is a file, not a folder"),
        (argv(pool_files, fresh, "--export", "9"), "--export 9: only 2 networks were composed"),
        (argv([garbage, pool_files[1]], fresh), "garbage.pt"),
        (argv([payload, pool_files[1]], fresh), "holds pickled Python objects"),
        (argv([tmp_path / "missing.pt", pool_files[1]], fresh), "missing.pt"),
        (argv(pool_files[::-1], fresh), "does not match the model"),  # each file given to the other network
        (argv(pool_files, out, "--threshold", "2"), "--threshold 2.0 is outside [0, 1]"),  # a rerun of `out`
    ]
    for args, message in cases:
        line = one_error_line(run_entry(compose_main.main, args), capsys)
        assert message in line, (args[-3:], line)
        assert [hashes(f) for f in folders] == before and not fresh.exists(), line
    assert not marker.exists()  # the payload never ran


@pytest.mark.slow
def test_full_disk_read_only_folder_and_a_second_process_keep_the_old_files(composed, pool_files, capsys, monkeypatch):
    out, _ = composed
    before = hashes(out)
    with locked_by_another_process(out):
        line = one_error_line(run_entry(compose_main.main, argv(pool_files, out)), capsys)
    assert "--output is in use by another process" in line and str(out) in line
    with read_only(out), read_only(out / "svg"):
        line = one_error_line(run_entry(compose_main.main, argv(pool_files, out)), capsys)
    assert "Operation not permitted" in line or "Permission denied" in line, line
    assert hashes(out) == before
    full_disk(monkeypatch)
    line = one_error_line(run_entry(compose_main.main, argv(pool_files, out)), capsys)
    assert "No space left on device" in line
    assert hashes(out) == before and not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_sigkill_mid_composition_then_the_same_command_gives_the_same_outputs(composed, pool_files, tmp_path):
    out, _ = composed
    killed = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(REPO / "compose.py"), *map(str, argv(pool_files, killed))]
    sigkill_when(cmd, lambda: (killed / "svg").is_dir(), env)  # mid-fit, the folder already held
    assert not (killed / "candidates.csv").exists()
    code, log = _compose(argv(pool_files, killed))  # the same command: the lock went with the process
    assert code == 0, log
    assert (killed / "pool.csv").read_bytes() == (out / "pool.csv").read_bytes()
    timing = ("seconds",)
    strip = [
        [{k: v for k, v in r.items() if k not in timing} for r in _rows(d / "candidates.csv")] for d in (out, killed)
    ]
    assert strip[0] == strip[1]
    for svg in (out / "svg").glob("*.svg"):
        assert (killed / "svg" / svg.name).read_bytes() == svg.read_bytes()
    x = torch.randn(3, 3, 32, 32)
    a, b = (torch.jit.load(str(d / "network-1.pt")) for d in (out, killed))
    assert torch.equal(a(x), b(x))
