"""The client store (common.client_store): rows on disk read back bit for bit, a client never written has none,
a checkpoint names the committed slot of each row so a store killed after it (mid-row too) reopens with exactly
its rows (whole runs killed so: tests/mamba_fl/test_client_store_runs.py)."""
from __future__ import annotations

import os

import pytest
import torch

from common import client_store as CS

ROW = [torch.zeros(3, 4), torch.zeros((), dtype=torch.float64), torch.zeros(5, dtype=torch.bfloat16)]


def row(v: float) -> list[torch.Tensor]:
    return [t + v for t in ROW]


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("on_disk", [False, True])
def test_rows_round_trip_and_absent_clients_have_none(tmp_path, on_disk):
    store = CS.ClientStore()
    t = store.table("x")
    if on_disk:
        store.open(tmp_path)
        assert not list(tmp_path.iterdir())  # created lazily, at the first row
    assert t.get(7) is None and not t.contains(7)
    t.put(7, row(1.5), ["a", "b", "c"])
    t.put(0, row(-2.0), ["a", "b", "c"])
    got = t.get(7)
    got[0].add_(1)  # a copy: the stored row is unchanged
    assert same(t.get(7), row(1.5)) and same(t.get(0), row(-2.0)) and t.clients() == [0, 7] and t.names == list("abc")
    with pytest.raises(ValueError, match="another layout"):
        t.put(3, [torch.zeros(3, 4)])
    if on_disk:  # a sparse file: two page-sized slots per client id, only the written ones take disk
        assert (tmp_path / "x.rows").stat().st_size == (2 * 7 + 1) * t.row_bytes


def test_a_checkpoint_keeps_its_rows_whatever_is_written_after_it(tmp_path):
    store = CS.ClientStore()
    t = store.table("x")
    store.open(tmp_path)
    t.put(1, row(1.0))
    t.put(2, row(2.0))
    state = store.state_dict()
    store.commit()
    t.put(1, row(10.0))  # after the checkpoint: the other slot, twice
    t.put(1, row(11.0))
    t.put(3, row(3.0))
    # killed in the middle of writing client 2's row: garbage in the slot it was writing
    os.pwrite(t._file(), b"\xff" * 100, t._offset(2, t._slot(2)))
    assert state["tables"]["x"]["clients"].tolist() == [1, 2]  # the checkpoint: which slot, never a row
    resumed = CS.ClientStore()
    resumed.open(tmp_path, state, clean=False)
    r = resumed.table("x")
    assert same(r.get(1), row(1.0)) and same(r.get(2), row(2.0)) and r.get(3) is None
    r.put(1, row(5.0))  # the resumed run writes, commits, writes again: the committed row stays readable
    assert same(r.get(1), row(5.0))
    mid = resumed.state_dict()
    resumed.commit()
    r.put(1, row(6.0))
    again = CS.ClientStore()
    again.open(tmp_path, mid, clean=False)
    assert same(again.table("x").get(1), row(5.0))
    fresh = CS.ClientStore()  # a fresh run in the folder: nothing of the old rows
    fresh.open(tmp_path)
    assert fresh.table("x").get(1) is None and not list(tmp_path.glob("*.rows"))


def test_rows_held_in_memory_move_to_disk_on_open(tmp_path):
    store = CS.ClientStore()
    store.table("x").put(4, row(4.0))
    store.open(tmp_path)
    assert same(store.table("x").get(4), row(4.0)) and (tmp_path / "x.rows").is_file()
