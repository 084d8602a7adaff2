"""The federated scripts on 2 gloo ranks (forked processes with torchrun's environment) must reproduce the
single-process run: same metrics rows and final test metrics to 1e-5 relative, resume included, and only
rank 0 writes."""
from __future__ import annotations

import json
import os

import pytest
import torch
from multirank import free_port, run_ranks, torchrun_env

from common import distributed as D
from vit_sparse_fl import federated
from vit_sparse_fl import train_federated as fed
from vit_sparse_fl import train_federated_sparse as fsp

# 8 clients, 4 per round (2 per rank), 3 rounds
SMALL = ["--quick", "--quiet", "--num-clients", "8", "--participation-rate", "0.5", "--local-steps", "1",
         "--rounds", "3", "--eval-every", "1", "--max-train", "160", "--max-test", "60", "--batch-size", "8",
         "--eval-batch-size", "60"]
SPARSE = ["--mask-strategy", "least_sensitive", "--sparsity-ratio", "0.5", "--calibration-rounds", "1",
          "--head-warmup", "1", "--rounds", "2"]
# each client's momentum kept across rounds; at seed 1, four times a client trains on the other rank than before
PERSIST = ["--client-opt-state", "persist", "--rounds", "4", "--seed", "1"]


def crash_in_round_3(real):
    def train_client(self, k, r, *a, **kw):
        if r == 2:
            raise KeyboardInterrupt
        return real(self, k, r, *a, **kw)
    return train_client


def worker(rank, world, port, out, ports):
    """Five scripts one after another, each joining a group of its own and leaving it. Each group gets its own
    port: on the previous one, a rank that left first could reach rank 0's old store before rank 0 has left it,
    and join a stale group (both ranks then wait at different groups' barriers)."""
    torchrun_env(rank, world, port)
    group = iter(ports)

    def script(main, argv):
        os.environ["MASTER_PORT"] = str(next(group))
        return main(argv)

    try:
        res = {"dense": script(fed.main, [*SMALL, "--out-dir", out, "--run-name", "dense"]),
               "sparse": script(fsp.main, [*SMALL, *SPARSE, "--out-dir", out, "--run-name", "sparse"])}
        res["left_group"] = not D.is_distributed()           # each script leaves the group it joined
        res["persist"] = script(fed.main, [*SMALL, *PERSIST, "--out-dir", out, "--run-name", "persist"])
        real = federated.VitTask.train_client
        federated.VitTask.train_client = crash_in_round_3(real)   # both ranks stop before round 3; rank 0 saved round 2
        try:
            script(fed.main, [*SMALL, "--out-dir", out, "--run-name", "cut"])
        except KeyboardInterrupt:
            pass
        finally:
            federated.VitTask.train_client = real
        res["resumed"] = script(fed.main, [*SMALL, "--out-dir", out, "--run-name", "cut", "--resume"])
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        D.cleanup()


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def assert_same_run(got: dict, ref: dict):
    for key in ("test_accuracy", "test_loss", "final_val_accuracy", "best_val_accuracy"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    a, b = rows(got["run_dir"]), rows(ref["run_dir"])
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for x, y in zip(a, b):
        for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-5), (x["round"], key)


def test_two_gloo_ranks_match_the_single_process_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    single, multi = tmp_path / "single", tmp_path / "multi"
    multi.mkdir()
    ref = {"dense": fed.main([*SMALL, "--out-dir", str(single), "--run-name", "dense"]),
           "sparse": fsp.main([*SMALL, *SPARSE, "--out-dir", str(single), "--run-name", "sparse"]),
           "persist": fed.main([*SMALL, *PERSIST, "--out-dir", str(single), "--run-name", "persist"])}
    run_ranks(worker, str(multi), [free_port() for _ in range(5)], timeout=180)
    r0, r1 = (torch.load(multi / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0 == r1                                          # every rank returns rank 0's summary
    assert r0["left_group"]
    assert_same_run(r0["dense"], ref["dense"])
    assert_same_run(r0["sparse"], ref["sparse"])
    assert_same_run(r0["persist"], ref["persist"])
    assert_same_run(r0["resumed"], ref["dense"])
    assert r0["sparse"]["mask_density"] == pytest.approx(ref["sparse"]["mask_density"], abs=1e-9)
    m_single = json.load(open(single / "sparse" / "mask_density.json"))
    m_multi = json.load(open(multi / "sparse" / "mask_density.json"))
    assert m_multi["per_tensor"] == pytest.approx(m_single["per_tensor"], abs=1e-9)  # same Fisher mask
    assert r0["dense"]["client_seconds"] > 0                 # summed over the ranks' clients
    # only rank 0 wrote: the run folders hold exactly the single-process files, and nothing else appeared
    assert sorted(p.name for p in multi.iterdir()) == ["cut", "dense", "persist", "rank0.pt", "rank1.pt", "sparse"]
    assert sorted(p.name for p in (multi / "dense").iterdir()) == sorted(p.name for p in (single / "dense").iterdir())
