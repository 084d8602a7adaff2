"""--report-to: the tracker sees exactly the rows RunDir writes to metrics.jsonl (TensorBoard event files)."""
from __future__ import annotations

import argparse
import json

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


def test_report_to_wandb_offline_logs_the_rows_of_metrics_jsonl(tmp_path, monkeypatch):
    """A quick training run with ``--report-to wandb`` under ``WANDB_MODE=offline`` (no account, no network):
    the scalars read back from the offline run file are those of metrics.jsonl, the summary that of
    summary.json."""
    pytest.importorskip("wandb")
    from mamba_fl import central

    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))  # nothing written to the user's home
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli.run(central.main, ["--quick", "--quiet", "--max-steps", "2", "--val-freq", "1", "--eval-blocks", "4",
                           "--sample-tokens", "0", "--out-dir", str(tmp_path / "runs"), "--run-name", "wb",
                           "--report-to", "wandb"])  # as the script's __main__: the tracker is closed at the end
    run = tmp_path / "runs" / "wb"
    summary = json.loads((run / runlog.SUMMARY_FILE).read_text())
    scalars, logged_summary = tracking.read_wandb_offline(run)
    rows = runlog.read_rows(run / runlog.METRICS_FILE)
    expected: dict[str, list] = {}
    for i, row in enumerate(rows, start=1):
        for key, value in tracking.flatten(row).items():
            expected.setdefault(key, []).append((tracking._step(row, i), value))
    assert rows and scalars == expected
    assert len(expected["val_loss" if "val_loss" in expected else next(iter(expected))]) >= 2
    for key, value in tracking.flatten(summary).items():
        assert logged_summary[key] == pytest.approx(value), key
    assert (run / "wandb" / "run_id").read_text() in next((run / "wandb").glob("offline-run-*")).name
