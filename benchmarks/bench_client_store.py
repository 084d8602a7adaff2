"""Memory and checkpoints flat in the number of clients N (common.client_store): FedAvg and SCAFFOLD with
``--client-opt-state persist`` through the round engine at N = 100 and at 10,000 (FedAvg) / 1,000 (SCAFFOLD),
3 rounds of 10 clients, a checkpoint every round; each run in a fresh process (its peak RSS, VmHWM).

The task is synthetic (``Population``): a 2-layer MLP (64 -> 512 -> 10, 38k parameters, AdamW, so a client's
persisted state is 2 x 38k floats plus step counts), client k's 20 examples drawn from a generator keyed by
(seed, k) when it trains, so data cost nothing per client either. SCAFFOLD runs in its shifted form
(``adaptive_local``: the correction after each AdamW step, as llm_noniid runs it), so both rows persist AdamW
state. Reported per run: peak RSS, the checkpoint's size, the mean seconds of a save, and the client store's
bytes on disk.

    python benchmarks/bench_client_store.py            # the measurement (about a minute on 2 cores)
    python benchmarks/bench_client_store.py --quick    # 100 vs 1,000 FedAvg, 100 vs 300 SCAFFOLD, in this
                                                       # process (seconds; its peak RSS is the process's so far)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from benchlib import markdown_table, peak_rss_bytes, run_isolated

from common import engine, runlog
from common import params as P
from common import seed as seeding

DIM, HIDDEN, CLASSES, EXAMPLES, BATCH = 64, 512, 10, 20, 10


class Population(engine.Task):
    """N synthetic clients (data made when a client trains), one MLP trained by each in turn."""

    name, metric = "population", "train_loss"

    def __init__(self, num_clients: int, rounds: int, per_round: int, algorithm: str):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.Tanh(),
                                         torch.nn.Linear(HIDDEN, CLASSES))
        self.params = list(self.model.parameters())
        self.names = [n for n, _ in self.model.named_parameters()]
        self.sizes = [float(EXAMPLES)] * num_clients
        self.rounds, self.eval_every, self.per_round, self.seed = rounds, 1, per_round, 0
        self.device = torch.device("cpu")
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-3)
        self.adaptive_local = algorithm == "scaffold"

    def lr(self, r: int) -> float:
        return 1e-3

    def train_client(self, k, r, opt, algo):
        g = torch.Generator().manual_seed(seeding.stream_seed(self.seed, "population", k))  # the same every round
        x = torch.randn(EXAMPLES, DIM, generator=g)
        y = torch.randint(0, CLASSES, (EXAMPLES,), generator=g)
        total = torch.zeros(())
        for i in range(0, EXAMPLES, BATCH):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.model(x[i:i + BATCH]), y[i:i + BATCH])
            loss.backward()
            algo.adjust_grads(self.params)
            opt.step()
            algo.after_step(self.params, self.lr(r))
            total += loss.detach()
        return {"loss": total / (EXAMPLES // BATCH), "steps": EXAMPLES // BATCH}

    def evaluate(self, rnd):
        return {"round": rnd["round"] + 1, "train_loss": sum(rnd["losses"].values()) / len(rnd["losses"])}


def one_run(num_clients: int, algorithm: str, rounds: int, per_round: int, out_dir: str) -> dict:
    """A run in this process; its peak RSS, checkpoint size, save seconds, the store's bytes on disk."""
    torch.set_num_threads(1)
    task = Population(num_clients, rounds, per_round, algorithm)
    args = engine.namespace_defaults(client_opt_state="persist", algorithm=algorithm, quiet=True)
    name = f"{algorithm}_{num_clients}"
    rd = runlog.RunDir(out_dir, name, {"num_clients": num_clients, "algorithm": algorithm, "rounds": rounds},
                       kind="benchmarks/bench_client_store")
    saves = []
    real = rd.save_checkpoint

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = real(*a, **kw)
        saves.append(time.perf_counter() - t0)
        return out

    rd.save_checkpoint = timed
    fed = engine.Federation(task, args)
    start = fed.start(rd, task.names)
    t0 = time.perf_counter()
    engine.run(task, fed, rd, task.names, start)
    seconds = time.perf_counter() - t0
    store = Path(rd.path) / engine.STORE_DIR
    return {"algorithm": algorithm, "clients": num_clients, "rounds": rounds, "per_round": per_round,
            "peak_rss_mb": peak_rss_bytes() / 2**20, "seconds": seconds,
            "checkpoint_kb": (Path(rd.path) / runlog.CHECKPOINT_FILE).stat().st_size / 1024,
            "save_ms": 1e3 * sum(saves) / len(saves),
            "store_disk_kb": sum(f.stat().st_blocks * 512 for f in store.iterdir()) / 1024,
            "rows": sum(len(t) for t in fed.store.tables.values()),
            "row_kb": P.numel(task.params) * 2 * 4 / 1024}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100 vs 1,000 FedAvg clients, 100 vs 300 SCAFFOLD")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--json", default=None, help="write the results here too")
    p.add_argument("--one", nargs=3, metavar=("N", "ALGORITHM", "OUT_DIR"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:  # a child process: one run, its JSON on the last line
        print(json.dumps(one_run(int(a.one[0]), a.one[1], a.rounds, a.per_round, a.one[2])))
        return {}
    plan = [("fedavg", 100), ("fedavg", 1000 if a.quick else 10_000), ("scaffold", 100),
            ("scaffold", 300 if a.quick else 1000)]
    if not a.quick:
        plan.insert(1, ("fedavg", 1000))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm, n in plan:
            if a.quick:  # no fresh process: the code path, not the memory
                rows.append(one_run(n, algorithm, a.rounds, a.per_round, tmp))
            else:
                rows.append(run_isolated([__file__, "--one", str(n), algorithm, tmp, "--rounds", str(a.rounds),
                                          "--per-round", str(a.per_round)]))
    for r in rows:
        base = next(b for b in rows if b["algorithm"] == r["algorithm"] and b["clients"] == 100)
        r["rss_vs_100"] = r["peak_rss_mb"] / base["peak_rss_mb"]
    print(markdown_table(["algorithm", "clients", "peak RSS MB", "vs 100", "checkpoint KB", "save ms", "store KB",
                          "rows", "s"],
                         [[r["algorithm"], r["clients"], f"{r['peak_rss_mb']:.1f}", f"{r['rss_vs_100']:.3f}",
                           f"{r['checkpoint_kb']:.1f}", f"{r['save_ms']:.1f}", f"{r['store_disk_kb']:.0f}",
                           r["rows"], f"{r['seconds']:.2f}"] for r in rows]))
    out = {"results": rows, "rounds": a.rounds, "per_round": a.per_round, "threads": 1, "cpu": runlog.processor()}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
