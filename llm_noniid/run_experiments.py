"""Experiment grids for llm_noniid: every run not yet complete, ``--jobs`` at a time, then a report.

    python llm_noniid/run_experiments.py --mode failure --out-dir runs/llm_noniid/ag_news \\
        --split-csv ../shared/data/ag_news_csv/test.csv
    python llm_noniid/run_experiments.py --mode analyze --out-dir runs/llm_noniid/ag_news

The grids (``studies.arms``), the study setting they train (``studies.STUDY``; arms differ in one thing only), how
runs are shared, skipped and resumed (``common.jobs``, logs in <out-dir>/logs) and ``analyze``'s report
(``report.py``; it prints the figures' command): README ("Experiments: commands -> figures"). Flags after ``--``
(or unknown here) go to every train.py run. ``--split-csv FILE`` splits one AG News CSV 90/10 into <out-dir>/data
and trains on it; without it a grid keeps the split it holds, a new one uses synthetic AG News.

The studies are declared in ``studies.py``; what stays here is what ``common.jobs`` cannot plan from a declaration:
the AG News split made once per grid (``split_data``: every run of the grid trains on it, and a folder holding
another split is refused, never replaced); the pretrained regime's base, pretrained before any run and checked once
(``base_folder``); its selection in two phases (``select``: FedProx's mu per partition is chosen at the rate the
first phase chose, so the second phase's runs exist only after the first's are scored); and the run names
(``jobs_for``: train.py's own, ``_R<rounds>`` for an arm that only runs longer, extended only under a constant
rate).
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from common import cli, jobs, pretrained, runlog
from common import study as SD
from common.flags import FOLDER, POSITIVE_INT
from common.study import Grid, Pick
from llm_noniid import report, studies, train


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.add_argument("--mode", required=True, help=" | ".join(studies.MODES))
    p.add_argument("--regime", default="scratch", help="scratch: tiny-gpt2 trained from scratch, every parameter | "
                   "pretrained: LoRA on --base, the rate and FedProx's mu chosen on a selection split first")
    p.add_argument("--base", default=None, help="--regime pretrained: the causal LM folder (default: pretrain.py's "
                   "base with its default flags, pretrained into runs/llm_base on first use)")
    p.add_argument("--out-dir", type=FOLDER, default=None, help="root of the grid's runs, report and figures (default: "
                   "runs/llm_noniid, --regime pretrained: runs/llm_noniid_pretrained; --mode quick: + _quick)")
    p.add_argument("--rounds", type=POSITIVE_INT, default=None, help=f"rounds per run (unset: the study's "
                   f"{studies.ROUNDS}, pretrained {studies.PRETRAINED_ROUNDS}; quick 4)")
    p.add_argument("--seeds", default=studies.SEEDS, help="comma-separated seeds")
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
        rounds = args.rounds or studies.PRETRAINED_ROUNDS
        base = base_folder(args) if prepare else runlog.portable(args.base or "runs/llm_base")
        study = [*studies.PRETRAINED, "--model", base, "--learning-rate", str(setting["learning_rate"])]
    else:
        rounds, study = args.rounds or (4 if mode == "quick" else studies.ROUNDS), studies.STUDY
    setting, seeds = setting or {}, parse_seeds(args.seeds)
    grid = jobs_for([(part, arm, [*study, *studies.rounds_flags(rounds), *data, *flags], rounds)
                     for part, arm, flags in studies.arms(mode, rounds, setting.get("mu"),
                                                          setting.get("learning_rate", 1.0))],
                    seeds, passthrough, out / "runs")
    # the plateau's budget check (``studies.twins``, ``report.budget_table``)
    twice = [*study, *data, *studies.rounds_flags(2 * rounds)]
    grid += jobs_for([(part, f"{label}, {2 * rounds} rounds", [*twice, *split, *algo], rounds)
                      for part, split, arms_ in studies.twins(mode, setting.get("mu")) for label, algo in arms_],
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
    """--base, else pretrain.py's cached base with ``studies.BASE_FLAGS`` (pretrained on first use, about 7 min)."""
    if not args.base:
        from llm_noniid import pretrain

        args.base = str(pretrain.pretrained_base([*studies.BASE_FLAGS, "--cache-dir", "runs/llm_base", "--quiet"]))
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
    ``studies.SELECT_SEED``: FedAvg's rate on IID shards from ``studies.LR_GRID``, then FedProx's mu at that rate
    for each of ``studies.SELECT_PARTS``. Written to <out-dir>/selection.json (``common.study``'s record, every
    score; an incomplete one is completed); returns ``studies.setting_of`` it."""
    out = Path(args.out_dir)
    done, rounds = out / SD.SELECTION_FILE, max(1, (args.rounds or studies.PRETRAINED_ROUNDS) // 2)
    if done.is_file():
        try:
            record = SD.read_selection(done)
        except cli.UsageError as e:
            raise cli.UsageError(f"{e}; remove it to select again") from None
        ran = record["runs"]
        if ran.get("rounds") == rounds and runlog.portable(ran.get("base")) == base_folder(args) and \
                "learning_rate" in record["choices"] and \
                set(SD.chosen(record, "mu/")) == {p for p, _ in studies.SELECT_PARTS}:
            return studies.setting_of(record)
    from llm_noniid import data as D

    data = D.split_ag_news_csv(split_data(args.split_csv, out) / "train.csv", out / "select" / "data", 0.1, seed=1)
    study = [*studies.PRETRAINED, "--model", base_folder(args), "--data", "ag_news", "--data-dir", str(data),
             *studies.rounds_flags(rounds)]
    lr_arms = [("iid", f"FedAvg lr {lr}", [*study, "--learning-rate", lr, *studies.IID, *studies.FEDAVG], rounds)
               for lr in studies.LR_GRID]
    lr_scores = dict(zip(studies.LR_GRID, _selection_scores(lr_arms, args, passthrough, "learning rate")))
    lr, lr_pick = lowest(lr_scores, studies.LR_SELECTION)
    cli.check(lr is not None, f"selection: FedAvg diverged at every rate of {', '.join(studies.LR_GRID)}")
    # the second phase: FedProx at the rate the first chose, so planned only now
    mu_arms = [(part, f"FedProx mu={mu}", [*study, "--learning-rate", lr, *split, "--algorithm", "fedprox", "--mu",
                                           mu], rounds) for part, split in studies.SELECT_PARTS for mu in studies.MUS]
    scores = iter(_selection_scores(mu_arms, args, passthrough, "FedProx mu"))  # in mu_arms' order
    mu_scores = {part: {mu: next(scores) for mu in studies.MUS} for part, _ in studies.SELECT_PARTS}
    mu_picks = {part: lowest(v, studies.MU_SELECTION) for part, v in mu_scores.items()}
    failed = [part for part, (mu, _) in mu_picks.items() if mu is None]
    cli.check(not failed, f"selection: FedProx diverged at every mu of {', '.join(studies.MUS)} on "
                          f"{', '.join(failed)}")
    choices = {"learning_rate": SD.choice_record(studies.LR_SELECTION, lr_pick, why=words(lr_scores)),
               **{f"mu/{part}": SD.choice_record(studies.MU_SELECTION, pick, why=words(mu_scores[part]))
                  for part, (_, pick) in mu_picks.items()}}
    record = SD.write_selection(done, studies.SELECTION_STUDY, studies.CRITERION, choices, base=base_folder(args),
                                rounds=rounds, seeds=[studies.SELECT_SEED])
    setting = studies.setting_of(record)
    print(f"selection: learning rate {lr}, FedProx mu {setting['mu']} ({done})"
          + "".join(f"; {k} chosen at the {c['edge']} edge of its grid" for k, c in choices.items() if c["edge"]),
          flush=True)
    return setting


def lowest(scores: dict[str, float | str], grid: Grid) -> tuple[str | None, Pick]:
    """The value of ``grid`` (as its flag spells it) chosen from ``scores`` {value: final validation perplexity of
    its run, or a word saying why it has none} by ``grid``'s rule (``common.study``); None when no run scored."""
    pick = grid.choose({float(v): [math.nan if isinstance(s, str) else s] for v, s in scores.items()})
    return next((v for v in scores if float(v) == pick.value), None), pick


def words(scores: dict[str, float | str]) -> dict[str, str]:
    """{value: why it has no score} of ``scores`` (``common.study.choice_record``'s ``why``)."""
    return {v: s for v, s in scores.items() if isinstance(s, str)}


def _selection_scores(arms_: list[tuple], args, passthrough: list[str], title: str) -> list[float | str]:
    """Run a selection phase (``jobs_for``'s arms at ``studies.SELECT_SEED``, into <out-dir>/select/runs); its runs'
    final validation perplexity, or "diverged" (a diverged run, or one without a finite perplexity) or "not a result"
    (a run that ended otherwise). Stops before choosing if a run failed (no summary): a choice made without it would
    be written to selection.json and never revisited."""
    grid = jobs_for(arms_, [studies.SELECT_SEED], passthrough, Path(args.out_dir) / "select" / "runs")
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
        jobs.check_plan([j for lr in studies.LR_GRID for j in plan(mode, args, passthrough,
                                                                   {"learning_rate": float(lr)}, prepare=False)],
                        f"{mode} grid")
    setting = select(args, passthrough) if args.regime == "pretrained" else None
    return [] if mode == "select" else run_jobs(plan(mode, args, passthrough, setting), args, f"{mode} grid")


def main(argv=None) -> dict:
    args, passthrough = get_args_parser().parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"]
    cli.check(args.mode in studies.MODES, f"--mode {args.mode!r} is unknown; expected one of "
                                          f"{', '.join(studies.MODES)}")
    cli.check(args.regime in studies.REGIMES, f"--regime {args.regime!r} is unknown; expected one of "
                                              f"{', '.join(studies.REGIMES)}")
    cli.check(args.regime == "pretrained" or args.mode != "select",
              "--mode select belongs to --regime pretrained (the from-scratch study keeps its one rate)")
    if args.out_dir is None:
        args.out_dir = "runs/llm_noniid_pretrained" if args.regime == "pretrained" else "runs/llm_noniid"
        if args.mode == "quick":  # its runs have the study's names at other evaluation points: not the same runs
            args.out_dir += "_quick"
    if args.regime == "pretrained" and args.split_csv is None:
        args.split_csv = str(studies.SHARED_AG_NEWS)
    parse_seeds(args.seeds)
    out = cli.check_out_dir(args.out_dir)
    if args.mode == "analyze":
        print(report.report(out, args.title, Path(args.compare_dir) if args.compare_dir else None))
        # the figures are plots/'s to draw (a grid starts no figure script): their command, the report's next step
        figures = f"python {' '.join(report.figure_command(out))}"
        print(f"report: {out / 'report.md'}\nfigures: {figures}")
        return {"report": str(out / "report.md"), "figures": figures}
    cli.check(args.split_csv is None or Path(args.split_csv).is_file(), f"--split-csv {args.split_csv}: no such file")
    if args.regime == "pretrained" and args.base:
        base_folder(args)  # a missing or unsafe --base is refused before the grid writes anything
    summaries = run_grid(args.mode, args, passthrough)
    return {"runs": len(summaries), "complete": sum(s["status"] == "complete" for s in summaries),
            "diverged": sum(s["status"] == "diverged" for s in summaries)}


if __name__ == "__main__":
    cli.run(main)
