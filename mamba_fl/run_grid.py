"""The mamba_fl results grid on the embedded synthetic text: does federation close the gap to centralized
training, and does any aggregator beat FedAvg? The study (arms, cells, seeds, budgets, plateau rule, comparisons) is
declared in ``studies.py``; this script plans its runs and runs them, ``--jobs`` at a time through ``common.jobs``
(finished runs are skipped, interrupted ones resumed: the same command continues a grid); a complete grid prints the
command that draws its figures (``plots/plot_mamba.py``, into ``--figures``), and ``--records`` copies every finished
run's records (args.json, summary.json, metrics.jsonl; no checkpoint) to a study folder. Real text: ``real_grid.py``.

    python mamba_fl/run_grid.py           # synthetic grid + FedAvg variants (~45 min, 2 cores)
    python mamba_fl/run_grid.py --records mamba_fl/results/synthetic_grid/runs   # + the committed records

The tables are mamba_fl/results_synthetic.py's README blocks; ``python -m common.results --show
mamba_fl.synthetic-tables --records mamba_fl/results/synthetic_grid/runs=runs/mamba_grid`` writes them from your
out-dir.
What stays here is what the grid's flags decide: each arm's flags at the flags' rounds and batch (the compute
matching: every arm trains on the same sequences, each client holding out ``HOLDOUT`` of its blocks, central on what
the contiguous clients keep, in the same optimizer steps of ``--batch-size`` blocks, but central-b4 in FedAvg's
sequential updates; the same number of evaluations in every arm) and the order the blocks run in, so an interrupted
grid has whole blocks. mamba_fl/results/synthetic_grid/findings.md has the design and the compute accounting. Runs go
to ``--out-dir/<arm>_L<layers>_<shard>_s<seed>``, logs to ``--out-dir/logs``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import cli, flags, jobs
from mamba_fl import studies


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description="mamba_fl results grid (runs, table, figures)", add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.add_argument("--out-dir", type=flags.FOLDER, default="runs/mamba_grid",
                   help="folder of the run directories")
    p.add_argument("--figures", type=flags.FOLDER, default="mamba_fl/results/synthetic_grid",
                   help="folder for the figures (in the figure command a complete grid prints)")
    p.add_argument("--records", type=flags.FOLDER, default=None,
                   help="copy every finished run's records (args.json, summary.json, metrics.jsonl) here after the "
                        "grid: mamba_fl/results/synthetic_grid/runs is the committed folder the README's blocks read")
    p.add_argument("--jobs", type=flags.POSITIVE_INT, default=3, help="runs at a time (one thread each)")
    p.add_argument("--seeds", type=flags.SEED, nargs="+", default=list(studies.SEEDS), help="seeds of every arm")
    p.add_argument("--layers", type=int, nargs="+", default=list(studies.LAYERS), choices=(1, 2, 4),
                   help="model depths")
    p.add_argument("--shards", nargs="+", default=list(studies.SHARDS), choices=("contiguous", "iid", "topic"),
                   help="client splits of the synthetic data")
    p.add_argument("--clients", type=flags.Number(int, 2), default=studies.CLIENTS,
                   help="clients (all take part every round)")
    p.add_argument("--rounds", type=flags.Number(int, 8), default=studies.ROUNDS,
                   help="rounds of the 1-local-step arms")
    p.add_argument("--batch-size", type=flags.POSITIVE_INT, default=studies.BATCH_SIZE,
                   help="blocks per optimizer step, clients and central")
    p.add_argument("--lr", type=flags.POSITIVE, default=studies.LR, help="AdamW learning rate (clients and central)")
    p.add_argument("--sgd-lr", type=flags.POSITIVE, default=studies.SGD_LR,
                   help="learning rate of the plain-SGD FedAvg arm")
    p.add_argument("--eval-every", type=flags.POSITIVE_INT, default=studies.EVAL_EVERY,
                   help="rounds between evaluations")
    p.add_argument("--temperature", type=flags.POSITIVE, default=studies.TEMPERATURE, help="FedEntropy temperature T")
    p.add_argument("--fisher-samples", type=flags.POSITIVE_INT, default=studies.FISHER_SAMPLES,
                   help="blocks per client for FedFisher's Fisher")
    p.add_argument("--no-variants", action="store_true", help="skip the FedAvg client-optimizer/local-step rows")
    p.add_argument("--long-factor", type=flags.POSITIVE_INT, default=studies.LONG_FACTOR,
                   help="the longer-budget check: central, FedAvg and FedFisher with this many times the rounds "
                        "(1 layer, topic shards), to see whether the federated runs close the gap (1: skip)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p


def fed_flags(args, arm: str, rounds: int) -> list[str]:
    every = max(1, rounds * args.eval_every // args.rounds)  # the same number of evaluations in every arm
    own = {"fedentropy": ["--temperature", str(args.temperature), "--entropy-blocks", "16"],
           "fedfisher": ["--fisher-samples", str(args.fisher_samples)]}
    return ["--num-clients", str(args.clients), "--rounds", str(rounds), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--eval-every", str(every), "--holdout-fraction", str(studies.HOLDOUT),
            *studies.FEDERATED_ARMS[arm][1], *own.get(arm, [])]


def central_flags(args, arm: str) -> list[str]:
    """central: the federated arms' steps of ``--batch-size`` blocks, one after another; central-b4: their
    sequences as FedAvg's number of sequential updates (``--clients`` times the batch, ``--rounds`` steps)."""
    per = args.clients if arm == "central-b4" else 1  # batches an update
    every = max(1, args.eval_every * args.clients // per)  # the same number of evaluations as a federated run
    return ["--batch-size", str(args.batch_size * per), "--max-steps", str(args.rounds * args.clients // per),
            "--val-freq", str(every), "--lr", str(args.lr), "--holdout-fraction", str(studies.HOLDOUT),
            "--holdout-clients", str(args.clients)]


def plan(args, arms: list[str], layers: list[int], shards: list[str], suffix: str = "") -> list:
    """[(run name, script, flags)] of one block of the grid; ``suffix`` marks the arms' names (e.g. "-long")."""
    runs = []
    for seed in args.seeds:
        for L in layers:
            base = ["--layers", str(L), "--seed", str(seed), *studies.MODEL]
            for arm in (a for a in studies.CENTRAL if a in arms):
                runs.append((f"{arm}{suffix}_L{L}_synthetic_s{seed}", "central.py", base + central_flags(args, arm)))
            for shard in shards:
                for arm in (a for a in arms if a not in studies.CENTRAL):
                    if arm in studies.VARIANTS:
                        rounds = args.rounds // 8 if arm == "fedavg-lu8" else args.rounds
                        script, argv = "fed_avg.py", fed_flags(args, "fedavg", rounds) + studies.VARIANTS[arm] + (
                            ["--lr", str(args.sgd_lr)] if arm == "fedavg-sgd" else [])
                    else:
                        script, argv = studies.FEDERATED_ARMS[arm][0], fed_flags(args, arm, args.rounds)
                    runs.append((f"{arm}{suffix}_L{L}_{shard}_s{seed}", script, base + ["--shard", shard] + argv))
    return runs


def jobs_of(runs: list, out: Path) -> list[jobs.Job]:
    """The runner's jobs of ``plan`` blocks: each run writes ``out/<name>``."""
    return [jobs.Job(name, f"mamba_fl.{script[:-3]}", [*flags, "--out-dir", str(out), "--run-name", name, "--quiet"])
            for name, script, flags in runs]


def grid_plan(args) -> list:
    """[(run name, script, flags)] of the whole grid, in order of priority, so an interrupted grid has whole blocks:
    the shallowest model first, then the FedAvg variants, the longer budget, and the deeper models last."""
    arms, first = [*studies.CENTRAL, *studies.FEDERATED_ARMS], min(args.layers)
    runs = plan(args, arms, [first], args.shards)
    if not args.no_variants:
        runs += plan(args, list(studies.VARIANTS), [first], [args.shards[0]])
    if args.long_factor > 1 and studies.LONG_SHARD in args.shards:
        long = argparse.Namespace(**{**vars(args), "rounds": args.rounds * args.long_factor})
        long.eval_every = args.eval_every * args.long_factor
        runs += plan(long, list(studies.LONG_ARMS), [first], [studies.LONG_SHARD], suffix=studies.LONG_SUFFIX)
    for i, shard in enumerate(sorted(args.shards, key=lambda s: s != "topic")):  # the non-IID shards first
        block = arms if i == 0 else list(studies.FEDERATED_ARMS)  # one central run per depth: it has no shards
        runs += plan(args, block, [L for L in args.layers if L != first], [shard])
    return runs


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(len(set(args.seeds)) == len(args.seeds), f"--seeds must be distinct, got {args.seeds}")
    out = cli.check_out_dir(args.out_dir)
    cli.check_out_dir(args.figures, "--figures")
    grid = jobs_of(grid_plan(args), out)
    # a complete grid prints its figure command: plots/ runs as the user's own step, never as a subprocess of this
    figures = f"python plots/plot_mamba.py --runs {out} --out {args.figures}"
    outcome = jobs.run_study(grid, args.records, parallel=args.jobs, log_dir=out / "logs", dry_run=args.dry_run,
                             title="mamba_fl grid", next_step=figures)
    if args.dry_run:
        return {}
    copied = {} if outcome.copied is None else {"records": outcome.copied}
    return {"failed": outcome.names("failed", "other", "blocked"), "minutes": outcome.seconds / 60, **copied}


if __name__ == "__main__":
    cli.run(main)
