"""The mamba_fl results grid: does federation close the gap to centralized training, and does any aggregator
beat FedAvg? One command runs every arm, ``--jobs`` at a time through ``common.jobs`` (finished runs are skipped,
interrupted ones resumed: the same command continues a grid); a complete grid then gets ``results.md`` and the
figures (``--figures``) from ``plots/plot_mamba.py``.

    python mamba_fl/run_grid.py                                   # synthetic grid + FedAvg variants (~1 h, 2 cores)
    python mamba_fl/run_grid.py --real-raw wikitext-2-raw/wiki.test.raw   # + the real-text comparison

Design (every number is a flag; mamba_fl/figures/findings.md has the setup and the compute accounting): the
embedded synthetic source with ``contiguous`` and ``topic`` client shards, Mamba2 d_model 64 with 1 and 2 layers;
central, the ``FEDERATED_ARMS`` and the FedAvg ``VARIANTS`` (1 layer, first shard), every arm taking the same
optimizer steps of ``--batch-size`` blocks; 3 seeds, paired differences to FedAvg. Runs go to
``--out-dir/<arm>_L<layers>_<shard>_s<seed>``, logs to ``--out-dir/logs``.
"""
from __future__ import annotations

import argparse
import functools
import math
import subprocess
import sys
from pathlib import Path

from common import cli, flags, jobs

ROOT = Path(__file__).resolve().parents[1]
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
    p.add_argument("--seeds", type=flags.SEED, nargs="+", default=[0, 1, 2], help="seeds of every arm")
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
    every = max(1, rounds * args.eval_every // args.rounds)  # the same number of evaluations in every arm
    own = {"fedentropy": ["--temperature", str(args.temperature), "--entropy-blocks", "16"],
           "fedfisher": ["--fisher-samples", str(args.fisher_samples)]}
    return ["--num-clients", str(args.clients), "--rounds", str(rounds), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--eval-every", str(every), *FEDERATED_ARMS[arm][1], *own.get(arm, [])]


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
                for arm in (a for a in arms if a != "central"):
                    name = f"{arm}{suffix}_L{L}_{shard}{'_' + tag if tag != 'synthetic' else ''}_s{seed}"
                    if arm in VARIANTS:
                        rounds = args.rounds // 8 if arm == "fedavg-lu8" else args.rounds
                        script, flags = "fed_avg.py", fed_flags(args, "fedavg", rounds) + VARIANTS[arm] + (
                            ["--lr", str(args.sgd_lr)] if arm == "fedavg-sgd" else [])
                    else:
                        script, flags = FEDERATED_ARMS[arm][0], fed_flags(args, arm, args.rounds)
                    runs.append((name, script, base + ["--shard", shard] + flags))
    return runs


def jobs_of(runs: list, out: Path) -> list[jobs.Job]:
    """The runner's jobs of ``plan`` blocks: each run writes ``out/<name>``."""
    return [jobs.Job(name, f"mamba_fl.{script[:-3]}", [*flags, "--out-dir", str(out), "--run-name", name, "--quiet"])
            for name, script, flags in runs]


def best_other_arm(plan_jobs: list[jobs.Job], layers: int) -> str | None:
    """The federated arm other than FedAvg with the lowest mean log final perplexity over the finished synthetic
    runs of ``layers`` layers (the one the real-text comparison runs)."""
    scores: dict[str, list[float]] = {}
    for job in plan_jobs:
        arm, depth = job.name.split("_")[:2]
        ppl = (jobs.summary_of(job) or {}).get("final_val_ppl")
        if arm in list(FEDERATED_ARMS)[1:] and depth == f"L{layers}" and isinstance(ppl, (int, float)) \
                and math.isfinite(ppl):
            scores.setdefault(arm, []).append(math.log(ppl))
    means = {arm: sum(v) / len(v) for arm, v in scores.items()}
    return min(means, key=means.get) if means else None


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(args.jobs >= 1 and args.rounds >= 8 and args.clients >= 2, "--jobs >= 1, --rounds >= 8, --clients >= 2")
    cli.check(args.batch_size >= 1 and args.eval_every >= 1 and args.fisher_samples >= 1 and args.long_factor >= 1,
              "--batch-size, --eval-every, --fisher-samples and --long-factor must be >= 1")
    cli.check(args.temperature > 0 and args.lr > 0 and args.sgd_lr > 0, "--temperature, --lr and --sgd-lr must be > 0")
    cli.check(len(set(args.seeds)) == len(args.seeds), f"--seeds must be distinct, got {args.seeds}")
    cli.check(args.real_raw is None or Path(args.real_raw).is_file(), f"--real-raw {args.real_raw}: no such file")
    out = cli.check_out_dir(args.out_dir)
    cli.check_out_dir(args.figures, "--figures")
    arms, first = ["central", *FEDERATED_ARMS], min(args.layers)
    # in order of priority, so an interrupted grid has whole blocks: the shallowest model first, then the
    # FedAvg variants, the real text, the longer budget, and the deeper models last
    head = jobs_of(plan(args, [], "synthetic", arms, [first], args.shards), out)
    rest = []
    if not args.no_variants:
        rest += jobs_of(plan(args, [], "synthetic", list(VARIANTS), [first], [args.shards[0]]), out)
    if args.long_factor > 1 and "topic" in args.shards:
        long = argparse.Namespace(**{**vars(args), "rounds": args.rounds * args.long_factor})
        long.eval_every = args.eval_every * args.long_factor
        rest += jobs_of(plan(long, [], "synthetic", ["central", "fedavg", "fedfisher"], [first], ["topic"],
                             suffix="-long"), out)
    for i, shard in enumerate(sorted(args.shards, key=lambda s: s != "topic")):  # the non-IID shards first
        block = arms if i == 0 else arms[1:]  # one central run per depth: it has no shards
        rest += jobs_of(plan(args, [], "synthetic", block, [L for L in args.layers if L != first], [shard]), out)
    draw = f"python plots/plot_mamba.py --runs {out} --out {args.figures}"
    run = functools.partial(jobs.run_plan, parallel=args.jobs, log_dir=out / "logs", dry_run=args.dry_run,
                            title="mamba_fl grid")
    outcomes = []
    if args.real_raw:  # the real-text block runs the best other arm of the first block: that block comes first
        outcomes.append(run(head, next_step=""))
        from mamba_fl import split_wikitext

        real_dir = out / "wikitext_split"
        if not (real_dir / "split.json").is_file() and not args.dry_run:
            split_wikitext.main(["--raw", args.real_raw, "--out-dir", str(real_dir)])
        best = best_other_arm(head, first)
        real_arms = ["central", "fedavg"] + ([best] if best else [])
        real = jobs_of(plan(args, ["--data-dir", str(real_dir)], "real", real_arms, [first], ["contiguous"]), out)
        variants = [j for j in rest if j.name.split("_")[0] in VARIANTS]
        outcomes.append(run(variants + real + [j for j in rest if j not in variants], next_step=draw))
    else:
        outcomes.append(run(head + rest, next_step=draw))
    if args.dry_run:
        return {}
    failed = [n for o in outcomes for n in o.names("failed", "other", "blocked")]
    if all(o.complete for o in outcomes):  # the table and figures of a complete grid
        print(f"$ {draw}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "plots" / "plot_mamba.py"), "--runs", str(out),
                        "--out", args.figures], check=False)
    return {"failed": failed, "minutes": sum(o.seconds for o in outcomes) / 60}


if __name__ == "__main__":
    cli.run(main)
