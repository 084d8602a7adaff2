"""Torch's thread count on a busy machine: a one-line hint, never a silent change.

torch starts one compute thread per core. On a machine whose cores are already busy (a shared server, a laptop
running a browser) those threads contend with the other work and with each other: ``mamba_fl/fed_fisher.py --layers
2 --quick`` at load 6 on 2 cores took 143 s (37 s CPU) with ``OMP_NUM_THREADS=1`` and had done half its rounds
after 10 minutes with torch's two threads. The count is not lowered here automatically because it changes the float
sums: a run resumed at another load would no longer reproduce the uninterrupted one bit for bit, and llm_noniid's
pretrained base is cached per thread count. So a script started from the command line says once, after its
arguments parsed, when the 1-minute load average leaves fewer free cores than torch's threads and
``OMP_NUM_THREADS`` is unset, and how to choose.
"""
from __future__ import annotations

import os
import sys


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores(n_cores: int, load: float) -> int:
    """The cores the load leaves free, at least 1."""
    return max(1, int(n_cores - load + 0.5))


def hint(threads: int, n_cores: int, load: float, environ=os.environ) -> str | None:
    """The line to print when ``threads`` torch threads oversubscribe ``n_cores`` at ``load``; None when they do
    not or ``OMP_NUM_THREADS`` already chooses."""
    free = free_cores(n_cores, load)
    if environ.get("OMP_NUM_THREADS") or free >= threads:
        return None
    return (f"note: load average {load:.1f} on {n_cores} cores: torch's {threads} threads will contend for them; "
            f"OMP_NUM_THREADS={free} runs faster on a busy machine (results can differ in the last bits between "
            "thread counts: resume a run with the count it started with)")


_said = False


def say_once(stream=None) -> None:
    """Print ``hint`` for this process once (stderr); nothing where the load average is unknown."""
    global _said
    if _said or not hasattr(os, "getloadavg"):
        return
    _said = True
    import torch

    line = hint(torch.get_num_threads(), cores(), os.getloadavg()[0])
    if line:
        print(line, file=stream or sys.stderr, flush=True)
