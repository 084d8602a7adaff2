"""``--config FILE.yaml`` for every script: YAML files of flag: value lines (any spelling the script accepts).

Precedence: parser defaults < presets (``--quick``'s) < YAML < command line (``parse_with_config``, which
``common.cli.parse`` calls). Every value goes through its flag's own argparse conversion (type, range checks,
choices), so a YAML file cannot hold what the command line would refuse; on/off flags take YAML booleans only,
a list only where the flag takes several values, null and mappings never. An unknown or repeated key, or a file
that is not a UTF-8 YAML mapping: one line, exit 2.

A script whose ``--config`` used to name something else (mamba_fl's ``pure_ssm_N_layer``) sets
``parser.config_legacy = fn``: ``fn(value)`` returns ``{dest: value}`` for an old-style value or None for a path.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from common.errors import UsageError, check, read_text

CONFIG_HELP = "YAML file of flag: value lines (command-line flags override it)"
# argparse actions that set a boolean and take no value on the command line
_SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction)


def add_config_arg(parser) -> None:
    """``--config FILE.yaml`` on a parser or argument group (skipped when the parser already has one)."""
    if "--config" not in getattr(parser, "_option_string_actions", {}):
        parser.add_argument("--config", default=None, help=CONFIG_HELP)


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every spelling (``num_rounds``, ``num-rounds``, the dest) of every flag -> its action."""
    out: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.dest in ("help", argparse.SUPPRESS) or not a.option_strings:
            continue
        for opt in a.option_strings:
            if opt.startswith("--"):
                out.setdefault(opt[2:], a)
                out.setdefault(opt[2:].replace("-", "_"), a)
        out.setdefault(a.dest, a)
    return out


def flag_name(action: argparse.Action) -> str:
    """How messages name a flag: its first long spelling (else its first option, else its dest)."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    return (longs or action.option_strings or [action.dest])[0]


def _expects(action: argparse.Action) -> str:
    """What a flag takes, in words, for the messages."""
    if isinstance(action, _SWITCHES):
        return "true or false"
    if action.choices is not None:
        what = "one of " + ", ".join(map(str, action.choices))
    else:
        what = {int: "an integer", float: "a number", None: "a string", str: "a string"}.get(
            action.type, getattr(action.type, "expects", None) or f"a {getattr(action.type, '__name__', 'value')}")
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        count = f"{action.nargs} " if isinstance(action.nargs, int) else ""
        return f"a list of {count}values, each {what}"
    return what


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, key: str, value, where: str):
    """``value`` as the flag's own argparse conversion makes it, or UsageError."""
    def refuse(why: str):
        raise UsageError(f"{where}: {key}: {why}; expected {_expects(action)} for {flag_name(action)}")

    if isinstance(action, _SWITCHES):
        if not isinstance(value, bool):
            refuse(f"{value!r} is not a boolean (write true or false, unquoted)")
        # ``no_x: true`` (the store_false flag's name) sets x to false; ``x: false`` (its dest) too
        name = key.lstrip("-")
        negate = isinstance(action, argparse._StoreFalseAction) and any(
            name in (o[2:], o[2:].replace("-", "_")) for o in action.option_strings if o.startswith("--"))
        return not value if negate else value
    if action.nargs == 0:  # store_const and the like: nothing to convert
        refuse("this flag takes no value and cannot be set from a config file")
    several = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if isinstance(value, (list, tuple)) and not (several and isinstance(value, list)):
        refuse("a list is not allowed here")
    items = value if isinstance(value, list) else [value]
    for v in items:
        if v is None:
            refuse("null is not a value (leave the key out to keep the default)")
        if isinstance(v, dict):
            refuse("a mapping is not allowed here")
        if isinstance(v, list):
            refuse("a nested list is not allowed here")
        if isinstance(v, bool):
            refuse(f"{v!r} is a boolean (quote it if you mean the text)")
        if not isinstance(v, (str, int, float)):
            refuse(f"{v!r} ({type(v).__name__}) is not a value this flag takes (quote it)")
    strings = [str(v) for v in items]
    if not strings and action.nargs == "+":
        refuse("an empty list is not allowed")
    if isinstance(action.nargs, int) and len(strings) != action.nargs:
        refuse(f"{len(strings)} values given")
    try:
        return parser._get_values(action, strings)
    except argparse.ArgumentError as e:
        refuse(e.message)


# YAML 1.1 (PyYAML) reads 010 as 8, 0x10 as 16, 0b1 as 1, 1_000 as 1000, 1:20 as 80 and yes / no / on / off as
# booleans; numbers and booleans are taken only in their plain YAML 1.2 / JSON spelling, the rest is refused
_PLAIN = {"int": re.compile(r"[-+]?(0|[1-9][0-9]*)"),
          "float": re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
                              r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"),
          "bool": re.compile(r"true|True|TRUE|false|False|FALSE")}


def _plain_scalar(path: Path, kind: str):
    """A constructor of YAML 1.1 ``kind`` scalars that refuses every spelling but the plain one."""
    def construct(loader, node):
        value = getattr(loader, f"construct_yaml_{kind}")(node)
        if node.style is None and not _PLAIN[kind].fullmatch(node.value):
            what = "a boolean" if kind == "bool" else "an octal, hex, binary, base-60 or _-grouped number"
            raise UsageError(f"--config {path}: line {node.start_mark.line + 1}: {node.value} reads as {value!r} "
                             f"in YAML 1.1 ({what}); "
                             "write the plain number (10, 0.5, 1e-3) or true / false, or quote it for text")
        return value
    return construct


def _unique_key_loader(path: Path):
    """A ``yaml.SafeLoader`` that refuses a key given twice (PyYAML itself silently keeps the last) and numbers or
    booleans in YAML 1.1's surprising spellings (``_PLAIN``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class reports it
                    break
                if duplicate:
                    raise UsageError(f"--config {path}: key {key!r} is given twice (again on line "
                                     f"{key_node.start_mark.line + 1}); give each flag once")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    for kind in _PLAIN:
        Loader.add_constructor(f"tag:yaml.org,2002:{kind}", _plain_scalar(path, kind))
    return Loader


def read_config(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """The YAML file as {dest: value}, keys checked against the parser's flags, values converted by them."""
    import yaml

    path = Path(path)
    check(path.is_file(), f"--config {path} does not exist; expected a YAML file of flag: value lines")
    text = read_text(path, "a YAML file of flag: value lines", prefix="--config ")
    try:
        data = yaml.load(text, Loader=_unique_key_loader(path))  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())[:200]
        raise UsageError(f"--config {path} is not valid YAML ({first})") from None
    data = {} if data is None else data
    check(isinstance(data, dict), f"--config {path} must be a mapping of flag names to values")
    actions, out = _actions(parser), {}
    for key, value in data.items():
        name = str(key).lstrip("-")
        action = actions.get(name, actions.get(name.replace("-", "_")))
        if action is None or action.dest == "config":
            known = sorted({a.dest for a in actions.values() if a.dest != "config"})
            raise UsageError(f"--config {path}: unknown key {key!r}; expected flag names of this script "
                             f"such as {', '.join(known[:4])}")
        check(action.dest not in out, f"--config {path}: {key} sets {flag_name(action)}, which an earlier key "
                                      "already set; give each flag once")
        out[action.dest] = _convert(parser, action, str(key), value, f"--config {path}")
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                      presets: dict[str, dict] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config`` YAML values and ``presets`` (default ``parser.presets``, e.g.
    ``{"quick": {...}}``, applied when that flag is set on the command line or in the YAML) as defaults. The
    YAML values are kept on ``parser.config_values`` (scripts that tell given flags from defaults)."""
    presets = getattr(parser, "presets", None) if presets is None else presets
    argv = list(argv) if argv is not None else sys.argv[1:]
    first, _ = parser.parse_known_args(argv)
    value = getattr(first, "config", None)
    legacy = getattr(parser, "config_legacy", None)
    old_style = legacy(value) if value and legacy is not None else None
    config = read_config(value, parser) if value and old_style is None else {}
    for flag, values in (presets or {}).items():
        if getattr(first, flag, False) or config.get(flag) is True:
            parser.set_defaults(**values)
    parser.set_defaults(**config)
    parser.config_values = dict(config)
    args = parser.parse_args(argv, Parsed())
    args.given = frozenset(config) | _on_command_line(parser, argv)
    if old_style is not None:
        vars(args).update(old_style, config=None)
    return args


class Parsed(argparse.Namespace):
    """The parsed arguments; ``given`` (a slot, so not in ``vars(args)``, args.json or resume checks): the
    destinations set on the command line or in ``--config`` (``common.flags.refuse_unused``)."""
    __slots__ = ("given",)


def _on_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> frozenset[str]:
    """Destinations the command line sets: parsed again over a namespace holding a marker for every destination,
    so argparse sets no defaults (the markers left are the flags not given)."""
    marker = object()
    ns = argparse.Namespace(**{a.dest: marker for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_known_args(argv, ns)
    return frozenset(dest for dest, value in vars(ns).items() if value is not marker)
