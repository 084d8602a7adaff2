"""McMahan et al. 2017's Shakespeare table at CPU scale: how many fewer rounds FedAvg (E local epochs in batches of
B) needs than FedSGD (one full-batch gradient step per client a round) to reach a target test accuracy, on the
roles as clients (the paper's non-IID split), 3 seeds an arm.

    python llm_noniid/mcmahan_study.py --data-dir data/shakespeare     # the grid (one job at a time, one core)
    python llm_noniid/mcmahan_study.py --report                          # the table from the committed records

The grid runs through ``common.jobs`` (finished runs are skipped, interrupted ones resumed: the same command
continues it) into ``--out-dir``, then copies each finished run's args.json, summary.json and metrics.jsonl (no
checkpoint) to ``--records`` (``RECORDS``, committed), which ``--report`` and the README's ``llm_noniid.mcmahan``
block read (``llm_noniid/results.py``, where the paper's rows are written down with their source).

Every arm is ``shakespeare.py`` with the same model, clients, cohort and evaluation; an arm is (E, B, rate, rounds):
FedSGD is ``--local-epochs 1 --batch-size 0`` (B = inf: one step on the client's whole set; the server's weighted
average of the steps is one SGD step on the cohort's gradient), FedAvg the same clients with E passes in batches
of B. The scale-down from the paper, each forced by one CPU core (llm_noniid/README.md says what each changes):
a 2-layer LSTM of ``HIDDEN`` units (the paper's has 256), ``COHORT`` clients a round (the paper: C = 0.1, ~115),
each role capped at ``CAP`` training samples (``--max-client-samples``; the paper's roles hold ~3,600 windows),
test accuracy on a seeded subset of ``EVAL_SAMPLES`` test windows, and a target (``results.MCMAHAN_TARGET``)
that FedSGD reaches within its rounds here (the paper's 54 % needs thousands of FedSGD rounds of the full
model). The rates were chosen on the validation split (``--eval-split validation``, seed 0; ``VALIDATION`` holds
those runs), never on the test numbers reported.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common import cli, flags, jobs
from common import results as RS

RECORDS = "llm_noniid/results/mcmahan"
VALIDATION = "llm_noniid/results/mcmahan_validation"  # the runs that chose the rates (seed 0, validation split)
SEEDS = (0, 1, 2)
HIDDEN = 32
COHORT = 10
CAP = 50
EVAL_SAMPLES = 4000


@dataclass(frozen=True)
class Arm:
    """One row of the table: E local epochs in batches of B (0: the client's whole set, B = inf) at local rate
    ``lr`` for ``rounds`` rounds, evaluated every ``eval_every`` (rounds to target are counted at evaluations)."""

    epochs: int
    batch: int
    lr: float
    rounds: int
    eval_every: int


# chosen on the validation split (README, "McMahan et al. 2017's table"): each arm's rate; its rounds are LONGER times
# those of the first grid (300, 120, 240, 80: each arm past the target), so that the plateau rule can pass or fail
# on a curve that had time to bend (the rates are constant: a longer run repeats the shorter one's rounds)
LONGER = 4
ARMS = {
    "fedsgd": Arm(epochs=1, batch=0, lr=10.0, rounds=300 * LONGER, eval_every=10),
    "fedavg_e5_binf": Arm(epochs=5, batch=0, lr=10.0, rounds=120 * LONGER, eval_every=4),
    "fedavg_e1_b10": Arm(epochs=1, batch=10, lr=8.0, rounds=240 * LONGER, eval_every=5),
    "fedavg_e5_b10": Arm(epochs=5, batch=10, lr=4.0, rounds=80 * LONGER, eval_every=2),
}


def arm_flags(arm: Arm) -> list[str]:
    return ["--local-epochs", str(arm.epochs), "--batch-size", str(arm.batch), "--learning-rate", f"{arm.lr:g}",
            "--rounds", str(arm.rounds), "--eval-every", str(arm.eval_every)]


def setting_flags(data_dir: str) -> list[str]:
    """What every arm shares: the data, the model, the clients, the cohort, the evaluation."""
    return ["--data-dir", data_dir, "--hidden", str(HIDDEN), "--max-client-samples", str(CAP),
            "--clients-per-round", str(COHORT), "--max-eval-samples", str(EVAL_SAMPLES)]


def plan(args) -> list[jobs.Job]:
    """Every run: arm x seed, seed-major (a grid cut short still has whole seeds)."""
    return [jobs.Job(f"{name}_s{seed}", "llm_noniid.shakespeare",
                     [*setting_flags(args.data_dir), *arm_flags(arm), "--seed", str(seed), "--run-name",
                      f"{name}_s{seed}", "--quiet", "--out-dir", str(args.out_dir)])
            for seed in args.seeds for name, arm in ARMS.items() if name in args.arms]



def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--data-dir", default="data/shakespeare", help="the full build (python -m common.shakespeare "
                   "--out DIR)")
    p.add_argument("--out-dir", type=flags.FOLDER, default="runs/mcmahan", help="folder of the run directories")
    p.add_argument("--records", type=flags.FOLDER, default=RECORDS, help="where finished runs' records are copied "
                   "(args.json, summary.json, metrics.jsonl) and --report reads them")
    p.add_argument("--seeds", type=flags.SEED, nargs="+", default=list(SEEDS), help="seeds of every arm")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="the arms to run")
    p.add_argument("--report", action="store_true", help="print the table from --records and exit (no runs)")
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.report:
        # the README block's own code (llm_noniid/results.py, found by name as common.results finds it: that module
        # reads this one's arms), reading --records in place of the committed folder
        RS.REDIRECTS[RECORDS] = Path(args.records).resolve()
        print(RS.generators(["llm_noniid"])["llm_noniid.mcmahan"]())
        return 0
    outcome = jobs.run_study(plan(args), args.records, log_dir=Path(args.out_dir) / "logs",
                             dry_run=args.dry_run, title="McMahan et al. 2017 study",
                             next_step="python llm_noniid/mcmahan_study.py --report")
    return outcome.exit_code(args.dry_run)


if __name__ == "__main__":
    cli.run(main)
