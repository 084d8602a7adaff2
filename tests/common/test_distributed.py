"""torchrun helpers: client assignment, and a real 2-process gloo all-reduce that must reproduce the
single-process aggregates, SCAFFOLD's c_i shared through one client store that each rank writes its clients' rows
of."""
from __future__ import annotations

import os

import pytest
import torch
from multirank import run_ranks, torchrun_env

from common import aggregate as A
from common import client_store as CS
from common import distributed as D
from common.scaffold import Scaffold

SHAPES = [(3, 4), (6,), (2, 2, 2)]
SIZES = [50, 10, 30, 20, 40, 5]  # samples per client (the FedAvg weights)


def client_state(k):
    g = torch.Generator().manual_seed(100 + k)
    params = [torch.randn(s, generator=g) for s in SHAPES]
    fisher = [torch.rand(s, generator=g) for s in SHAPES]
    return params, fisher


def build():
    like = client_state(0)[0]
    return A.WeightedMean(like), A.FisherMean(like), Scaffold(like, num_clients=len(SIZES), server_lr=0.5)


def train_share(clients, wm, fm, sc, x):
    for k in clients:
        params, fisher = client_state(k)
        wm.add(params, SIZES[k])
        fm.add(params, fisher, SIZES[k])
        sc.client_update(k, x, params, local_steps=4, local_lr=0.05)


def worker(rank, world, port, out, folder):
    torchrun_env(rank, world, port)
    try:
        assert D.init() == (rank, world) and D.is_main() == (rank == 0)
        plan = D.broadcast_object(D.assign_clients(list(range(len(SIZES))), SIZES, world) if rank == 0 else None)
        wm, fm, sc = build()
        store = CS.ClientStore()
        sc.use_table(store.table("scaffold_c0"))
        store.open(folder, clean=rank == 0)
        D.barrier()
        x = [torch.zeros(s) for s in SHAPES]
        train_share(plan[rank], wm, fm, sc, x)
        for agg in (wm, fm, sc):
            D.reduce_aggregator_(agg)
        store.sync()
        store.mark(D.all_gather_object(store.written()))  # the rows the other rank wrote, read from its slots
        sc.server_update(x)
        mixed = [torch.full((2,), float(rank + 1)), torch.full((3,), rank + 1, dtype=torch.float64)]
        D.all_reduce_sum_(mixed)
        D.barrier()
        torch.save({"wm": wm.result(), "fm": fm.result(), "x": x, "c": sc.c,
                    "c_i": {k: sc.control(k) for k in store.table("scaffold_c0").clients()},
                    "mixed": mixed, "plan": plan}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        D.cleanup()


def test_two_gloo_ranks_reproduce_the_single_process_aggregate(tmp_path):
    run_ranks(worker, str(tmp_path), str(tmp_path / "store"), timeout=120)
    wm, fm, sc = build()
    x = [torch.zeros(s) for s in SHAPES]
    train_share(range(len(SIZES)), wm, fm, sc, x)
    sc.server_update(x)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["plan"] == [[0, 1, 3], [2, 4, 5]]
        for key, ref in [("wm", wm.result()), ("fm", fm.result()), ("x", x), ("c", sc.c)]:
            for a, b in zip(got[key], ref):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert sorted(got["c_i"]) == list(range(len(SIZES)))  # every rank holds every client's control
        for k, ci in got["c_i"].items():
            for a, b in zip(ci, sc.control(k)):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert got["mixed"][0].tolist() == [3.0, 3.0] and got["mixed"][1].dtype == torch.float64
        assert got["mixed"][1].tolist() == [3.0] * 3


def test_assign_clients_lpt_balanced_and_deterministic():
    plan = D.assign_clients(list(range(6)), SIZES, 2)
    # largest first, each to the least-loaded rank (loads after each step):
    # 50:r0 (50, 0)  40:r1 (50, 40)  30:r1 (50, 70)  20:r0 (70, 70)  10:r0 tie (80, 70)  5:r1 (80, 75)
    assert plan == [[0, 1, 3], [2, 4, 5]]
    assert plan == D.assign_clients(list(range(6)), SIZES, 2)
    ids = [17, 3, 9, 11]
    plan = D.assign_clients(ids, [1, 1, 1, 1], 3)
    assert plan == [[17, 11], [3], [9]]  # ties: input order, lowest rank; each rank keeps input order
    assert sorted(c for share in plan for c in share) == sorted(ids)
    assert D.assign_clients([1, 2], [5, 5], 4) == [[1], [2], [], []]
    with pytest.raises(ValueError):
        D.assign_clients([1, 2], [1], 2)


def test_single_process_helpers_are_no_ops():
    assert D.init() == (0, 1) and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    t = [torch.ones(3)]
    D.all_reduce_sum_(t)
    assert t[0].tolist() == [1.0, 1.0, 1.0]
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    D.barrier()
