"""Fixtures of the mamba_fl tests: one data/tokenizer cache for the session, tiny run arguments."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mamba_cache(tmp_path_factory) -> Path:
    """Synthetic WikiText, its BPE tokenizer and token streams are built once per session here."""
    return tmp_path_factory.mktemp("mamba_cache")


@pytest.fixture
def tiny(mamba_cache, out_dir):
    """argv builder: --quick, one layer, two clients, a couple of rounds, small evaluation, a learning rate that
    shows progress, this test's out dir."""
    def make(*extra: str, rounds: int = 2) -> list[str]:
        argv = ["--quick", "--layers", "1", "--cache-dir", str(mamba_cache), "--out-dir", str(out_dir), "--quiet",
                "--eval-blocks", "4", "--sample-tokens", "4", "--val-freq", "1", "--lr", "3e-3"]
        if "--num-clients" not in extra and "--max-steps" not in extra:
            argv += ["--num-clients", "2"]
        argv += extra
        if "--rounds" not in extra and "--max-steps" not in extra:
            argv += ["--rounds", str(rounds)]
        return argv
    return make



@pytest.fixture
def split_dir(mamba_cache, tmp_path) -> Path:
    """The embedded synthetic text split by article into train / valid / test (split_wikitext.py), as the real-text
    runs read it; the same split in every test, so its tokenizer is trained once per session."""
    from mamba_fl import lmdata, split_wikitext

    folder, _ = lmdata._synthetic_dir(mamba_cache)
    split_wikitext.main(["--raw", str(folder / "wiki.train.raw"), str(folder / "wiki.valid.raw"),
                         "--valid-fraction", "0.1", "--test-fraction", "0.1", "--shuffle-seed", "0",
                         "--out-dir", str(tmp_path / "split")])
    return tmp_path / "split"
