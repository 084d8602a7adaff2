"""Small helpers shared by the benchmarks: median timing, memory bandwidth, peak memory, markdown tables.

Peak memory on CPU: ``tracemalloc`` does not see torch's allocations, so the peak resident set of the
process (``VmHWM`` in /proc/self/status) is used; it can be reset with ``reset_peak_rss`` (Linux
clear_refs) but is most trustworthy when each configuration runs in a fresh process (``run_isolated``).
On CUDA, ``torch.cuda.max_memory_allocated``. torch loads in the functions that need it, so a script that imports
this module still answers ``--help`` before torch loads (tests/test_help.py).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sync(device: torch.device | str | None) -> None:
    """Wait for queued kernels, so a timer measures the work and not its launch."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median_s: float
    min_s: float
    times_s: list[float]

    @property
    def ms(self) -> float:
        return 1e3 * self.median_s


def timeit(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5,
           device: torch.device | str | None = None) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones (perf_counter)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), times)


def timeit_many(fns: dict[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 5,
                device: torch.device | str | None = None) -> dict[str, Timing]:
    """Like ``timeit`` for several functions, run round-robin (a, b, c, a, b, c, ...) so that load from
    other processes on a shared machine hits every method alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(t), min(t), t) for name, t in times.items()}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (VmHWM)."""
    return 1024 * _status_kb("VmHWM")


def rss_bytes() -> int:
    return 1024 * _status_kb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_bytes(device: torch.device | str) -> int:
    """Memory in use now: CUDA allocator bytes on a GPU, resident set on CPU."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated(device)
    return rss_bytes()


def reset_peak(device: torch.device | str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def peak_bytes(device: torch.device | str) -> int:
    """Peak memory since ``reset_peak``: CUDA allocator peak on a GPU, peak RSS on CPU."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def run_isolated(argv: Sequence[str], timeout: float = 600) -> dict:
    """Run ``python argv...`` in a fresh process and parse the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], padded: bool = True) -> str:
    """A GitHub markdown table; floats keep the formatting they were given as strings. ``padded=False``: cells
    not padded to their column's width (a file then changes only in the rows whose cells change)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) if padded else 1 for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"
