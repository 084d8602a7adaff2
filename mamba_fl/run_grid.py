"""The mamba_fl results grid: does federation close the gap to centralized training, and does any aggregator
beat FedAvg? One command runs every arm, then writes the table and the figures.

    python mamba_fl/run_grid.py                                   # synthetic grid + FedAvg variants (~1 h, 2 cores)
    python mamba_fl/run_grid.py --real-raw wikitext-2-raw/wiki.test.raw   # + the real-text comparison

Design (every number is a flag):
* data: the embedded topic-structured WikiText source (known optimum per word); client shards ``contiguous``
  (the source's split of the stream, nearly IID) and ``topic`` (each of the 4 clients owns one topic);
* model: Mamba2 d_model 64, d_state 16, head dim 16, 64-token blocks, 1 and 2 layers;
* arms: central; FedAvg; FedAvgM heavy-ball (Flower's form: m <- 0.9 m + d, server lr 1); FedMomentum EMA
  (the source's form: m <- 0.9 m + 0.1 d); FedEntropy at ``--temperature`` (low enough that the weights
  differ: the table reports the largest/smallest weight ratio); FedFisher (``common.aggregate.FisherMean``);
  and, on 1 layer / contiguous shards, FedAvg with the other client optimizers (fresh AdamW per round,
  plain SGD) and with 8 local steps per round;
* compute matched: every federated arm takes rounds x clients x local steps optimizer steps of
  ``--batch-size`` blocks in all (4 x 100 x 1 = 400 steps of 16 blocks = 6400 training sequences); the
  central run takes exactly that many steps of the same batch size (the 8-local-step arm runs rounds / 8);
* 3 seeds; final validation perplexity on all validation blocks, mean ± sample sd, and each arm's paired
  difference to FedAvg (same seed) with a 95% t interval (``common.stats``).

Runs go to ``--out-dir/<arm>_L<layers>_<shard>_s<seed>`` (finished runs are skipped, so the command
resumes), ``--jobs`` at a time with one thread each; then ``results.md`` and the figures (``--figures``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import cli

HERE = Path(__file__).resolve().parent
MODEL = ["--d-model", "64", "--d-state", "16", "--head-dim", "16", "--sequence-length", "64", "--sample-tokens", "0"]
FEDERATED_ARMS = {  # arm -> (script, extra flags)
    "fedavg": ("fed_avg.py", []),
    "fedavgm": ("fed_momentum.py", ["--momentum-form", "heavy-ball", "--server-momentum", "0.9", "--server-lr", "1"]),
    "fedmom-ema": ("fed_momentum.py", ["--momentum-form", "ema", "--server-momentum", "0.9", "--server-lr", "1"]),
    "fedentropy": ("fed_entropy.py", []),
    "fedfisher": ("fed_fisher.py", []),
}
VARIANTS = {  # FedAvg with other client optimizers / local work: 1 layer, contiguous shards
    "fedavg-reset": ["--client-opt-state", "reset"],
    "fedavg-sgd": ["--optimizer", "sgd"],
    "fedavg-lu8": ["--local-updates", "8"],
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description="mamba_fl results grid (runs, table, figures)", add_help=add_help)
    p.add_argument("--out-dir", default="runs/mamba_grid", help="folder of the run directories and results.md")
    p.add_argument("--figures", default="mamba_fl/figures", help="folder for the figures and a copy of results.md")
    p.add_argument("--jobs", type=int, default=3, help="runs at a time (one thread each)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every arm")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2], choices=(1, 2, 4), help="model depths")
    p.add_argument("--shards", nargs="+", default=["contiguous", "topic"], choices=("contiguous", "iid", "topic"),
                   help="client splits of the synthetic data")
    p.add_argument("--clients", type=int, default=4, help="clients (all take part every round)")
    p.add_argument("--rounds", type=int, default=100, help="rounds of the 1-local-step arms")
    p.add_argument("--batch-size", type=int, default=16, help="blocks per optimizer step, clients and central")
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (clients and central)")
    p.add_argument("--sgd-lr", type=float, default=1.0, help="learning rate of the plain-SGD FedAvg arm")
    p.add_argument("--eval-every", type=int, default=10, help="rounds between evaluations")
    p.add_argument("--temperature", type=float, default=0.1, help="FedEntropy temperature T")
    p.add_argument("--fisher-samples", type=int, default=4, help="blocks per client for FedFisher's Fisher")
    p.add_argument("--no-variants", action="store_true", help="skip the FedAvg client-optimizer/local-step rows")
    p.add_argument("--long-factor", type=int, default=3,
                   help="the longer-budget check: central, FedAvg and FedFisher with this many times the rounds "
                        "(1 layer, topic shards), to see whether the federated runs close the gap (1: skip)")
    p.add_argument("--real-raw", default=None,
                   help="a raw WikiText file (e.g. wiki.test.raw): split by article (split_wikitext.py) and run "
                        "central, FedAvg and the best other method on it, 1 layer, contiguous shards")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p


def fed_flags(args, arm: str, rounds: int) -> list[str]:
    script, extra = FEDERATED_ARMS[arm]
    every = max(1, rounds * args.eval_every // args.rounds)  # the same number of evaluations in every arm
    flags = ["--num-clients", str(args.clients), "--rounds", str(rounds), "--batch-size", str(args.batch_size),
             "--lr", str(args.lr), "--eval-every", str(every)] + extra
    if arm == "fedentropy":
        flags += ["--temperature", str(args.temperature), "--entropy-blocks", "16"]
    if arm == "fedfisher":
        flags += ["--fisher-samples", str(args.fisher_samples)]
    return flags


def central_flags(args, steps: int) -> list[str]:
    every = max(1, args.eval_every * args.clients)  # the same number of evaluations as a federated run
    return ["--batch-size", str(args.batch_size), "--max-steps", str(steps), "--val-freq", str(every),
            "--lr", str(args.lr)]


def plan(args, data_flags: list[str], tag: str, arms: list[str], layers: list[int], shards: list[str],
         suffix: str = "") -> list:
    """[(run name, script, flags)] of one block of the grid; ``suffix`` marks the arms' names (e.g. "-long")."""
    runs = []
    for seed in args.seeds:
        for L in layers:
            base = ["--layers", str(L), "--seed", str(seed), *MODEL, *data_flags]
            if "central" in arms:
                runs.append((f"central{suffix}_L{L}_{tag}_s{seed}", "central.py",
                             base + central_flags(args, args.rounds * args.clients)))
            for shard in shards:
                for arm in arms:
                    if arm == "central":
                        continue
                    name = f"{arm}{suffix}_L{L}_{shard}{'_' + tag if tag != 'synthetic' else ''}_s{seed}"
                    if arm in VARIANTS:
                        rounds = args.rounds // 8 if arm == "fedavg-lu8" else args.rounds
                        flags = fed_flags(args, "fedavg", rounds) + VARIANTS[arm]
                        if arm == "fedavg-sgd":
                            flags += ["--lr", str(args.sgd_lr)]
                        runs.append((name, "fed_avg.py", base + ["--shard", shard] + flags))
                    else:
                        runs.append((name, FEDERATED_ARMS[arm][0], base + ["--shard", shard]
                                     + fed_flags(args, arm, args.rounds)))
    return runs


def execute(runs: list, out: Path, jobs: int, dry: bool) -> list[str]:
    """Run what has no summary.json yet, ``jobs`` at a time; returns the names that failed."""
    todo = [r for r in runs if not (out / r[0] / "summary.json").is_file()]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    (out / "logs").mkdir(parents=True, exist_ok=True)

    def one(run) -> str | None:
        name, script, flags = run
        cmd = [sys.executable, str(HERE / script), *flags, "--out-dir", str(out), "--run-name", name, "--quiet"]
        if (out / name).exists():
            cmd.append("--resume")  # an interrupted run continues from its last checkpoint
        if dry:
            print(" ".join(cmd))
            return None
        t0 = time.time()
        with open(out / "logs" / f"{name}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"  {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - t0:.0f} s", flush=True)
        return None if rc == 0 else name

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return [n for n in pool.map(one, todo) if n]


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(args.jobs >= 1 and args.rounds >= 8 and args.clients >= 2, "--jobs >= 1, --rounds >= 8, --clients >= 2")
    out = Path(args.out_dir)
    t0 = time.time()
    arms, first = ["central", *FEDERATED_ARMS], min(args.layers)
    # in order of priority, so an interrupted grid has whole blocks: the shallowest model first, then the
    # FedAvg variants, the real text, and the deeper models last
    failed = execute(plan(args, [], "synthetic", arms, [first], args.shards), out, args.jobs, args.dry_run)
    if not args.no_variants:
        failed += execute(plan(args, [], "synthetic", list(VARIANTS), [first], [args.shards[0]]), out, args.jobs,
                          args.dry_run)

    from plots import plot_mamba

    best = None
    if args.real_raw:
        from mamba_fl import split_wikitext

        real_dir = out / "wikitext_split"
        if not (real_dir / "split.json").is_file():
            split_wikitext.main(["--raw", args.real_raw, "--out-dir", str(real_dir)])
        best = None if args.dry_run else plot_mamba.best_other_arm(out, min(args.layers), args.shards)
        real_arms = ["central", "fedavg"] + ([best] if best else [])
        failed += execute(plan(args, ["--data-dir", str(real_dir)], "real", real_arms, [min(args.layers)],
                               ["contiguous"]), out, args.jobs, args.dry_run)
    if args.long_factor > 1 and "topic" in args.shards:
        long = argparse.Namespace(**{**vars(args), "rounds": args.rounds * args.long_factor})
        long.eval_every = args.eval_every * args.long_factor
        failed += execute(plan(long, [], "synthetic", ["central", "fedavg", "fedfisher"], [first], ["topic"],
                               suffix="-long"), out, args.jobs, args.dry_run)
    deeper = [L for L in args.layers if L != first]
    if deeper:
        for shard in sorted(args.shards, key=lambda s: s != "topic"):  # the non-IID shards first
            failed += execute(plan(args, [], "synthetic", arms, deeper, [shard]), out, args.jobs, args.dry_run)
    if args.dry_run:
        return {}
    minutes = (time.time() - t0) / 60
    written = plot_mamba.grid_report(out, Path(args.figures), wall_minutes=minutes, best_real=best)
    print(f"grid done in {minutes:.1f} min; {len(failed)} failed run(s){': ' + ', '.join(failed) if failed else ''}")
    print(f"results: {out / 'results.md'}; figures: {', '.join(str(p) for p in written)}")
    return {"failed": failed, "minutes": minutes}


if __name__ == "__main__":
    cli.run(main)
