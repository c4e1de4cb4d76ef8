"""Datasets from timm's own factory (``timm.data.create_dataset``), named as timm's train.py names them.

* ``torch/<name>``: a torchvision dataset already on disk under ``--data-dir`` (downloaded only
  with ``--dataset-download``), e.g. ``torch/mnist``, ``torch/cifar10``.
* ``hfds/<name or path>``: a Hugging Face dataset: a folder written by ``save_to_disk``, a folder
  of parquet/arrow files, or a hub name already in the cache (``--data-dir`` is the cache folder,
  as in timm).
* ``wds/<name>``: WebDataset tar shards in ``--data-dir`` (or in the folder after ``wds/``); the
  split is a name in its ``_info.json`` or a shard pattern such as ``train-{0000..0007}.tar``.

The map-style forms (torchvision, hfds) behave like an ImageFolder downstream: ``len``, indexing,
a settable ``transform``, classes. WebDataset shards are a stream (:class:`ShardStream`, see
:mod:`snnet.data.streams`). Every refusal is a :class:`~snnet.errors.DataError` naming the fix.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import DataError

PREFIXES = ("torch", "hfds", "wds")
_TORCH_NAMES = ("cifar10", "cifar100", "mnist", "kmnist", "fashion_mnist", "qmnist", "places365", "inaturalist",
                "imagenet", "image_folder", "folder")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """timm's dataset options (train.py's flags of the same names)."""

    class_map: str = ""
    input_img_mode: str = "RGB"
    input_key: Optional[str] = None
    target_key: Optional[str] = None
    train_num_samples: Optional[int] = None
    val_num_samples: Optional[int] = None
    dataset_download: bool = False
    dataset_trust_remote_code: bool = False

    @classmethod
    def from_args(cls, args: Any) -> DataOptions:
        """The options of a run config or parsed arguments (absent fields keep the defaults)."""
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{k: v for k, v in fields.items() if v is not None or k in ("input_key", "target_key")})


def prefix_of(name: str | None) -> str:
    """``'torch'``, ``'hfds'`` or ``'wds'`` for a timm dataset name, else ``''``."""
    head, sep, _ = (name or "").partition("/")
    return head.lower() if sep else ""


def check_name(name: str) -> None:
    """Refuse a ``--dataset`` that neither snnet nor timm's factory knows."""
    prefix = prefix_of(name)
    if prefix in ("hfids", "tfds"):
        raise DataError(
            f"--dataset {name}: snnet does not read '{prefix}/' (hfids streams from the hub, tfds needs "
            f"TensorFlow): save the data with save_to_disk and use hfds/<path>, or write shards and use wds/<dir>"
        )
    if prefix not in PREFIXES:
        raise DataError(
            f"unknown dataset '{name}': use digits, torch/<name> (e.g. torch/mnist), hfds/<name or path>, "
            f"wds/<dir>, or --data-dir with an ImageFolder"
        )
    if prefix == "torch" and name.split("/", 1)[1].lower() not in _TORCH_NAMES:
        raise DataError(f"unknown torchvision dataset '{name}': use torch/<one of {', '.join(_TORCH_NAMES)}>")


def _check_option_use(name: str, opts: DataOptions) -> None:
    """Options that cannot act on this kind of dataset are refused rather than ignored."""
    prefix = prefix_of(name)
    if prefix not in ("hfds", "wds") and (opts.input_key or opts.target_key):
        flag = "--input-key" if opts.input_key else "--target-key"
        raise DataError(
            f"{flag} has no effect: it names a column of an hfds/ or wds/ dataset, not of {name or 'a folder'}"
        )
    if prefix != "wds" and (opts.train_num_samples or opts.val_num_samples):
        flag = "--train-num-samples" if opts.train_num_samples else "--val-num-samples"
        raise DataError(f"{flag} has no effect: it sizes a wds/ stream, not {name or 'a folder'}; drop it")
    if prefix == "torch" and opts.class_map:
        raise DataError(f"--class-map has no effect on {name}: its classes are torchvision's; drop it")
    if prefix != "torch" and opts.dataset_download:
        raise DataError(
            f"--dataset-download has no effect: only torch/<name> datasets download, not {name or 'a folder'}"
        )
    if prefix != "hfds" and opts.dataset_trust_remote_code:
        raise DataError("--dataset-trust-remote-code has no effect: only hfds/ datasets run loading scripts")


def _class_map(opts: DataOptions) -> str:
    if opts.class_map and not Path(opts.class_map).is_file():
        raise DataError(f"--class-map {opts.class_map} does not exist: pass a text file with one class name per line")
    return opts.class_map


class TorchvisionImages(torch.utils.data.Dataset):
    """A torchvision dataset as snnet's datasets: images converted to ``--input-img-mode`` (MNIST
    is grey, the anchors take RGB), class names, a settable ``transform``."""

    def __init__(self, dataset, mode: str):
        self.dataset = dataset
        self.mode = mode
        classes = getattr(dataset, "classes", None)  # ImageNet's are tuples of synonyms: the first names it
        self.classes = None if classes is None else [c[0] if isinstance(c, tuple) else c for c in classes]
        self.transform = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        image = image.convert(self.mode) if self.mode else image
        return (self.transform(image) if self.transform is not None else image), int(target)


def _torchvision(name: str, data_dir: Optional[str], split: str, opts: DataOptions):
    from timm.data import create_dataset

    if not data_dir:
        raise DataError(f"--dataset {name} needs --data-dir: the folder that holds (or will hold) its files")
    try:
        ds = create_dataset(name, root=data_dir, split=split, download=opts.dataset_download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DataError(
            f"{name} not found in {data_dir} ({str(e).splitlines()[0]}): put its files there or pass --dataset-download"
        ) from None
    return TorchvisionImages(ds, opts.input_img_mode)


def _hfds(name: str, data_dir: Optional[str], split: str, opts: DataOptions):
    import datasets
    from huggingface_hub.utils import logging as hub_logging
    from timm.data import create_dataset

    datasets.disable_progress_bars()  # a refusal is one line; the runs log their own progress
    hub_logging.set_verbosity_error()  # the hub's retry warnings too: the refusal below says it
    keys = {k: v for k, v in (("input_key", opts.input_key), ("target_key", opts.target_key)) if v}
    try:
        ds = create_dataset(
            name, root=data_dir, split=split, class_map=_class_map(opts), input_img_mode=opts.input_img_mode,
            trust_remote_code=opts.dataset_trust_remote_code, **keys,
        )  # fmt: skip
    except ConnectionError as e:  # a hub name with no network (and not in the cache)
        raise DataError(
            f"cannot reach the Hugging Face hub for {name} ({type(e).__name__}): save the dataset with save_to_disk "
            f"where there is a network and pass hfds/<that folder>, or fill the cache (--data-dir) first"
        ) from None
    except (FileNotFoundError, ValueError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"cannot read {name} split '{split}' ({msg}): check the path, the split (--train-split/--val-split) "
            f"and the image and label columns (--input-key/--target-key)"
        ) from None
    reader = ds.reader
    if len(ds) == 0:
        raise DataError(f"split '{split}' of {name} is empty: pick another with --train-split/--val-split")
    # timm casts the image column, which datasets does by adding a column of None when it is missing
    first = reader.dataset[0]
    missing = [(flag, k) for flag, k in (("--input-key", reader.image_key), ("--target-key", reader.label_key))
               if first.get(k) is None]  # fmt: skip
    if missing:
        flag, key = missing[0]
        columns = [c for c in reader.dataset.column_names if c != reader.image_key or first.get(c) is not None]
        raise DataError(f"{name} has no column '{key}' (columns: {', '.join(columns)}): pass {flag} <column>")
    if not reader.class_to_idx:
        raise DataError(
            f"the labels of {name} ('{reader.label_key}') are not a ClassLabel column: encode them "
            f"(dataset.class_encode_column('{reader.label_key}')) and save again, or pass --class-map"
        )
    return ds


def _wds_root_and_split(name: str, data_dir: Optional[str], split: str) -> tuple[str, str]:
    """The shard folder and timm's split string; a pattern must match at least one shard."""
    rest = name.split("/", 1)[1]
    root = data_dir or rest
    if not root or not Path(root).is_dir():
        raise DataError(f"--dataset {name}: shard folder '{root}' does not exist: pass wds/<dir> or --data-dir <dir>")
    if ".tar" in split:
        import braceexpand

        pattern = split.split("|")[0]
        missing = [f for f in braceexpand.braceexpand(pattern) if not glob.glob(os.path.join(root, f))]
        if missing:
            raise DataError(
                f"shard pattern '{pattern}' matches nothing in {root} (e.g. {missing[0]}): fix --train-split/--val-split"
            )
        return root, split
    if not (Path(root) / "_info.json").is_file():
        raise DataError(
            f"{root} has no _info.json naming split '{split}': pass the shards as the split, "
            f"e.g. --train-split 'train-{{0000..0003}}.tar|<samples>'"
        )
    return root, split


def _wds(name: str, data_dir: Optional[str], split: str, opts: DataOptions, is_training: bool):
    from .streams import ShardStream

    root, split = _wds_root_and_split(name, data_dir, split)
    num = opts.train_num_samples if is_training else opts.val_num_samples
    return ShardStream(root, split, num, opts.input_key, opts.target_key, _class_map(opts), opts.input_img_mode)


def open_timm_dataset(name: str, data_dir: Optional[str], split: str, opts: DataOptions, is_training: bool):
    """``--dataset name`` (a timm name with a prefix) through timm's factory; see the module doc."""
    check_name(name)
    _check_option_use(name, opts)
    prefix = prefix_of(name)
    if prefix == "torch":
        return _torchvision(name, data_dir, split, opts)
    if prefix == "hfds":
        return _hfds(name, data_dir, split, opts)
    return _wds(name, data_dir, split, opts, is_training)


def check_folder_options(opts: DataOptions) -> None:
    """An ImageFolder or the digits take none of the timm-name options but ``--class-map`` (folders)."""
    _check_option_use("", opts)
