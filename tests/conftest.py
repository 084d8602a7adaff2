"""Shared test fixtures: a fresh home folder, small thread counts, the optional real-data folder, a run-directory
root."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDLAB_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The environment a user has, on a fresh machine: a new empty home folder per test session, so the scripts' own
# default folders (~/.cache/fedlab, <out-dir>/cache) are the ones exercised, cold, and nothing of the real home
# (its caches, matplotlib's and W&B's settings) is read or written. No FEDLAB_CACHE / FEDLAB_DATA is set: a test
# of user-facing behaviour sees what a user's run sees; one session shares ~/.cache/fedlab as a user's runs do.
HOME = Path(tempfile.mkdtemp(prefix="fedlab-test-home-"))
atexit.register(shutil.rmtree, HOME, ignore_errors=True)
os.environ["HOME"] = str(HOME)
for _name in ("FEDLAB_CACHE", "FEDLAB_DATA", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR"):
    os.environ.pop(_name, None)  # what a user's shell does not set, or what would move a folder out of HOME
# No hub is reachable from the test machines: fail fast instead of waiting on connection timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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
