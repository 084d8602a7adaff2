"""The run directory ``<out_dir>/<run_name>/`` (args.json, metrics.jsonl, summary.json, checkpoint.pt and the
``artifact``s: the README's "Run directory"): the record of one run, and what ``--resume`` continues from.

    rd = RunDir(args.out_dir, name, args, kind="mamba_fl/fed_avg", resume=args.resume, data=fp)  # checks only
    state = rd.load_checkpoint()            # None unless resuming from a checkpoint
    for r in range(start, rounds):
        ...; rd.check_finite(f"round {r}", loss=loss)  # exit 3 on NaN / inf
        rd.log({"round": r, "ppl": ppl}); rd.save_checkpoint({"round": r, ...})  # the first write claims
    rd.write_summary({"final_ppl": ppl, ...})
"""
from __future__ import annotations

import argparse
import datetime as _dt
import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import checkpoint as ckpt
from common import tracking
from common.errors import RUN_FILE, Diverged, RunBusy, UsageError, check, check_out_dir, check_run_name, no_space

if TYPE_CHECKING:  # torch loads with a run's first tensor: grids and plots read run directories without it
    import torch

ARGS_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE = RUN_FILE, "metrics.jsonl", "summary.json", "checkpoint.pt"
# summary.json's record of what its time was measured under (``write_summary``): two runs of the same settings differ
# in these alone
TIMING_KEYS = ("wall_seconds", "cpu_seconds", "load_start", "load_end")
LOCK_FILE = ".lock"  # held (flock) by the run writing the directory; a dead process's lock is free again
# Flags that may change between a run and its resumption without changing its results (--compile and
# --client-batching: up to float summation order).
DEFAULT_IGNORE_ON_RESUME = ("resume", "quiet", "out_dir", "run_name", "device", "num_workers", "data_dir",
                            "cache_dir", "compile", "compile_mode", "compile_backend", "report_to", "checkpoint_every",
                            "client_batching")
ALWAYS_IGNORED = ("resume", "overwrite", "extend")  # how to start, not what runs
# Run lengths: a change is refused on resume unless --extend asks for a longer run on purpose.
LENGTH_FLAGS = ("rounds", "num_rounds", "epochs", "n_epochs", "max_steps", "total_steps", "num_train_epochs")
# Flags added after runs were saved, with the value that does what those runs did: a saved run without the flag
# resumes when it is at that value (llm_noniid's --lr-schedule and --lora-targets; the --dp-* flags: DP off;
# shakespeare.py's --max-client-samples: every window).
ADDED_FLAGS = {"lr_schedule": "constant", "lora_targets": None, "dp_clip": None, "dp_noise": None, "dp_epsilon": None,
               "dp_delta": None, "dp_sampling": "poisson", "dp_quantile": None, "dp_clip_lr": 0.2,
               "dp_count_noise": None, "dp_accountant": "rdp", "max_client_samples": 0}


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
    for name in ("torch", "transformers", "peft", "datasets", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def processor() -> str:
    """The CPU's model name (/proc/cpuinfo, else ``platform.processor()``): float results can differ between CPU
    models (kernels chosen by instruction set), so a record says which one it ran on."""
    with suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe_device(device: str | torch.device | None) -> str:
    """E.g. "cuda:0 (NVIDIA H200, bf16 autocast)" or "cpu (x86_64, 2 threads)"."""
    import torch

    from common.evaluate import cuda_precision

    try:
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_available():
            index = device.index if device.index is not None else torch.cuda.current_device()
            return f"cuda:{index} ({torch.cuda.get_device_name(index)}, {cuda_precision()})"
        if device.type == "cpu":
            return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
        return str(device)
    except (RuntimeError, AssertionError, TypeError):
        return str(device)


def portable(value: Any) -> Any:
    """``value`` with every absolute path (a string starting with "/", in nested dicts and lists) relative to the
    working directory, as records keep them: a run directory names no machine's folders, and reads the same after
    the checkout and its data move together. Every README command runs from the repository root."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    return os.path.relpath(value) if isinstance(value, str) and os.path.isabs(value) else value


def working_dir(run_path: str | os.PathLike) -> str:
    """This working directory relative to the run directory ``run_path``, as records keep it ("cwd"): the folder the
    record's relative paths start from, without naming the machine's folders."""
    return os.path.relpath(os.getcwd(), os.path.realpath(run_path))


def same_place(saved: Any, now: Any, saved_cwd: str | None) -> bool:
    """Whether ``saved`` (a path relative to the absolute folder ``saved_cwd``, where a record was written) and
    ``now`` (relative to this working directory) name the same file or folder: a run resumed from another working
    directory gives its paths relative to that one. False for anything but two strings, or without ``saved_cwd``
    (a record from before the working directory was kept: it resumes from the one it was written in)."""
    if not (isinstance(saved, str) and isinstance(now, str) and saved and now and saved_cwd):
        return False
    return os.path.realpath(os.path.join(saved_cwd, saved)) == os.path.realpath(now)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended, so far: with ``wall_seconds``
    and the load what a stated time needs, since a run's wall time on a busy machine says little by itself."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes, of all users), None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_name(prefix: str, *parts: Any, **settings: Any) -> str:
    """A run name from a prefix, plain parts and settings ``<key><value>`` (True: the bare key; False, None: left
    out; floats in ``g`` form), in the order given; characters unsafe in file names become "-".

    >>> run_name("fedfisher", l=2, k=4, lu=1, s=0)
    'fedfisher_l2_k4_lu1_s0'
    >>> run_name("fedavg", "dirichlet", a=0.5, lr=1e-4, prox=False, s=1)
    'fedavg_dirichlet_a0.5_lr0.0001_s1'
    """
    items = [str(prefix)] + [str(p) for p in parts if p is not None and p != ""]
    items += [key if value is True else f"{key}{value:g}" if isinstance(value, float) else f"{key}{value}"
              for key, value in settings.items() if value is not None and value is not False]
    name = "_".join(items)
    return "".join(c if c.isalnum() or c in "._-+" else "-" for c in name)


def read_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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


@functools.lru_cache(maxsize=256)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_fingerprint(source: str, folder: str | os.PathLike | None = None,
                     files: Sequence[str | os.PathLike] = (), texts: dict[str, str | bytes] | None = None,
                     splits: dict[str, int] | None = None) -> dict:
    """What a run read: ``{"source", "folder", "files": {name: {"bytes", "sha256"}}, "splits": {name: size}}``.

    ``folder`` is kept relative to the working directory (``portable``); ``files`` are hashed from disk (named
    relative to ``folder`` when inside it), ``texts`` (in-memory contents) under their name; ``splits``: the
    examples per split used. ``--resume`` refuses a run whose fingerprint differs."""
    folder_path = Path(folder).resolve() if folder else None
    out: dict[str, Any] = {"source": str(source), "folder": portable(str(folder_path)) if folder_path else None,
                           "files": {}, "splits": {k: int(v) for k, v in (splits or {}).items()}}
    for f in files:
        f = Path(f).resolve()
        st = f.stat()
        name = str(f.relative_to(folder_path)) if folder_path and f.is_relative_to(folder_path) else f.name
        out["files"][name] = {"bytes": st.st_size, "sha256": _sha256_file(str(f), st.st_size, st.st_mtime_ns)}
    for name, content in (texts or {}).items():
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        out["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return out


def data_differences(saved: dict, now: dict, saved_cwd: str | None = None) -> list[str]:
    """What differs between two ``data_fingerprint``s, in words (empty when they match); ``saved_cwd``: the absolute
    folder ``saved`` was written from (``same_place``), so the same data folder reached from elsewhere matches."""
    diffs = [f"data {key} (saved {portable(saved.get(key))!r}, now {portable(now.get(key))!r})"
             for key in ("source", "folder") if portable(saved.get(key)) != portable(now.get(key))
             and not (key == "folder" and same_place(saved.get(key), now.get(key), saved_cwd))]
    old, new = saved.get("files", {}), now.get("files", {})
    for name in sorted(set(old) | set(new)):
        if name not in new:
            diffs.append(f"{name} no longer read")
        elif name not in old:
            diffs.append(f"{name} newly read")
        elif old[name] != new[name]:
            diffs.append(f"{name} changed ({old[name].get('bytes')} bytes sha256 {str(old[name].get('sha256'))[:12]}, "
                         f"now {new[name].get('bytes')} bytes sha256 {str(new[name].get('sha256'))[:12]})")
    old, new = saved.get("splits", {}), now.get("splits", {})
    return diffs + [f"{name} split size (saved {old.get(name)}, now {new.get(name)})"
                    for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def _leaves(value: Any, path: str = ""):
    """(path, leaf) of every value in nested dicts, lists and tuples (e.g. "global[3]"), without "rng" / "runlog"."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in ("rng", "runlog"):
                yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def _nonfinite(value: Any, numbers: bool = True) -> str | None:
    """The path of the first non-finite float tensor (or, with ``numbers``, number) in ``value``, or None."""
    import numpy as np
    import torch

    tensors = [(p, v) for p, v in _leaves(value) if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    bad = set()
    if tensors:
        ok = torch.stack([torch.isfinite(t).all().to(tensors[0][1].device) for _, t in tensors]).tolist()
        bad = {p for (p, _), good in zip(tensors, ok) if not good}
    for p, v in _leaves(value):
        if p in bad or (numbers and isinstance(v, (int, float, np.floating, np.integer)) and not math.isfinite(v)):
            return p
    return None


def divergence(path: Path, where: str, reason: str, checkpoint_at: str | None,
               rerun: str = "rerun with --overwrite") -> tuple[dict, Diverged]:
    """A run in ``path`` stopped at ``where`` on a non-finite value: the fields its summary.json gets (``status:
    diverged``) and the ``Diverged`` to raise (exit 3), naming the last finite checkpoint (``checkpoint_at``)."""
    kept = (f"{CHECKPOINT_FILE} keeps the last finite state ({checkpoint_at})" if checkpoint_at
            else "no checkpoint had been saved")
    fields = {"status": "diverged", "diverged_at": where, "reason": reason, "checkpoint": checkpoint_at}
    return fields, Diverged(f"{reason} at {where}; the run stopped (status 'diverged' in {path / SUMMARY_FILE}), "
                            f"{kept}; lower the learning rate and {rerun}")


def _where(state: dict) -> str | None:
    return next((f"{key} {state[key]}" for key in ("round", "epoch", "step")
                 if key in state and isinstance(state[key], (int, float))), None)


_HELD: weakref.WeakSet = weakref.WeakSet()


def release_all() -> None:
    """Release every run-directory lock this process still holds (``cli.run`` calls it on exit)."""
    for rd in list(_HELD):
        rd.release()


def _open_lock(path: Path, flags: int) -> int:
    """``os.open`` of the lock file, never through a symbolic link (the lock's JSON would land outside the run)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise UsageError(f"{path} is a symbolic link, not a lock file; remove it (nothing else in the run "
                             "directory needs to change) and rerun") from None
        raise


def overflowed(message: str) -> None:
    """An arithmetic overflow stopped the run: every claimed run directory records it (``diverge``)."""
    for rd in [rd for rd in _HELD if rd._claimed]:
        rd.diverge("the step that overflowed", f"values ({message})")
    raise Diverged(f"arithmetic overflow ({message}) before anything was written; lower the learning rate")


def _holder(path: Path) -> str:
    """'pid 123 on host, since 2026-...': the holder the run directory's lock file records ('?' where it cannot)."""
    try:
        with os.fdopen(_open_lock(path / LOCK_FILE, os.O_RDONLY), encoding="utf-8") as f:
            holder = json.loads(f.read() or "{}")
    except (OSError, ValueError, UsageError):
        holder = {}
    holder = holder if isinstance(holder, dict) else {}
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"


def held_by(path: str | os.PathLike) -> str | None:
    """Who holds the lock of run directory ``path`` (``_holder``'s words), None when no live process does (no lock
    file, or a stale one of a process that died): how a job runner tells a run going on elsewhere from a failure."""
    try:
        fd = _open_lock(Path(path) / LOCK_FILE, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    free = _try_flock(fd, exclusive=False)
    os.close(fd)
    return None if free else _holder(Path(path))


def _busy(path: Path) -> RunBusy:
    """The refusal of a run directory whose lock is held, naming the holder its lock file records."""
    return RunBusy(f"{path} is in use by another run ({_holder(path)}); wait for it to end or choose another "
                      "--run-name / --out-dir")


def _try_flock(fd: int, exclusive: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


class RunDir:
    """``<out_dir>/<run_name>/``. The constructor only CHECKS (the location, the lock, what the directory holds,
    and on ``resume`` that the saved run matches these arguments and data and is intact); ``claim()``, implicit in
    the first write, takes the lock and writes: a script that validates its inputs first never touches a run
    directory for a bad input. ``is_main``: False on other torchrun ranks (writes are no-ops); ``kind``: the
    script, saved in args.json and every checkpoint so another script's run is refused; ``spans_length``: what in
    this run is laid out over its whole length (a cosine learning rate over --rounds), so --extend is refused: the
    rounds already run followed the shorter layout."""

    def __init__(self, out_dir: str | os.PathLike, run_name: str, args: dict | argparse.Namespace, *,
                 kind: str, resume: bool = False, is_main: bool = True,
                 ignore_on_resume: tuple[str, ...] = DEFAULT_IGNORE_ON_RESUME,
                 device: str | torch.device | None = None, data: dict | None = None, spans_length: str | None = None):
        check_run_name(run_name)
        self.path = Path(out_dir) / run_name
        # as they will read back from args.json (tuples -> lists, paths -> strings, absolute paths -> relative)
        self.args = portable(ckpt.round_trip_json(vars(args) if isinstance(args, argparse.Namespace) else dict(args)))
        self.is_main = is_main
        self.kind = kind
        self.resumed = False
        self.data = ckpt.round_trip_json(data)
        self.overwrite, self.extend = bool(self.args.get("overwrite")), bool(self.args.get("extend"))
        self._state: dict | None = None
        self._start = time.monotonic()
        self._cpu_start, self._load_start = cpu_seconds(), load_average()
        self._periodic_saves = 0
        self._wall_offset = 0.0  # wall seconds of earlier sessions, up to their last checkpoint
        self._cpu_offset: float | None = 0.0  # their CPU seconds; None: a checkpoint from before CPU was recorded
        self._n_rows = 0
        self._claimed = False
        self._lock_fd: int | None = None
        self._saved_meta: dict | None = None
        self._extended: dict = {}
        self._checkpoint_at: str | None = None  # where the last checkpoint on disk was saved
        self._device_name = describe_device(device if device is not None else self.args.get("device"))
        self._cwd = working_dir(self.path)  # what this session's relative paths start from, as records keep it
        self._tracker = None
        self.summary_sources: list = []  # callables whose fields every summary.json gets (a DP run's epsilon)
        tracking.requested(self.args.get("report_to"))  # a missing tracker package: one line, nothing written

        check(not (resume and self.overwrite), "--resume and --overwrite contradict each other: --resume "
                                               "continues the run in the directory, --overwrite deletes it")
        check(not self.extend or resume, "--extend continues a run for longer: use it with --resume")
        check(not (self.extend and spans_length), f"--extend: {spans_length} spans the run's length, so the rounds "
                                                  "already run followed a shorter one; start the longer run afresh "
                                                  "(another --run-name, or --overwrite)")
        check_out_dir(out_dir, "--out-dir")
        check_out_dir(self.path, "run directory", own_run=True)  # a file, a dangling link or a link loop
        if is_main:  # the other ranks follow rank 0, which may already hold the lock and have claimed
            self._probe_lock()
        if resume and (self.path / CHECKPOINT_FILE).exists():
            self._saved_meta = self._check_resumable(ignore_on_resume)  # raises before anything is written
            state = ckpt.load_checkpoint(self.path / CHECKPOINT_FILE, self.kind)
            self._check_state(state)
            info = state.get("runlog", {})
            self._check_data(info.get("data"), CHECKPOINT_FILE, self._saved_cwd(info))
            self._n_rows = int(info.get("rows", 0))
            self._check_rows(self._n_rows)
            self._wall_offset = float(info.get("wall_seconds", 0.0))
            self._cpu_offset = float(info["cpu_seconds"]) if info.get("cpu_seconds") is not None else None
            self._checkpoint_at = _where(state)
            self._state = state
            self.resumed = True
        elif is_main and self._has_contents():
            has_run = (self.path / ARGS_FILE).is_file()
            if has_run and resume:  # killed before its first checkpoint: start it again
                self._check_resumable(ignore_on_resume)
            elif has_run and not self.overwrite:
                raise UsageError(self._occupied_message(ignore_on_resume))
            elif not has_run:
                raise UsageError(f"{self.path} is not empty and holds no run (no {ARGS_FILE}); choose another "
                                 "--run-name or --out-dir (--overwrite only replaces run directories)")
        self._seen = self._files_state() if is_main else None

    def set_data(self, data: dict) -> None:
        """The data fingerprint, for scripts that know it only after making the RunDir (before its first write)."""
        check(not self._claimed, "RunDir.set_data after the run directory was claimed")
        self.data = ckpt.round_trip_json(data)
        if self._state is not None:
            info = self._state.get("runlog", {})
            self._check_data(info.get("data"), CHECKPOINT_FILE, self._saved_cwd(info))
        if self._saved_meta is not None:
            self._check_data(self._saved_meta.get("data"), ARGS_FILE, self._saved_cwd(self._saved_meta))

    def _check_state(self, state: dict) -> None:
        for key in ("round", "epoch", "step"):
            value = state.get(key)
            if key in state and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise UsageError(f"cannot resume {self.path}: {CHECKPOINT_FILE} says {key} {value!r}, not a count "
                                 "of completed work (a whole number >= 0); the file is damaged or not of this "
                                 "run: start over with --overwrite")
        bad = _nonfinite(state, numbers=False)
        if bad is not None:
            raise UsageError(f"cannot resume {self.path}: {CHECKPOINT_FILE} holds non-finite values ({bad}), so "
                             "there is no finite state to continue from; start over with --overwrite (with a "
                             "lower learning rate)")

    def _files_state(self) -> tuple:
        """(name, inode, size, mtime) of the run files: did another run write between the checks and the claim?"""
        out = []
        for name in (ARGS_FILE, SUMMARY_FILE, CHECKPOINT_FILE, METRICS_FILE):
            with suppress(OSError):
                st = os.stat(self.path / name)
                out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _has_contents(self) -> bool:
        """The directory holds more than the lock file and temp files of interrupted writes."""
        return self.path.is_dir() and any(p.name != LOCK_FILE and not p.name.endswith(".tmp")
                                          for p in self.path.iterdir())

    def _read_saved(self) -> dict | None:
        saved = read_object(self.path / ARGS_FILE)
        return saved if saved is not None and isinstance(saved.get("args"), dict) else None

    def _saved_cwd(self, record: dict) -> str | None:
        """The absolute working directory a record (args.json, a checkpoint's "runlog") was written from; None for
        one written before it was kept (its relative paths then start from this working directory, as they did)."""
        cwd = record.get("cwd")
        return os.path.normpath(os.path.join(os.path.realpath(self.path), cwd)) if isinstance(cwd, str) else None

    def _arg_diffs(self, saved_args: dict, ignore: tuple[str, ...],
                   saved_cwd: str | None = None) -> tuple[dict[str, str], dict]:
        """({name: the difference in words}, {run-length name: [saved, now]} allowed by --extend); a path saved
        relative to ``saved_cwd`` matches the same file given relative to this working directory."""
        diffs, extended = {}, {}
        for key in sorted(set(saved_args) | set(self.args)):
            if key in ignore or key in ALWAYS_IGNORED:
                continue
            old, new = portable(saved_args.get(key, "<absent>")), self.args.get(key, "<absent>")  # older: absolute
            if (old == new or (key not in saved_args and key in ADDED_FLAGS and new == ADDED_FLAGS[key])
                    or same_place(saved_args.get(key), new, saved_cwd)):
                continue
            if (key in LENGTH_FLAGS and self.extend and isinstance(old, (int, float))
                    and isinstance(new, (int, float)) and new > old):
                extended[key] = [old, new]
                continue
            diffs[key] = f"--{key.replace('_', '-')} (saved {old!r}, now {new!r})"
        return diffs, extended

    def _occupied_message(self, ignore: tuple[str, ...]) -> str:
        saved = self._read_saved() or {}
        status = (read_object(self.path / SUMMARY_FILE) or {}).get("status")
        what = f"a {status} run" if status and status != "complete" else (
            "a finished run" if (self.path / SUMMARY_FILE).is_file() else "an unfinished run")
        script = saved.get("script")
        if script and script != self.kind:
            what += f" of {script}"
        elif saved:
            diffs = list(self._arg_diffs(saved.get("args", {}), ignore, self._saved_cwd(saved))[0].values())
            if diffs:
                more = f" and {len(diffs) - 2} more" if len(diffs) > 2 else ""
                what += f" with other arguments ({'; '.join(diffs[:2])}{more})"
        return (f"{self.path} already holds {what}; add --resume to continue it or --overwrite to delete it and "
                "start over, or choose another --run-name / --out-dir")

    def _check_resumable(self, ignore: tuple[str, ...]) -> dict:
        """Saved args.json, after checking it was written by the same script with the same arguments."""
        saved = self._read_saved()
        if saved is None:
            raise UsageError(f"cannot resume {self.path}: {ARGS_FILE} is missing or unreadable; "
                             "rerun with --overwrite to start over")
        if saved.get("script", self.kind) != self.kind:
            raise UsageError(f"cannot resume {self.path}: it holds a run of {saved.get('script')}, not of "
                             f"{self.kind}; use another --run-name or --out-dir")
        diffs, self._extended = self._arg_diffs(saved["args"], ignore, self._saved_cwd(saved))
        if diffs:
            hint = " (to continue a run for longer on purpose, add --extend)" if set(diffs) & set(LENGTH_FLAGS) else ""
            raise UsageError(f"cannot resume {self.path} with different arguments: {'; '.join(diffs.values())}{hint}; "
                             "resume with the saved arguments, or start over with --overwrite")
        self._check_data(saved.get("data"), ARGS_FILE, self._saved_cwd(saved))
        return saved

    def _check_data(self, saved: dict | None, where: str, saved_cwd: str | None) -> None:
        if saved is None or self.data is None:
            return
        diffs = data_differences(saved, self.data, saved_cwd)
        if diffs:
            raise UsageError(f"cannot resume {self.path}: the data differ from those of the run ({where}): "
                             f"{'; '.join(diffs)}; resume with the run's data, or start over with --overwrite")

    def _check_rows(self, expected: int) -> None:
        path = self.path / METRICS_FILE
        if expected > 0 and not path.is_file():
            raise UsageError(f"cannot resume {self.path}: {METRICS_FILE} is missing but the checkpoint was saved "
                             f"after {expected} rows; restore it, or start over with --overwrite")
        try:
            rows = read_rows(path)
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot resume {self.path}: {e}; repair {METRICS_FILE}, or start over with "
                             "--overwrite") from None
        if len(rows) < expected:
            raise UsageError(f"cannot resume {self.path}: {METRICS_FILE} has {len(rows)} rows but the checkpoint "
                             f"was saved after {expected}; restore it, or start over with --overwrite")

    def _probe_lock(self) -> None:
        """Refuse now, before any work, if a live run holds the directory's lock."""
        if held_by(self.path) is not None:  # (a stale lock file of a dead process is free)
            raise _busy(self.path)

    def _acquire_lock(self) -> None:
        lock = self.path / LOCK_FILE
        for _ in range(4):
            fd = _open_lock(lock, os.O_RDWR | os.O_CREAT)
            if not _try_flock(fd, exclusive=True):
                os.close(fd)
                raise _busy(self.path)
            try:  # the file may have been released and unlinked between our open and flock: retry
                same = os.lstat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now(),
                                     "argv": sys.argv}).encode())
            self._lock_fd = fd
            _HELD.add(self)
            return
        raise _busy(self.path)

    def release(self) -> None:
        """Close the run's trackers and give the directory's lock back (``cli.run`` does it for every script)."""
        if self._tracker is not None:
            self._tracker.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            with suppress(OSError):
                if os.lstat(self.path / LOCK_FILE).st_ino == os.fstat(fd).st_ino:
                    (self.path / LOCK_FILE).unlink()
        finally:
            os.close(fd)
            _HELD.discard(self)

    def __del__(self):
        with suppress(Exception):  # interpreter shutdown
            self.release()

    def claim(self) -> RunDir:
        """Create the directory, take its lock, clear it (fresh run, ``--overwrite``) or trim metrics.jsonl to the
        checkpoint (``--resume``), remove temp files of interrupted writes, write args.json. Idempotent; a no-op
        on other ranks."""
        if self._claimed or not self.is_main:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            if self._files_state() != self._seen:  # checked again under the lock: another run came in between
                raise UsageError(f"{self.path} was written by another run while this one was starting (it now "
                                 f"holds {', '.join(n for n, *_ in self._files_state()) or 'no run files'}); "
                                 "nothing was changed; rerun to see what it holds, or choose another "
                                 "--run-name / --out-dir")
            for tmp in self.path.rglob("*.tmp"):  # interrupted atomic writes (we hold the lock: none is live)
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
            if self.resumed:
                rows = read_rows(self.path / METRICS_FILE)[:self._n_rows]
                ckpt.atomic_write_text(self.path / METRICS_FILE,
                                       "".join(json.dumps(r, default=ckpt.to_jsonable) + "\n" for r in rows))
                # the ignorable flags (device, quiet, ...) as given now, and the paths relative to this "cwd"
                meta = {**self._saved_meta, "args": self.args, "cwd": self._cwd}
                if self.data is not None:
                    meta["data"] = self.data
                resume = {"at": _now(), "git_commit": git_commit(), "device": self._device_name,
                          "processor": processor(), "hostname": socket.gethostname(), "argv": portable(sys.argv),
                          "from_rows": self._n_rows}
                if self._extended:
                    resume["extended"] = self._extended
                meta.setdefault("resumes", []).append(resume)
            else:
                for entry in (e for e in self.path.iterdir() if e.name != LOCK_FILE):  # nothing of an earlier run
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                meta = {"args": self.args, "script": self.kind, "argv": portable(sys.argv), "git_commit": git_commit(),
                        "versions": versions(), "device": self._device_name, "processor": processor(),
                        "hostname": socket.gethostname(),
                        "started_at": _now(), "resumes": [], "data": self.data, "cwd": self._cwd}
            with self._writing(ARGS_FILE):
                ckpt.atomic_write_json(self.path / ARGS_FILE, meta)
        except BaseException:
            self.release()
            raise
        self._claimed = True
        return self

    @contextmanager
    def _writing(self, what: str):
        """A full disk while writing ``what``: one line (exit 2) naming the checkpoint kept (writes are atomic)."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            if no_space(e) is None:
                raise
            kept = (f"{CHECKPOINT_FILE} keeps {self._checkpoint_at}" if self._checkpoint_at
                    else "no checkpoint had been saved")
            self.release()
            raise UsageError(f"no space left on the device writing {self.path / what}; {kept}; free some space "
                             "and rerun with --resume") from None

    def check_finite(self, where: str, **values: Any) -> None:
        """Stop the run (``diverge``) if any of ``values`` is not finite; call it on every rank, so all stop."""
        for name, value in values.items():
            if _nonfinite(value) is not None:
                self.diverge(where, name.replace("_", " "))

    def diverge(self, where: str, what: str, summary: dict | None = None, reason: str | None = None):
        """Write summary.json with ``status: diverged`` (the checkpoint keeps the last finite state), release the
        lock and raise ``Diverged``."""
        fields, error = divergence(self.path, where, reason or f"non-finite {what}", self._checkpoint_at)
        if self.is_main:
            self.claim()
            self.write_summary({**(summary or {}), **fields})
        self.release()
        raise error

    @property
    def wall_seconds(self) -> float:
        """Wall time of this run so far, including earlier sessions up to their last checkpoint."""
        return self._wall_offset + (time.monotonic() - self._start)

    @property
    def cpu_seconds(self) -> float | None:
        """CPU seconds of this run so far (this process and its ended children; on torchrun, rank 0's alone), earlier
        sessions included up to their last checkpoint; None when resumed from a checkpoint that did not record it."""
        return None if self._cpu_offset is None else self._cpu_offset + (cpu_seconds() - self._cpu_start)

    def log(self, row: dict) -> None:
        """Append one metrics row (a JSON object) to metrics.jsonl and flush it."""
        if not self.is_main:
            return
        self.claim()
        line = json.dumps(row, default=ckpt.to_jsonable)
        with self._writing(METRICS_FILE), open(self.path / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._n_rows += 1
        self.tracker.log(row)

    @property
    def tracker(self) -> tracking.Tracker:
        """The ``--report-to`` trackers (``common.tracking``), fed every metrics row; made on first use."""
        if self._tracker is None:  # configured by the run's arguments (W&B's config too); a no-op on other ranks
            args = self.args if self.is_main else {}
            self._tracker = tracking.Tracker(self.path, args.get("report_to"), config=dict(args), resume=self.resumed)
        return self._tracker

    def rows(self) -> list[dict]:
        """All metric rows logged so far (including kept rows of earlier sessions)."""
        return read_rows(self.path / METRICS_FILE)

    def save_checkpoint(self, state: dict, periodic: bool = False) -> bool:
        """Save ``state`` atomically, with the global RNG states ("rng") and row count and wall time ("runlog"). A
        ``periodic`` save (a training loop's, at each evaluation) happens at every ``--checkpoint-every``-th call.
        True when the file was written (False: another rank, or a periodic save skipped)."""
        if not self.is_main:
            return False
        if periodic:
            self._periodic_saves += 1
            if self._periodic_saves % int(self.args.get("checkpoint_every") or 1):
                return False
        bad = _nonfinite(state, numbers=False)
        if bad is not None:  # never replace the last finite checkpoint with NaN
            self.diverge(_where(state) or "the checkpoint", f"values in the checkpoint state ({bad})")
        self.claim()
        from common.seed import get_rng_state

        state = {**state, "rng": get_rng_state()}
        state["runlog"] = {"rows": self._n_rows, "wall_seconds": self.wall_seconds, "cpu_seconds": self.cpu_seconds,
                           "saved_at": _now(), "data": self.data, "cwd": self._cwd}
        with self._writing(CHECKPOINT_FILE):
            ckpt.save_checkpoint(self.path / CHECKPOINT_FILE, state, self.kind)
        self._checkpoint_at = _where(state) or "saved at " + state["runlog"]["saved_at"]
        return True

    def load_checkpoint(self) -> dict | None:
        """The state to resume from (with "rng" and "runlog"; the script restores it), or None for a fresh run."""
        return self._state

    def write_summary(self, summary: dict) -> dict:
        """Write summary.json atomically with ``status`` (default "complete") and what its time was measured under:
        ``wall_seconds``, ``cpu_seconds`` (None after resuming a checkpoint that did not record it) and the 1-minute
        load average when this session started and now (``load_start``, ``load_end``); return it."""
        for source in self.summary_sources:
            summary = {**summary, **source()}
        cpu = self.cpu_seconds
        summary = {**summary, "status": summary.get("status", "complete"), "wall_seconds": round(self.wall_seconds, 3),
                   "cpu_seconds": None if cpu is None else round(cpu, 3), "load_start": self._load_start,
                   "load_end": load_average()}
        if self.is_main:
            self.claim()
            with self._writing(SUMMARY_FILE):
                ckpt.atomic_write_json(self.path / SUMMARY_FILE, summary)
            self.tracker.log_summary(summary)
        return summary

    def artifact(self, name: str) -> Path:
        """Path for an artifact file inside the run directory (parent folders created on the main rank)."""
        path = self.path / name
        if self.is_main:
            self.claim()
            path.parent.mkdir(parents=True, exist_ok=True)
        return path
