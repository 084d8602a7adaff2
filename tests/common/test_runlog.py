"""common.runlog: the run-directory contract, resume without duplicated rows, refusals that change nothing."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from common import checkpoint as ck
from common import runlog
from common.cli import Diverged, UsageError
from common.runlog import run_name
from common.seed import seed_everything, set_rng_state

KIND = "common/test_runlog"


def RunDir(*args, **kwargs) -> runlog.RunDir:  # noqa: N802 -- the class, with this file's kind by default
    kwargs.setdefault("kind", KIND)
    return runlog.RunDir(*args, **kwargs)


ARGS = {"seed": 0, "lr": 0.1, "rounds": 6, "layers": (2, 2), "device": "cpu", "quiet": False, "resume": False}


def test_fresh_run_writes_args_json_with_environment(out_dir):
    rd = RunDir(out_dir, "fedavg_s0", argparse.Namespace(**ARGS))
    assert not (out_dir / "fedavg_s0").exists()  # the constructor only checks: nothing written before claim
    rd.claim()
    meta = json.loads((out_dir / "fedavg_s0" / "args.json").read_text())
    assert meta["args"] == {**ARGS, "layers": [2, 2]}
    assert meta["script"] == KIND
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", meta["git_commit"])
    assert meta["versions"]["torch"] and torch.__version__.startswith(meta["versions"]["torch"])
    assert meta["versions"]["numpy"] == np.__version__ and meta["versions"]["python"]
    assert meta["device"].startswith("cpu") and meta["hostname"] and meta["started_at"]
    assert meta["processor"] == runlog.processor() != ""
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
    assert on_disk["status"] == "complete"  # every summary says how the run ended
    assert rd.write_summary({"status": "stopped"})["status"] == "stopped"  # a caller's own status is kept
    art = rd.artifact("plots/curve.png")
    assert art == rd.path / "plots" / "curve.png" and art.parent.is_dir()


def test_overwrite_clears_every_record_of_the_previous_run(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0})
    rd.write_summary({})
    (rd.artifact("round_5/fused") / "x.txt").parent.mkdir(parents=True, exist_ok=True)
    (rd.path / "round_5" / "fused" / "x.txt").write_text("stale")
    rd.release()
    rd2 = RunDir(out_dir, "r", {**ARGS, "overwrite": True})
    assert (rd2.path / "round_5").exists()  # nothing deleted before the run claims the directory
    rd2.claim()
    assert rd2.rows() == [] and sorted(p.name for p in rd2.path.iterdir()) == [".lock", "args.json"]


def test_a_directory_holding_a_run_is_refused_without_resume_or_overwrite(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.save_checkpoint({"round": 0})
    rd.write_summary({})
    rd.release()
    before = {p.name: p.read_bytes() for p in rd.path.iterdir()}
    for args, expect in ((ARGS, "a finished run"), ({**ARGS, "lr": 0.3}, "--lr (saved 0.1, now 0.3)")):
        with pytest.raises(UsageError) as e:
            RunDir(out_dir, "r", args)
        assert expect in str(e.value) and "--resume" in str(e.value) and "--overwrite" in str(e.value)
    (out_dir / "foreign").mkdir()
    (out_dir / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds no run"):
        RunDir(out_dir, "foreign", {**ARGS, "overwrite": True})
    with pytest.raises(UsageError, match="contradict"):
        RunDir(out_dir, "r", {**ARGS, "overwrite": True}, resume=True)
    assert {p.name: p.read_bytes() for p in rd.path.iterdir()} == before


def test_out_dir_that_is_a_file_or_unwritable_is_refused(out_dir):
    (out_dir / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        RunDir(out_dir / "file", "r", ARGS)
    with pytest.raises(UsageError, match="is a file"):
        RunDir(out_dir / "file" / "sub", "r", ARGS)
    (out_dir / "ro").mkdir()
    (out_dir / "ro").chmod(0o500)
    try:
        if not os.access(out_dir / "ro", os.W_OK):  # (root can write anywhere)
            with pytest.raises(UsageError, match="not writable"):
                RunDir(out_dir / "ro" / "x", "r", ARGS)
    finally:
        (out_dir / "ro").chmod(0o700)


def test_a_second_run_into_a_locked_directory_is_refused_and_a_stale_lock_is_taken_over(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.log({"round": 0})
    with pytest.raises(UsageError, match="in use by another run"):
        RunDir(out_dir, "r", ARGS, resume=True)
    rd2 = RunDir(out_dir, "s", ARGS)
    rd2.claim()
    rd2.release()
    rd.release()
    assert not (rd.path / ".lock").exists()
    (rd.path / ".lock").write_text('{"pid": 999999999, "host": "gone"}')  # a killed run's lock file
    rd3 = RunDir(out_dir, "r", ARGS, resume=True)
    rd3.log({"round": 0})
    rd3.release()
    # a lock held by another process (flock is per process here)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'{\"pid\": 1}'); print('locked', flush=True); "
            "time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(rd.path / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match="in use by another run"):
            RunDir(out_dir, "r", ARGS, resume=True)
    finally:
        proc.kill()
        proc.wait()
    RunDir(out_dir, "r", ARGS, resume=True).claim().release()  # the dead process's lock is free again


def test_records_keep_paths_relative_to_the_working_directory(out_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("one")
    fp = runlog.data_fingerprint("dir", tmp_path / "data", files=[tmp_path / "data" / "a.txt"])
    args = {**ARGS, "model": str(tmp_path / "base"), "out_dir": str(out_dir)}
    rd = RunDir(out_dir, "r", args, data=fp)
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0})
    rd.release()
    meta = json.loads((rd.path / "args.json").read_text())
    assert meta["args"]["model"] == "base" and meta["args"]["out_dir"] == "runs" and meta["data"]["folder"] == "data"
    assert meta["argv"] and not any(os.path.isabs(a) for a in meta["argv"])  # no machine's folders in the record
    for model in ("base", str(tmp_path / "base")):  # the same folder, written either way: the same run
        RunDir(out_dir, "r", {**args, "model": model}, resume=True, data=fp).claim().release()
    meta["args"]["model"], meta["data"]["folder"] = str(tmp_path / "base"), str(tmp_path / "data")  # an older record
    (rd.path / "args.json").write_text(json.dumps(meta))
    RunDir(out_dir, "r", args, resume=True, data=fp).claim().release()
    with pytest.raises(UsageError, match=r"--model \(saved 'base', now 'other'\)"):
        RunDir(out_dir, "r", {**args, "model": "other"}, resume=True, data=fp)


def test_a_run_resumes_from_another_working_directory_with_paths_relative_to_it(out_dir, tmp_path, monkeypatch):
    """Relative paths are recorded relative to the working directory; resumed from another one, the same folder
    written relative to the new one is the same run, and another folder is still refused."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("one")
    (tmp_path / "a" / "b").mkdir(parents=True)

    def start(cwd, rel, resume=False):  # the data folder and --model given relative to ``cwd``
        monkeypatch.chdir(cwd)
        fp = runlog.data_fingerprint("dir", rel, files=[os.path.join(rel, "a.txt")])
        return RunDir(os.path.relpath(out_dir), "r", {**ARGS, "model": rel}, resume=resume, data=fp)

    rd = start(tmp_path / "a", "../data")
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0})
    rd.release()
    start(tmp_path / "a" / "b", "../../data", resume=True).claim().release()  # the same folder from elsewhere
    start(tmp_path, "data", resume=True).claim().release()  # (and the record now says it relative to here)
    (tmp_path / "a" / "data").mkdir()
    (tmp_path / "a" / "data" / "a.txt").write_text("one")
    with pytest.raises(UsageError, match="data folder"):  # the same string, another folder
        start(tmp_path / "a", "data", resume=True)


def test_resume_refuses_changed_data_and_damaged_metrics(out_dir, tmp_path):
    (tmp_path / "a.txt").write_text("one")
    fp = runlog.data_fingerprint("dir", tmp_path, files=[tmp_path / "a.txt"], splits={"train": 3})
    rd = RunDir(out_dir, "r", ARGS, data=fp)
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0})
    rd.release()
    meta = json.loads((rd.path / "args.json").read_text())
    assert meta["data"]["files"]["a.txt"]["bytes"] == 3 and meta["data"]["splits"] == {"train": 3}
    (tmp_path / "a.txt").write_text("two!")
    fp2 = runlog.data_fingerprint("dir", tmp_path, files=[tmp_path / "a.txt"], splits={"train": 4})
    with pytest.raises(UsageError) as e:
        RunDir(out_dir, "r", ARGS, resume=True, data=fp2)
    assert "a.txt changed" in str(e.value) and "train split size (saved 3, now 4)" in str(e.value)
    fp3 = runlog.data_fingerprint("dir", tmp_path / "elsewhere", files=[], splits={"train": 3})
    with pytest.raises(UsageError, match="data folder"):
        RunDir(out_dir, "r", ARGS, resume=True, data=fp3)
    RunDir(out_dir, "r", ARGS, resume=True, data=fp).claim().release()  # same data: fine
    metrics = rd.path / "metrics.jsonl"
    metrics.write_text('{"round": 0}\nnot json\n{"round": 1}\n')
    with pytest.raises(UsageError, match="metrics.jsonl:2 is not a JSON object"):
        RunDir(out_dir, "r", ARGS, resume=True, data=fp)
    metrics.unlink()
    with pytest.raises(UsageError, match="metrics.jsonl is missing"):
        RunDir(out_dir, "r", ARGS, resume=True, data=fp)


def test_resume_refuses_a_changed_run_length_unless_extended(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.save_checkpoint({"round": 5})
    rd.write_summary({})
    rd.release()
    with pytest.raises(UsageError, match="--rounds .saved 6, now 9.*--extend"):
        RunDir(out_dir, "r", {**ARGS, "rounds": 9}, resume=True)
    with pytest.raises(UsageError, match="--rounds"):  # --extend only lengthens
        RunDir(out_dir, "r", {**ARGS, "rounds": 3, "extend": True}, resume=True)
    with pytest.raises(UsageError, match="with --resume"):
        RunDir(out_dir, "r", {**ARGS, "rounds": 9, "extend": True})
    with pytest.raises(UsageError, match="--extend: the cosine learning rate spans the run's length"):
        RunDir(out_dir, "r", {**ARGS, "rounds": 9, "extend": True}, resume=True,
               spans_length="the cosine learning rate")
    rd2 = RunDir(out_dir, "r", {**ARGS, "rounds": 9, "extend": True}, resume=True).claim()
    meta = json.loads((rd2.path / "args.json").read_text())
    assert meta["args"]["rounds"] == 9 and meta["resumes"][-1]["extended"] == {"rounds": [6, 9]}


def test_a_run_saved_before_a_flag_existed_resumes_at_the_flags_old_behaviour(out_dir):
    rd = RunDir(out_dir, "r", ARGS)  # saved without lr_schedule
    rd.save_checkpoint({"round": 5})
    rd.release()
    RunDir(out_dir, "r", {**ARGS, "lr_schedule": "constant"}, resume=True).release()
    with pytest.raises(UsageError, match="--lr-schedule .saved '<absent>', now 'cosine'"):
        RunDir(out_dir, "r", {**ARGS, "lr_schedule": "cosine"}, resume=True)


def test_stale_temp_files_are_removed_when_the_run_claims_the_directory(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.save_checkpoint({"round": 0})
    rd.release()
    (rd.path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    RunDir(out_dir, "r", ARGS, resume=True).claim().release()
    assert not (rd.path / ".checkpoint.pt.abc123.tmp").exists()


def test_non_finite_values_stop_the_run_and_keep_the_last_finite_checkpoint(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.save_checkpoint({"round": 1, "w": torch.ones(3)})
    good = (rd.path / "checkpoint.pt").read_bytes()
    rd.check_finite("round 2", loss=1.5, parameters=[torch.ones(2), torch.zeros(3)])
    with pytest.raises(Diverged) as e:
        rd.save_checkpoint({"round": 2, "w": torch.tensor([1.0, float("nan"), 0.0])})
    assert "round 2" in str(e.value) and "round 1" in str(e.value) and "\n" not in str(e.value)
    assert (rd.path / "checkpoint.pt").read_bytes() == good
    assert json.loads((rd.path / "summary.json").read_text())["status"] == "diverged"
    assert not (rd.path / ".lock").exists()  # released: the run is over
    rd = RunDir(out_dir, "q", ARGS)
    with pytest.raises(Diverged, match="non-finite loss at round 0"):
        rd.check_finite("round 0", loss=float("inf"))
    with pytest.raises(Diverged, match="non-finite parameters"):
        RunDir(out_dir, "p", ARGS).check_finite("round 3", parameters=[torch.ones(2), torch.tensor([float("inf")])])


def test_resume_trims_rows_logged_after_the_checkpoint(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    for r in range(3):
        rd.log({"round": r})
    rd.save_checkpoint({"round": 2, "w": torch.arange(4)})
    rd.log({"round": 3})
    rd.release()
    with open(rd.path / "metrics.jsonl", "a") as f:
        f.write('{"round": 4, "pp')  # torn by a crash mid-write
    assert [r["round"] for r in rd.rows()] == [0, 1, 2, 3]  # torn last line skipped

    rd2 = RunDir(out_dir, "r", {**ARGS, "resume": True, "quiet": True, "device": "cuda"}, resume=True)
    state = rd2.load_checkpoint()
    assert rd2.resumed and state["round"] == 2 and torch.equal(state["w"], torch.arange(4))
    assert "rng" in state and state["runlog"]["rows"] == 3
    rd2.claim()
    assert [r["round"] for r in rd2.rows()] == [0, 1, 2]
    rd2.log({"round": 3})
    assert [r["round"] for r in rd2.rows()] == [0, 1, 2, 3]
    meta = json.loads((rd2.path / "args.json").read_text())
    assert len(meta["resumes"]) == 1 and meta["resumes"][0]["from_rows"] == 3
    assert meta["resumes"][0]["processor"] == runlog.processor()
    assert meta["args"]["quiet"] is True  # ignorable flags updated, the rest as saved


def test_resume_without_checkpoint_starts_fresh(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.log({"round": 0})
    rd.release()
    rd2 = RunDir(out_dir, "r", ARGS, resume=True).claim()
    assert not rd2.resumed and rd2.load_checkpoint() is None and rd2.rows() == []


def test_resume_with_different_args_names_flags_and_changes_nothing(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0})
    rd.log({"round": 1})
    rd.release()
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
    rd.release()
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
    rd.release()
    clock[0] += 5.0  # then killed: work after the last checkpoint is redone on resume, so it is not counted
    clock[0] = 50.0  # the resuming process has another monotonic origin
    rd2 = RunDir(out_dir, "r", ARGS, resume=True)
    clock[0] += 3.0
    assert rd2.write_summary({"x": 1})["wall_seconds"] == pytest.approx(13.0)
    assert json.loads((rd2.path / "summary.json").read_text())["wall_seconds"] == pytest.approx(13.0)


def test_cpu_seconds_accumulate_across_resumes_and_the_load_is_recorded(out_dir, monkeypatch):
    """summary.json says what its wall time was measured under: the run's CPU seconds (earlier sessions up to their
    last checkpoint included, as wall_seconds) and the load average when the session started and ended."""
    cpu, load = [200.0], [3.0]
    monkeypatch.setattr(runlog, "cpu_seconds", lambda: cpu[0])
    monkeypatch.setattr(runlog, "load_average", lambda: load[0])
    rd = RunDir(out_dir, "r", ARGS)
    cpu[0] += 8.0
    rd.save_checkpoint({"round": 0})
    rd.release()
    cpu[0] += 4.0  # then killed: work after the last checkpoint is redone on resume, so it is not counted
    cpu[0], load[0] = 1.0, 5.5  # a new process, at another load
    rd2 = RunDir(out_dir, "r", ARGS, resume=True)
    cpu[0], load[0] = 3.0, 6.25
    summary = rd2.write_summary({"x": 1})
    assert summary["cpu_seconds"] == pytest.approx(10.0) and (summary["load_start"], summary["load_end"]) == (5.5, 6.25)
    assert json.loads((rd2.path / "summary.json").read_text()) == summary


def test_cpu_seconds_count_this_process_and_its_ended_children(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    before = rd.cpu_seconds
    spin = "import time\nt = time.process_time()\nwhile time.process_time() < t + 0.3: pass"  # 0.3 CPU seconds
    subprocess.run([sys.executable, "-c", spin], check=True)
    summary = rd.write_summary({})
    assert summary["cpu_seconds"] >= before + 0.3 and summary["wall_seconds"] > 0
    assert isinstance(summary["load_start"], float) and summary["load_end"] >= 0  # Linux has a load average


def test_a_checkpoint_from_before_cpu_was_recorded_resumes_without_a_cpu_time(out_dir):
    rd = RunDir(out_dir, "r", ARGS)
    rd.save_checkpoint({"round": 0})
    rd.release()
    state = ck.load_checkpoint(rd.path / "checkpoint.pt", KIND)
    del state["runlog"]["cpu_seconds"]
    ck.save_checkpoint(rd.path / "checkpoint.pt", state, KIND)
    summary = RunDir(out_dir, "r", ARGS, resume=True).write_summary({})
    assert summary["cpu_seconds"] is None and summary["wall_seconds"] >= 0  # unknown, not undercounted


def test_non_main_rank_writes_nothing_but_can_read_the_checkpoint(out_dir):
    other = RunDir(out_dir, "r", ARGS, is_main=False)
    other.log({"round": 0})
    other.save_checkpoint({"round": 0})
    assert other.write_summary({"a": 1})["a"] == 1
    other.artifact("x/y.txt")
    assert not (out_dir / "r").exists()
    main = RunDir(out_dir, "r", ARGS)
    main.save_checkpoint({"round": 5})
    main.release()
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
            rd.release()  # the killed process's lock goes with it
            return rd
        rd.save_checkpoint({"round": r, "w": w})
    rd.write_summary({"w": w})
    rd.release()
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


def test_describe_device_names_the_cuda_precision(monkeypatch):
    """A GPU run's args.json says whether it computed in bf16 autocast or, with FEDLAB_PRECISION=float32, in
    float32 (the two give different numbers, so a table mixing runs must be able to tell them apart)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H200")
    monkeypatch.delenv("FEDLAB_PRECISION", raising=False)
    assert runlog.describe_device("cuda:0") == "cuda:0 (NVIDIA H200, bf16 autocast)"
    monkeypatch.setenv("FEDLAB_PRECISION", "float32")
    assert runlog.describe_device("cuda:0") == "cuda:0 (NVIDIA H200, float32)"
    monkeypatch.setenv("FEDLAB_PRECISION", "fp32")                   # a typo is refused, not run in bf16
    with pytest.raises(UsageError, match="FEDLAB_PRECISION='fp32'"):
        runlog.describe_device("cuda:0")
