"""The shared flag vocabulary (one name per idea in every script, beside the source projects' own names) and
the argparse number types: ``Number`` and ``COUNT`` (>= 0), ``POSITIVE_INT`` (>= 1), ``SEED`` (0 .. 2**32 - 1:
what every RNG we seed accepts), ``FRACTION`` (in (0, 1]), ``POSITIVE`` (finite, > 0). Being types, they apply
to command-line and ``--config`` values alike. ``FOLDER`` / ``CACHE_FOLDER`` mark the folders a script writes in.
An integer flag without an upper bound of its own is bounded by ``MAX_COUNT`` (no count, size or length of this
project comes near it; a run of that many rounds, steps or examples could not finish), so a typo like
``--rounds 10000000000`` is refused instead of running until killed.

``refuse_unused``: a flag given (on the command line or in ``--config``; ``common.config`` records which) that
changes nothing in this run, e.g. ``--mu`` without FedProx, is refused in one line.
"""
from __future__ import annotations

import argparse
import math

from common.errors import UsageError, check, check_run_name

MAX_COUNT = 10**7  # rounds, steps, epochs, examples, sizes: 10^7 rounds of even 3 s each take a year
WHY_MAX = "larger counts could not finish (10^7 rounds of 3 s each take a year) or allocate"


class Number:
    """An argparse ``type``: an ``int`` or finite ``float`` within bounds (``*_open``: the bound excluded); out of
    bounds is "must be at least 1, got 0" (``common.cli.ArgumentParser`` adds the flag)."""

    def __init__(self, kind: type = int, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.__name__ = kind.__name__  # what argparse names in its own messages
        fmt = "{:d}".format if kind is int else "{:g}".format
        if low is not None and high is not None:
            self.bounds = f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
        elif low is not None:
            self.bounds = f"> {fmt(low)}" if low_open else f"at least {fmt(low)}"
        elif high is not None:
            self.bounds = f"< {fmt(high)}" if high_open else f"at most {fmt(high)}"
        else:
            self.bounds = "finite"
        self.expects = f"{'an integer' if kind is int else 'a number'} {self.bounds}"
        self.cap = MAX_COUNT if kind is int and high is None else None  # every integer flag is bounded

    def __call__(self, text: str):
        value = self.kind(text)  # not a number: argparse's own "invalid int value: 'x'"
        if not (self.kind is int or math.isfinite(value)):  # inf / nan: say so, not only the bounds
            bounds = "" if self.bounds == "finite" else f" and {self.bounds}"
            raise argparse.ArgumentTypeError(f"must be finite{bounds}, got {value}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {self.bounds}, got {value}")
        if self.cap is not None and value > self.cap:
            raise argparse.ArgumentTypeError(f"must be at most {self.cap}, got {value} ({WHY_MAX})")
        return value

    def __repr__(self) -> str:
        return f"Number({self.expects})"


class OnlyHere:
    """An argparse ``type`` for a shared flag of which a script honours only ``allowed``: any other of the ``known``
    values is refused with the script's ``reason`` (the flag's ``choices`` still list what it accepts)."""

    def __init__(self, allowed: tuple[str, ...], known: tuple[str, ...], reason: str):
        self.allowed, self.known, self.reason, self.__name__ = allowed, known, reason, "choice"

    def __call__(self, text: str) -> str:
        if text in self.known and text not in self.allowed:
            raise argparse.ArgumentTypeError(f"{text!r} is refused here: {self.reason}")
        return text


class Folder:
    """An argparse ``type`` marking a folder the script writes in (``--out-dir``, ``--cache-dir``): after parsing,
    ``common.cli.check_folders`` checks it (``common.errors.check_out_dir``) before anything is written. ``derived``:
    the flag is the text cache, whose default is ``common.caches.derived_cache_dir`` (beside the runs)."""

    def __init__(self, derived: bool = False):
        self.derived, self.__name__, self.expects = derived, "folder path", "a folder path"

    def __call__(self, text: str) -> str:
        if not text:  # refused here too for parse_known_args, which stops short of check_folders
            raise argparse.ArgumentTypeError("an empty path is not a folder (. is the current one)")
        return text


FOLDER, CACHE_FOLDER = Folder(), Folder(derived=True)


def RUN_NAME(text: str) -> str:  # noqa: N802 (an argparse type, named like the others)
    """An argparse ``type``: ``--run-name`` is one plain folder name (``common.errors.check_run_name``), checked at
    parsing, before a script reads or caches its data."""
    try:
        check_run_name(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--run-name ")) from None
    return text


RUN_NAME.expects = "a plain folder name"
COUNT = Number(int, 0)
POSITIVE_INT = Number(int, 1)
SEED = Number(int, 0, 2**32 - 1)
FRACTION = Number(float, 0.0, 1.0, low_open=True)
POSITIVE = Number(float, 0.0, low_open=True)
EPOCHS = Number(float, 0.0, low_open=True)  # a run length in (fractional) epochs: MAX_COUNT at most
EPOCHS.cap = MAX_COUNT


def alias(group, *names: str, dest: str, of: str, **kwargs) -> None:
    """``names`` as another spelling of the flag ``of`` (destination ``dest``; its default stands unless given)."""
    group.add_argument(*names, dest=dest, default=argparse.SUPPRESS, help=f"the shared name of {of}", **kwargs)


def add_clients_per_round(group) -> None:
    group.add_argument("--clients-per-round", type=POSITIVE_INT, default=None,
                       help="clients sampled per round, as a count (sets --participation-rate to count / clients)")


def resolve_clients_per_round(args: argparse.Namespace) -> None:
    """``--clients-per-round m`` overrides ``args.participation_rate`` with m / ``args.num_clients`` (once known)."""
    m = getattr(args, "clients_per_round", None)
    if m is None:
        return
    refuse_unused(args, [("participation_rate", False, f"with --clients-per-round {m}, which sets the rate")])
    k = args.num_clients
    check(1 <= m <= k, f"--clients-per-round must be between 1 and the {k} clients, got {m}")
    args.participation_rate = m / k


def given(args: argparse.Namespace) -> frozenset[str] | None:
    """Destinations of the flags set on the command line or in ``--config`` (``common.config`` records them on the
    namespace it parses, outside ``vars(args)``); None for a namespace built otherwise (nothing is refused then)."""
    return getattr(args, "given", None)


def display(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def refuse_unused(args: argparse.Namespace, rules) -> None:
    """``rules``: (dest, used, when) triples; a flag given explicitly whose value this run never reads (``used``
    false) is refused: "--mu changes nothing without --algorithm fedprox (here fedavg); leave it out"."""
    chosen = given(args)
    for dest, used, when in rules:
        check(used or chosen is None or dest not in chosen,
              f"{display(dest)} changes nothing {when}; leave it out (or set what it applies to)")
