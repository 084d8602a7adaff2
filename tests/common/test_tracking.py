"""--report-to: the tracker sees exactly the rows RunDir writes to metrics.jsonl (TensorBoard event files)."""
from __future__ import annotations

import argparse

import pytest

from common import cli, runlog, tracking


def test_flatten_keeps_numbers_and_nests_dicts():
    row = {"round": 3, "val_ppl": 12.5, "sample": "text", "entropy": {"0": 1.0, "1": 2.0}, "ok": True,
           "lst": [1, 2]}
    assert tracking.flatten(row) == {"round": 3.0, "val_ppl": 12.5, "entropy/0": 1.0, "entropy/1": 2.0, "ok": 1.0}


def test_rundir_rows_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    args = {"seed": 0, "report_to": ["tensorboard"]}
    rd = runlog.RunDir(tmp_path, "r", args, kind="common/test_tracking")
    rows = [{"round": 1, "val_loss": 2.0, "sample": "abc"}, {"round": 2, "val_loss": 1.5, "w": {"0": 0.25}}]
    for row in rows:
        rd.log(row)
    rd.write_summary({"final_val_loss": 1.5})
    rd.tracker.close()
    assert tracking.event_files(rd.path)
    got = tracking.read_scalars(rd.path)
    assert got["val_loss"] == [(1, 2.0), (2, 1.5)] and got["w/0"] == [(2, 0.25)]
    assert got["summary/final_val_loss"][0][1] == 1.5
    assert [r["val_loss"] for r in runlog.read_rows(rd.path / runlog.METRICS_FILE)] == [2.0, 1.5]


def test_none_writes_nothing_and_flag_is_shared(tmp_path):
    p = cli.ArgumentParser()
    cli.add_run_args(p)
    assert p.parse_args([]).report_to == ["none"]
    assert p.parse_args(["--report_to", "tensorboard"]).report_to == ["tensorboard"]
    rd = runlog.RunDir(tmp_path, "r", argparse.Namespace(**vars(p.parse_args([]))), kind="common/test_tracking")
    rd.log({"round": 1, "x": 1.0})
    assert not (rd.path / tracking.TENSORBOARD_DIR).exists() and not rd.tracker


def test_missing_package_is_one_line(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(cli.UsageError, match="pip install wandb"):
        runlog.RunDir(tmp_path, "r", {"report_to": ["wandb"]}, kind="common/test_tracking")
    assert not (tmp_path / "r").exists()
