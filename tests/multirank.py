"""Run a worker on several forked gloo ranks inside one test, failing (not hanging) if a collective stalls."""
from __future__ import annotations

import socket
import time

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker, *args, nprocs: int = 2, timeout: float = 120.0) -> None:
    """Call ``worker(rank, nprocs, port, *args)`` on ``nprocs`` processes and wait for all of them.

    fork: the children inherit the imported torch / transformers instead of importing them again (seconds on
    2 cores). A run still going after ``timeout`` seconds is killed and the test fails.
    """
    ctx = mp.start_processes(worker, args=(nprocs, free_port(), *args), nprocs=nprocs, join=False,
                             start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs}-process run did not finish within {timeout:.0f} s")


def torchrun_env(rank: int, world: int, port: int) -> None:
    """Inside a worker: one thread, and the environment torchrun would give rank ``rank`` of ``world``."""
    import os

    import torch

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
