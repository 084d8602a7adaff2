"""Shared test fixtures: small thread counts, the optional real-data folder, a run-directory root."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDLAB_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real dataset samples); tests using it skip when it is absent, as in a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """Parent folder for run directories written by a test."""
    d = tmp_path / "runs"
    d.mkdir()
    return d
