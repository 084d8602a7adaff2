"""train.py under DP (common/privacy.py): an empty Poisson cohort's row, adaptive clipping, every update
clipped within C, epsilon per row."""
from __future__ import annotations

import pytest
from clicases import LLM_SMOKE
from dpcases import check_run, log_clips

from llm_noniid import train

pytest.importorskip("dp_accounting")


def test_empty_cohort_and_adaptive_clip(out_dir, monkeypatch):
    """4 clients at q = 1/4, seed 0: cohorts of 2, 1 and 0 clients; adaptive clipping moves C every round."""
    log = log_clips(monkeypatch)
    s = train.main(["--quick", *LLM_SMOKE, "--quiet", "--out-dir", str(out_dir), "--run-name", "p",
                    "--participation-rate", "0.25", "--dp-clip", "1", "--dp-noise", "0.05", "--dp-quantile", "0.5",
                    "--dp-count-noise", "0.5"])
    rows = check_run(out_dir / "p", log, 0.25, 4)
    assert [len(r["dp_norm"]) for r in rows] == [2, 1, 0] and "train_loss" not in rows[-1]
    clips = [r["dp_clip"] for r in rows]
    assert len(set(clips)) == 3 and s["status"] == "complete" and s["dp_final_clip"] != clips[-1]
