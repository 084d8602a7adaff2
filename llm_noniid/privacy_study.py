"""The privacy-utility study of user-level DP-FedAvg (``common.privacy``) on LEAF's Shakespeare: what accuracy a
federation keeps at epsilon 1, 3 and 8 (delta = 1 / N^1.1) against the same run without noise, with the 1,166 real
roles as clients, with a synthetic population of 10,000 (``shakespeare.py --population``), and with the 12 roles of
the committed sample (the few-client case: epsilon 1 and 8); non-private FedAvgM on the real roles at the server
rate validated without noise (``NONPRIVATE_SERVER_LR``), since the noise needed a smaller one; and longer budgets
(``LONG_POPULATIONS``: the real roles at 120, 240 and 480 rounds, the synthetic population at 480, every epsilon and
seed; the non-private run at its own server rate also at 960, ``OWN_ROUNDS``), to say where each arm's plateau is
(``PLATEAU``).

    python llm_noniid/privacy_study.py --data-dir data/shakespeare --jobs 2   # the grid (96 runs)
    python llm_noniid/privacy_study.py --select 'roles*_R240_s*'              # only some runs (shell patterns)
    python llm_noniid/privacy_study.py --report                               # the README's blocks from the records

The grid runs ``--jobs`` at a time through ``common.jobs`` (finished runs are skipped, interrupted ones resumed: the
same command continues it) into ``--out-dir``, then copies each finished run's args.json, summary.json and
metrics.jsonl (no checkpoint) to ``--records`` (``RECORDS``, committed), which ``--report`` and the README's
``llm_noniid.privacy`` blocks read (``llm_noniid/results.py``; the findings state the longer budgets' wall time).

Cost, measured (OMP_NUM_THREADS=1, on a 2-core machine shared with other work): a round of the real roles costs
about 1.45 s of CPU time (the 12 runs at 120 rounds, one at a time: 2,087 s of CPU time, utime + stime sampled
every 2 s, against 4,043 s of wall time on the shared core); two runs at a time on the 2 cores, a 480-round run took
6-9 minutes of wall time. The 36 runs at ``ROUNDS`` = 40 took 4,376 s of wall time in all (summary.json), the
12-role ones about a minute each.

Every arm is the same mechanism: Poisson sampling of rate q = cohort / N (the accountant's assumption), each update
clipped to L2 <= ``CLIP``, Gaussian noise z C on the sum, the sum over the expected cohort, FedAvgM on the result;
``--dp-epsilon`` solves z for the run's rounds. epsilon = inf is that run with z = 0: non-private FedAvg at the same
rounds, sampling, clip and server step, so a difference is the noise's cost alone. At a longer budget a private arm
is a new run (z solved for the longer run is larger), while a noiseless one repeats the ``ROUNDS``-round run exactly
up to there (the README's findings check it on the records), so ``--resume --extend`` of a noiseless run would give
the same run. Every rate is constant over the run (no decay), so a plateau rule over its evaluations can fail.
The settings (``SETTINGS``) were chosen on the validation split (``shakespeare.py --eval-split validation``), never
on the test numbers reported; llm_noniid/README.md says how. The model is a stand-in for the paper's: a 2-layer LSTM
of ``HIDDEN`` units (LEAF's has 256) with a few local steps a round, sized to one CPU core.
"""
from __future__ import annotations

import argparse
import fnmatch
import math
from pathlib import Path

from common import cli, flags, jobs, plateau
from common import results as RS
from common.errors import check

RECORDS = "llm_noniid/results/privacy"
EPSILONS = (1.0, 3.0, 8.0, math.inf)
SEEDS = (0, 1, 2)
HIDDEN = 64
POPULATIONS = {"roles": 0, "synthetic10k": 10000}  # --population (0: the real roles)
# chosen on the validation split (README, "Privacy-utility"): the expected cohort and rounds the CPU allows, the
# clip below the update norms' median (1.5-2.3), the server step that learns under noise without diverging
COHORT = 50            # expected clients a round (q = COHORT / N)
CLIP = 1.0             # C
SETTINGS = ["--hidden", str(HIDDEN), "--max-local-steps", "2", "--batch-size", "10", "--learning-rate", "2",
            "--server-opt", "fedavgm", "--server-momentum", "0.9", "--server-lr", "0.3"]
NONPRIVATE_SERVER_LR = "1"  # the non-private validation run's server rate (noise made it diverge)
OWN = f"roles-lr{NONPRIVATE_SERVER_LR}"  # the name of the real roles' population at that rate
ROUNDS = 40
EVAL_EVERY = 5
EVAL_SAMPLES = 4000
# the headline population's longer budgets, every epsilon and seed and the non-private run at its own server rate,
# the rates constant (no decay); a DP arm is a new run (z is solved for its length), not the 40-round one extended
LONG_ROUNDS = (120, 240, 480)
LONG_POPULATIONS = {"roles": LONG_ROUNDS, "synthetic10k": (480,)}  # the budgets each population runs at
OWN_ROUNDS = (*LONG_ROUNDS, 960)  # the non-private run at its own server rate, also at 960 rounds: where it levels
# The plateau rule (common.plateau; llm_noniid/results.py applies it). Every rate is constant, so a run whose best
# test accuracy is its last evaluation was stopped while still improving; and since test accuracy moves between
# evaluations by chance (the sampled cohorts, the DP noise), a dip at the end does not make a plateau: a run is
# also still improving when its last third of evaluations beats the third before by more than PLATEAU_Z standard
# errors of its own noise (common.plateau's trend check). An arm with a longer budget is judged by it instead:
# still improving when the same seed's run at the next longer budget ends more than PLATEAU_SD sds of the seeds'
# final accuracy above it. For the noiseless arm that run is the same one read longer (the findings check it); for
# a private arm it is the same epsilon spent over more rounds (a new run, z solved for its length), so "at plateau"
# there says that more rounds at that epsilon buy no accuracy at these rates: where the noise a longer run needs
# cancels what the rounds add.
PLATEAU_Z = 2.0
PLATEAU = plateau.Plateau("the best test accuracy is not the last evaluation and the last third of the evaluations "
                          f"is within {PLATEAU_Z:g} se of the third before", metric="test_accuracy",
                          value="final_test_accuracy", direction="max", schedule="constant", trend_z=PLATEAU_Z)
PLATEAU_SD = 0.5
# the few-client case: the committed 12-role sample (shakespeare.py --quick), 10 expected a round, equal rounds
FEW_COHORT, FEW_ROUNDS, FEW_EPSILONS = 10, ROUNDS, (1.0, 8.0, math.inf)


def eps_tag(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def dp_flags(eps: float) -> list[str]:
    """The DP flags of one arm: the clip always, z solved for epsilon (or 0: no noise)."""
    noise = ["--dp-noise", "0"] if math.isinf(eps) else ["--dp-epsilon", f"{eps:g}"]
    return ["--dp-clip", f"{CLIP:g}", *noise]


def long_name(pop: str, eps: float, rounds: int, seed: int) -> str:
    return f"{pop}_eps{eps_tag(eps)}_R{rounds}_s{seed}"


def plan(args) -> list[jobs.Job]:
    """Every run of the study: population x epsilon x seed, the few-client case, non-private FedAvgM at its own
    server rate on the real roles, and the long-budget runs (budget x seed x population x epsilon by
    ``LONG_POPULATIONS``, and on the real roles the non-private run at its own server rate); only those matching
    ``--select`` when given."""
    common = ["--quiet", "--out-dir", str(args.out_dir)]

    def large(name: str, n: int, eps: float, seed: int, settings: list[str], rounds: int | None = None) -> jobs.Job:
        argv = ["--data-dir", args.data_dir, *settings, "--rounds", str(rounds or args.rounds),
                "--eval-every", str(EVAL_EVERY),
                "--max-eval-samples", str(EVAL_SAMPLES), "--clients-per-round", str(COHORT),
                *(["--population", str(n)] if n else []), *dp_flags(eps), "--seed", str(seed), "--run-name", name,
                *common]
        return jobs.Job(name, "llm_noniid.shakespeare", argv, label=f"{name} (q={COHORT / (n or args.roles):.4f})")

    plan = []
    for seed in args.seeds:  # seed-major: a grid cut short still has whole seeds
        for pop, n in POPULATIONS.items():
            plan += [large(f"{pop}_eps{eps_tag(eps)}_s{seed}", n, eps, seed, SETTINGS) for eps in EPSILONS]
        for eps in FEW_EPSILONS:
            name = f"few12_eps{eps_tag(eps)}_s{seed}"
            argv = ["--quick", *SETTINGS, "--rounds", str(FEW_ROUNDS), "--eval-every", str(EVAL_EVERY),
                    "--clients-per-round", str(FEW_COHORT), *dp_flags(eps), "--seed", str(seed), "--run-name", name,
                    *common]
            plan.append(jobs.Job(name, "llm_noniid.shakespeare", argv))
    # the noiseless run at the server rate validated without noise: what DP's smaller server step costs on its own
    own = SETTINGS[:SETTINGS.index("--server-lr")] + ["--server-lr", NONPRIVATE_SERVER_LR]
    plan += [large(f"{OWN}_epsinf_s{seed}", 0, math.inf, seed, own) for seed in args.seeds]
    # per budget and seed the noiseless references first: a long grid cut short still pairs the private arms it ran
    for rounds in sorted({n for budgets in [*LONG_POPULATIONS.values(), OWN_ROUNDS] for n in budgets}):
        for seed in args.seeds:
            for pop in [p for p, budgets in LONG_POPULATIONS.items() if rounds in budgets]:
                plan += [large(long_name(pop, eps, rounds, seed), POPULATIONS[pop], eps, seed, SETTINGS, rounds)
                         for eps in sorted(EPSILONS, key=math.isfinite)]
            if rounds in OWN_ROUNDS:
                plan.append(large(long_name(OWN, math.inf, rounds, seed), 0, math.inf, seed, own, rounds))
    if args.select:
        plan = [j for j in plan if any(fnmatch.fnmatchcase(j.name, pat) for pat in args.select)]
        check(plan, f"--select {' '.join(args.select)} matches no run of the study")
    return plan



def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--data-dir", default="data/shakespeare", help="the full build (python -m common.shakespeare "
                   "--out DIR); the few-client case reads the committed sample")
    p.add_argument("--out-dir", type=flags.FOLDER, default="runs/privacy", help="folder of the run directories")
    p.add_argument("--records", type=flags.FOLDER, default=RECORDS, help="where finished runs' records are copied "
                   "(args.json, summary.json, metrics.jsonl) and --report reads them")
    p.add_argument("--seeds", type=flags.SEED, nargs="+", default=list(SEEDS), help="seeds of every arm")
    p.add_argument("--rounds", type=flags.POSITIVE_INT, default=ROUNDS, help="rounds of every large-population run")
    p.add_argument("--select", nargs="+", metavar="PATTERN", help="only the runs whose names match one of these "
                   "shell patterns (e.g. 'roles_eps*_R120_s*')")
    p.add_argument("--roles", type=flags.POSITIVE_INT, default=1166, help="roles in --data-dir (the labels' q)")
    p.add_argument("--report", action="store_true", help="print the README's table and findings from the committed "
                   "records and exit (no runs)")
    p.add_argument("--jobs", type=flags.POSITIVE_INT, default=1, help="runs at a time (one process each)")
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.report:  # the README's blocks (llm_noniid/results.py, which reads this module's settings)
        check(Path(args.records).resolve() == (RS.ROOT / RECORDS).resolve(),
              f"--report prints the README's blocks, from the committed records {RECORDS}")
        blocks = RS.generators(["llm_noniid"])
        print(blocks["llm_noniid.privacy"](), blocks["llm_noniid.privacy-findings"](), sep="\n\n")
        return 0
    runs = plan(args)
    outcome = jobs.run_study(runs, args.records, unfinished=True,  # a diverged run's records too
                             parallel=args.jobs, log_dir=Path(args.out_dir) / "logs", dry_run=args.dry_run,
                             title="privacy study",
                             next_step="python llm_noniid/privacy_study.py --report")
    return outcome.exit_code(args.dry_run)


if __name__ == "__main__":
    cli.run(main)
