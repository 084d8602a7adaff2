"""Command-line conventions shared by every script: both spellings of every long flag; a bad argument or input is
ONE line on stderr and exit status 2, a diverged run exit status 3 (``run(main)``). ``ArgumentParser`` also
checks every int / float value after parsing (YAML values included); ``add_run_args`` and ``add_fed_args`` are
the shared flag groups.

--help answers at once: this module and every flag declaration a parser is built from import no torch,
transformers, numpy or matplotlib (``common.algorithm_flags``, each subproject's ``options``), and a script
imports what its run needs after parsing, so ``--help`` (and a usage error) exits before any of it loads
(tests/test_help.py). --help lists each flag once, by its first spelling, its metavar named after it, and ends
with the examples of the script's docstring (``examples``).

    def get_args_parser(add_help=True): ...
    def main(argv=None) -> dict:        # returns the summary dict; tests call main([...])
        args = parse(get_args_parser(), argv)
        from <subproject> import <the run's module>   # torch and the rest load here, after parsing
    if __name__ == "__main__":
        cli.run(main)
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from common import caches, compiled, config, runlog, threads, tracking
from common.errors import (  # noqa: F401  (re-exported: scripts say cli.UsageError)
    EXIT_BUSY,
    EXIT_DIVERGED,
    EXIT_USAGE,
    Diverged,
    RunBusy,
    UsageError,
    check,
    check_out_dir,
    no_space,
    read_json,
)
from common.flags import FOLDER, FRACTION, MAX_COUNT, POSITIVE_INT, RUN_NAME, SEED, WHY_MAX, Folder, Number  # noqa: F401  (FOLDER re-exported)

if TYPE_CHECKING:
    import torch

_from_command_line = False  # set by ``run``: a script's own process, not a test or a grid calling main()


_TAKES_VALUE = (None, "store", "append", "extend")  # the actions whose flag is followed by a value


def _add_argument(original: Callable, *names, **kwargs):
    given = names
    if names and names[0].startswith("-"):  # every long flag in both spellings, the given ones first
        alts = [f"--{n[2:].replace(a, b)}" for n in names if n.startswith("--") and len(n) > 3 for a, b in ("-_", "_-")]
        names = (*names, *(alt for alt in dict.fromkeys(alts) if alt not in names))
        first_long = next((n for n in names if n.startswith("--")), None)
        if "dest" not in kwargs and first_long:  # dest from the first spelling given, snake_cased
            kwargs["dest"] = first_long[2:].replace("-", "_")
        if first_long and kwargs.get("action") in _TAKES_VALUE and "choices" not in kwargs:
            kwargs.setdefault("metavar", first_long[2:].replace("-", "_").upper())  # --val-freq VAL_FREQ, not its dest
    action = original(*names, **kwargs)
    action.shown = given  # --help lists the spellings given, not the other spelling of each
    return action


def _with_both_spellings(group):
    group.add_argument = functools.partial(_add_argument, group.add_argument)
    return group


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after each help text, except for None, False and help texts that name their default; each
    flag by the spellings it was declared with; a usage line that leaves the flags to the list below it; the
    description and epilog (examples) as written."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        shown = getattr(action, "shown", None)
        if not shown or not action.option_strings:
            return super()._format_action_invocation(action)
        strings = [*shown]
        if action.nargs != 0:
            strings[-1] += " " + self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(strings)

    def _format_usage(self, usage, actions, groups, prefix):
        if usage is None:  # every flag is listed below the usage line: it names the positional arguments only
            positionals = [self._format_args(a, self._get_default_metavar_for_positional(a))
                           for a in actions if not a.option_strings]
            usage = " ".join(["%(prog)s [options]", *positionals])
        return super()._format_usage(usage, actions, groups, prefix)


SPELLINGS = "Every --flag-name is also accepted as --flag_name (and the other way round)."
_EXAMPLE = re.compile(r"^ {4}python (?:.*\\\n)*.*", re.M)  # an indented command and its continuation lines


def examples(doc: str | None) -> str:
    """A script's epilog: the example commands of its docstring (its lines indented by 4 that start with ``python``,
    with their continuation lines), then ``SPELLINGS``."""
    commands = ["\n      ".join(line.strip() for line in m.group().split("\n"))
                for m in _EXAMPLE.finditer(doc or "")]
    return "".join(["examples:\n", *(f"  {c}\n" for c in commands), "\n"] if commands else []) + SPELLINGS


class ArgumentParser(argparse.ArgumentParser):
    """argparse with both flag spellings, no abbreviations, and one-line errors (exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        return _add_argument(super().add_argument, *names, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        return _with_both_spellings(super().add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group(self, **kwargs):
        return _with_both_spellings(super().add_mutually_exclusive_group(**kwargs))

    def _get_value(self, action, arg_string):
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError as e:
            if isinstance(action.type, Number) and e.message.startswith("must be"):  # "--rounds must be ..."
                raise argparse.ArgumentError(None, f"{config.flag_name(action)} {e.message}") from None
            raise

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        check_numbers(self, ns)
        check_folders(self, ns)
        return ns


def check_numbers(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Every int / float flag's value (YAML defaults included) is a finite number of its type, else an error."""
    for action in parser._actions:
        if action.type not in (int, float) or not hasattr(ns, action.dest):
            continue
        value = getattr(ns, action.dest)
        fix = functools.partial(_checked_number, parser, action)
        setattr(ns, action.dest, type(value)(map(fix, value)) if isinstance(value, (list, tuple)) else fix(value))


def check_folders(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Every folder the script will write in (its ``flags.Folder`` flags; the text cache's default, derived from
    ``--out-dir``, last) checked by ``check_out_dir`` now, before the script reads or writes anything: validate,
    then write."""
    folders, derived = {}, []
    for action in parser._actions:
        if isinstance(action.type, Folder) and action.dest not in folders and hasattr(ns, action.dest):
            value = getattr(ns, action.dest)
            folders[action.dest] = (value, config.flag_name(action))
            if value is None and action.type.derived:
                out_dir = getattr(ns, "out_dir", None)
                derived.append((caches.derived_cache_dir(None, out_dir), caches.derived_cache_name(out_dir)))
    for value, flag in [*folders.values(), *derived]:
        if value is not None:
            check_out_dir(value, flag)


def _checked_number(parser: argparse.ArgumentParser, action: argparse.Action, v):
    """One value of ``check_numbers``: None, or a finite number of the flag's type (an integral float made int)."""
    if v is None:
        return v
    if isinstance(v, str):  # a string default that argparse did not convert
        try:
            v = action.type(v)
        except ValueError:
            parser.error(f"argument {config.flag_name(action)}: invalid {action.type.__name__} value: {v!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        parser.error(f"argument {config.flag_name(action)}: expected a number, got {v!r}")
    if action.type is int and not isinstance(v, int):
        if not (isinstance(v, float) and v.is_integer()):
            parser.error(f"argument {config.flag_name(action)}: expected an integer, got {v!r}")
        v = int(v)
    if action.type is int and abs(v) > MAX_COUNT:  # a plain int flag: bounded as every Number(int) is
        parser.error(f"argument {config.flag_name(action)}: must be at most {MAX_COUNT}, got {v} ({WHY_MAX})")
    if action.type is float:
        v = float(v)
        if not math.isfinite(v):
            parser.error(f"argument {config.flag_name(action)}: expected a finite number, got {v!r}")
    return v


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``: defaults < ``parser.presets`` (--quick) < ``--config`` YAML < command line. Under ``run``
    (a script started from the command line), once the arguments are valid: ``threads.say_once``."""
    args = config.parse_with_config(parser, argv)
    if _from_command_line:
        threads.say_once()
    return args


def add_run_args(parser: argparse.ArgumentParser, *, seed: int = 0, out_dir: str = "runs"):
    """The flags of how a run runs and where it writes; returns their group, for a script's own."""
    g = parser.add_argument_group("run")
    g.add_argument("--seed", type=SEED, default=seed, help="global seed; client streams derive from it")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--out-dir", type=FOLDER, default=out_dir, help="parent folder of run directories")
    g.add_argument("--run-name", type=RUN_NAME, default=None,
                   help="run directory name (default: derived from the settings)")
    g.add_argument("--quick", action="store_true", help="tiny model, few rounds, embedded data: a smoke run")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--resume", action="store_true",
                   help="continue from <run dir>/checkpoint.pt if present (same arguments and data required)")
    g.add_argument("--overwrite", "--overwrite-output-dir", action="store_true",
                   help="replace the run already in the run directory (everything in it is deleted first); "
                        "without it (or --resume) a directory holding a run is refused")
    g.add_argument("--extend", action="store_true",
                   help="with --resume: continue a run, finished or not, to a larger --rounds / --num-rounds / "
                        "--epochs than it was started with (give its --run-name: default names include them)")
    g.add_argument("--checkpoint-every", type=POSITIVE_INT, default=1,
                   help="save the checkpoint at every N-th evaluation only (a large model's can take longer to write "
                        "than the training between evaluations; a resume repeats up to N-1 intervals, same result)")
    tracking.add_report_args(g)
    config.add_config_arg(g)  # --config FILE.yaml, unless the script has its own --config
    compiled.add_compile_args(g)
    return g


def add_fed_args(parser: argparse.ArgumentParser, *, num_clients: int = 10, rounds: int | None = None,
                 participation_rate: float = 1.0, eval_every: int = 1, rounds_help: str = ""):
    """``rounds_help``: what decides the rounds when ``rounds`` is None (said in --help). Returns the group, for a
    script's own federation flags."""
    g = parser.add_argument_group("federation")
    g.add_argument("--num-clients", type=POSITIVE_INT, default=num_clients, help="number of clients K")
    g.add_argument("--rounds", type=POSITIVE_INT, default=rounds, help="communication rounds" + rounds_help)
    g.add_argument("--participation-rate", type=FRACTION, default=participation_rate,
                   help="fraction C of clients sampled each round (without replacement)")
    g.add_argument("--eval-every", type=POSITIVE_INT, default=eval_every,
                   help="evaluate the global model every N rounds")
    return g


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name!r} is not a device ({e}); expected auto, cpu, cuda or cuda:N") from None
    # other device types (mps, xpu, ...) would fail deep inside a run: kernels, RNG streams are cpu / cuda only
    check(device.type in ("cpu", "cuda"), f"--device {name!r}: a {device.type} device is not supported; "
                                          "expected auto, cpu, cuda or cuda:N")
    check(device.type != "cuda" or torch.cuda.is_available(), f"--device {name}: CUDA is not available here")
    check(device.type != "cuda" or device.index is None or device.index < torch.cuda.device_count(),
          f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices here (cuda:0 ..)")
    return device


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run ``main``: ``UsageError`` -> one line on stderr, exit 2 (``RunBusy``, its run directory written by another
    process: exit 4); ``Diverged`` -> exit 3; an int it returns other
    than 0 is the exit status (a study whose runs did not all finish: 1); locks released."""
    global _from_command_line
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "script"
    _from_command_line = True
    try:
        try:
            status = main(argv)
            if type(status) is int and status:
                raise SystemExit(status)
        except (OSError, RuntimeError, OverflowError) as e:
            # failures that are not bugs: a full disk (UsageError) and an arithmetic overflow, e.g. a learning rate
            # no float32 step can hold (the run diverged: runlog.overflowed); anything else is raised again
            full = no_space(e)
            if full is not None:
                raise UsageError(f"no space left on the device writing {full.filename or 'a file'}; files written "
                                 "atomically (checkpoints, summaries) keep their last complete version; free some "
                                 "space and rerun") from None
            if isinstance(e, OverflowError) or "without overflow" in str(e):
                runlog.overflowed(" ".join(str(e).split())[:120])
            raise
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BUSY if isinstance(e, RunBusy) else EXIT_USAGE) from None
    except Diverged as e:
        print(f"{prog}: diverged: {e}", file=sys.stderr)
        raise SystemExit(EXIT_DIVERGED) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        tracking.close_all()
        runlog.release_all()
