"""Experiment tracking: ``--report-to none|tensorboard|wandb`` (several at once allowed).

``RunDir.log`` hands each row it appends to ``metrics.jsonl`` to the run's ``Tracker`` as well, and
``RunDir.write_summary`` the summary. Rows are flattened: numbers and booleans become scalars, nested dicts
``key/subkey`` (FedEntropy's ``entropy/0``), strings and lists are left out; the x axis is the row's ``round``,
else its ``step``, else its position.

* ``tensorboard``: event files in ``<run>/tensorboard/`` (``pip install -e .[tracking]``).
* ``wandb``: one W&B run named after the run directory, its config the arguments, files under ``<run>/wandb/``
  (with ``WANDB_MODE=offline`` kept there for ``wandb sync``).
"""
from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path

from common.errors import UsageError, check

REPORT_TO = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
_OPEN: set = set()  # trackers not closed yet: ``close_all`` (called by ``common.cli.run``) ends them


def add_report_args(group) -> None:
    """``--report-to`` on a parser or argument group."""
    group.add_argument("--report-to", nargs="+", choices=REPORT_TO, default=["none"],
                       help="experiment trackers fed the rows of metrics.jsonl: tensorboard (<run>/tensorboard, "
                            "needs the tensorboard package), wandb (needs wandb), or none")


def requested(report_to: str | Sequence[str] | None) -> list[str]:
    """The tracker names asked for, ``none`` dropped; raises ``UsageError`` when a package is missing."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [n for n in dict.fromkeys(names) if n and n != "none"]
    for n in names:
        check(n in REPORT_TO, f"--report-to {n!r} is unknown; expected one of {', '.join(REPORT_TO)}")
    install = {"tensorboard": "pip install tensorboard (or pip install -e .[tracking])", "wandb": "pip install wandb"}
    for n in ("tensorboard", "wandb"):
        if n in names and importlib.util.find_spec(n) is None:
            raise UsageError(f"--report-to {n} needs the {n} package: {install[n]}")
    return names


def flatten(row: dict, prefix: str = "") -> dict[str, float]:
    """Scalars of a metrics row: numbers and booleans, nested dicts as ``key/subkey``; the rest dropped."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, (bool, int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out |= flatten(value, name + "/")
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
            out[name] = float(value.item())
    return out


def _step(row: dict, index: int) -> int:
    for key in ("round", "step"):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
    return index


class Tracker:
    """Feeds metrics rows to the chosen trackers. ``Tracker(path, [])`` does nothing."""

    def __init__(self, run_path: str | os.PathLike, report_to: str | Sequence[str] | None,
                 config: dict | None = None, resume: bool = False):
        self.path = Path(run_path)
        self.names = requested(report_to)
        self._tb = self._wandb = None
        self._index = 0
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path / TENSORBOARD_DIR))
        if "wandb" in self.names:
            import wandb

            run_id = self.path / "wandb" / "run_id"
            run_id.parent.mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(name=self.path.name, config=config or {}, dir=str(self.path),
                                     id=run_id.read_text().strip() if resume and run_id.is_file() else None,
                                     resume="allow" if resume else None, reinit=True)
            run_id.write_text(self._wandb.id)
        if self.names:
            _OPEN.add(self)

    def __bool__(self) -> bool:
        return bool(self.names)

    def log(self, row: dict) -> None:
        """One metrics row (as written to metrics.jsonl)."""
        self._index += 1
        if not self.names:
            return
        scalars = flatten(row)
        step = _step(row, self._index)
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def log_summary(self, summary: dict) -> None:
        """Final values: W&B's run summary; TensorBoard scalars under ``summary/``."""
        scalars = flatten(summary)
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"summary/{key}", value, global_step=self._index)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.summary.update(scalars)

    def close(self) -> None:
        _OPEN.discard(self)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def close_all() -> None:
    """Close every open tracker (W&B writes a run's last records only when it is finished)."""
    for tracker in list(_OPEN):
        tracker.close()

