"""Fixtures shared by the tests of common/: the embedded datasets, generated once per session."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from common import synthetic


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict[str, Path]:
    """Every embedded dataset written once with its default sizes (kind -> folder), and the seconds each
    took under "seconds"."""
    root = tmp_path_factory.mktemp("synthetic")
    out, seconds = {}, {}
    for kind in synthetic.KINDS:
        t = time.perf_counter()
        out[kind] = synthetic.ensure(kind, root=root)
        seconds[kind] = time.perf_counter() - t
    out["seconds"] = seconds
    return out
