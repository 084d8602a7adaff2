"""The source's question on real WikiText-2 text, at the plateau: does federation close the gap to central
training of Mamba2 LMs, and does any aggregator (FedFisher above all) beat FedAvg? The study (arms, selection,
settings, seeds, budgets, plateau rule, comparisons) is declared in ``studies.py``; this script plans and runs it.

    python mamba_fl/real_grid.py                  # the headline (1 and 2 layers, contiguous shards)
    python mamba_fl/real_grid.py --block all      # + the other arms, topic shards, 16 clients, 4 layers
    python mamba_fl/real_grid.py --dry-run        # the commands, nothing run

Stages, through ``common.jobs`` (finished runs are skipped, interrupted ones resumed), into ``--out-dir``:
**split** (``split_wikitext.py``: 80 / 10 / 10 % of ``--data``'s articles; only reported runs read the test
articles, once, at the end); **selection** (seed ``studies.SELECTION_SEED``, 1 layer, validation only;
``selection.json``): each candidate of ``studies.CHOICES`` runs to the plateau rule, the lowest best validation
perplexity wins (a winner at the edge of its candidates adds the next value beyond it), and the best of the
``studies.OTHERS`` joins the headline; **plateau**: every arm until ``studies.PATIENCE`` evaluations (one pass) bring
no 1 % gain, its best-validation model scored on the test articles; **equal compute**: each run's best model of its
first ``--budget-epochs`` passes (``--budget-at``). A complete grid then prints the commands of its figures
(``plots/plot_mamba.py``) and tables (``python -m common.results --show mamba_fl.real-report --records
mamba_fl/results/real=<out-dir>``). mamba_fl/README.md has the design, the results and the other commands
(``--only``, ``--size source``, ``--selection``).

What stays here is what depends on the split and on the selection as it runs: the split, cut once and kept (a grid
goes on with the split it was cut from); each run's flags in the training blocks of that split (every arm evaluates
after the same blocks, so equal compute is an evaluation of every arm's curve); two selection phases, the second at
the rate the first chose for FedAvg, each extended past an edge as its runs come in; the source's arms (central,
central-b4, FedAvg, FedFisher), which need only the first phase's rates, run between the phases; and the best other
arm, known only after the second phase, joins the headline last.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import math
from pathlib import Path

from common import cli, flags, jobs, study
from mamba_fl import studies
from mamba_fl.run_grid import jobs_of

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2_tokenized"
GPT2 = ROOT.parent / "shared" / "data" / "gpt2_tokenizer"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description="mamba_fl on real WikiText-2 text at the plateau (runs, selection, tables)",
                           add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--data", nargs="+", default=[str(DATA / "valid.txt"), str(DATA / "test.txt")],
                   help="WikiText files whose articles are split (default: the tokenized valid and test splits "
                        "beside the repository)")
    p.add_argument("--size", choices=tuple(studies.SIZES), default="small",
                   help="small: a d_model-32 model on a 1,024-token BPE (the CPU grid); source: the source's "
                        "d_model-512 model on the GPT-2 tokenizer, 256-token blocks (a GPU's work)")
    p.add_argument("--tokenizer", default=str(GPT2) if GPT2.is_dir() else "gpt2",
                   help="with --size source: the GPT-2 tokenizer (a folder with vocab.json + merges.txt, or gpt2 from "
                        "the hub)")
    p.add_argument("--out-dir", type=flags.FOLDER, default=None,
                   help="folder of the split, the runs and selection.json (default: runs/mamba_real, "
                        "runs/mamba_real_source with --size source)")
    p.add_argument("--block", choices=("headline", "all"), default="headline",
                   help="headline: 1 and 2 layers, contiguous shards; all: + topic shards, 16 clients, 4 layers")
    p.add_argument("--jobs", type=flags.POSITIVE_INT, default=2, help="runs at a time (one thread each)")
    p.add_argument("--seeds", type=flags.SEED, nargs="+", default=list(studies.SEEDS), help="seeds of every arm")
    p.add_argument("--paired-seeds", type=flags.SEED, nargs="+", default=list(studies.PAIRED_SEEDS),
                   help="seeds of FedAvg and FedFisher at 1 and 2 layers (the source's claim; 4 layers: --seeds)")
    p.add_argument("--clients", type=flags.POSITIVE_INT, default=studies.CLIENTS,
                   help="clients, all taking part every round")
    p.add_argument("--batch-size", type=flags.POSITIVE_INT, default=studies.BATCH_SIZE,
                   help="blocks per optimizer step")
    p.add_argument("--eval-epochs", type=flags.EPOCHS, default=studies.EVAL_EPOCHS,
                   help="passes over the training blocks between evaluations (every arm alike)")
    p.add_argument("--max-epochs", type=flags.EPOCHS, default=studies.MAX_EPOCHS,
                   help="the cap of a plateau run, in passes over the training blocks")
    p.add_argument("--budget-epochs", type=flags.EPOCHS, default=studies.BUDGET_EPOCHS,
                   help="the equal-compute budget")
    p.add_argument("--select-at", choices=("plateau", "budget"), default=studies.SELECT_AT,
                   help="plateau: each selection run stops by the reported runs' plateau rule, so a rate is chosen "
                        "for where it is reported; budget: a fixed --select-epochs passes (cheaper, but favours "
                        "rates that learn fast and plateau higher)")
    p.add_argument("--select-epochs", type=flags.EPOCHS, default=studies.SELECT_EPOCHS,
                   help="with --select-at budget: the selection runs' length, in passes")
    p.add_argument("--extend", type=flags.COUNT, default=studies.EXTEND,
                   help="a choice at the edge of its candidates adds the next value beyond it, at most this many times")
    p.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                   help="train only the reported runs whose names match one of these shell patterns (e.g. "
                        "'*_L2_*': the 2-layer block); the selection runs first, the second phase's only when a "
                        "pattern names a run of its arms")
    p.add_argument("--selection", default=None, metavar="FILE",
                   help="the selection.json of an earlier grid (e.g. mamba_fl/results/real_source/selection.json): "
                        "a phase whose arms it chose is not selected again")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p


def model_flags(args) -> list[str]:
    """The model and tokenizer flags of every run of ``--size``."""
    tokenizer = ["--tokenizer", args.tokenizer] if args.size == "source" else []
    return [*studies.SIZES[args.size], *tokenizer, "--sample-tokens", "0"]


def split_flags(out: Path) -> list[str]:
    return ["--data-dir", str(out / "split"), "--cache-dir", str(out / "cache")]


def train_blocks(args, out: Path) -> int:
    """Training blocks of the split, as every run cuts them (the BPE tokenizer fitted here is the runs' cached
    one): the unit of ``--max-epochs``, ``--budget-epochs`` and ``--eval-epochs``."""
    from mamba_fl import central, lmdata

    run_args = cli.parse(central.get_args_parser(), [*model_flags(args), *split_flags(out), "--out-dir",
                                                     str(out / "runs")])
    return int(lmdata.load_lm_data(run_args).train.shape[0])


def steps_for(epochs: float, blocks: int, per_step: int) -> int:
    return max(1, math.ceil(epochs * blocks / per_step))


def arm_flags(args, arm: str, blocks: int, epochs: float, clients: int, per_round: int, plateau: bool,
              chosen: dict) -> tuple[str, list[str]]:
    """(script, flags) of one run of ``arm`` for ``epochs`` passes (the cap, with ``plateau``: then also
    ``--budget-at``, the equal-compute point). Every arm of a setting evaluates after the same number of training
    blocks (a multiple of the largest step, ``per_round`` clients' batches), so equal compute is an evaluation of
    every arm's curve."""
    b, central = args.batch_size, arm.startswith("central")
    per = b * (4 if arm == "central-b4" else 1) if central else per_round * b  # blocks an update (round) trains on
    quantum = math.lcm(4, per_round) * b
    every = steps_for(args.eval_epochs, blocks, quantum) * quantum // per
    at = round(args.budget_epochs / args.eval_epochs) * every  # the equal-compute point
    stop = ["--patience", str(studies.PATIENCE), "--budget-at", str(at)] if plateau else []
    lr = ["--lr", str(chosen.get("central" if central else "fedavg", {}).get("--lr", 1e-2))]
    if central:  # central-b4 takes central's rate
        return "central.py", ["--batch-size", str(per), "--max-steps", str(steps_for(epochs, blocks, per)),
                              "--val-freq", str(every), "--holdout-fraction", str(studies.HOLDOUT), "--holdout-clients",
                              str(clients), *lr, *stop]  # the federated clients' training blocks, no more
    script, extra = studies.FEDERATED[arm]
    local = studies.LOCAL_UPDATES.get(arm, 1)  # a client's round trains on b blocks whatever its number of steps
    cli.check(b % local == 0, f"--batch-size {b} does not split into the {local} local steps of {arm}")
    fl = ["--num-clients", str(clients), "--clients-per-round", str(per_round), "--batch-size", str(b // local),
          *(["--local-updates", str(local)] if local > 1 else []),
          "--rounds", str(steps_for(epochs, blocks, per)), "--eval-every", str(every),
          "--holdout-fraction", str(studies.HOLDOUT), *lr, *extra, *stop]
    for flag, value in chosen.get(arm, {}).items():
        if flag not in ("--lr", *extra):
            fl += [flag, str(value)]
    return script, fl


def selection_plan(args, out: Path, blocks: int, arms, chosen: dict, candidates: dict | None = None) -> list[jobs.Job]:
    """The selection runs of ``arms``: one per candidate (``candidates[arm]``, else ``CHOICES``)."""
    base = ["--layers", str(studies.SELECTION_LAYERS), "--seed", str(studies.SELECTION_SEED), *model_flags(args),
            *split_flags(out)]
    plan, plateau = [], args.select_at == "plateau"
    for arm in arms:
        flag, values = studies.CHOICES[arm][0], (candidates or {}).get(arm, studies.CHOICES[arm][1])
        for v in values:
            script, fl = arm_flags(args, arm, blocks, args.max_epochs if plateau else args.select_epochs,
                                   args.clients, args.clients, plateau, chosen | {arm: {flag: v}})
            fl += [] if arm.startswith("central") else ["--shard", studies.SELECTION_SHARD]
            plan.append((f"select_{arm}_{studies.candidate_name(flag, v)}", script, [*base, *fl]))
    return jobs_of(plan, out / "runs")


def records_of(plan: list[jobs.Job], candidates: dict | None = None) -> dict:
    """{arm: {candidate: [its run's summary.json, None if unfinished]}} of a selection plan."""
    records: dict = {}
    for j in plan:
        arm, setting = j.name.split("_")[1:3]
        flag, values = studies.CHOICES[arm][0], (candidates or {}).get(arm, studies.CHOICES[arm][1])
        value = next(v for v in values if studies.candidate_name(flag, v) == setting)
        records.setdefault(arm, {})[value] = [jobs.summary_of(j)]
    return records


def _why(summaries: list) -> str | None:
    """Why one candidate's selection run has no score (``choice_record``'s words): "missing" (not finished), its
    status ("diverged"), "diverged" for a perplexity that is not finite, "at or above the unigram" (refused by
    ``studies.below_unigram``); None for a run that scored."""
    s = summaries[0] if summaries else None
    if s is None:
        return "missing"
    if s.get("status", "complete") != "complete":
        return str(s["status"])
    ppl = s.get("best_val_ppl")
    if not (isinstance(ppl, (int, float)) and math.isfinite(ppl)):
        return "diverged"
    return None if studies.below_unigram(s) else "at or above the unigram"


def choices_of(picks: dict[str, study.Pick], records: dict, first: dict | None = None) -> dict:
    """selection.json's choices of ``picks`` {arm: its pick}, ``records`` the selection runs they were picked from
    (``records_of``): one setting per arm (its ``CHOICES`` flag; ``extended``: the candidates that are not
    ``first[arm]``'s, by default ``CHOICES``', i.e. added past an edge), and ``BEST_OTHER`` once every arm of
    ``OTHERS`` was picked: the best of them by its chosen candidate's score (``other_grid``; an arm with no choice
    cannot win)."""
    choices = {}
    for arm, p in picks.items():
        start = (first or {}).get(arm, studies.CHOICES[arm][1])
        why = {v: w for v, runs in records[arm].items() if (w := _why(runs))}
        choices[arm] = study.choice_record(studies.grid_of(arm), p, [v for v in p.scores if v not in start], why)
    others = studies.OTHERS
    if all(a in picks for a in others):
        scores = {a: [math.nan if picks[a].value is None else picks[a].scores[picks[a].value]] for a in others}
        choices[studies.BEST_OTHER] = study.choice_record(studies.other_grid(), studies.other_grid().choose(scores),
                                                          why={a: "no candidate scored" for a in others
                                                               if picks[a].value is None})
    return choices


def chosen_flags(choices: dict) -> dict:
    """{arm: {flag: value}} of selection.json's ``choices`` (the arms that chose a value): what ``arm_flags`` takes."""
    return {a: {studies.CHOICES[a][0]: c["chosen"]} for a, c in choices.items()
            if a in studies.CHOICES and c["chosen"] is not None}


def best_other(choices: dict) -> str | None:
    """The other arm the headline runs, as ``choices`` chose it (None: not chosen yet)."""
    return choices.get(studies.BEST_OTHER, {}).get("chosen")


def choose(plan: list[jobs.Job], candidates: dict | None = None, first: dict | None = None) -> dict:
    """``choices_of`` the finished selection runs of ``plan``, each arm chosen by ``study.choose``."""
    records = records_of(plan, candidates)
    return choices_of({arm: studies.grid_of(arm).pick(r) for arm, r in records.items()}, records, first)


def beyond_edge(values: list, best) -> list:
    """``values`` with the next candidate past ``best`` when ``best`` is at their edge (``study.beyond_edge``)."""
    nxt = study.beyond_edge(values, best)[1]
    return values if nxt is None else sorted([*values, nxt])


def select(args, out: Path, blocks: int, arms, chosen: dict, run) -> dict | None:
    """Run the selection of ``arms`` (at ``chosen``'s earlier choices, ``chosen_flags``), extending a candidate list
    whose best value lies at its edge (``--extend`` times at most, ``study.extended``); return its ``choices_of``,
    or None when runs are missing (a dry run, or an interrupted grid)."""
    grids, passes, records = {a: studies.grid_of(a, extend=args.extend) for a in arms}, [], {}

    def trained(candidates: dict) -> dict | None:
        sel = selection_plan(args, out, blocks, arms, chosen, candidates)
        outcome = run(sel, f"mamba_fl real text: selection of {', '.join(arms)}"
                           + (f" (extended {len(passes)}x)" if passes else ""))
        passes.append(candidates)
        # a dry run shows the runs still to do, and goes on past finished ones
        records.update(records_of(sel, candidates) if outcome.complete else {})
        return records if outcome.complete else None

    picks = study.extended(grids, trained)
    return None if picks is None else choices_of(picks, records)


def earlier_choice(given: dict, arms, second_phase: bool) -> dict | None:
    """The choices of ``arms`` in an earlier grid's selection.json (``--selection``, its checked ``choices``); None
    when it lacks the choice of one of them (or, in the second phase, the best other arm)."""
    settings = [*arms, *([studies.BEST_OTHER] if second_phase else [])]
    if not all(given.get(s, {}).get("chosen") is not None for s in settings):
        return None
    return {s: given[s] for s in settings}


def read_selection(path: str) -> dict:
    """``--selection``: an earlier grid's selection.json (``study.read_selection``: read strictly, no NaN, the one
    selection record's layout), its ``choices``: each setting an arm this grid chooses for, with that arm's
    ``CHOICES`` flag, a value chosen that is a finite number (a name for --fisher-method), and ``BEST_OTHER`` one of
    ``OTHERS``; the values are then checked by the scripts with every run (``check_runs``). A one-line
    ``UsageError`` naming the first problem otherwise."""
    try:
        record = study.read_selection(path, f"{path}: no such file")
    except cli.UsageError as e:
        raise cli.UsageError(f"--selection {e}") from None
    expected = f"--selection {path}: expected a selection.json of this grid"
    arms, best = studies.CHOICES, studies.BEST_OTHER
    for setting, choice in record["choices"].items():
        cli.check(setting in (*arms, best), f"{expected}; {setting!r} is no arm this grid chooses for "
                                            f"({', '.join(arms)}, or {best})")
        flag, values = arms[setting] if setting in arms else (studies.other_grid().flag, studies.OTHERS)
        value = choice["chosen"]
        kind = (str,) if isinstance(values[0], str) else (int, float)
        cli.check(choice["flag"] == flag and (value is None or type(value) in kind),
                  f"{expected}; {setting} chooses {flag} only, as a {'name' if kind == (str,) else 'number'}, got "
                  f"{choice['flag']} {value!r}")
        cli.check(setting != best or value in (None, *studies.OTHERS),
                  f"{expected}; {best} {value!r} is not one of {', '.join(studies.OTHERS)}")
    return record["choices"]


def check_runs(args, out: Path, blocks: int, given: dict) -> None:
    """Every run this grid may start, checked by its script before the first one starts (``jobs.check_plan``):
    the selection runs of both phases and the reported runs, at each candidate of every arm (or --selection's
    choice) and each best other arm; a problem that only a later stage's runs have is refused now, not after the
    earlier stages trained."""
    width = max(len(values) for _, values in studies.CHOICES.values())
    picks = [{arm: {flag: values[min(i, len(values) - 1)]} for arm, (flag, values) in studies.CHOICES.items()}
             | chosen_flags(given) for i in range(width)]
    plan = [j for chosen in picks for arms in studies.PHASES for j in selection_plan(args, out, blocks, arms, chosen)]
    plan += [j for chosen in picks for other in studies.OTHERS for j in reported_plan(args, out, blocks, chosen, other)]
    jobs.check_plan(plan, "mamba_fl real text")


def reported_plan(args, out: Path, blocks: int, chosen: dict, other: str | None = None) -> list[jobs.Job]:
    """The plateau runs (each with its equal-compute point) at ``chosen`` (``chosen_flags``): the headline with the
    best ``other`` arm (default the first of ``OTHERS``), and with ``--block all`` every other arm, the topic
    shards, 16 clients and the 4-layer model after them (``studies.reported_settings``, ``studies.reported_arms``)."""
    others = list(studies.OTHERS) if args.block == "all" else [other or studies.OTHERS[0]]
    plan = []
    for L, shard, k, m in studies.reported_settings(args.block, args.clients):
        for arm in studies.reported_arms(L, shard, k, args.clients, others):
            for s in (args.paired_seeds if studies.paired(arm, L) else args.seeds):
                base = ["--layers", str(L), "--seed", str(s), *model_flags(args), *split_flags(out)]
                if not arm.startswith("central"):
                    base += ["--shard", shard]
                script, fl = arm_flags(args, arm, blocks, args.max_epochs, k, m, True, chosen)
                name = studies.real_name(arm, studies.setting_of(L, shard, k, m))
                plan.append((f"{name}_plateau_s{s}", script, [*base, *fl, "--test"]))
    plan = jobs_of(plan, out / "runs")
    return plan if args.only is None else [j for j in plan if any(fnmatch.fnmatch(j.name, p) for p in args.only)]


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    for f in args.data:
        cli.check(Path(f).is_file(), f"--data {f}: no such file (the WikiText-2 files to split)")
    given = read_selection(args.selection) if args.selection else {}
    suffix = "_source" if args.size == "source" else ""  # the folders of --size source
    out, figures = cli.check_out_dir(args.out_dir or "runs/mamba_real" + suffix), "mamba_fl/results/real" + suffix
    if (out / "split" / "split.json").is_file():  # a grid goes on with its split: cut from these --data files
        split = cli.read_json(out / "split" / "split.json")
        sources = split.get("sources") if isinstance(split, dict) else None
        cli.check(isinstance(sources, list) and all(isinstance(s, dict) and "sha256" in s for s in sources),
                  f"{out / 'split' / 'split.json'} is not split_wikitext.py's record; remove {out / 'split'} to split "
                  "again")
        cut = [s["sha256"] for s in sources]
        cli.check(cut == [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in args.data],
                  f"{out / 'split'} was cut from other files than --data {' '.join(args.data)} (split.json); give "
                  "those, or another --out-dir")
    others_needed = True  # the second phase's selection: needed unless --only names none of its arms' runs
    if args.only:  # a pattern that names no run of this grid is a typo, refused before anything is written
        unfiltered = argparse.Namespace(**{**vars(args), "only": None})
        names = {j.name for other in studies.OTHERS for j in reported_plan(unfiltered, out, 1, {}, other)}
        unmatched = [p for p in args.only if not fnmatch.filter(names, p)]
        cli.check(not unmatched, f"--only {' '.join(unmatched)}: no run of this grid (--block {args.block}) has such a "
                                 f"name; they look like fedavg_L2_contiguous_k4m4_plateau_s0")
        others = [n for n in names if n.split("_")[0] in studies.OTHERS]
        others_needed = any(fnmatch.filter(others, p) for p in args.only)
    from mamba_fl import split_wikitext

    if not (out / "split" / "split.json").is_file():
        split_wikitext.main(["--raw", *args.data, "--valid-fraction", "0.1", "--test-fraction", "0.1",
                             "--shuffle-seed", "0", "--out-dir", str(out / "split")])
    blocks = train_blocks(args, out)
    check_runs(args, out, blocks, given)
    run = lambda plan, title, nxt="": jobs.run_plan(plan, parallel=args.jobs, log_dir=out / "logs",  # noqa: E731
                                                    dry_run=args.dry_run, title=title, next_step=nxt)
    choices: dict = {}  # selection.json's: {arm or BEST_OTHER: study.choice_record}
    copied: dict = {}   # what the choices of an earlier grid's --selection add to its runs
    for phase, arms in enumerate(studies.PHASES):
        if phase and not others_needed:
            break
        earlier = earlier_choice(given, arms, phase > 0)
        copied |= {"copied_from": args.selection} if earlier else {}
        found = earlier or select(args, out, blocks, arms, chosen_flags(choices), run)
        if found is None and not args.dry_run:
            return {"selection": "incomplete"}
        if found is not None:
            choices |= found
            if not args.dry_run:
                study.write_selection(out / study.SELECTION_FILE, f"mamba_fl real{suffix}", studies.criterion(args),
                                      choices, **studies.selection_runs(args), **copied)
            print(f"chosen on validation: {chosen_flags(choices)}; best other arm: {best_other(choices)}"
                  + "".join(f"; {a}'s choice is at the {c['edge']} edge of its candidates (raise --extend)"
                            for a, c in choices.items() if c["edge"]), flush=True)
        if phase == 0:  # the source's arms need only the first phase's rates: they run before the rest is chosen
            run([j for j in reported_plan(args, out, blocks, chosen_flags(choices)) if j.name.split("_")[0]
                 not in studies.OTHERS], "mamba_fl real text: central, FedAvg, FedFisher")
    block = "mamba_fl.source-report" if suffix else "mamba_fl.real-report"  # mamba_fl/results.py's tables
    tables = f"python -m common.results --show {block} --records {figures}={out}"
    # a complete grid prints its figure and table commands: plots/ runs as the user's own step, not from here
    commands = f"python plots/plot_mamba.py --runs {out / 'runs'} --out {figures}; {tables}"
    outcome = run(reported_plan(args, out, blocks, chosen_flags(choices), best_other(choices)), "mamba_fl real text",
                  commands)
    return {"chosen": chosen_flags(choices), studies.BEST_OTHER: best_other(choices), "complete": outcome.complete,
            "status": outcome.status}


if __name__ == "__main__":
    cli.run(main)
