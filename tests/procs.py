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
