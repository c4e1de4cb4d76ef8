"""YAML defaults + argparse: overrides, typos, malformed files, k=v parsing, args.yaml round trip."""

import argparse
import os

import pytest
import yaml

from snnet.config import parse_args_with_config, parse_kwargs, save_args_yaml
from snnet.errors import ConfigError


def make_parser():
    p = argparse.ArgumentParser()
    p.add_argument("-c", "--config", default="")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sched", default="cosine", choices=["cosine", "step"])
    p.add_argument("--pretrained", action="store_true", default=False)
    p.add_argument("--model-kwargs", nargs="*", default={})
    p.add_argument("--anchors", nargs="+", default=None)
    p.add_argument("--scale", type=float, nargs="+", default=None)
    return p


def parse(tmp_path, text, *argv, **kwargs):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return parse_args_with_config(make_parser(), ["-c", str(cfg), *argv], **kwargs)[0]


def test_yaml_sets_defaults_and_cli_overrides(tmp_path):
    text = "lr: 0.5\nmodel-kwargs: {depth: 4}\nanchors: [a, b]\nsched: step\npretrained: true\n"
    args = parse(tmp_path, text)
    assert (args.lr, args.model_kwargs, args.anchors, args.sched, args.pretrained) == (
        0.5,
        {"depth": 4},
        ["a", "b"],
        "step",
        True,
    )
    assert args.epochs == 3 and args.config == str(tmp_path / "c.yaml")
    args = parse(tmp_path, text, "--lr", "0.01", "--anchors", "c", "--sched", "cosine")
    assert (args.lr, args.anchors, args.sched, args.model_kwargs) == (0.01, ["c"], "cosine", {"depth": 4})
    assert parse_args_with_config(make_parser(), ["--lr", "0.2"])[0].lr == 0.2  # no config at all


def test_dashes_and_underscores_are_the_same_key(tmp_path):
    assert parse(tmp_path, "model_kwargs: {depth: 2}\n").model_kwargs == {"depth": 2}
    assert parse(tmp_path, "model-kwargs: [depth=2]\n").model_kwargs == ["depth=2"]
    with pytest.raises(ConfigError, match="'model_kwargs' repeats an earlier key"):
        parse(tmp_path, "model-kwargs: {}\nmodel_kwargs: {}\n")


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError, match=rf"^config {tmp_path}/c.yaml: unknown key 'lrr' \(did you mean 'lr'\?\)$"):
        parse(tmp_path, "lr: 0.2\nlrr: 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'$"):
        parse(tmp_path, "zzz: 1\n")
    assert parse(tmp_path, "lrr: 0.5\n", extra_known_keys=["lrr"]).lr == 0.1  # accepted, ignored


@pytest.mark.parametrize(
    "text,match",
    [
        ("sched: cosin\n", r"config .*: sched is 'cosin' \(did you mean 'cosine'\?\): use one of cosine, step"),
        ("epochs: 1.5\n", r"config .*: epochs is 1.5: use a number of type int"),
        ("lr: fast\n", r"config .*: lr is 'fast', which float refuses"),
        ("lr: true\n", r"lr is True: use a number of type float"),
        ("pretrained: 1\n", r"pretrained is 1: use true or false"),
    ],
)
def test_values_are_checked_like_the_command_line(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        parse(tmp_path, text)


def test_values_are_typed_like_the_command_line(tmp_path):
    args = parse(tmp_path, "lr: 1\nepochs: '7'\nanchors: deit_tiny\nscale: [1, 0.5]\n")
    assert (args.lr, args.epochs, args.anchors, args.scale) == (1.0, 7, ["deit_tiny"], [1.0, 0.5])
    assert type(args.lr) is float


@pytest.mark.parametrize(
    "text,match",
    [
        ("lr: 0.1\nanchors: [a,\n", r"c.yaml is not valid YAML at line 3, column 1: expected the node content"),
        ("lr: 1\n  epochs: 2\n", r"c.yaml is not valid YAML at line 2"),
        ("lr: 1\nlr: 2\n", r"c.yaml is not valid YAML at line 2, column 1: key 'lr' is given twice"),
        ("- 1\n- 2\n", r"c.yaml must be a mapping of argument names to values .*got a list"),
    ],
)
def test_malformed_yaml(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse(tmp_path, text)
    assert "\n" not in str(e.value)


def test_missing_and_empty_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' does not exist: pass an existing YAML file"):
        parse_args_with_config(make_parser(), ["-c", str(tmp_path / "nope.yaml")])
    assert parse(tmp_path, "# nothing set yet\n").lr == 0.1


def test_parse_kwargs_types():
    assert parse_kwargs(
        ["depth=4", "qkv_bias=false", "name=abc", "ratio=0.5", "depths=[2,2]", "act=a:b:c", "embed_dim=64", "norm="]
    ) == {
        "depth": 4,
        "qkv_bias": False,
        "name": "abc",
        "ratio": 0.5,
        "depths": [2, 2],
        "act": "a:b:c",
        "embed_dim": 64,
        "norm": None,
    }
    assert parse_kwargs({"depth": 4}) == {"depth": 4}  # a mapping from YAML passes through
    assert parse_kwargs(None) == {} and parse_kwargs([]) == {}
    for bad in (["depth"], ["=4"]):
        with pytest.raises(ConfigError, match=rf"bad keyword argument '{bad[0]}': use key=value, e.g. depth=4"):
            parse_kwargs(bad)


def test_saved_args_round_trip(tmp_path):
    argv = [
        "--lr",
        "0.3",
        "--model-kwargs",
        "depth=2",
        "qkv_bias=false",
        "--anchors",
        "x",
        "y",
        "--pretrained",
        "--scale",
        "0.5",
        "1",
    ]
    args, text = parse_args_with_config(make_parser(), argv)
    save_args_yaml(text, tmp_path / "args.yaml")
    assert os.listdir(tmp_path) == ["args.yaml"]  # written atomically: no temporary file left
    again, again_text = parse_args_with_config(make_parser(), ["-c", str(tmp_path / "args.yaml")])
    assert vars(again) == {**vars(args), "config": str(tmp_path / "args.yaml")}
    assert yaml.safe_load((tmp_path / "args.yaml").read_text())["lr"] == 0.3

    save_args_yaml(again, tmp_path / "args.yaml")  # a Namespace works too, and overwrites
    assert yaml.safe_load((tmp_path / "args.yaml").read_text()) == yaml.safe_load(again_text)
