"""The same digits as an ImageFolder, a Hugging Face dataset (save_to_disk), WebDataset shards and
torchvision's MNIST files (snnet.data.forms): the same images, labels and LS-init batch, the same
sweep table, equal weights after training where the order is the same (the map-style forms), an
exact resume and disjoint per-rank shares of the shards, and one ``error:`` line for bad input.
The ImageFolder form is the reference each other form is compared with."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_DEIT_ARGS, run_entry
from test_failures import one_error_line

from snnet.data.datasets import create_dataset, ls_init_images, num_classes_of
from snnet.data.forms import write_forms, write_shards
from snnet.data.sources import DataOptions
from snnet.errors import DataError
from snnet.evaluate.main import main as eval_main
from snnet.evaluate.predict import class_names
from snnet.train.main import main as train_main
from snnet.train.trainer import TrainingInterrupted

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = TINY_DEIT_ARGS[2:]  # without --dataset digits
RUN = ["--epochs", "2", "--max-steps-per-epoch", "3", "-b", "8", "--warmup-epochs", "0", "--lr", "1e-3"]
CFG = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0)


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, list[str]]:
    """Each form's data flags (the HF cache in its own folder, as timm's --data-dir for hfds)."""
    root = write_forms(tmp_path_factory.mktemp("forms"))
    return {
        "folder": ["--data-dir", str(root / "folder")],
        "hfds": ["--dataset", f"hfds/{root / 'hfds'}", "--data-dir", str(root / "hf-cache")],
        "torch": ["--dataset", "torch/mnist", "--data-dir", str(root / "torch")],
        "wds": ["--dataset", f"wds/{root / 'wds'}"],
    }


def _open(flags: list[str], split: str, training: bool = False):
    name = flags[flags.index("--dataset") + 1] if "--dataset" in flags else ""
    data_dir = flags[flags.index("--data-dir") + 1] if "--data-dir" in flags else None
    return create_dataset(name, data_dir, split, opts=DataOptions(), training=training)


def _items(ds) -> list[tuple[int, bytes]]:
    """(label, pixels) of every image, in the dataset's order."""
    import numpy as np

    return [
        (int(y), np.asarray(x).tobytes())
        for x, y in (ds if hasattr(ds, "configure") else map(ds.__getitem__, range(len(ds))))
    ]


def test_every_form_holds_the_same_images_labels_classes_and_ls_init(forms):
    ref = _open(forms["folder"], "train", True)
    ref_items, ref_ls = _items(ref), ls_init_images(ref, 7, CFG, seed=3)
    assert len(ref_items) == 40 and sorted({y for y, _ in ref_items}) == list(range(10))
    for form in ("hfds", "torch"):  # map-style: the same images in the same order
        ds = _open(forms[form], "train", True)
        assert _items(ds) == ref_items, form
        assert num_classes_of(ds) == 10  # names: torchvision's MNIST has its own ('0 - zero', ...)
        assert torch.equal(ls_init_images(ds, 7, CFG, seed=3), ref_ls), form
    stream = _open(forms["wds"], "train", True)
    assert sorted(_items(stream)) == sorted(ref_items)  # the same images, in shard order
    assert num_classes_of(stream) == 10 and class_names(10, stream) == class_names(10, ref)
    # a stream's LS-init images are its first ones in shard order: shard 0 holds images 0, 2, 4, ...
    from timm.data import create_transform

    eval_tf = create_transform(32, interpolation="bilinear", crop_pct=1.0, mean=CFG["mean"], std=CFG["std"])
    first = torch.stack([eval_tf(ref[i][0]) for i in range(0, 14, 2)])
    assert torch.equal(ls_init_images(stream, 7, CFG, seed=3), first)


def _train(flags: list[str], out: Path, name: str, *extra) -> dict:
    assert run_entry(train_main, [*TINY, *flags, *RUN, "--ls-init", "--ls-init-images", "8", *extra,
                                  "--output", out, "--experiment", name]) == 0  # fmt: skip
    return torch.load(out / name / "last.pth.tar", map_location="cpu", weights_only=True)["state_dict"]


def _top1(flags: list[str], out: Path) -> dict[str, tuple]:
    """The sweep's top-1 and top-5 per network of the untrained SN-Net (seeded weights): tiny
    trained nets all predict the prior class, random ones tell the networks apart."""
    assert run_entry(eval_main, [*TINY, *flags, "--output", out, "-b", "16"]) == 0
    with open(out / "stitches.csv") as f:
        return {r["cfg_id"]: (r["top1"], r["top5"]) for r in csv.DictReader(f)}


def test_training_and_the_sweep_agree_across_forms(forms, tmp_path):
    ref = _train(forms["folder"], tmp_path, "folder")
    for form in ("hfds", "torch"):  # same order, same augmentation seeds: equal weights
        state = _train(forms[form], tmp_path, form)
        assert all(torch.equal(ref[k], state[k]) for k in ref), form
    table = _top1(forms["folder"], tmp_path / "sweep-folder")
    assert len(table) == 12 and len(set(table.values())) > 3  # a real table, not all equal
    for form in ("hfds", "torch", "wds"):
        assert _top1(forms[form], tmp_path / f"sweep-{form}") == table, form


def test_stream_training_resumes_exactly(forms, tmp_path, capsys):
    """A stream run stopped at global step 4 (in its second epoch) and resumed equals the run that
    was never stopped: the epoch's stream is read again and its first batch dropped. Resumed with
    other --workers (another stream), the run says so."""
    full = _train(forms["wds"], tmp_path, "full", "--workers", "1")
    stop = functools.partial(train_main, stop_check=lambda t: t.global_step == 4)
    args = [*TINY, *forms["wds"], *RUN, "--ls-init", "--ls-init-images", "8", "--workers", "1"]
    with pytest.raises(TrainingInterrupted):
        stop([str(a) for a in [*args, "--output", tmp_path, "--experiment", "split"]])
    with pytest.raises(TrainingInterrupted):  # the same stop, to be resumed with another --workers
        stop([str(a) for a in [*args, "--output", tmp_path, "--experiment", "other"]])
    capsys.readouterr()
    resumed = _train(forms["wds"], tmp_path, "split", "--workers", "1")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    steps = [json.loads(s) for s in (tmp_path / "split" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert "another stream" not in capsys.readouterr().out
    _train(forms["wds"], tmp_path, "other", "--workers", "0")
    assert "read its shards with --workers 1, this run has 0" in capsys.readouterr().out


@pytest.mark.parametrize("world,workers,shards", [(2, 1, 2), (2, 2, 4)])
def test_each_rank_reads_its_own_shards(tmp_path, world, workers, shards):
    write_shards(tmp_path, "val", [_tiny_png(i) for i in range(16)], [i % 10 for i in range(16)], shards)
    seen = []
    for rank in range(world):
        stream = create_dataset("wds/x", tmp_path, "val-{000000..%06d}.tar|16" % (shards - 1))
        stream.configure(False, 0, rank, world)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
        seen.append(sorted(int(x.getpixel((0, 0))[0]) for x, _ in loader))
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(16)), seen


def test_fewer_shards_than_loader_workers_is_refused(tmp_path):
    write_shards(tmp_path, "val", [_tiny_png(i) for i in range(4)], [0, 1, 2, 3], 2)
    stream = create_dataset("wds/x", tmp_path, "val-{000000..000001}.tar|4")
    stream.configure(False, 0, 0, 2, workers=1)  # 2 shards, 2 ranks x 1 worker: fine
    with pytest.raises(DataError, match=r"2 shard\(s\) for 2 rank\(s\) x 2 loader worker\(s\).*--workers 1"):
        stream.configure(False, 0, 0, 2, workers=2)


def _tiny_png(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (4, 4), value).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad(tmp_path_factory, forms) -> Path:
    """Broken data: shards with string labels and with a label past the classes, an HF dataset
    with string labels and an empty split."""
    import datasets

    root = tmp_path_factory.mktemp("bad")
    png = _tiny_png(7)
    for name, label, n in (("strings", "cat", 2), ("range", 12, 2), ("empty", 0, 0)):
        split = write_shards(root / name, "train", [png] * n, [label] * n, 1)
        info = {"classes": [str(c) for c in range(10)], "splits": {"train": split, "validation": split}}
        (root / name / "_info.json").write_text(json.dumps(info))
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    rows = {"image": [{"bytes": png, "path": None}] * 2, "label": ["cat", "dog"]}
    part = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict(train=part, validation=part).save_to_disk(str(root / "hf-strings"))
    return root


BAD = {
    "unknown name": (["--dataset", "imagenet-shards/x"], "unknown dataset 'imagenet-shards/x': use digits, torch/<name>"),
    "unknown torchvision set": (["--dataset", "torch/mnistt", "--data-dir", "{bad}"], "unknown torchvision dataset"),
    "torchvision set not on disk": (["--dataset", "torch/cifar10", "--data-dir", "{bad}"], "pass --dataset-download"),
    "missing column": (["{hfds}", "--input-key", "img"], "has no column 'img' (columns: image, label): pass --input-key"),
    "no shards match": (["{wds}", "--train-split", "train-{000007..000009}.tar|8"], "matches nothing in"),
    "empty split": (["--dataset", "wds/{bad}/empty"], "split 'train' of {bad}/empty is empty: pick another"),
    "label out of range": (["--dataset", "wds/{bad}/range"], "label 12 is outside the classes 0..9: fix the labels"),
    "string labels (shards)": (["--dataset", "wds/{bad}/strings"], "label 'cat' is a string: write class indices"),
    "string labels (hfds)": (["--dataset", "hfds/{bad}/hf-strings", "--data-dir", "{bad}/cache"],
                             "are not a ClassLabel column: encode them"),
    "column option on a folder": (["{folder}", "--target-key", "labels"], "--target-key has no effect"),
    "class map on a torchvision set": (["{torch}", "--class-map", "m.txt"], "--class-map has no effect on torch/mnist"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_one_error_line_and_writes_nothing(case, forms, bad, tmp_path, capsys):
    flags, fragment = BAD[case]
    args = []
    for f in flags:
        form = f.strip("{}")
        args += forms[form] if f.startswith("{") and form in forms else [f.replace("{bad}", str(bad))]
    fragment = fragment.replace("{bad}", str(bad))
    capsys.readouterr()
    code = run_entry(train_main, [*TINY, *args, "--epochs", "1", "--output", tmp_path / "out"])
    assert fragment in one_error_line(code, capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_docs_data_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """docs/data.md's ```bash commands, in order, as written, from a folder that looks like the
    repository root (its scripts and configs linked): the python ones in this process (each
    script's main with the command's words), ``./distributed_train.sh`` as a real two-rank run."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    from snnet.data import forms as forms_module
    from snnet.evaluate.predict import main as predict_main

    repo = Path(__file__).resolve().parents[1]
    for name in ("train.py", "eval.py", "distributed_train.sh", "configs"):
        (tmp_path / name).symlink_to(repo / name)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```bash\n(.*?)```", (repo / "docs" / "data.md").read_text(), re.S)
    commands = [c.strip() for c in "\n".join(blocks).replace("\\\n", " ").splitlines() if c.strip()]
    mains = {"train.py": train_main, "eval.py": eval_main, "predict.py": predict_main}
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(repo), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # fmt: skip
    for command in commands:
        words = shlex.split(command)
        if words[:3] == ["python", "-m", "snnet.data.forms"]:
            monkeypatch.setattr(sys, "argv", words[2:])
            forms_module.main()
        elif words[0] == "python":
            assert run_entry(mains[words[1]], words[2:]) == 0, command
        else:
            proc = subprocess.run(words, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run in ("folder", "hfds", "mnist", "wds", "wds-pattern", "wds-2ranks"):
        assert (tmp_path / "output" / "train" / run / "last.pth.tar").is_file(), run
    tables = {}
    for run in ("eval-wds", "eval-wds-2ranks"):  # the two ranks' shares add up to the whole split
        with open(tmp_path / "output" / run / "stitches.csv") as f:
            tables[run] = [(r["cfg_id"], r["top1"], r["top5"]) for r in csv.DictReader(f)]
    assert len(tables["eval-wds"]) == 12 and tables["eval-wds-2ranks"] == tables["eval-wds"]
    assert "top-" in capsys.readouterr().out.lower()  # predict.py's table


def test_compose_reads_every_form(forms, tmp_path):
    """compose.py on each form: the map-style forms give the ImageFolder's candidates (all but the
    timing column), the shards a table of its own (LS-init images are the stream's first ones)."""
    from snnet.compose.main import main as compose_main

    pool = ["--pool", *TINY[TINY.index("--anchors") + 1 : TINY.index("--workers")], "--img-size", "32"]
    pool += ["--stitch-images", "8", "--fit-images", "20", "--max-networks", "3"]
    tables = {}
    for form in ("folder", "hfds", "torch", "wds"):
        assert run_entry(compose_main, [*pool, *forms[form], "--output", tmp_path / form]) == 0, form
        with open(tmp_path / form / "candidates.csv") as f:
            tables[form] = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    assert len(tables["folder"]) == 3 and tables["hfds"] == tables["folder"] and tables["torch"] == tables["folder"]
    assert len(tables["wds"]) == 3


def test_lab_reads_every_form(forms, tmp_path):
    """lab.py --dataset/--data-dir on each form, two seeds (one loader each over one dataset): the
    map-style forms give the ImageFolder's cells (all but timings), the shards run."""
    import yaml
    from test_lab import RECIPE, ROUTES

    from snnet.io.checkpoint import save_checkpoint
    from snnet.lab.main import main as lab_main
    from snnet.run_config import ModelConfig, build_snnet

    net = build_snnet(ModelConfig(anchors=tuple(RECIPE["anchors"]), img_size=32, model_kwargs=RECIPE["model_kwargs"],
                                  anchor_kwargs=tuple(RECIPE["anchor_kwargs"])), num_classes=10, seed=5)  # fmt: skip
    paths = [str(tmp_path / f"anchor{i}.pth") for i in range(2)]
    for model, path in zip(net.anchors, paths):
        save_checkpoint({"state_dict": model.state_dict()}, path)
    recipe = {k: v for k, v in RECIPE.items() if k != "dataset"} | {"ls_init_images": 8, "batch_size": 8}
    grid = {"anchor_checkpoints": paths, "routes": ROUTES[:1], "adapters": ["linear"], "lrs": [2e-3], "seeds": [0, 1]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**recipe, **grid}))
    cells = {}
    for form in ("folder", "hfds", "wds"):
        assert run_entry(lab_main, ["-c", tmp_path / "grid.yaml", *forms[form], "--output", tmp_path / form]) == 0
        with open(tmp_path / form / "grid" / "cells.csv") as f:
            cells[form] = [
                {k: v for k, v in r.items() if "second" not in k and "time" not in k} for r in csv.DictReader(f)
            ]
    assert len(cells["folder"]) == 2 and cells["hfds"] == cells["folder"]
    assert len(cells["wds"]) == 2


def test_loaders_over_one_stream_keep_their_own_seeds(forms):
    """lab.py builds one training loader per seed over one dataset: each stream keeps its seed."""
    from snnet.cli import build_train_parser
    from snnet.data.loaders import build_loaders
    from snnet.distributed import DistInfo

    train, val = _open(forms["wds"], "train", True), _open(forms["wds"], "validation")
    loaders = []
    for seed in (1, 2, 1):  # all built first, then read: a shared stream would read with the last seed
        args = build_train_parser().parse_args(["-b", "8", "--workers", "0", "--seed", str(seed)])
        loaders.append(build_loaders(train, val, args, DistInfo(), {**CFG, "hflip": 0.5})[1])
    batches = []
    for loader in loaders:
        loader.set_epoch(0)
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0][0], batches[2][0]) and not torch.equal(batches[0][0], batches[1][0])


def test_predict_names_come_from_each_form(forms):
    """predict.py's class names (prediction_info, as written beside an export): the folder names,
    the HF ClassLabel names, torchvision's MNIST names, the shards' _info.json classes."""
    from snnet.evaluate.predict import prediction_info
    from snnet.run_config import ModelConfig, build_snnet

    args = TINY_DEIT_ARGS
    net = build_snnet(ModelConfig(anchors=tuple(args[args.index("--anchors") + 1 : args.index("--anchors") + 3]),
                                  img_size=32, model_kwargs={"patch_size": 4, "depth": 4},
                                  anchor_kwargs=({"embed_dim": 32, "num_heads": 2}, {"embed_dim": 64, "num_heads": 4})),
                      num_classes=10)  # fmt: skip
    digits = [f"digit{c}" for c in range(10)]
    for form, names in (("folder", digits), ("hfds", digits), ("wds", digits), ("torch", ["0 - zero", "1 - one"])):
        flags = forms[form]
        name = flags[flags.index("--dataset") + 1] if "--dataset" in flags else ""
        info = prediction_info(net, name, flags[flags.index("--data-dir") + 1] if "--data-dir" in flags else None)
        assert info["class_names"][: len(names)] == names, form


def test_hf_columns_are_named_by_input_and_target_key(forms, tmp_path):
    """An HF dataset whose columns are ``img`` and ``labels`` (as beans' ``labels``) reads as the
    folder does with --input-key img --target-key labels."""
    import datasets

    hfds = forms["hfds"][1].split("/", 1)[1]
    renamed = datasets.load_from_disk(hfds).rename_columns({"image": "img", "label": "labels"})
    renamed.save_to_disk(str(tmp_path / "renamed"))
    opts = DataOptions(input_key="img", target_key="labels")
    ds = create_dataset(f"hfds/{tmp_path / 'renamed'}", tmp_path / "cache", "train", opts=opts)
    assert _items(ds) == _items(_open(forms["folder"], "train"))
    assert class_names(10, ds) == [f"digit{c}" for c in range(10)]


def test_class_map_renumbers_a_folders_classes(forms, tmp_path):
    """--class-map (timm's: one class name per line, index = line) on a folder: labels follow the map."""
    names = [f"digit{c}" for c in reversed(range(10))]
    (tmp_path / "map.txt").write_text("\n".join(names) + "\n")
    ref = _open(forms["folder"], "train")
    ds = create_dataset("", forms["folder"][1], "train", opts=DataOptions(class_map=str(tmp_path / "map.txt")))
    assert [(9 - y, x) for y, x in _items(ds)] == _items(ref)
    assert class_names(10, ds) == names
