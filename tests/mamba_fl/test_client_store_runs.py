"""Runs killed between a client-store write and the next checkpoint (common.client_store) resume bit-equal to the
uninterrupted run: with persist's AdamW state, SCAFFOLD's c_i and FedDyn's g_k, killed before a write or in the
middle of one; and a checkpoint from before the store (the optimizer states inline) still resumes."""
from __future__ import annotations

import json
import os

import pytest

from common import checkpoint
from common import client_store as CS
from mamba_fl import fed_avg


class _Killed(Exception):
    pass


def _kill_at(monkeypatch, n: int, torn: bool):
    """Kill the run at its n-th store write: before it (the previous writes complete) or, ``torn``, with half a
    row of garbage already in the slot."""
    calls = {"n": 0}

    def before_write(self, table, k):
        calls["n"] += 1
        if calls["n"] == n:
            if torn:
                os.pwrite(table._file(), b"\x7f" * (table.row_bytes // 2), table._offset(k, table._slot(k)))
            raise _Killed

    monkeypatch.setattr(CS.ClientStore, "before_write", before_write)


def _rows(out_dir, name):
    return [json.loads(x) for x in (out_dir / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm,torn", [("fedavg", False), ("scaffold", True), ("feddyn", True)])
def test_a_run_killed_after_a_store_write_resumes_bit_equal(tiny, out_dir, monkeypatch, algorithm, torn):
    """2 clients, 3 rounds, a checkpoint every round: killed at round 2's last write of the client store (after
    round 1's checkpoint and round 2's other writes), the resumed run's metrics equal the uninterrupted run's."""
    argv = tiny("--rounds", "3", "--algorithm", algorithm, *(["--optimizer", "sgd"] if algorithm == "scaffold" else []))
    # a row per client and table: fedavg's AdamW state, SCAFFOLD's c_i, FedDyn's g_k (on plain SGD, which keeps none)
    writes_per_round = {"fedavg": 2, "scaffold": 2, "feddyn": 2}[algorithm]
    full = fed_avg.main(argv + ["--run-name", "full"])
    _kill_at(monkeypatch, writes_per_round + 2, torn)
    with pytest.raises(_Killed):
        fed_avg.main(argv + ["--run-name", "cut"])
    monkeypatch.undo()
    assert len(_rows(out_dir, "cut")) == 1
    resumed = fed_avg.main(argv + ["--run-name", "cut", "--resume"])
    assert resumed["final_val_ppl"] == full["final_val_ppl"]
    assert _rows(out_dir, "cut") == _rows(out_dir, "full")


def test_a_checkpoint_with_the_states_inline_still_resumes(tiny, out_dir, monkeypatch):
    """A checkpoint written before the store (the optimizer states inline, no client_state folder) resumes to the
    uninterrupted run's metrics."""
    argv = tiny("--rounds", "3")
    full = fed_avg.main(argv + ["--run-name", "full"])
    _kill_at(monkeypatch, 3, torn=False)
    with pytest.raises(_Killed):
        fed_avg.main(argv + ["--run-name", "cut"])
    monkeypatch.undo()
    path, kind = out_dir / "cut" / "checkpoint.pt", "mamba_fl/fed_avg"
    state = checkpoint.load_checkpoint(path, kind)
    store = CS.ClientStore()
    store.open(out_dir / "cut" / "client_state", state.pop("client_store"), clean=False)
    opt = store.table("client_opt")
    legacy = {}
    for k in opt.clients():
        per_param = {}
        for name, v in zip(opt.names, opt.get(k)):
            i, key, _ = name.rsplit("/", 2)
            per_param.setdefault(int(i), {})[key] = v.clone()
        legacy[k] = [per_param.get(i, {}) for i in range(max(per_param) + 1)]
    store.close()
    checkpoint.save_checkpoint(path, {**state, "client_opt": legacy}, kind)
    for f in (out_dir / "cut" / "client_state").iterdir():
        f.unlink()
    resumed = fed_avg.main(argv + ["--run-name", "cut", "--resume"])
    assert resumed["final_val_ppl"] == full["final_val_ppl"]
    assert _rows(out_dir, "cut") == _rows(out_dir, "full")
