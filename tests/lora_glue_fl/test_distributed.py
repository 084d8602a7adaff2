"""fedavg_rounds.py on two gloo ranks (as under torchrun): each rank trains its share of the clients, one
all-gather per round, and the run -- interrupted in round 2 and resumed -- matches the single-process run."""
from __future__ import annotations

import json
import math
import os

import torch
from multirank import run_ranks, torchrun_env

from common import distributed as D
from lora_glue_fl import adapters, fedavg_rounds, modeling

ARGV = ["--quick", "--quiet", "--task_name", "sst2", "--learning_rate", "3e-3", "--eval_each_round",
        "--local_epochs", "1", "--max_train_samples", "240", "--max_eval_samples", "64",
        "--save_client_adapters", "all"]


def worker(rank, world, port, out):
    torchrun_env(rank, world, port)
    D.init()
    try:
        argv = ARGV + ["--out-dir", out, "--run-name", "dist"]
        real_train, trained = modeling.train_local, []

        def crash_in_round_two(*a, **kw):
            if kw["round_idx"] == 2:  # every rank has a client in round 2, so no rank waits in a collective
                raise KeyboardInterrupt
            trained.append((kw["round_idx"], kw["client"]))
            return real_train(*a, **kw)

        modeling.train_local = crash_in_round_two
        try:
            fedavg_rounds.main(argv)
            raise AssertionError("the interrupted run finished")
        except KeyboardInterrupt:
            pass
        modeling.train_local = real_train
        D.barrier()  # torchrun restarts the whole job: rank 0 has written round 1's checkpoint by now
        summary = fedavg_rounds.main(argv + ["--resume"])
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"summary": summary, "trained": trained}, f)
    finally:
        D.cleanup()


def close(a, b, rel=1e-5) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)
    return a == b


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: training in another process differs at float rounding level (1e-7 after round 1)
    and local AdamW steps grow that, so tensors are compared as a whole, the metrics to 1e-5 each."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_two_ranks_with_resume_match_the_single_process_run(tmp_path):
    ref = fedavg_rounds.main(ARGV + ["--out-dir", str(tmp_path), "--run-name", "ref"])
    out = tmp_path / "dist_out"
    out.mkdir()
    run_ranks(worker, str(out), timeout=150)
    got = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    # round 1 was split over the ranks by shard size (3 equal shards: clients 0, 2 on rank 0, 1 on rank 1)
    assert D.assign_clients([0, 1, 2], ref["client_sizes"], 2) == [[0, 2], [1]]
    assert [tuple(t) for t in got[0]["trained"]] == [(1, 0), (1, 2)]
    assert [tuple(t) for t in got[1]["trained"]] == [(1, 1)]

    for g in got:  # every rank returns rank 0's summary
        assert g["summary"]["final"].keys() == ref["final"].keys()
        for k, v in ref["final"].items():
            assert close(g["summary"]["final"][k], v), (k, g["summary"]["final"][k], v)
        assert g["summary"]["bytes_up"] == ref["bytes_up"] and g["summary"]["fused_rank"] == ref["fused_rank"]

    run, ref_run = out / "dist", tmp_path / "ref"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (ref_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(ref_rows) == 8  # 3 client rows + 1 fused row per round, in client order
    for row, want in zip(rows, ref_rows):
        assert row.keys() == want.keys()
        assert all(close(row[k], want[k]) for k in want), (row, want)
    for k in (1, 2):  # rank 0 wrote every client's adapter, including those trained on rank 1
        for i in (1, 2, 3):
            a = adapters.load(run / f"round_{k}/client_{i}/adapter").state_dict()
            b = adapters.load(ref_run / f"round_{k}/client_{i}/adapter").state_dict()
            for key in b:
                assert rel_diff(a[key], b[key]) < 1e-4, (k, i, key)
    fused = adapters.load(run / "round_2/fused_r4/adapter").state_dict()
    for key, want in adapters.load(ref_run / "round_2/fused_r4/adapter").state_dict().items():
        assert rel_diff(fused[key], want) < 1e-4, key
    assert sorted(p.name for p in out.iterdir()) == ["dist", "rank0.json", "rank1.json"]
