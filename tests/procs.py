"""Child processes in tests: a time limit on each, and a failure that says what was running, for how long, at what
load, and what it printed last (pytest shows nothing of a test until it ends, so a stalled child must not hang)."""
from __future__ import annotations

import os
import subprocess

import pytest


def run(cmd: list[str], what: str, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)``; past ``timeout`` seconds the child is killed and the
    test fails with one message naming ``what``."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
        printed = "".join(s if isinstance(s, str) else s.decode(errors="replace") for s in (e.stdout, e.stderr) if s)
        tail = "\n".join(printed.splitlines()[-20:]) or "(nothing)"
        pytest.fail(f"{what} did not finish within {timeout:.0f} s (1-minute load average {os.getloadavg()[0]:.1f} "
                    f"on {os.cpu_count()} cores); its last output:\n{tail}", pytrace=False)



class _Ended:
    """The part of ``subprocess.Popen`` that ``common.jobs.run_plan`` uses, for a job that already ran to its end."""

    def __init__(self, returncode: int):
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def send_signal(self, sig) -> None:
        pass

    def kill(self) -> None:
        pass


def _as_main(module: str, argv: list[str]) -> int:
    """``cli.run(module.main, argv)`` as the script's ``__main__`` runs it; its exit status."""
    import importlib

    from common import cli

    try:
        cli.run(importlib.import_module(module).main, argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def jobs_in_this_process(monkeypatch) -> None:
    """``common.jobs`` runs each job, and each figure script ``jobs.draw`` names, as the script's ``__main__`` does,
    but in the test's process, one after another: a job with its output in its log and the torch threads its
    process would have (OMP_NUM_THREADS). For tests of what a grid plans, chooses and reports, where a child process
    per run adds only its start-up (torch and transformers imported again: seconds a run). What the runner decides
    (done, resumed, extended, refused) stays its own; tests/common/test_jobs.py and a grid test of each runner keep
    the child processes. A job that raises anything but ``SystemExit`` fails the test with its traceback."""
    import contextlib

    import torch

    from common import cli, jobs

    def start(job, extra, log_dir, env):
        log_dir.mkdir(parents=True, exist_ok=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
        try:
            with open(log_dir / f"{job.name}.log", "a", encoding="utf-8") as log, \
                    contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                return _Ended(_as_main(job.script, [*job.argv, *extra]))
        finally:
            torch.set_num_threads(threads)

    def draw(script: str, *flags: str) -> bool:
        print(f"$ python {script} {' '.join(flags)}", flush=True)
        return _as_main(script.removesuffix(".py").replace("/", "."), list(flags)) == 0

    monkeypatch.setattr(cli, "_from_command_line", cli._from_command_line)  # cli.run sets it; restored after the test
    monkeypatch.setattr(jobs, "_start", start)
    monkeypatch.setattr(jobs, "draw", draw)
