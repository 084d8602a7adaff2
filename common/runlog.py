"""The run directory: the record of one run, and what ``--resume`` continues from.

``<out_dir>/<run_name>/`` holds

* ``args.json``     -- {"args": all arguments, "script", "argv", "git_commit", "versions", "device",
                       "hostname", "started_at", "resumes": [...]}
* ``metrics.jsonl`` -- one JSON object per evaluation (round, step, metrics), appended as they come
* ``summary.json``  -- final/best metrics etc., written by the script; ``wall_seconds`` added here
* ``checkpoint.pt`` -- full state for ``--resume`` (see ``common.checkpoint``)
* artifacts         -- whatever the subproject writes via ``artifact(name)``

Typical use::

    rd = RunDir(args.out_dir, args.run_name or run_name("fedavg", k=args.num_clients, s=args.seed),
                args, resume=args.resume)
    state = rd.load_checkpoint()            # None unless resuming from a checkpoint
    if state: params.load_(model_params, state["params"]); seed.set_rng_state(state["rng"]); start = state["round"] + 1
    for r in range(start, rounds):
        ...; rd.log({"round": r, "ppl": ppl}); rd.save_checkpoint({"round": r, "params": ...})
    rd.write_summary({"final_ppl": ppl, ...})

Resume contract: a fresh run (``resume=False``, or no checkpoint yet) deletes the old metrics, summary and
checkpoint of that directory. Resuming compares the saved arguments with the new ones (except
``ignore_on_resume``) and raises ``UsageError`` naming every differing flag; then metrics.jsonl is cut
back to the rows that existed when the checkpoint was saved, so rows logged after it (and redone now)
are not duplicated. Checks happen before anything is written, so a refused resume changes nothing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from common import checkpoint as ckpt
from common.cli import UsageError
from common.seed import get_rng_state

ARGS_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE = "args.json", "metrics.jsonl", "summary.json", "checkpoint.pt"
# Flags that may change between a run and its resumption without changing its results.
DEFAULT_IGNORE_ON_RESUME = ("resume", "quiet", "out_dir", "run_name", "device", "num_workers", "data_dir",
                            "cache_dir", "compile", "compile_mode", "compile_backend")
_PACKAGES = ("torch", "transformers", "peft", "datasets", "numpy")


# ----------------------------------------------------------------------------------------------------------
# environment facts for args.json

@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository holding this package, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def versions() -> dict:
    """Python and key package versions (read from metadata: nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe_device(device: str | torch.device | None) -> str:
    """E.g. "cuda:0 (NVIDIA H200)" or "cpu (x86_64, 2 threads)"; "auto" resolves as the scripts do."""
    try:
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_available():
            index = device.index if device.index is not None else torch.cuda.current_device()
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        if device.type == "cpu":
            return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
        return str(device)
    except (RuntimeError, AssertionError, TypeError):
        return str(device)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _caller_kind(depth: int = 2) -> str:
    """"<folder>/<file stem>" of the calling script, e.g. "mamba_fl/fed_fisher" (the checkpoint kind)."""
    path = Path(sys._getframe(depth).f_globals.get("__file__", "run"))
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


# ----------------------------------------------------------------------------------------------------------
# helpers

def run_name(prefix: str, *parts: Any, **settings: Any) -> str:
    """A run name from a prefix, plain parts and key/value settings, in the order given.

    Each setting becomes ``<key><value>``; True gives the bare key, False and None are left out; floats use
    the shortest ``g`` form; characters unsafe in file names become "-". Deterministic, so plot scripts
    can find runs by pattern.

    >>> run_name("fedfisher", l=2, k=4, lu=1, s=0)
    'fedfisher_l2_k4_lu1_s0'
    >>> run_name("fedavg", "dirichlet", a=0.5, lr=1e-4, prox=False, s=1)
    'fedavg_dirichlet_a0.5_lr0.0001_s1'
    """
    items = [str(prefix)] + [str(p) for p in parts if p is not None and p != ""]
    for key, value in settings.items():
        if value is None or value is False:
            continue
        if value is True:
            items.append(key)
        elif isinstance(value, float):
            items.append(f"{key}{value:g}")
        else:
            items.append(f"{key}{value}")
    name = "_".join(items)
    return "".join(c if c.isalnum() or c in "._-+" else "-" for c in name)


def _normalize_args(args: dict | argparse.Namespace) -> dict:
    """Arguments as they will read back from args.json (tuples -> lists, paths -> strings)."""
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    return json.loads(json.dumps(dict(args), default=ckpt.to_jsonable))


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics.jsonl file; a torn final line (a crash mid-write) is skipped, others must parse."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1} is not a JSON object: {line[:80]!r}") from None
    return rows


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class RunDir:
    """``<out_dir>/<run_name>/``: args.json, metrics.jsonl, summary.json, checkpoint.pt, artifacts.

    Args:
        out_dir, run_name: the directory is ``out_dir/run_name``.
        args: all arguments (argparse Namespace or dict), saved to args.json and compared on resume.
        resume: continue from ``checkpoint.pt`` if it exists (else start fresh).
        is_main: False on other ``torchrun`` ranks: they may read the checkpoint, every write is a no-op.
        ignore_on_resume: argument names that may differ on resume.
        kind: checkpoint kind; default "<folder>/<stem>" of the calling script, so a run directory
            written by another script is refused rather than half-loaded.
        device: device the run uses, for args.json (default: ``args["device"]``).
    """

    def __init__(self, out_dir: str | os.PathLike, run_name: str, args: dict | argparse.Namespace,
                 resume: bool = False, is_main: bool = True,
                 ignore_on_resume: tuple[str, ...] = DEFAULT_IGNORE_ON_RESUME,
                 kind: str | None = None, device: str | torch.device | None = None):
        if not run_name or "/" in run_name or run_name in (".", ".."):
            raise UsageError(f"--run-name {run_name!r} is not a folder name; expected a name without '/'")
        self.path = Path(out_dir) / run_name
        self.args = _normalize_args(args)
        self.is_main = is_main
        self.kind = kind or _caller_kind()
        self.resumed = False
        self._state: dict | None = None
        self._start = time.monotonic()
        self._wall_offset = 0.0  # wall seconds of earlier sessions, up to their last checkpoint
        self._n_rows = 0

        ckpt_path = self.path / CHECKPOINT_FILE
        saved_meta = None
        if resume and ckpt_path.exists():
            saved_meta = self._check_resumable(ignore_on_resume)  # raises before anything is written
            state = ckpt.load_checkpoint(ckpt_path, self.kind)
            info = state.get("runlog", {})
            self._n_rows = int(info.get("rows", 0))
            self._wall_offset = float(info.get("wall_seconds", 0.0))
            self._state = state
            self.resumed = True

        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        device_name = describe_device(device if device is not None else self.args.get("device"))
        if self.resumed:
            rows = read_rows(self.path / METRICS_FILE)
            self._n_rows = min(self._n_rows, len(rows))
            self._write_rows(rows[:self._n_rows])
            meta = dict(saved_meta)
            meta["args"] = self.args  # the ignorable flags (device, quiet, ...) as given now
            meta.setdefault("resumes", []).append(
                {"at": _now(), "git_commit": git_commit(), "device": device_name, "hostname": socket.gethostname(),
                 "argv": sys.argv, "from_rows": self._n_rows})
        else:
            for name in (METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE):
                (self.path / name).unlink(missing_ok=True)
            meta = {"args": self.args, "script": self.kind, "argv": sys.argv, "git_commit": git_commit(),
                    "versions": versions(), "device": device_name, "hostname": socket.gethostname(),
                    "started_at": _now(), "resumes": []}
        ckpt.atomic_write_json(self.path / ARGS_FILE, meta)

    # ------------------------------------------------------------------------------------------------------
    def _check_resumable(self, ignore: tuple[str, ...]) -> dict:
        """Saved args.json, after checking it was written by the same script with the same arguments."""
        args_path = self.path / ARGS_FILE
        try:
            saved = json.loads(args_path.read_text(encoding="utf-8"))
            saved_args = saved["args"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"cannot resume {self.path}: {ARGS_FILE} is missing or unreadable; "
                             "rerun without --resume to start over") from None
        if saved.get("script", self.kind) != self.kind:
            raise UsageError(f"cannot resume {self.path}: it holds a run of {saved.get('script')}, not of "
                             f"{self.kind}; use another --run-name or --out-dir")
        diffs = []
        for key in sorted(set(saved_args) | set(self.args)):
            if key in ignore:
                continue
            old, new = saved_args.get(key, "<absent>"), self.args.get(key, "<absent>")
            if old != new:
                diffs.append(f"{_flag(key)} (saved {old!r}, now {new!r})")
        if diffs:
            raise UsageError(f"cannot resume {self.path} with different arguments: {'; '.join(diffs)}; "
                             "rerun with the saved arguments or without --resume")
        return saved

    def _write_rows(self, rows: list[dict]) -> None:
        text = "".join(json.dumps(r, default=ckpt.to_jsonable) + "\n" for r in rows)
        ckpt.atomic_write_text(self.path / METRICS_FILE, text)

    # ------------------------------------------------------------------------------------------------------
    @property
    def wall_seconds(self) -> float:
        """Wall time of this run so far, including earlier sessions up to their last checkpoint."""
        return self._wall_offset + (time.monotonic() - self._start)

    def log(self, row: dict) -> None:
        """Append one metrics row (a JSON object) to metrics.jsonl and flush it."""
        if not self.is_main:
            return
        line = json.dumps(row, default=ckpt.to_jsonable)
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        self._n_rows += 1

    def rows(self) -> list[dict]:
        """All metric rows logged so far (including those of earlier sessions that were kept)."""
        return read_rows(self.path / METRICS_FILE)

    def save_checkpoint(self, state: dict, rng: bool = True) -> None:
        """Save ``state`` atomically, plus the metric row count, wall time and (unless ``rng=False``) the
        global RNG states under "rng" (restore them with ``common.seed.set_rng_state``)."""
        if not self.is_main:
            return
        state = dict(state)
        if rng:
            state["rng"] = get_rng_state()
        state["runlog"] = {"rows": self._n_rows, "wall_seconds": self.wall_seconds, "saved_at": _now()}
        ckpt.save_checkpoint(self.path / CHECKPOINT_FILE, state, self.kind)

    def load_checkpoint(self) -> dict | None:
        """The state to resume from (with "rng" and "runlog" entries), or None for a fresh run.

        Nothing is restored here: the script loads parameters, optimizer state and RNG states itself.
        """
        return self._state

    def write_summary(self, summary: dict) -> dict:
        """Write summary.json atomically with ``wall_seconds`` (summed over resumed sessions); return it."""
        summary = dict(summary)
        summary["wall_seconds"] = round(self.wall_seconds, 3)
        if self.is_main:
            ckpt.atomic_write_json(self.path / SUMMARY_FILE, summary)
        return summary

    def artifact(self, name: str) -> Path:
        """Path for an artifact file inside the run directory (parent folders created on the main rank)."""
        path = self.path / name
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
        return path
