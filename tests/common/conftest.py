"""Fixtures shared by the tests of common/: the embedded datasets, generated once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from common import synthetic


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict[str, Path]:
    """Every embedded dataset written once with its default sizes (kind -> folder); the time each takes is
    measured by benchmarks/bench_data.py."""
    root = tmp_path_factory.mktemp("synthetic")
    return {kind: synthetic.ensure(kind, root=root) for kind in synthetic.KINDS}
