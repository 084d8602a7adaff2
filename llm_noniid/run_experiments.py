"""Experiment grids for llm_noniid: every run not yet complete, ``--jobs`` at a time, then a report.

    python llm_noniid/run_experiments.py --mode failure --out-dir runs/llm_noniid/ag_news \\
        --split-csv ../shared/data/ag_news_csv/test.csv
    python llm_noniid/run_experiments.py --mode analyze --out-dir runs/llm_noniid/ag_news

The grids (``arms``), the study setting they train (``STUDY``; arms differ in one thing only), how runs are
shared, skipped and resumed (``common.jobs``, logs in <out-dir>/logs) and ``analyze``'s report and figures: README
("Experiments: commands -> figures"). Flags after ``--`` (or unknown here) go to every train.py run.
``--split-csv FILE`` splits one AG News CSV 90/10 into <out-dir>/data and trains on it; without it a grid keeps
the split it holds, a new one uses synthetic AG News.
"""
from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from common import cli, jobs, pretrained, runlog, study_report
from common import runs as R
from common import stats as S
from common import study as SD
from common.checkpoint import atomic_write_json
from common.flags import FOLDER, POSITIVE_INT
from common.study import Arm, Comparison, Grid, Pick, Study
from llm_noniid import failure, train

MODES = ("quick", "failure", "main", "calibrate", "select", "headline", "analyze")
REGIMES = ("scratch", "pretrained")
SEEDS = "0,1,2"
ROUNDS = 40  # the study's rounds; arms at equal compute run a multiple of them
EVAL_EVERY = 2
LOCAL_STEPS = 8  # every grid's local steps per round (calibrate's drifting arm: 8x them)
STUDY = ["--model", "tiny-gpt2", "--lora-r", "0", "--tokenizer", "bpe", "--bpe-vocab-size", "2048", "--seq-len", "48",
         "--max-train-examples", "0", "--max-eval-examples", "300", "--num-clients", "10", "--batch-size", "8",
         "--local-steps", str(LOCAL_STEPS), "--local-optimizer", "sgd", "--learning-rate", "1.0", "--max-grad-norm",
         "1.0", "--client-holdout", "0.1", "--eval-every", str(EVAL_EVERY), "--num-rounds", str(ROUNDS)]
IID = ["--partition", "iid"]
TOPIC = ["--partition", "topic_skew", "--alpha", "0.01"]
FEDAVG = ["--algorithm", "fedavg"]
SCAFFOLD = ["--algorithm", "scaffold"]
MUS = ("0.001", "0.01", "0.1", "1")  # FedProx's mu sweep, in every grid
# --regime pretrained, the source's: LoRA (r 8, attention and MLP) on a base pretrained here (pretrain.py with
# BASE_FLAGS: 0.68 M parameters) with its own tokenizer, local AdamW at a rate decaying by a cosine over the rounds;
# --learning-rate and FedProx's mu are chosen by ``select``. Each seed trains on 1,000 training texts, where
# validation perplexity stops improving within 60 rounds on 2 cores (measured: README)
BASE_FLAGS = ["--n-layer", "2", "--n-embd", "128", "--n-head", "2", "--vocab-size", "2048"]
PRETRAINED = ["--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--tokenizer", "auto", "--seq-len", "64",
              "--max-train-examples", "1000", "--max-eval-examples", "300", "--num-clients", "10", "--batch-size",
              "8", "--local-steps", str(LOCAL_STEPS), "--local-optimizer", "adamw", "--lr-schedule", "cosine",
              "--max-grad-norm", "1.0", "--client-holdout", "0.1"]
PRETRAINED_ROUNDS = 60
LR_GRID = ("0.001", "0.003", "0.01", "0.03")  # FedAvg's peak rate on IID shards, chosen on the selection split
SELECT_SEED = 100  # the selection runs' seed, apart from the reported seeds
# select's rule: the lowest final validation perplexity of one run (seed SELECT_SEED, half the rounds) on the
# selection split, ties to the smaller value; a choice at the edge of its grid is recorded, not extended
LR_SELECTION = Grid("--learning-rate", tuple(map(float, LR_GRID)), "final_val_ppl", "min", split="selection")
MU_SELECTION = Grid("--mu", tuple(map(float, MUS)), "final_val_ppl", "min", split="selection")
SELECTION_STUDY = "llm_noniid pretrained"  # selection.json (``common.study``'s record): "learning_rate" (FedAvg on
# iid shards), then "mu/<partition>" (FedProx at that rate) for each of SELECT_PARTS; runs: base, rounds, seeds
CRITERION = ("the lowest final validation perplexity on the selection split (10% of the training texts) of one run "
             f"(seed {SELECT_SEED}, half the rounds), ties to the smaller value: FedAvg's peak rate on iid shards, "
             "then FedProx's mu at that rate on each partition; a choice at the edge of its grid is recorded, not "
             "extended")
ARMS_FILE = "arms.json"  # analyze: {run name: [partition, arm]}, the figures' labels
HEADLINE_PARTS = (("iid", IID), ("topic a=0.01", TOPIC))
IFCA = ["--clustering", "ifca", "--num-clusters", "4"]  # the headline's clustered arm
MAIN_PARTS = (("iid", IID), ("topic a=0.1", ["--partition", "topic_skew", "--alpha", "0.1"]),
              ("style (length)", ["--partition", "style_skew", "--style-criterion", "length"]),
              ("token (frequency)", ["--partition", "token_skew", "--token-skew", "frequency"]))
SELECT_PARTS = (*HEADLINE_PARTS, *MAIN_PARTS[1:])  # the partitions FedProx's mu is chosen for (pretrained regime)
SHARED_AG_NEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news_csv" / "test.csv"
# IFCA's starting models: --ifca-init-rounds (5) rounds' worth of local steps of one client for each of the
# --num-clusters (4) clusters = 4 * 5 * 8 = 160 local steps = 2 full rounds of 10 clients x 8 steps
IFCA_EXTRA_ROUNDS = 2


def rounds_flags(rounds: int) -> list[str]:
    """--num-rounds, with evaluation as often per round of full compute as the study's (the same number of points)."""
    return ["--num-rounds", str(rounds), "--eval-every", str(max(1, EVAL_EVERY * rounds // ROUNDS))]


def algorithms(mus: dict | None, part: str | None = None, sweep: bool = False) -> list[tuple[str, list[str]]]:
    """(arm label, flags) of FedAvg, FedProx and SCAFFOLD on partition ``part``: FedProx at the mu ``mus`` ({partition:
    mu}, the pretrained regime's selection) chose for it, except in a ``sweep``; else at every mu of MUS."""
    chosen = [str(mus[part])] if mus and part in mus and not sweep else MUS
    return [("FedAvg", FEDAVG), *((f"FedProx mu={mu}", ["--algorithm", "fedprox", "--mu", mu]) for mu in chosen),
            ("SCAFFOLD", SCAFFOLD)]


def headline_arms(mus: dict | None, part: str) -> list[tuple[str, list[str]]]:
    """(arm label, flags) of the headline's arms on partition ``part``: ``algorithms`` and FedAvg + IFCA (4)."""
    return [*algorithms(mus, part), ("FedAvg + IFCA (4)", FEDAVG + IFCA)]


def budget_arms(mus: dict | None, part: str, clustered: bool = True) -> list[tuple[str, list[str]]]:
    """The arms that run again at twice the rounds (the plateau's budget check) on partition ``part``: the
    headline's (``clustered`` False: without IFCA, the main grid's), FedProx only at the mu ``select`` chose (a
    grid without a choice, the from-scratch regime's, has no FedProx twin)."""
    return [(label, a) for label, a in (headline_arms(mus, part) if clustered else algorithms(mus, part))
            if not label.startswith("FedProx") or (mus and part in mus)]


def twins(mode: str, mus: dict | None) -> list[tuple[str, list[str], list[tuple[str, list[str]]]]]:
    """(partition, its flags, ``budget_arms``) of the runs ``mode`` plans at twice the rounds: the headline's arms on
    its partitions; the main grid's on its other splits where a selection chose (the pretrained regime, whose
    decaying rate leaves the second budget as the only plateau check); none for the other modes."""
    if mode == "headline":
        return [(part, split, budget_arms(mus, part)) for part, split in HEADLINE_PARTS]
    if mode == "main" and mus:
        return [(part, split, budget_arms(mus, part, clustered=False)) for part, split in MAIN_PARTS
                if part not in dict(HEADLINE_PARTS)]
    return []


def arms(mode: str, rounds: int = ROUNDS, mus: dict | None = None, lr: float = 1.0) -> list[tuple[str, str, list]]:
    """(partition label, arm label, train.py flags) of every arm of ``mode`` (one run per seed each) at ``rounds``
    rounds and the grid's rate ``lr``; the equal-compute arms run more rounds. ``mus`` ({partition: mu}, the
    pretrained regime's selection): FedProx at that mu, except in the failure grid's sweep; else every mu of MUS."""
    algos = lambda part=None, sweep=False: algorithms(mus, part, sweep)  # noqa: E731

    lp, one = ["--participation-rate", "0.2"], ["--participation-rate", "0.1"]
    if mode == "failure":
        # the mu sweep and the clustering arms where they matter (topic skew); on iid the contrast arms only
        out, contrast = [], ("FedAvg", f"FedProx mu={(mus or {}).get('iid', '0.1')}", "SCAFFOLD")
        for part, split in HEADLINE_PARTS:
            out += [(part, name, split + a) for name, a in algos(part, sweep=part != "iid")
                    if part != "iid" or name in contrast]
            fedavg = [("FedAvg, 2 of 10 clients/round", lp),
                      (f"FedAvg, 2 of 10 clients/round, {5 * rounds} rounds", lp + rounds_flags(5 * rounds)),
                      ("FedAvg, 1 client/round", one)]
            if part != "iid":
                fedavg += [("FedAvg + data clusters", ["--clustering", "data"]),
                           ("local only (10 clusters)", ["--clustering", "data", "--num-clusters", "10"])]
            fedavg += [("FedAvg + IFCA (4)", IFCA),
                       (f"FedAvg, {rounds + IFCA_EXTRA_ROUNDS} rounds", rounds_flags(rounds + IFCA_EXTRA_ROUNDS))]
            out += [(part, name, split + FEDAVG + a) for name, a in fedavg]
        return out
    if mode == "main":
        return [(p, name, f + a) for p, f in MAIN_PARTS for name, a in algos(p)]
    if mode == "headline":  # FedProx at the mu ``select`` chose for the partition (at every mu without one)
        return [(part, name, split + a) for part, split in HEADLINE_PARTS for name, a in headline_arms(mus, part)]
    if mode == "calibrate":
        # built to fail: divergence (8x the rate, no clipping); drift (8x the local steps, on iid and topic shards);
        # oscillation (one topic-skewed client per round, 8x its local steps, half the rounds)
        k8, r8, r2 = ["--local-steps", str(8 * LOCAL_STEPS)], max(1, rounds // 8), max(1, rounds // 2)
        return [("iid", f"FedAvg lr {8 * lr:g}, no clipping", IID + FEDAVG + ["--learning-rate", f"{8 * lr:g}",
                                                                             "--max-grad-norm", "0"]),
                ("topic a=0.01", "FedAvg, 1 client/round", TOPIC + FEDAVG + one),
                *((part, f"FedAvg, {8 * LOCAL_STEPS} local steps, {r8} rounds", split + FEDAVG + k8 + rounds_flags(r8))
                  for part, split in HEADLINE_PARTS),
                ("topic a=0.01", f"FedAvg, 1 client/round, {8 * LOCAL_STEPS} local steps, {r2} rounds",
                 TOPIC + FEDAVG + one + k8 + rounds_flags(r2))]
    if mode == "quick":
        return [(p, name, f + a) for p, f in MAIN_PARTS for name, a in algos(sweep=True)
                if name in ("FedAvg", "FedProx mu=0.1", "SCAFFOLD")]
    raise cli.UsageError(f"--mode {mode!r} has no runs; expected one of {', '.join(MODES[:-1])}")


def equal_compute(rounds: int = ROUNDS) -> list[tuple[str, str, str]]:
    """(partition, arm, reference arm) pairs at equal training compute."""
    return [(p, a, r) for p in ("iid", "topic a=0.01") for a, r in (
        ("FedAvg + IFCA (4)", f"FedAvg, {rounds + IFCA_EXTRA_ROUNDS} rounds"),
        (f"FedAvg, 2 of 10 clients/round, {5 * rounds} rounds", "FedAvg"))]


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.add_argument("--mode", required=True, help=" | ".join(MODES))
    p.add_argument("--regime", default="scratch", help="scratch: tiny-gpt2 trained from scratch, every parameter | "
                   "pretrained: LoRA on --base, the rate and FedProx's mu chosen on a selection split first")
    p.add_argument("--base", default=None, help="--regime pretrained: the causal LM folder (default: pretrain.py's "
                   "base with its default flags, pretrained into runs/llm_base on first use)")
    p.add_argument("--out-dir", type=FOLDER, default=None, help="root of the grid's runs, report and figures (default: "
                   "runs/llm_noniid, --regime pretrained: runs/llm_noniid_pretrained; --mode quick: + _quick)")
    p.add_argument("--rounds", type=POSITIVE_INT, default=None,
                   help=f"rounds per run (unset: the study's {ROUNDS}, pretrained {PRETRAINED_ROUNDS}; quick 4)")
    p.add_argument("--seeds", default=SEEDS, help="comma-separated seeds")
    p.add_argument("--split-csv", default=None, help="one AG News CSV to split 90/10 into train/valid first "
                   "(--regime pretrained: default the AG News test.csv of shared/data next to the repository)")
    p.add_argument("--title", default=None, help="heading of the analyze report")
    p.add_argument("--compare-dir", default=None, help="analyze: the other regime's grid out-dir; the report "
                   "gains the headline arms of both regimes side by side (and figures/side_by_side.png)")
    p.add_argument("--jobs", type=POSITIVE_INT, default=2, help="runs at a time (one process each)")
    p.add_argument("--threads", type=POSITIVE_INT, default=1, help="torch threads per run")
    return p


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct non-negative integers (one line, exit 2 otherwise)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise cli.UsageError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    cli.check(bool(seeds), f"--seeds {text!r}: expected at least one seed, e.g. 0,1,2")
    cli.check(min(seeds) >= 0 and len(set(seeds)) == len(seeds),
              f"--seeds {text!r}: expected distinct integers >= 0")
    return seeds


def split_data(csv_path: str, out: Path) -> Path:
    """``--split-csv``, checked by the training code's reader (one line if not AG News), split 90/10 into
    ``out/data``; a folder holding another split is refused, never replaced (its runs were trained on it)."""
    from llm_noniid import data as D  # the data readers load torch: not before the grid runs (--help)

    D.read_ag_news_csv(csv_path)
    folder, tmp = out / "data", out / f"data.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    D.split_ag_news_csv(csv_path, tmp, valid_fraction=0.1, seed=0)
    if not folder.exists():
        os.replace(tmp, folder)
        return folder
    same = all((folder / n).is_file() and (folder / n).read_bytes() == (tmp / n).read_bytes()
               for n in ("train.csv", "test.csv"))
    shutil.rmtree(tmp)
    cli.check(same, f"{folder} holds the split of another CSV than --split-csv {csv_path}; give another --out-dir "
                    "(the runs under it were trained on that split)")
    return folder


def plan(mode: str, args, passthrough: list[str], setting: dict | None = None, prepare: bool = True) -> list[jobs.Job]:
    """One train.py job per arm of ``mode`` and seed (``jobs_for``); ``setting``: ``select``'s rate and mus.
    ``prepare`` False: the jobs as checked before the selection trains (no data split, no base pretrained)."""
    out = Path(args.out_dir)
    folder = split_data(args.split_csv, out) if args.split_csv and prepare else out / "data"  # a grid's split stays
    data = ["--data", "ag_news", "--data-dir", str(folder)] if folder.is_dir() or not prepare else []  # its data
    if args.regime == "pretrained":
        rounds = args.rounds or PRETRAINED_ROUNDS
        base = base_folder(args) if prepare else runlog.portable(args.base or "runs/llm_base")
        study = [*PRETRAINED, "--model", base, "--learning-rate", str(setting["learning_rate"])]
    else:
        rounds, study = args.rounds or (4 if mode == "quick" else ROUNDS), STUDY
    setting, seeds = setting or {}, parse_seeds(args.seeds)
    grid = jobs_for([(part, arm, [*study, *rounds_flags(rounds), *data, *flags], rounds)
                     for part, arm, flags in arms(mode, rounds, setting.get("mu"), setting.get("learning_rate", 1.0))],
                    seeds, passthrough, out / "runs")
    twice = [*study, *data, *rounds_flags(2 * rounds)]  # the plateau's budget check (``twins``, ``budget_table``)
    grid += jobs_for([(part, f"{label}, {2 * rounds} rounds", [*twice, *split, *algo], rounds)
                      for part, split, arms_ in twins(mode, setting.get("mu")) for label, algo in arms_],
                     seeds, passthrough, out / "runs")
    return grid


def jobs_for(arms_: list[tuple[str, str, list[str], int]], seeds: list[int], passthrough: list[str],
             runs: Path) -> list[jobs.Job]:
    """The train.py jobs of (partition, arm, flags, the grid's rounds) for every seed, seed-major, into ``runs``,
    named by train.py's default name (+ ``_R<rounds>`` for an arm that only runs longer: names leave rounds out)."""
    from llm_noniid import federated  # train.py's run names: its run module, loaded by the grid, not by --help

    out_jobs = []
    for seed in seeds:
        for part, arm, flags, rounds in arms_:
            argv = [*flags, "--seed", str(seed), *passthrough, "--out-dir", str(runs), "--quiet"]
            parsed = cli.parse(train.get_args_parser(), argv)  # as train.py reads them (its --quick preset too)
            name = federated.default_run_name(parsed) + (f"_R{parsed.num_rounds}" if parsed.num_rounds != rounds
                                                         else "")
            # a shorter run of the same arm (--rounds raised) is extended, not redone; under a cosine
            # learning rate (laid out over the run's length) it is not the same run, and is left as it is
            out_jobs.append(jobs.Job(name, "llm_noniid.train", [*argv, "--run-name", name],
                                     extend=parsed.lr_schedule == "constant", label=f"{part} / {arm} / seed {seed}"))
    return out_jobs


def base_folder(args) -> str:
    """--base, else pretrain.py's cached base with BASE_FLAGS (pretrained on first use, about 7 min)."""
    if not args.base:
        from llm_noniid import pretrain

        args.base = str(pretrain.pretrained_base([*BASE_FLAGS, "--cache-dir", "runs/llm_base", "--quiet"]))
    cli.check(Path(args.base).is_dir(), f"--base {args.base}: no such folder; expected a causal LM folder "
                                        f"(python llm_noniid/pretrain.py prints one)")
    pretrained.check_folder(args.base)  # refused here, before any run, not in every run of the grid
    return runlog.portable(args.base)  # as records keep paths


def run_jobs(grid: list[jobs.Job], args, title: str) -> list[dict]:
    """Every job not yet complete, ``--jobs`` at a time; the summaries of the finished and diverged runs."""
    out = Path(args.out_dir)
    jobs.run_plan(grid, parallel=args.jobs, threads=args.threads, log_dir=out / "logs", title=title,
                  next_step=f"python llm_noniid/run_experiments.py --mode analyze --out-dir {out}")
    return [s for s in map(jobs.summary_of, grid) if s and s.get("status") in ("complete", "diverged")]


def select(args, passthrough: list[str]) -> dict:
    """The pretrained regime's choices (lowest final validation perplexity) on a selection split (10% of the
    training texts as its validation; the reported validation texts are never read), at half the rounds with seed
    ``SELECT_SEED``: FedAvg's rate on IID shards from ``LR_GRID``, then FedProx's mu at that rate for each of
    ``SELECT_PARTS``. Written to <out-dir>/selection.json (``common.study``'s record, every score; an incomplete
    one is completed); returns ``setting_of`` it."""
    out = Path(args.out_dir)
    done, rounds = out / SD.SELECTION_FILE, max(1, (args.rounds or PRETRAINED_ROUNDS) // 2)
    if done.is_file():
        try:
            record = SD.read_selection(done)
        except cli.UsageError as e:
            raise cli.UsageError(f"{e}; remove it to select again") from None
        ran = record["runs"]
        if ran.get("rounds") == rounds and runlog.portable(ran.get("base")) == base_folder(args) and \
                "learning_rate" in record["choices"] and set(SD.chosen(record, "mu/")) == {p for p, _ in SELECT_PARTS}:
            return setting_of(record)
    from llm_noniid import data as D

    data = D.split_ag_news_csv(split_data(args.split_csv, out) / "train.csv", out / "select" / "data", 0.1, seed=1)
    study = [*PRETRAINED, "--model", base_folder(args), "--data", "ag_news", "--data-dir", str(data),
             *rounds_flags(rounds)]
    lr_arms = [("iid", f"FedAvg lr {lr}", [*study, "--learning-rate", lr, *IID, *FEDAVG], rounds) for lr in LR_GRID]
    lr_scores = dict(zip(LR_GRID, _selection_scores(lr_arms, args, passthrough, "learning rate")))
    lr, lr_pick = lowest(lr_scores, LR_SELECTION)
    cli.check(lr is not None, f"selection: FedAvg diverged at every rate of {', '.join(LR_GRID)}")
    mu_arms = [(part, f"FedProx mu={mu}", [*study, "--learning-rate", lr, *split, "--algorithm", "fedprox", "--mu",
                                           mu], rounds) for part, split in SELECT_PARTS for mu in MUS]
    scores = iter(_selection_scores(mu_arms, args, passthrough, "FedProx mu"))  # in mu_arms' order
    mu_scores = {part: {mu: next(scores) for mu in MUS} for part, _ in SELECT_PARTS}
    mu_picks = {part: lowest(v, MU_SELECTION) for part, v in mu_scores.items()}
    failed = [part for part, (mu, _) in mu_picks.items() if mu is None]
    cli.check(not failed, f"selection: FedProx diverged at every mu of {', '.join(MUS)} on {', '.join(failed)}")
    choices = {"learning_rate": SD.choice_record(LR_SELECTION, lr_pick, why=words(lr_scores)),
               **{f"mu/{part}": SD.choice_record(MU_SELECTION, pick, why=words(mu_scores[part]))
                  for part, (_, pick) in mu_picks.items()}}
    record = SD.write_selection(done, SELECTION_STUDY, CRITERION, choices, base=base_folder(args), rounds=rounds,
                                seeds=[SELECT_SEED])
    setting = setting_of(record)
    print(f"selection: learning rate {lr}, FedProx mu {setting['mu']} ({done})"
          + "".join(f"; {k} chosen at the {c['edge']} edge of its grid" for k, c in choices.items() if c["edge"]),
          flush=True)
    return setting


def setting_of(record: dict) -> dict:
    """What a selection record (``select``'s) sets for the grids: {"learning_rate": the rate, "mu": {partition: mu
    as MUS spell it, the flag and run names' spelling}}, each only where chosen ({} for no record: the from-scratch
    regime keeps its one rate)."""
    out = {}
    if record and record["choices"].get("learning_rate", {}).get("chosen") is not None:
        out["learning_rate"] = float(record["choices"]["learning_rate"]["chosen"])
    mus = {part: SD.candidate_key(mu) for part, mu in (SD.chosen(record, "mu/") if record else {}).items()
           if mu is not None}
    return {**out, "mu": mus} if mus else out


def lowest(scores: dict[str, float | str], grid: Grid) -> tuple[str | None, Pick]:
    """The value of ``grid`` (as its flag spells it) chosen from ``scores`` {value: final validation perplexity of
    its run, or a word saying why it has none} by ``grid``'s rule (``common.study``); None when no run scored."""
    pick = grid.choose({float(v): [math.nan if isinstance(s, str) else s] for v, s in scores.items()})
    return next((v for v in scores if float(v) == pick.value), None), pick


def words(scores: dict[str, float | str]) -> dict[str, str]:
    """{value: why it has no score} of ``scores`` (``common.study.choice_record``'s ``why``)."""
    return {v: s for v, s in scores.items() if isinstance(s, str)}


def _selection_scores(arms_: list[tuple], args, passthrough: list[str], title: str) -> list[float | str]:
    """Run a selection phase (``jobs_for``'s arms at SELECT_SEED, into <out-dir>/select/runs); its runs' final
    validation perplexity, or "diverged" (a diverged run, or one without a finite perplexity) or "not a result" (a
    run that ended otherwise). Stops before choosing if a run failed (no summary): a choice made without it would be
    written to selection.json and never revisited."""
    grid = jobs_for(arms_, [SELECT_SEED], passthrough, Path(args.out_dir) / "select" / "runs")
    run_jobs(grid, args, f"selection: {title}")
    summaries = [jobs.summary_of(j) for j in grid]
    failed = [j.name for j, s in zip(grid, summaries) if s is None]
    cli.check(not failed, f"selection: {', '.join(failed)} did not finish (its log in {Path(args.out_dir) / 'logs'}); "
                          "rerun the same command to complete the selection")

    def score(s: dict) -> float | str:
        ppl, status = s.get("final_val_ppl"), s.get("status", "complete")
        if status == "complete" and isinstance(ppl, (int, float)) and math.isfinite(ppl):
            return ppl
        return "diverged" if status in ("complete", "diverged") else "not a result"

    return [score(s) for s in summaries]


def run_grid(mode: str, args, passthrough: list[str]) -> list[dict]:
    """Every run of ``mode`` not yet complete (the pretrained regime's selection first), ``--jobs`` at a time."""
    if args.regime == "pretrained" and mode != "select":  # the grid's runs at every rate select may choose (and
        # every mu: none chosen yet), checked before the selection trains
        jobs.check_plan([j for lr in LR_GRID for j in plan(mode, args, passthrough, {"learning_rate": float(lr)},
                                                           prepare=False)], f"{mode} grid")
    setting = select(args, passthrough) if args.regime == "pretrained" else None
    return [] if mode == "select" else run_jobs(plan(mode, args, passthrough, setting), args, f"{mode} grid")


# ----------------------------------------------------------------------------- analyze
def arm_of(a: dict, rounds: int = ROUNDS, lr: float = 1.0, steps: int = LOCAL_STEPS) -> tuple[str, str]:
    """(partition label, arm label) of a run's args.json as ``arms`` names them (a run at another rate ``lr`` or
    local ``steps`` than the grid's is labelled with them)."""
    part = {"iid": "iid", "style_skew": f"style ({a.get('style_criterion')})",
            "token_skew": f"token ({a.get('token_skew')})"}.get(a["partition"]) or f"topic a={a.get('alpha'):g}"
    arm = {"fedavg": "FedAvg", "scaffold": "SCAFFOLD"}.get(a["algorithm"], a["algorithm"])
    if a["algorithm"] == "fedprox":
        arm = f"FedProx mu={a['mu']:g}"
    if a.get("clustering", "none") == "data":
        arm = "local only (10 clusters)" if a.get("num_clusters") == a["num_clients"] else f"{arm} + data clusters"
    elif a.get("clustering") == "ifca":
        arm += f" + IFCA ({a['num_clusters']})"
    elif a.get("learning_rate", 1.0) != lr:
        arm += f" lr {a['learning_rate']:g}, " + (f"clip {a['max_grad_norm']:g}" if a.get("max_grad_norm") else
                                                   "no clipping")
    elif (rate := a.get("participation_rate", 1.0)) < 1.0:
        m = max(1, round(rate * a["num_clients"]))
        arm += ", 1 client/round" if m == 1 else f", {m} of {a['num_clients']} clients/round"
    if a.get("local_steps", steps) != steps:
        arm += f", {a['local_steps']} local steps"
    return part, arm + (f", {a['num_rounds']} rounds" if a.get("num_rounds", rounds) != rounds else "")


def grid_steps(runs: list[dict], rounds: int) -> int:
    """The grid's local steps: the most common among its runs of ``rounds`` rounds."""
    steps = Counter(r["args"].get("local_steps", LOCAL_STEPS) for r in runs if r["args"].get("num_rounds") == rounds)
    return steps.most_common(1)[0][0] if steps else LOCAL_STEPS


def by_arm(runs: list[dict], rounds: int = ROUNDS, lr: float = 1.0) -> dict[tuple, list[dict]]:
    """{(partition, arm): runs} by ``arm_of`` (``lr``: the grid's rate; its local steps: ``grid_steps``)."""
    groups: dict[tuple, list] = {}
    steps = grid_steps(runs, rounds)
    for r in runs:
        groups.setdefault(arm_of(r["args"], rounds, lr, steps), []).append(r)
    return groups


KEYS = ("final_val_ppl", "final_personal_val_ppl")  # the perplexities every table compares
# at plateau: the last PLATEAU_TAIL of a run's evaluations improve its best validation perplexity by less than
# PLATEAU_GAIN; a decaying rate meets it by construction, so the budget check: twice the rounds gain < BUDGET_GAIN
PLATEAU_TAIL, PLATEAU_GAIN, BUDGET_GAIN = 0.2, 0.01, 0.02


def at_plateau(run: dict) -> bool:
    """Whether the run meets the plateau criterion (a diverged or non-finite curve does not)."""
    ppl = [r["val_ppl"] for r in run.get("rows", []) if "val_ppl" in r]
    if len(ppl) < 3 or not all(map(math.isfinite, ppl)):
        return False
    return S.plateau_gain([-math.log(v) for v in ppl], tail=PLATEAU_TAIL) < math.log1p(PLATEAU_GAIN)


def detected(run: dict, th: failure.Thresholds = failure.DEFAULT) -> dict[str, int]:
    """The failure modes of a run, detected again from its logged curve (and the perplexity before training)."""
    return failure.detect(run["rows"], th, (run.get("summary") or {}).get("initial_val_ppl"))


def budget_table(groups: dict[tuple, list[dict]], rounds: int) -> list[str]:
    """The final perplexity of each arm with a twice-the-rounds twin (``twins``) at the grid's rounds and at twice
    them (same seed) on each partition, and whether doubling the budget gains less than BUDGET_GAIN."""
    rows = []
    for part in dict.fromkeys(p for p, _ in groups):
        for label in [a for p, a in groups if p == part and (part, f"{a}, {2 * rounds} rounds") in groups]:
            short, long = (R.by_seed(groups.get((part, a), []), "final_val_ppl")
                           for a in (label, f"{label}, {2 * rounds} rounds"))
            for seed in sorted(set(short) & set(long)):
                gain = 1 - long[seed] / short[seed]
                rows.append([part, label, seed, f"{short[seed]:.1f}", f"{long[seed]:.1f}", f"{100 * gain:.1f} %",
                             "yes" if gain < BUDGET_GAIN else "no"])
    return S.markdown(["partition", "arm", "seed", f"{rounds} rounds", f"{2 * rounds} rounds",
                       "gain from doubling", f"< {BUDGET_GAIN:.0%}"], rows) if rows else ["(not run yet)"]


def name(*key: str) -> str:
    """A table's arm, its labels as one name: 'topic a=0.01 / SCAFFOLD' (an arm's label holds no ' / ')."""
    return " / ".join(key)


def grid_table(family: str, groups: dict[tuple, list[dict]], refs: dict[tuple, tuple], keys: tuple[str, ...],
               columns: list, rows: list[tuple], compute: str = "") -> list[str]:
    """``common.study_report.table`` over a grid's runs ``groups`` {(partition, arm): runs}: its study compares each
    arm of ``refs`` {arm: its reference} with its reference in each of ``keys``, one Holm family ``family``, arms
    named by ``name``; one line per arm of ``rows``. An arm whose every seed diverged is "diverged", compared with
    nothing; ``compute``: what each pair is matched on (training tokens, said beside a verdict where they differ)."""
    runs = {name(*k): g for k, g in groups.items()}
    arms_ = dict.fromkeys(name(*k) for pair in refs.items() for k in pair)
    s = Study(family, tuple(Arm(a, "llm_noniid.train") for a in arms_),
              tuple(sorted({r["args"]["seed"] for g in groups.values() for r in g})), compute=compute,
              comparisons=tuple(Comparison(name(*k), name(*ref), family, key) for k, ref in refs.items()
                                for key in keys))
    values = lambda arm, key: R.by_seed(runs.get(arm, []), key)  # noqa: E731
    diverged = {a: "diverged" for a in (a.name for a in s.arms) if (v := values(a, "final_val_ppl"))
                and not any(map(math.isfinite, v.values()))}
    tokens = lambda arm, _: {r["args"]["seed"]: r["summary"]["train_tokens"] for r in runs.get(arm, [])  # noqa: E731
                             if r.get("summary")}
    return study_report.table(s, values, columns, [name(*k) for k in rows], spent=tokens if compute else None,
                              skip=diverged)


def label_columns(*headers: str) -> list[study_report.Text]:
    """The columns of a row's labels (partition, arm, ...): its name's parts."""
    return [study_report.Text(h, lambda row, i=i: row.split(" / ")[i]) for i, h in enumerate(headers)]


def compute(g: list[dict], ref: list[dict]) -> str:
    """Training tokens through forward/backward of runs ``g`` as a multiple of ``ref``'s: '1.00x' ('–' unknown)."""
    tokens = [[r["summary"]["train_tokens"] for r in x if r.get("summary")] for x in (g, ref)]
    return f"{np.mean(tokens[0]) / np.mean(tokens[1]):.2f}x" if all(tokens) else "–"


def table(runs: list[dict], mode: str, rounds: int = ROUNDS, lr: float = 1.0, mus: dict | None = None) -> list[str]:
    """Markdown table of ``mode``'s arms; Δ: the paired difference to FedAvg on its partition, both perplexities in
    one Holm family (the grid's). The best perplexity of any evaluated round is an optimistic oracle early stop;
    beside the final one it shows overfitting."""
    groups = by_arm(runs, rounds, lr)
    rows = [(p, a) for p, a, _ in arms(mode, rounds, mus, lr)]
    of = lambda row: groups.get(tuple(row.split(" / ")), [])  # noqa: E731
    tally = lambda items, of="": ", ".join(f"{k} {v}{of}" for k, v in sorted(Counter(items).items()))  # noqa: E731

    def run(cell):  # a column of the caller's, "–" in a row without runs
        return lambda row: cell(of(row), row.split(" / ")[0]) if of(row) else "–"

    columns = [*label_columns("partition", "arm"), study_report.Text("n", lambda row: len(of(row))),
               study_report.Value("final ppl", "final_val_ppl"), study_report.Delta("Δ vs FedAvg", "final_val_ppl"),
               study_report.Value("personalised ppl", "final_personal_val_ppl"),
               study_report.Delta("Δ vs FedAvg", "final_personal_val_ppl"),
               study_report.Value("best ppl (any round)", "best_val_ppl"),
               study_report.Text("compute", run(lambda g, p: compute(g, groups.get((p, "FedAvg"), [])))),
               study_report.Text("status", run(lambda g, p: tally((r.get("summary") or {}).get("status", "running")
                                                                  for r in g))),
               study_report.Text("failure modes (runs)", run(lambda g, p: tally((m for r in g for m in detected(r)),
                                                                                f"/{len(g)}") or "none")),
               study_report.Text("at plateau", run(lambda g, p: f"{sum(map(at_plateau, g))}/{len(g)}"))]
    return grid_table(f"{mode} grid", groups, {(p, a): (p, "FedAvg") for p, a in rows if a != "FedAvg"}, KEYS,
                      columns, rows)


def references(runs: list[dict]) -> list[str]:
    """The reference points every run reports (they depend on the split only through the held-out texts)."""
    out = []
    for part in sorted({arm_of(r["args"])[0] for r in runs}):
        g = [r for r in runs if arm_of(r["args"])[0] == part and r.get("summary")]
        pers = [r["summary"]["personal_unigram_ppl"] for r in g if r["summary"].get("personal_unigram_ppl")]
        before = [r["summary"]["initial_val_ppl"] for r in g if r["summary"].get("initial_val_ppl")]
        out.append([part, f"{g[0]['summary']['uniform_ppl']:.0f}",
                    S.fmt(S.summarize(r["summary"]["unigram_val_ppl"] for r in g)),
                    S.fmt(S.summarize(pers)) if pers else "–", S.fmt(S.summarize(before)) if before else "–"])
    return S.markdown(["partition", "uniform ppl", "unigram ppl (global validation)",
                       "each client's own unigram on its held-out texts",
                       "the model before training (random init, or a base's zero-shot)"], out)


# runs whose behaviour is known by construction, independent of the detectors (see the README); FedProx mu = 1
# (mu * lr = 1: every step returns to the global model) is left out of the healthy class
HEALTHY_ARMS = ("FedAvg", "FedProx mu=0.001", "FedProx mu=0.01", "FedProx mu=0.1", "SCAFFOLD")
KNOWN = {
    "healthy (iid, full participation)": lambda p, a: p == "iid" and a in HEALTHY_ARMS,
    "diverging (8x the rate, no clipping)": lambda p, a: a.startswith("FedAvg lr ") and a.endswith(", no clipping"),
    "oscillating (topic skew, 1 client/round)": lambda p, a: p == "topic a=0.01" and a == "FedAvg, 1 client/round",
    "oscillating by construction (topic skew, 1 client/round, 8x the local steps)":
        lambda p, a: p == "topic a=0.01" and a.startswith(f"FedAvg, 1 client/round, {8 * LOCAL_STEPS} local steps"),
    "drifting (topic skew, full participation)": lambda p, a: p == "topic a=0.01" and a in HEALTHY_ARMS,
    "drifting by construction (iid, 8x the local steps)":
        lambda p, a: p == "iid" and a.startswith(f"FedAvg, {8 * LOCAL_STEPS} local steps"),
    "drifting by construction (topic skew, 8x the local steps)":
        lambda p, a: p == "topic a=0.01" and a.startswith(f"FedAvg, {8 * LOCAL_STEPS} local steps"),
}


def detector_table(runs: list[dict], rounds: int = ROUNDS, lr: float = 1.0) -> list[str]:
    """Share of runs each detector flags (``detected``) per class of runs whose behaviour is known by construction:
    the healthy column is the false-positive rate, the matching column the detection rate."""
    groups = by_arm([r for r in runs if r.get("summary")], rounds, lr)  # finished runs only
    classes = {name: g for name, is_ in KNOWN.items() if (g := [r for k, rs in groups.items() if is_(*k) for r in rs])}
    if not classes:
        return ["(no runs of a known class yet: run --mode failure and --mode calibrate)"]
    share = lambda mode, t=failure.DEFAULT: [f"{sum(mode in detected(r, t) for r in g)}/{len(g)}"
                                             for g in classes.values()]
    th = vars(failure.Thresholds())
    # the calibration: each detector's key threshold swept (``failure.SWEEPS``), the others at their defaults
    sweeps = {mode: (s.key, sorted(s.values)) for mode, s in failure.SWEEPS.items()}
    return [*S.markdown(["detector", *(f"{k} (n={len(v)})" for k, v in classes.items())],
                        [[mode, *share(mode)] for mode in failure.MODES]),
            "", "Thresholds (`llm_noniid/failure.py`, `Thresholds`): " + ", ".join(f"{k} = {v:g}" for k, v in
                                                                                  th.items()) + ".", "",
            "Calibration (share of runs flagged, one threshold varied):", "",
            *S.markdown(["detector", "threshold", *classes],
                        [[mode, f"{key} = {v:g}" + (" (default)" if v == th[key] else ""),
                          *share(mode, failure.Thresholds(**{**th, key: v}))]
                         for mode, (key, values) in sweeps.items() for v in values])]


def is_twin(key: tuple[str, str], groups: dict[tuple, list[dict]], rounds: int) -> bool:
    """Whether (partition, arm) is the budget check's twin of an arm of ``groups`` (the same arm at twice the
    rounds, ``twins``): the plateau check of that arm, not an arm of its own."""
    part, arm = key
    suffix = f", {2 * rounds} rounds"
    return arm.endswith(suffix) and (part, arm[:-len(suffix)]) in groups


def split_table(groups: dict[tuple, list[dict]], rounds: int = ROUNDS) -> list[str]:
    """Does the split hurt: each arm's final validation perplexity on a non-iid partition minus on iid, paired by
    seed (only the global validation texts are shared across partitions, so not the personalised perplexity); one
    Holm family over the table, the budget check's twins left out (``is_twin``: they check a plateau)."""
    rows = sorted((p, a) for p, a in groups if p != "iid" and ("iid", a) in groups
                  and not is_twin((p, a), groups, rounds))
    if not rows:
        return ["(no arm run on iid and a non-iid partition yet)"]
    on_iid = study_report.Value("on iid", "final_val_ppl", lambda row: name("iid", row.split(" / ")[1]))
    return grid_table("does the split hurt", groups, {(p, a): ("iid", a) for p, a in rows}, ("final_val_ppl",),
                      [*label_columns("partition", "arm"), study_report.Value("final ppl", "final_val_ppl"), on_iid,
                       study_report.Delta("Δ vs iid (same arm)", "final_val_ppl")], rows)


def equal_compute_table(runs: list[dict], rounds: int = ROUNDS, lr: float = 1.0,
                        arms_: list[tuple[str, str, str]] | None = None) -> list[str]:
    """Paired differences between arms that train about as many tokens (``arms_``, default ``equal_compute``), both
    perplexities in one Holm family; a pair whose tokens differ by more than 1 % says so."""
    groups = by_arm(runs, rounds, lr)
    pairs = {(p, a): (p, ref) for p, a, ref in arms_ or equal_compute(rounds)}
    of = lambda row: tuple(row.split(" / "))  # noqa: E731

    def ratio(row: str) -> str:
        g, ref = groups.get(of(row), []), groups.get(pairs[of(row)], [])
        return compute(g, ref) if g and ref else "not run"

    return grid_table("equal compute", groups, pairs, KEYS, [
        *label_columns("partition", "arm"),
        study_report.Text("reference (about the same compute)", lambda row: pairs[of(row)][1]),
        study_report.Text("compute ratio", ratio), study_report.Delta("Δ final ppl", "final_val_ppl"),
        study_report.Delta("Δ personalised ppl", "final_personal_val_ppl")], list(pairs), compute="equal samples")


def load_grid(out_dir: Path) -> tuple[list[dict], int, dict]:
    """A grid's runs, its rounds (the most common among the runs not named for another length, the larger on a
    tie: ``jobs_for`` adds ``_R<rounds>`` to an arm run longer than the grid, such as the budget check's twins) and
    its ``selection.json``, the record ``select`` wrote ({} if none)."""
    runs = R.load_runs(out_dir / "runs", "*")
    cli.check(bool(runs), f"no runs under {out_dir}/runs; run --mode failure / main / calibrate first")
    plain = [r for r in runs if not r["name"].endswith(f"_R{r['args']['num_rounds']}")] or runs
    counts = Counter(r["args"]["num_rounds"] for r in plain)
    rounds = max(counts, key=lambda k: (counts[k], k))
    record = SD.read_selection(out_dir / SD.SELECTION_FILE) if (out_dir / SD.SELECTION_FILE).is_file() else {}
    return runs, rounds, record


def side_by_side(grids: dict[str, tuple[list[dict], int, dict]], mus: dict) -> tuple[list[str], dict]:
    """The headline arms in each regime ({regime label: ``load_grid``'s result}): final perplexity, each arm's
    change vs FedAvg on its partition and each topic-skewed arm's vs the same arm on iid, in percent of the
    reference's perplexity (paired by seed, one Holm family over the table), so regimes on different scales read
    alike. Returns the Markdown and {(regime, part, arm): per-seed % vs FedAvg}."""
    def change(g: dict, ref: dict) -> dict:  # per-seed % change of g vs ref, on the seeds finite in both
        return {s: 100 * (g[s] / ref[s] - 1) for s in g if s in ref and math.isfinite(g[s]) and math.isfinite(ref[s])}

    final, plateau = {}, {}
    for regime, (runs, rounds, record) in grids.items():
        groups = by_arm(runs, rounds, setting_of(record).get("learning_rate", 1.0))
        for part, arm, _ in arms("headline", rounds, mus):
            g = groups.get((part, arm), [])
            final[(regime, part, arm)] = R.by_seed(g, "final_val_ppl")
            plateau[name(regime, part, arm)] = f"{sum(map(at_plateau, g))}/{len(final[(regime, part, arm)])}"
    # each metric's reference; its own change is 0 at each finite seed, so the pair is the arm's change against 0
    refs = {"% vs FedAvg": lambda r, p, a: (r, p, "FedAvg"), "% vs iid": lambda r, p, a: (r, "iid", a)}
    values = {name(*k): {"final_val_ppl": g, **{m: change(g, final.get(ref(*k), {})) for m, ref in refs.items()}}
              for k, g in final.items()}
    s = Study("side by side", tuple(Arm(name(*k), "llm_noniid.train") for k in final),
              tuple(sorted({r["args"]["seed"] for runs, _, _ in grids.values() for r in runs})),
              comparisons=tuple(Comparison(name(*k), name(*ref(*k)), "side by side", m) for k in final
                                for m, ref in refs.items() if ref(*k) != k and ref(*k) in final))
    table_ = study_report.table(s, lambda arm, metric: values[arm][metric], [
        *label_columns("regime", "partition", "arm"),
        study_report.Text("n", lambda row: len(values[row]["final_val_ppl"])),
        study_report.Value("final ppl", "final_val_ppl"),
        study_report.Delta("Δ vs FedAvg (% of FedAvg's ppl)", "% vs FedAvg"),
        study_report.Delta("Δ vs the same arm on iid (% of its ppl)", "% vs iid"),
        study_report.Text("at plateau", plateau.get)], [name(*k) for k in final])
    return table_, {k: values[name(*k)]["% vs FedAvg"] for k in final}


def draw_side_by_side(pct: dict, out: Path) -> list[Path]:
    """``side_by_side``'s per-seed % changes as bars (mean ± sample sd), one panel per regime."""
    import matplotlib.pyplot as plt  # common.runs has chosen the Agg backend
    regimes = list(dict.fromkeys(k[0] for k in pct))
    labels = list(dict.fromkeys((p, a) for _, p, a in pct if a != "FedAvg"))
    fig, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 3.6), sharey=True, squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for j, part in enumerate(dict.fromkeys(p for p, _ in labels)):
            at = [i for i, (p, _) in enumerate(labels) if p == part]
            R.draw_seeds(ax, at, [list(pct.get((regime, *labels[i]), {}).values()) for i in at], label=part,
                         kind="bars", width=0.8, color=f"C{j}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(labels)), [a for _, a in labels], rotation=30, ha="right", fontsize=8)
        ax.set_title(regime, fontsize=10)
    axes[0][0].set_ylabel("final ppl vs FedAvg (%)\n(bar: mean, error bar: sample sd over seeds)")
    R.figure_legend(fig, axes[0], ncol=2)
    return R.savefig(fig, out)


def report(out_dir: Path, title: str | None = None, compare_dir: Path | None = None, write: bool = True) -> str:
    """The grid's report (its Markdown); ``write``: also report.md, arms.json and the side-by-side figure there."""
    runs, rounds, record = load_grid(out_dir)
    chosen = setting_of(record)
    lr, mus = chosen.get("learning_rate", 1.0), chosen.get("mu")
    steps = grid_steps(runs, rounds)
    a0 = next((r["args"] for r in runs if (r["args"].get("num_rounds"), r["args"].get("local_steps", LOCAL_STEPS),
                                           r["args"].get("learning_rate", lr)) == (rounds, steps, lr)), runs[0]["args"])
    regime = "a pretrained base fine-tuned with LoRA" if a0.get("lora_r") else "from scratch, every parameter"
    lines = [f"## {title or f'llm_noniid results, {regime}: {R.shown(out_dir)}'}", "",
             f"Data {a0.get('data')} ({R.shown(a0.get('data_dir')) or 'embedded'}), model {R.shown(a0.get('model'))} "
             f"(lora_r {a0.get('lora_r')}), {a0.get('num_clients')} clients, {a0.get('local_steps')} local "
             f"{a0.get('local_optimizer')} steps per client per round at lr {a0.get('learning_rate'):g}"
             f"{' (its peak: a cosine over the rounds)' if a0.get('lr_schedule') == 'cosine' else ''}, "
             f"{rounds} rounds (arms named '..., N rounds' run N). Mean ± sample sd over seeds (n when not every "
             "seed); Δ = paired difference to FedAvg on the same partition (same seeds, diverged ones left out) with "
             "its 95% t interval, the verdicts Holm-corrected over all the table's comparisons ('p_Holm = x over m'; "
             "'no difference after Holm over m; rules out > x': the simultaneous interval rules out effects larger "
             "than x; fewer than 3 seeds said after it); an arm whose every seed diverged is 'diverged', not "
             "compared. Compute: training tokens through forward/backward, as a multiple "
             f"of FedAvg's. At plateau: runs whose last {PLATEAU_TAIL:.0%} of evaluations improve on the best "
             f"validation perplexity before them by less than {PLATEAU_GAIN:.0%}.", ""]
    if "learning_rate" in chosen and mus:
        ran = record["runs"]
        lines += [f"Chosen on a selection split (10% of the training texts; seed {', '.join(map(str, ran['seeds']))}, "
                  f"{ran['rounds']} rounds; `selection.json` holds every score): FedAvg's rate "
                  f"{chosen['learning_rate']:g} on IID shards, FedProx mu " + ", ".join(
                      f"{v} ({k})" for k, v in mus.items()) + f". Base: `{R.shown(ran['base'])}`.", ""]
    lines += ["### Reference points", "", *references(runs), ""]
    groups = by_arm(runs, rounds, lr)
    # the figures label runs as the tables do (plot_llm_noniid.py --arms)
    if write:
        atomic_write_json(out_dir / ARMS_FILE, {r["name"]: list(k) for k, g in groups.items() for r in g
                                                if r["summary"]})
    for mode in ("headline", "failure", "main", "calibrate"):  # each grid's table of its own arms' runs
        sel = list({id(r): r for p, a, _ in arms(mode, rounds, mus, lr) for r in groups.get((p, a), [])}.values())
        if not sel:
            continue
        lines += [f"### {mode} grid", "", *table(sel, mode, rounds, lr, mus), ""]
        if mode == "headline":
            why = (f"each run's rate decays to 0 by its last round, so its last {PLATEAU_TAIL:.0%} look flat "
                   "whatever the budget; " if a0.get("lr_schedule") == "cosine" else "")
            lines += [f"Budget check: {why}the plateau is the budget at which twice the rounds"
                      f"{' (the rate decaying over all of them)' if why else ''} no longer help:", "",
                      *budget_table(groups, rounds), ""]
        if mode == "failure":
            lines += ["Equal compute (paired by seed, 95% t interval, verdicts Holm-corrected over the table; training "
                      "tokens more than 1 % apart are said after the verdict):", "",
                      *equal_compute_table(sel, rounds, lr), ""]
        if mode == "calibrate":  # what drift costs: the runs built to drift against FedAvg's as many local steps
            drift = [(p, a, "FedAvg") for p, a, _ in arms("calibrate", rounds, lr=lr)
                     if a.startswith(f"FedAvg, {8 * LOCAL_STEPS} local steps")]
            lines += ["The runs built to drift against FedAvg on the same shards, trained for about as many local "
                      "steps (paired by seed, 95% t interval, Holm over the table):", "",
                      *equal_compute_table(runs, rounds, lr, drift), ""]
    lines += ["### Does the split hurt", "", "Each arm on a non-iid partition against the same arm on iid shards "
              "(global validation perplexity, paired by seed, 95% t interval, verdicts Holm-corrected over the table):",
              "", *split_table(groups, rounds), ""]
    if compare_dir is not None:
        own, other = (runs, rounds, record), load_grid(compare_dir)
        grids = {"from scratch": other, "pretrained + LoRA": own} if "mu" in chosen else \
            {"from scratch": own, "pretrained + LoRA": other}
        mus = setting_of(grids["pretrained + LoRA"][2]).get("mu")
        md, pct = side_by_side(grids, mus)
        if write:
            draw_side_by_side(pct, out_dir / "figures" / "side_by_side.png")
        lines += ["### Side by side: the headline arms in both regimes", "",
                  f"FedProx at the mu the pretrained regime's selection chose ({mus}), in both regimes. "
                  "Figure: `figures/side_by_side.png`.", "", *md, ""]
    lines += ["### Failure detectors", "", *detector_table(runs, rounds, lr), "",
              f"Figures: `python {' '.join(figure_command(out_dir))}` (in figures/).", ""]
    text = "\n".join(lines) + "\n"
    if write:
        (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def figure_command(out_dir: Path) -> list[str]:
    return ["plots/plot_llm_noniid.py", "--runs", str(out_dir / "runs"), "--out", str(out_dir / "figures"),
            "--arms", str(out_dir / ARMS_FILE)]


def main(argv=None) -> dict:
    args, passthrough = get_args_parser().parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"]
    cli.check(args.mode in MODES, f"--mode {args.mode!r} is unknown; expected one of {', '.join(MODES)}")
    cli.check(args.regime in REGIMES, f"--regime {args.regime!r} is unknown; expected one of {', '.join(REGIMES)}")
    cli.check(args.regime == "pretrained" or args.mode != "select",
              "--mode select belongs to --regime pretrained (the from-scratch study keeps its one rate)")
    if args.out_dir is None:
        args.out_dir = "runs/llm_noniid_pretrained" if args.regime == "pretrained" else "runs/llm_noniid"
        if args.mode == "quick":  # its runs have the study's names at other evaluation points: not the same runs
            args.out_dir += "_quick"
    if args.regime == "pretrained" and args.split_csv is None:
        args.split_csv = str(SHARED_AG_NEWS)
    parse_seeds(args.seeds)
    out = cli.check_out_dir(args.out_dir)
    if args.mode == "analyze":
        print(report(out, args.title, Path(args.compare_dir) if args.compare_dir else None))
        drawn = jobs.draw(*figure_command(out))
        print(f"report: {out / 'report.md'}" + ("" if drawn else " (the figures failed: see the line above)"))
        return {"report": str(out / "report.md"), "figures": drawn}
    cli.check(args.split_csv is None or Path(args.split_csv).is_file(), f"--split-csv {args.split_csv}: no such file")
    if args.regime == "pretrained" and args.base:
        base_folder(args)  # a missing or unsafe --base is refused before the grid writes anything
    summaries = run_grid(args.mode, args, passthrough)
    return {"runs": len(summaries), "complete": sum(s["status"] == "complete" for s in summaries),
            "diverged": sum(s["status"] == "diverged" for s in summaries)}


if __name__ == "__main__":
    cli.run(main)
