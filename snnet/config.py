"""YAML defaults + argparse, shared by train.py and eval.py (timm's ``_parse_args`` pattern).

A first parser reads ``-c/--config``; the YAML file sets the defaults of the main parser; the
command line then overrides them. Unlike timm, a YAML key the parser does not know is an error
(a typo in a config must not be silently ignored), and keys may use dashes or underscores.
"""
from __future__ import annotations

import argparse
import difflib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from .errors import ConfigError


def _config_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config", default="", metavar="FILE", help="YAML file of argument defaults")
    return parser


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of argument defaults, keys normalised to argparse ``dest`` names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist: pass an existing YAML file to -c/--config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of argument names to values, got a {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_args_with_config(
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
    extra_known_keys: Iterable[str] = (),
) -> tuple[argparse.Namespace, str]:
    """Parse ``argv`` with defaults from the ``-c`` YAML file.

    Args:
        parser: the script's parser (it should also define ``-c/--config`` for ``--help``).
        argv: arguments (default ``sys.argv[1:]``).
        extra_known_keys: config keys accepted but ignored (e.g. eval.py reading a training
            config that also holds ``lr``).

    Returns:
        The arguments, and the resolved arguments as YAML text (for ``args.yaml``).
    """
    config_args, remaining = _config_parser().parse_known_args(argv)
    if config_args.config:
        defaults = load_config_file(config_args.config)
        known = {a.dest for a in parser._actions}
        ignored = {k.replace("-", "_") for k in extra_known_keys}
        for key in defaults:
            if key not in known and key not in ignored:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"config {config_args.config}: unknown key '{key}'{hint}")
        parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    args = parser.parse_args(remaining)
    args.config = config_args.config
    return args, yaml.safe_dump(plain_args(args), default_flow_style=False, sort_keys=True)


def plain_args(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """Arguments as plain Python data (safe for YAML and ``weights_only`` checkpoints)."""
    items = vars(args).items() if isinstance(args, argparse.Namespace) else args.items()
    return {k: _plain(v) for k, v in items}


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def parse_kwargs(items: Optional[Sequence[str] | Mapping[str, Any]]) -> dict[str, Any]:
    """timm-style ``k=v`` items (``depth=4 qkv_bias=false``) -> typed dict; a YAML mapping passes through."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"bad keyword argument '{item}': use key=value, e.g. depth=4")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def save_args_yaml(text_or_args: str | argparse.Namespace, path: str | Path) -> None:
    """Write the resolved arguments atomically (temp file in the same folder, then rename)."""
    text = text_or_args if isinstance(text_or_args, str) else yaml.safe_dump(plain_args(text_or_args), sort_keys=True)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
