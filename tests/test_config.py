"""YAML defaults + argparse: overrides, typos, malformed files, k=v parsing."""
import argparse

import pytest
import yaml

from snnet.config import parse_args_with_config, parse_kwargs, save_args_yaml
from snnet.errors import ConfigError


def make_parser():
    p = argparse.ArgumentParser()
    p.add_argument("-c", "--config", default="")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--model-kwargs", nargs="*", default={})
    p.add_argument("--anchors", nargs="+", default=None)
    return p


def test_yaml_sets_defaults_and_cli_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.5\nmodel-kwargs: {depth: 4}\nanchors: [a, b]\n")
    args, _ = parse_args_with_config(make_parser(), ["-c", str(cfg)])
    assert (args.lr, args.model_kwargs, args.anchors) == (0.5, {"depth": 4}, ["a", "b"])
    args, _ = parse_args_with_config(make_parser(), ["-c", str(cfg), "--lr", "0.01"])
    assert args.lr == 0.01


def test_unknown_key_suggests_the_close_one(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lrr: 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' \(did you mean 'lr'\?\)"):
        parse_args_with_config(make_parser(), ["-c", str(cfg)])
    args, _ = parse_args_with_config(make_parser(), ["-c", str(cfg)], extra_known_keys=["lrr"])
    assert args.lr == 0.1


@pytest.mark.parametrize("text,match", [("lr: [1,\n", "not valid YAML at line"), ("- 1\n- 2\n", "must be a mapping")])
def test_malformed_yaml(tmp_path, text, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        parse_args_with_config(make_parser(), ["-c", str(cfg)])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args_with_config(make_parser(), ["-c", str(tmp_path / "nope.yaml")])


def test_parse_kwargs_types():
    assert parse_kwargs(["depth=4", "qkv_bias=false", "name=abc", "ratio=0.5", "depths=[2,2]"]) == {
        "depth": 4, "qkv_bias": False, "name": "abc", "ratio": 0.5, "depths": [2, 2]}
    assert parse_kwargs({"a": 1}) == {"a": 1}
    with pytest.raises(ConfigError, match="use key=value"):
        parse_kwargs(["depth"])


def test_saved_args_round_trip(tmp_path):
    args, text = parse_args_with_config(make_parser(), ["--lr", "0.3", "--model-kwargs", "depth=2", "--anchors", "x"])
    save_args_yaml(text, tmp_path / "args.yaml")
    again, _ = parse_args_with_config(make_parser(), ["-c", str(tmp_path / "args.yaml")])
    assert vars(again) == {**vars(args), "config": str(tmp_path / "args.yaml")}
    assert yaml.safe_load((tmp_path / "args.yaml").read_text())["lr"] == 0.3
