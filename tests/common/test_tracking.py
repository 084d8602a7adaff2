"""--report-to: the tracker sees exactly the rows RunDir writes to metrics.jsonl (TensorBoard event files)."""
from __future__ import annotations

import argparse
import json
import struct
import time

import pytest
import tbevents

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
    rd.release()  # the end of the run closes its trackers: the event files are complete
    assert rd.tracker._tb is None and rd.tracker not in tracking._OPEN
    assert tbevents.event_files(rd.path)
    got = tbevents.read_scalars(rd.path)
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
    rows = runlog.read_rows(run / runlog.METRICS_FILE)
    expected: dict[str, list] = {}
    for i, row in enumerate(rows, start=1):
        for key, value in tracking.flatten(row).items():
            expected.setdefault(key, []).append((tracking._step(row, i), value))
    for _ in range(60):  # W&B's service process may still be writing the file after finish() on a loaded machine
        try:
            scalars, logged_summary = read_wandb_offline(run)
            if scalars == expected and logged_summary:
                break
        except Exception:  # a record half written: read again
            scalars, logged_summary = {}, {}
        time.sleep(0.5)
    assert rows and scalars == expected
    assert len(expected["val_loss" if "val_loss" in expected else next(iter(expected))]) >= 2
    for key, value in tracking.flatten(summary).items():
        assert logged_summary[key] == pytest.approx(value), key
    assert (run / "wandb" / "run_id").read_text() in next((run / "wandb").glob("offline-run-*")).name


def read_wandb_offline(run_path) -> tuple[dict[str, list[tuple[int, float]]], dict]:
    """({key: [(step, value), ...]}, summary) from the offline W&B runs of a run directory
    (``<run>/wandb/offline-run-*/run-*.wandb``), W&B's own bookkeeping keys (``_step``, ``_runtime``, ...)
    left out. The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (CRC32C, length,
    type: 1 full, 2 first, 3 middle, 4 last) holding ``Record`` protobufs; read here because wandb has no
    public reader of offline files."""
    from wandb.proto import wandb_internal_pb2

    block, head = 32768, 7
    scalars: dict[str, list[tuple[int, float]]] = {}
    summary: dict = {}
    for f in sorted((run_path / "wandb").glob("offline-run-*/run-*.wandb")):
        data = f.read_bytes()
        if data[:4] != b":W&B":
            raise ValueError(f"{f} is not a W&B run file")
        pos, record = head, b""
        while pos + head <= len(data):
            room = block - pos % block
            if room < head:  # the rest of a block too short for a chunk header is padding
                pos += room
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + head])
            if kind == 0:  # zero padding up to the next block
                pos += room
                continue
            record += data[pos + head:pos + head + length]
            pos += head + length
            if kind not in (1, 4):
                continue
            rec = wandb_internal_pb2.Record.FromString(record)
            record = b""
            items = {"history": lambda r: r.history.item, "summary": lambda r: r.summary.update}
            which = rec.WhichOneof("record_type")
            if which not in items:
                continue
            values = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items[which](rec)}
            values = {k: v for k, v in values.items() if not k.startswith("_")}
            if which == "history":
                for key, value in values.items():
                    scalars.setdefault(key, []).append((int(rec.history.step.num), float(value)))
            else:
                summary.update(values)
    return scalars, summary
