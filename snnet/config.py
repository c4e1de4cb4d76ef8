"""YAML defaults + argparse, shared by train.py and eval.py (timm's ``_parse_args`` pattern).

A first parser reads ``-c/--config``; the YAML file sets the defaults of the main parser; the
command line then overrides them. Unlike timm, a config may not silently differ from what the
command line would accept: an unknown key (a typo), a repeated key, a value outside an
argument's ``choices`` or of the wrong type is an error naming the file. Keys may use dashes
or underscores (``model-kwargs`` == ``model_kwargs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import yaml

from .errors import ConfigError, OneLineArgumentParser


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _config_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(add_help=False)
    parser.add_argument("-c", "--config", default="", metavar="FILE", help="YAML file of argument defaults")
    return parser


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of argument defaults, keys normalised to argparse ``dest`` names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist: pass an existing YAML file to -c/--config")
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML{where}: {problem}") from None
    if data is None:  # an empty file (or only comments) sets nothing
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {path} must be a mapping of argument names to values (e.g. 'lr: 0.001'), "
            f"got a {type(data).__name__}"
        )
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in out:
            raise ConfigError(f"config {path}: '{key}' repeats an earlier key ('-' and '_' are the same): keep one")
        out[dest] = value
    return out


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction))


def _check_value(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` from YAML as the command line would have given it, or a ConfigError.

    argparse neither type-converts non-string defaults nor checks defaults against ``choices``,
    so without this ``sched: cosin`` or ``epochs: 1e2`` would pass unnoticed.
    """
    if value is None:
        return None
    if _is_flag(action):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} is {value!r}: use true or false")
        return value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many and isinstance(value, Mapping):
        return value  # e.g. model_kwargs given as a YAML mapping, see parse_kwargs
    if many:
        items = list(value) if isinstance(value, (list, tuple)) else [value]  # 'anchors: x' means [x]
        return [_check_item(action, item, where) for item in items]
    return _check_item(action, value, where)


def _check_item(action: argparse.Action, item: Any, where: str) -> Any:
    kind = action.type
    if kind in (int, float) and not isinstance(item, str):
        # float accepts a YAML int; neither accepts a bool (a YAML 'yes') nor int a float
        ok = isinstance(item, int) if kind is int else isinstance(item, (int, float))
        if not ok or isinstance(item, bool):
            raise ConfigError(f"{where} is {item!r}: use a number of type {kind.__name__}")
        item = kind(item)
    elif callable(kind) and isinstance(item, str):
        try:
            item = kind(item)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{where} is {item!r}, which {getattr(kind, '__name__', kind)} refuses: {e}") from None
    if action.choices is not None and item not in action.choices:
        choices = [str(c) for c in action.choices]
        close = difflib.get_close_matches(str(item), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where} is {item!r}{hint}: use one of {', '.join(choices)}")
    return item


def config_defaults(
    parser: argparse.ArgumentParser, values: Mapping[str, Any], where: str, ignored: Iterable[str] = ()
) -> dict[str, Any]:
    """``values`` (keys as ``dest`` names) checked against ``parser`` as the command line would
    check them: an unknown key (with the close key), a wrong type or a value outside ``choices``
    is a :class:`ConfigError` naming ``where``; keys in ``ignored`` are dropped."""
    actions = {a.dest: a for a in parser._actions if a.dest not in (argparse.SUPPRESS, "help", "config")}
    ignored = set(ignored)
    defaults = {}
    for key, value in values.items():
        if key in actions:
            defaults[key] = _check_value(actions[key], value, f"{where}: {key}")
        elif key not in ignored:
            close = difflib.get_close_matches(key, sorted(actions), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
    return defaults


def parse_args_with_config(
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
    extra_known_keys: Iterable[str] = (),
) -> tuple[argparse.Namespace, str]:
    """Parse ``argv`` with defaults from the ``-c`` YAML file; the command line overrides the file.

    Args:
        parser: the script's parser (it should also define ``-c/--config``, for ``--help``).
        argv: arguments (default ``sys.argv[1:]``).
        extra_known_keys: config keys accepted but ignored (e.g. eval.py reading a training
            config that also holds ``lr``).

    Returns:
        The arguments, and the resolved arguments as YAML text (for ``args.yaml``; reading it
        back with ``-c`` gives the same arguments).
    """
    config_args, remaining = _config_parser().parse_known_args(argv)
    if config_args.config:
        path = config_args.config
        ignored = {k.replace("-", "_") for k in extra_known_keys} | {"config"}  # args.yaml records its -c
        parser.set_defaults(**config_defaults(parser, load_config_file(path), f"config {path}", ignored))
    args = parser.parse_args(remaining)
    args.config = config_args.config
    return args, yaml.safe_dump(plain(args), default_flow_style=False, sort_keys=True)


def plain(value: Any) -> Any:
    """``value`` as plain Python data (safe for YAML, JSON and ``weights_only`` checkpoints):
    a Namespace or mapping becomes a dict with str keys, a tuple a list, anything else that is
    not None, bool, int, float or str its ``str``. A run config (:mod:`snnet.run_config`) gives
    its parsed options, as the Namespace it was made from would."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        extra = getattr(type(value), "EXTRA_FIELDS", ())
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.name not in extra}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def parse_kwargs(items: Optional[Sequence[str] | Mapping[str, Any]]) -> dict[str, Any]:
    """timm-style ``k=v`` items -> keyword arguments, values typed as YAML types them.

    ``['depth=4', 'qkv_bias=false', 'depths=[2,2]']`` -> ``{'depth': 4, 'qkv_bias': False,
    'depths': [2, 2]}``. A mapping (how a YAML config gives ``model_kwargs``) passes through.
    """
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
        except yaml.YAMLError:  # e.g. 'act=a:b' is no YAML scalar: keep the text
            out[key] = value
    return out


def save_args_yaml(args: str | argparse.Namespace, path: str | Path) -> None:
    """Write the resolved arguments (YAML text or a Namespace) to ``path`` atomically."""
    from .io.checkpoint import atomic_write

    text = args if isinstance(args, str) else yaml.safe_dump(plain(args), sort_keys=True)
    with atomic_write(path, "w") as f:
        f.write(text)


@dataclasses.dataclass(frozen=True)
class Needs:
    """Option ``dest`` takes effect only when ``acts(values)``; given otherwise (a value other
    than its default) it is refused: ``why`` says what it needs, e.g. "acts only with
    --sample-by flops-groups (no grouped sampler runs)". ``flag`` when it is not ``--dest``."""

    dest: str
    acts: Callable[[Any], bool]
    why: str
    flag: str = ""


def option_text(flag: str, value: Any) -> str:
    """``--flag value`` as the command line writes it (a flag alone for true switches)."""
    if value is True:
        return flag
    if value is False:  # a BooleanOptionalAction switched off
        return "--no-" + flag[2:]
    if isinstance(value, (list, tuple)):
        return f"{flag} {' '.join(map(str, value))}"
    if isinstance(value, Mapping):
        return f"{flag} {' '.join(f'{k}={v}' for k, v in value.items())}"
    return f"{flag} {value}"


def refuse_without_effect(values: Any, rules: Iterable[Needs], defaults: Mapping[str, Any]) -> None:
    """A :class:`ConfigError` for the first option of ``values`` (a run config or Namespace)
    set away from its default in ``defaults`` (or left out of ``defaults``: given explicitly, see
    :func:`given_on_command_line`) that its rule says cannot act: one line, naming the option,
    its value and what it needs."""
    for rule in rules:
        value = getattr(values, rule.dest)
        if (rule.dest not in defaults or not _is_unset(value, defaults[rule.dest])) and not rule.acts(values):
            flag = rule.flag or "--" + rule.dest.replace("_", "-")
            raise ConfigError(f"{option_text(flag, value)} has no effect: it {rule.why}; drop it")


def _is_unset(value: Any, default: Any) -> bool:
    """``value`` is the option's default (an empty list or mapping counts as an empty default)."""
    empty = ([], {}, (), "", None)
    return value == default or (value in empty[:4] and default in empty)


def builtin_defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Each option's default as the parser defines it (no ``-c`` config applied)."""
    return {a.dest: a.default for a in parser._actions if a.dest not in (argparse.SUPPRESS, "help")}


def given_on_command_line(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set[str]:
    """The ``dest`` of every option ``argv`` gives explicitly (even at its default value): the
    command line parsed again with every default suppressed."""
    import copy
    import sys

    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    _, remaining = _config_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    given, _ = probe.parse_known_args(remaining)
    return set(vars(given)) - {"config"}
