"""YAML configs that map onto the same flat flags: keys are flag names (``num_rounds`` or ``num-rounds``),
values are what the flag would take. Precedence: parser defaults < ``--quick`` presets < YAML < command
line. An unknown key, or a file that is not a mapping, is a one-line error."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from common.cli import UsageError, check


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}


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
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in dests or dest == "config":
            raise UsageError(f"--config {path}: unknown key {key!r}; expected flag names of this script "
                             f"such as num_rounds, algorithm, partition")
        out[dest] = value
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                      presets: dict[str, dict] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config`` YAML values and flag presets (e.g. ``{"quick": {...}}``, applied
    when that boolean flag is set on the command line or in the YAML) as defaults."""
    argv = list(argv) if argv is not None else None
    first, _ = parser.parse_known_args(argv)
    config = read_config(first.config, parser) if getattr(first, "config", None) else {}
    for flag, values in (presets or {}).items():
        if getattr(first, flag, False) or config.get(flag):
            parser.set_defaults(**values)
    parser.set_defaults(**config)
    return parser.parse_args(argv)
