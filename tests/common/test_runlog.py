"""common.runlog: the run-directory contract, resume without duplicated rows, refusals that change nothing."""
from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch

from common import checkpoint as ck
from common import runlog
from common.cli import UsageError
from common.runlog import RunDir, run_name
from common.seed import seed_everything, set_rng_state

ARGS = {"seed": 0, "lr": 0.1, "rounds": 6, "layers": (2, 2), "device": "cpu", "quiet": False, "resume": False}


def test_fresh_run_writes_args_json_with_environment(out_dir):
    rd = RunDir(out_dir, "fedavg_s0", argparse.Namespace(**ARGS))
    meta = json.loads((out_dir / "fedavg_s0" / "args.json").read_text())
    assert meta["args"] == {**ARGS, "layers": [2, 2]}
    assert meta["script"] == "common/test_runlog"  # default kind: <folder>/<stem> of the calling file
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", meta["git_commit"])
    assert meta["versions"]["torch"] and torch.__version__.startswith(meta["versions"]["torch"])
    assert meta["versions"]["numpy"] == np.__version__ and meta["versions"]["python"]
    assert meta["device"].startswith("cpu") and meta["hostname"] and meta["started_at"]
    assert rd.path == out_dir / "fedavg_s0" and rd.load_checkpoint() is None and not rd.resumed


def test_log_rows_summary_and_artifacts(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.log({"round": 0, "ppl": torch.tensor(12.5), "acc": np.float32(0.25)})
    rd.log({"round": 1, "ppl": 10.0})
    assert rd.rows() == [{"round": 0, "ppl": 12.5, "acc": 0.25}, {"round": 1, "ppl": 10.0}]
    lines = (rd.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    summary = rd.write_summary({"final_ppl": 10.0})
    on_disk = json.loads((rd.path / "summary.json").read_text())
    assert on_disk == summary and on_disk["final_ppl"] == 10.0 and on_disk["wall_seconds"] >= 0
    art = rd.artifact("plots/curve.png")
    assert art == rd.path / "plots" / "curve.png" and art.parent.is_dir()


def test_fresh_run_clears_previous_records(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0})
    rd.write_summary({})
    (rd.path / "keep.txt").write_text("artifact")
    rd2 = RunDir(out_dir, "r", ARGS)  # no --resume: start over
    assert rd2.rows() == []
    assert not (rd2.path / "checkpoint.pt").exists() and not (rd2.path / "summary.json").exists()
    assert (rd2.path / "keep.txt").exists()


def test_resume_trims_rows_logged_after_the_checkpoint(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    for r in range(3):
        rd.log({"round": r})
    rd.save_checkpoint({"round": 2, "w": torch.arange(4)})
    rd.log({"round": 3})
    with open(rd.path / "metrics.jsonl", "a") as f:
        f.write('{"round": 4, "pp')  # torn by a crash mid-write
    assert [r["round"] for r in rd.rows()] == [0, 1, 2, 3]  # torn last line skipped

    rd2 = RunDir(out_dir, "r", {**ARGS, "resume": True, "quiet": True, "device": "cuda"}, resume=True)
    state = rd2.load_checkpoint()
    assert rd2.resumed and state["round"] == 2 and torch.equal(state["w"], torch.arange(4))
    assert "rng" in state and state["runlog"]["rows"] == 3
    assert [r["round"] for r in rd2.rows()] == [0, 1, 2]
    rd2.log({"round": 3})
    assert [r["round"] for r in rd2.rows()] == [0, 1, 2, 3]
    meta = json.loads((rd2.path / "args.json").read_text())
    assert len(meta["resumes"]) == 1 and meta["resumes"][0]["from_rows"] == 3
    assert meta["args"]["quiet"] is True  # ignorable flags updated, the rest as saved


def test_resume_without_checkpoint_starts_fresh(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.log({"round": 0})
    rd2 = RunDir(out_dir, "r", ARGS, resume=True)
    assert not rd2.resumed and rd2.load_checkpoint() is None and rd2.rows() == []


def test_resume_with_different_args_names_flags_and_changes_nothing(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0})
    rd.log({"round": 1})
    before = {p.name: p.read_bytes() for p in rd.path.iterdir()}
    with pytest.raises(UsageError) as e:
        RunDir(out_dir, "r", {**ARGS, "lr": 0.2, "num_clients": 4}, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "--lr (saved 0.1, now 0.2)" in msg and "--num-clients" in msg
    assert "--seed" not in msg and "--layers" not in msg  # tuples vs saved lists are not a difference
    assert {p.name: p.read_bytes() for p in rd.path.iterdir()} == before


def test_resume_refuses_another_scripts_run_and_corrupt_checkpoint(out_dir):
    rd = RunDir(out_dir, "r", ARGS, kind="mamba_fl/fed_avg")
    rd.save_checkpoint({"round": 0})
    with pytest.raises(UsageError, match="mamba_fl/fed_avg"):
        RunDir(out_dir, "r", ARGS, resume=True, kind="mamba_fl/fed_fisher")
    data = (rd.path / "checkpoint.pt").read_bytes()
    (rd.path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="truncated"):
        RunDir(out_dir, "r", ARGS, resume=True, kind="mamba_fl/fed_avg")


def test_bad_run_name_is_a_usage_error(out_dir):
    for bad in ("", "a/b", ".."):
        with pytest.raises(UsageError, match="--run-name"):
            RunDir(out_dir, bad, ARGS)


def test_wall_seconds_accumulate_across_resumes(out_dir, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(runlog.time, "monotonic", lambda: clock[0])
    rd = RunDir(out_dir, "r", ARGS)
    clock[0] += 10.0
    rd.save_checkpoint({"round": 0})
    clock[0] += 5.0  # then killed: work after the last checkpoint is redone on resume, so it is not counted
    clock[0] = 50.0  # the resuming process has another monotonic origin
    rd2 = RunDir(out_dir, "r", ARGS, resume=True)
    clock[0] += 3.0
    assert rd2.write_summary({"x": 1})["wall_seconds"] == pytest.approx(13.0)
    assert json.loads((rd2.path / "summary.json").read_text())["wall_seconds"] == pytest.approx(13.0)


def test_non_main_rank_writes_nothing_but_can_read_the_checkpoint(out_dir):
    other = RunDir(out_dir, "r", ARGS, is_main=False)
    other.log({"round": 0})
    other.save_checkpoint({"round": 0})
    assert other.write_summary({"a": 1})["a"] == 1
    other.artifact("x/y.txt")
    assert not (out_dir / "r").exists()
    main = RunDir(out_dir, "r", ARGS)
    main.save_checkpoint({"round": 5})
    reader = RunDir(out_dir, "r", ARGS, resume=True, is_main=False)
    assert reader.load_checkpoint()["round"] == 5
    assert json.loads((out_dir / "r" / "args.json").read_text())["resumes"] == []


def _train(out_dir, rounds, resume, crash_after=None):
    """A miniature training script: noisy updates from the global RNG, one row per round, checkpoint each
    round. ``crash_after`` stops after logging that round but before its checkpoint, like a kill."""
    args = {"seed": 7, "rounds": rounds}
    rd = RunDir(out_dir, "mini", args, resume=resume)
    seed_everything(7)
    w, start = torch.zeros(3), 0
    state = rd.load_checkpoint()
    if state is not None:
        w, start = state["w"], state["round"] + 1
        set_rng_state(state["rng"])
    for r in range(start, rounds):
        w = w + torch.randn(3) + float(np.random.rand())
        rd.log({"round": r, "w0": float(w[0])})
        if r == crash_after:
            return rd
        rd.save_checkpoint({"round": r, "w": w})
    rd.write_summary({"w": w})
    return rd


def test_resume_reproduces_the_uninterrupted_run(out_dir):
    straight = _train(out_dir / "a", 6, resume=False).rows()
    _train(out_dir / "b", 6, resume=False, crash_after=3)
    _train(out_dir / "b", 6, resume=True, crash_after=4)  # crash twice
    resumed = _train(out_dir / "b", 6, resume=True).rows()
    assert resumed == straight and [r["round"] for r in resumed] == list(range(6))
    summary_a = json.loads((out_dir / "a" / "mini" / "summary.json").read_text())
    summary_b = json.loads((out_dir / "b" / "mini" / "summary.json").read_text())
    assert summary_a["w"] == summary_b["w"]


def test_run_name_is_deterministic_and_safe():
    assert run_name("fedfisher", l=2, k=4, lu=1, s=0) == "fedfisher_l2_k4_lu1_s0"
    assert run_name("fedavg", "dirichlet", a=0.5, lr=1e-4, prox=False, bf16=True, mu=None, s=1) == \
        "fedavg_dirichlet_a0.5_lr0.0001_bf16_s1"
    assert run_name("lora", model="roberta/base", task="sst 2") == "lora_modelroberta-base_tasksst-2"
