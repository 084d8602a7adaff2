"""``--config FILE.yaml`` for every script: YAML files that map onto the same flat flags.

Keys are flag names (``num_rounds``, ``num-rounds`` or ``--num-rounds``: any spelling the script accepts),
values what the flag would take (lists for flags taking several values). Precedence: parser defaults <
presets (e.g. ``--quick``'s) < YAML < command line. An unknown key, or a file that is not a mapping, is a
one-line error. ``common.cli.parse`` goes through ``parse_with_config``, so every script with a ``--config``
flag (``common.cli.add_run_args`` adds it) reads the file the same way.

A script whose ``--config`` used to name something else (mamba_fl's model configs ``pure_ssm_N_layer``, now
``--model-config``) sets ``parser.config_legacy = fn``: ``fn(value)`` returns ``{dest: value}`` for an old-style
value (applied like a command-line flag) or None for a YAML path.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from common.errors import UsageError, check

CONFIG_HELP = "YAML file of flag: value lines (command-line flags override it)"


def add_config_arg(parser) -> None:
    """``--config FILE.yaml`` on a parser or argument group (skipped when the parser already has one)."""
    actions = getattr(parser, "_option_string_actions", {})
    if "--config" not in actions:
        parser.add_argument("--config", default=None, help=CONFIG_HELP)


def _dests(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every spelling (``num_rounds``, ``num-rounds``) of every flag -> its dest."""
    out = {}
    for a in parser._actions:
        if a.dest in ("help", argparse.SUPPRESS):
            continue
        out[a.dest] = a.dest
        for opt in a.option_strings:
            if opt.startswith("--"):
                out[opt[2:]] = a.dest
                out[opt[2:].replace("-", "_")] = a.dest
    return out


def read_config(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """The YAML file as {dest: value}, keys checked against the parser's flags."""
    import yaml

    path = Path(path)
    check(path.is_file(), f"--config {path} does not exist; expected a YAML file of flag: value lines")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"--config {path} is not valid YAML ({first})") from None
    check(isinstance(data, dict), f"--config {path} must be a mapping of flag names to values")
    dests, out = _dests(parser), {}
    for key, value in data.items():
        name = str(key).lstrip("-")
        dest = dests.get(name, dests.get(name.replace("-", "_")))
        if dest is None or dest == "config":
            raise UsageError(f"--config {path}: unknown key {key!r}; expected flag names of this script "
                             f"such as {', '.join(sorted(d for d in set(dests.values()) if d != 'config')[:4])}")
        out[dest] = value
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                      presets: dict[str, dict] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config`` YAML values and flag presets (e.g. ``{"quick": {...}}``, applied
    when that boolean flag is set on the command line or in the YAML) as defaults. The YAML values are
    kept on ``parser.config_values`` (scripts that tell given flags from defaults count them as given)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    first, _ = parser.parse_known_args(argv)
    value = getattr(first, "config", None)
    legacy = getattr(parser, "config_legacy", None)
    old_style = legacy(value) if value and legacy is not None else None
    config = read_config(value, parser) if value and old_style is None else {}
    for flag, values in (presets or {}).items():
        if getattr(first, flag, False) or config.get(flag):
            parser.set_defaults(**values)
    parser.set_defaults(**config)
    parser.config_values = dict(config)
    args = parser.parse_args(argv)
    if old_style is not None:
        for dest, v in old_style.items():
            setattr(args, dest, v)
        args.config = None
    return args
