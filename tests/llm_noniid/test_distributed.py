"""train.py under two gloo ranks (as torchrun runs it): the same metrics as one process, every SCAFFOLD c_i
in rank 0's checkpoint, and resume across a restart of both ranks."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from clicases import LLM_SMOKE
from multirank import run_ranks, torchrun_env

from common.checkpoint import load_checkpoint
from common.client_store import committed_rows
from common.engine import STORE_DIR
from llm_noniid import train

# SCAFFOLD exercises every reduction: the model average, the dy / dc sums, the per-client stats, the c_i sync.
# Unequal topic-skewed client sizes make the size-balanced assignment split the clients unevenly.
FLAGS = ["--quick", *LLM_SMOKE, "--quiet", "--algorithm", "scaffold", "--partition", "topic_skew", "--alpha", "0.3",
         "--num-clients", "5", "--max-local-steps", "2", "--max-train-examples", "160", "--max-eval-examples",
         "24", "--run-name", "r"]
CLOSE = ("val_loss", "train_loss", "client_divergence", "cosine_drift", "update_norm", "grad_norm_mean",
         "cv_norm", "cv_client_norm")


def worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    torchrun_env(rank, world, port)
    train.main(argv)


def two_ranks(argv: list[str]) -> None:
    run_ranks(worker, argv, timeout=120)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_with_a_restart_reproduce_the_single_process_run(tmp_path):
    single = train.main([*FLAGS, "--num-rounds", "2", "--out-dir", str(tmp_path / "one")])
    assert "WORLD_SIZE" not in os.environ
    # two ranks: round 1, then both ranks restart and resume for round 2 (rank 0 saved, both load)
    two_ranks([*FLAGS, "--num-rounds", "1", "--out-dir", str(tmp_path / "two")])
    assert rows(tmp_path / "two" / "r")[-1]["round"] == 1
    two_ranks([*FLAGS, "--num-rounds", "2", "--resume", "--extend", "--out-dir", str(tmp_path / "two")])

    a, b = rows(tmp_path / "one" / "r"), rows(tmp_path / "two" / "r")
    assert [x["round"] for x in b] == [1, 2]
    for x, y in zip(a, b):
        assert x["participants"] == y["participants"] and x["step"] == y["step"] > 0
        assert x["client_train_loss"].keys() == y["client_train_loss"].keys()
        assert y["client_train_loss"] == pytest.approx(x["client_train_loss"], rel=1e-5)
        for key in CLOSE:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), key
    summary = json.loads((tmp_path / "two" / "r" / "summary.json").read_text())
    for key in ("final_val_loss", "final_val_ppl", "final_client_divergence_rel"):
        assert summary[key] == pytest.approx(single[key], rel=1e-5), key
    assert summary["bytes_up"] == single["bytes_up"] and summary["rounds_done"] == 2

    # rank 0's checkpoint names every client's control variate (the rows each rank wrote), equal to the
    # single-process ones
    sa, sb = (load_checkpoint(tmp_path / run / "r" / "checkpoint.pt", "llm_noniid/train") for run in ("one", "two"))
    ca, cb = sa["algorithm"][0], sb["algorithm"][0]
    ra, rb = (committed_rows(tmp_path / run / "r" / STORE_DIR, s["client_store"], "scaffold_c0")
              for run, s in (("one", sa), ("two", sb)))
    assert sorted(rb) == sorted(ra) == list(range(5))
    for k in ra:
        for u, v in zip(ra[k], rb[k]):
            torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-6)
    for u, v in zip(ca["c"], cb["c"]):
        torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-6)
