"""train_federated.py under DP (common/privacy.py): clipped real updates, epsilon per evaluation row, an empty
Poisson cohort's round, and --resume bit-equal with the accountant's state."""
from __future__ import annotations

import pytest
from dpcases import check_run, log_clips

from vit_sparse_fl import federated
from vit_sparse_fl import train_federated as fed

pytest.importorskip("dp_accounting")

# 10 clients at q = 0.2, seed 0: Poisson cohorts of 3, 1, 0 and 1 clients
SMALL = ["--quick", "--quiet", "--num-clients", "10", "--participation-rate", "0.2", "--local-steps", "1",
         "--rounds", "4", "--eval-every", "2", "--max-train", "300", "--max-test", "60", "--batch-size", "16",
         "--dp-clip", "0.15", "--dp-noise", "1"]


def test_clips_accounts_and_resumes_bit_equal(out_dir, monkeypatch):
    argv = [*SMALL, "--out-dir", str(out_dir)]
    log = log_clips(monkeypatch)
    full = fed.main([*argv, "--run-name", "full"])
    rows = check_run(out_dir / "full", log, 0.2, 10)
    assert [r["round"] for r in rows] == [2, 4] and [len(r["dp_norm"]) for r in rows] == [1, 1]
    assert full["dp_epsilon"] == rows[-1]["dp_epsilon"] and full["dp_sampling"] == "poisson"
    real = federated.VitTask.round_start

    def crash_in_round_3(self, r):  # after round 2's evaluation and checkpoint; round 3's cohort is empty
        if r == 2:
            raise KeyboardInterrupt
        return real(self, r)

    monkeypatch.setattr(federated.VitTask, "round_start", crash_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        fed.main([*argv, "--run-name", "cut"])
    monkeypatch.setattr(federated.VitTask, "round_start", real)
    resumed = fed.main([*argv, "--run-name", "cut", "--resume"])
    read = lambda name: (out_dir / name / "metrics.jsonl").read_text()  # noqa: E731
    assert read("full") == read("cut")
    same = ("dp_", "test_", "final_val_accuracy")
    assert {k: v for k, v in resumed.items() if k.startswith(same)} == \
        {k: v for k, v in full.items() if k.startswith(same)}
