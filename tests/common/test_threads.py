"""The load hint: said when the load leaves fewer free cores than torch's threads and OMP_NUM_THREADS is unset,
once per process, never changing the thread count."""
from __future__ import annotations

import io

import pytest
import torch

from common import threads


@pytest.mark.parametrize("n_cores,load,free", [(2, 0.0, 2), (2, 0.6, 1), (2, 6.0, 1), (16, 4.2, 12), (1, 0.0, 1)])
def test_free_cores(n_cores, load, free):
    assert threads.free_cores(n_cores, load) == free


def test_hint_only_when_busy_and_unchosen():
    assert threads.hint(2, 2, 0.3, environ={}) is None                       # idle: torch's two threads fit
    line = threads.hint(2, 2, 6.0, environ={})
    assert line.startswith("note: load average 6.0 on 2 cores: torch's 2 threads will contend for them")
    assert "OMP_NUM_THREADS=1" in line and "\n" not in line
    assert threads.hint(2, 2, 6.0, environ={"OMP_NUM_THREADS": "2"}) is None  # the user chose
    assert "OMP_NUM_THREADS=12 " in threads.hint(16, 16, 4.2, environ={})   # what the load leaves free


def test_said_once_and_the_thread_count_is_left_alone(monkeypatch):
    monkeypatch.setattr(threads, "_said", False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (6.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: pytest.fail("the thread count was changed"))
    out = io.StringIO()
    threads.say_once(out)
    threads.say_once(out)
    assert out.getvalue() == threads.hint(2, 2, 6.0, environ={}) + "\n"
