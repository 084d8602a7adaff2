"""The whole suite, pretrain-then-federate: one cached base, a learning rate per setting chosen on validation,
then every setting for every seed, into one results table (mean ± sample sd, paired differences with 95%
intervals, Holm-corrected); it ends with the command that draws the figures.

    python vit_sparse_fl/run_all_experiments.py                       # runs/vit_suite_R192, 2 jobs of 1 thread
    python vit_sparse_fl/run_all_experiments.py --table-only          # the table again, from finished runs
    python vit_sparse_fl/run_all_experiments.py --smoke --out-dir /tmp/vit_smoke   # minutes: tiny budget
    python vit_sparse_fl/run_all_experiments.py --text              # MiniLM on AG News: runs/text_suite_R24

The suites (arms, seeds, selection, budgets, comparisons) are declared in ``studies.py`` and their tables written by
``report.py``; vit_sparse_fl/README.md's "The suite" says it in words. Runs go through ``common.jobs`` (finished runs
skipped, interrupted ones resumed; logs in <out-dir>/logs); <out-dir>/results.md and results.json are rewritten from
the run directories on every call. What stays here is the suite's own way of running:

* the pretrained base is a job of its own (``base_job_of``), cached by its settings, that every run fine-tuning it
  waits for (``jobs_of``); the --text suite has none (its encoder comes pretrained);
* the runs keep the names of the committed records (``<setting>_seed<n>``, not ``common.study.run_name``'s), so
  the suite plans them itself (``plan``);
* the reported runs' rates come from a selection stage run first (``select``): its runs are named
  ``<setting>_lr<rate>_seed<seed>`` in <out-dir>/selection, each setting's rate is chosen from whatever runs that
  folder holds (earlier calls' other --lr-grid rates too) and selection.json is rewritten after every stage,
  keeping the choices of settings outside --only (``choose``); a pick at the edge of the rates tried adds the next
  rate (``study.extended``, ``Design.edge_steps`` times);
* every run any stage may plan is checked by its script before the first one starts (``check_runs``);
* --smoke shrinks the studies' task flags in place, and results.json keeps every call that trained (``sessions``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

from common import cli, flags, jobs, study
from common.checkpoint import atomic_write_json, atomic_write_text
from vit_sparse_fl import pretrain, report, studies


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    parser.add_argument("--text", action="store_true",
                        help="the mask tables on real text instead: --weights (all-MiniLM-L6-v2) fine-tuned on "
                             "the AG News CSV files of --data-dir; presets "
                             + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in studies.TEXT_PRESET.items()))
    parser.presets = {"text": studies.TEXT_PRESET}
    parser.add_argument("--weights", default="minilm",
                        help="--text: the encoder, 'minilm' (the 'pretrained' extra) or a Hugging Face encoder folder")
    parser.add_argument("--data-dir", default=None,
                        help="--text: the folder holding AG News test.csv (default: shared/data/ag_news_csv "
                             "next to the repository)")
    parser.add_argument("--out-dir", type=flags.FOLDER, default=None,
                        help="parent folder of every run directory (default runs/vit_suite_R<rounds>, "
                             "--text: runs/text_suite_R<rounds>)")
    parser.add_argument("--num-runs", type=flags.POSITIVE_INT, default=studies.NUM_RUNS,
                        help="seeds 0..N-1 per setting")
    parser.add_argument("--rounds", type=int, default=studies.ROUNDS,
                        help="R: rounds of the J = 4 runs after the warm-up (a multiple of 4, for the J sweep)")
    parser.add_argument("--j-values", type=flags.POSITIVE_INT, nargs="+", default=list(studies.J_VALUES),
                        help="J sweep at R * J fixed (J = 4 is the FedAvg run of the shards)")
    parser.add_argument("--j-shards", nargs="+", default=list(studies.J_SHARDS), choices=["iid", "nc2"],
                        help="shards of the J sweep: IID, and Nc = 2 (where local steps cause client drift)")
    parser.add_argument("--nc-values", type=flags.Number(int, 1, studies.NUM_CLASSES), nargs="+",
                        default=list(studies.NC_VALUES),
                        help=f"Nc sweep (classes per client, at most the task's {studies.NUM_CLASSES})")
    parser.add_argument("--sparsities", type=flags.Number(float, 0, 1, low_open=True, high_open=True), nargs="+",
                        default=list(studies.SPARSITIES),
                        help="sparsity ratios of the mask-strategy comparison (IID and Nc = 2 shards)")
    parser.add_argument("--lr-grid", type=flags.POSITIVE, nargs="+", default=None,
                        help=f"rates the selection stage tries for every setting (default: {studies.VIT_GRID}; "
                             f"--text: per arm family, {studies.TEXT_GRIDS})")
    parser.add_argument("--select-seed", type=flags.SEED, default=studies.SELECT_SEED,
                        help="seed of the selection runs (apart from the reported seeds 0..N-1)")
    parser.add_argument("--lr", type=flags.POSITIVE, default=None,
                        help="skip the selection stage: this rate for every setting")
    parser.add_argument("--only", nargs="+", default=None, metavar="SETTING",
                        help="run only these settings (e.g. fedavg_iid fedavg_nc2 sparse_nc2_s0.9_random); the "
                             "table shows the others as not run")
    parser.add_argument("--jobs", type=flags.POSITIVE_INT, default=2, help="runs at a time (worker processes)")
    parser.add_argument("--threads", type=flags.POSITIVE_INT, default=1, help="torch threads per worker")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny budget (base 40 steps, 4 rounds, 1 seed) to check the pipeline in minutes")
    parser.add_argument("--table-only", action="store_true",
                        help="no training: the table from the runs (and the figures' command)")
    return parser


# ---------------------------------------------------------------------------------------------- the grid
def out_dir(args) -> Path:
    """--out-dir, else runs/vit_suite_R<rounds> (a run's name does not carry its rounds)."""
    return Path(args.out_dir or f"{studies.design(args).out_prefix}{args.rounds}")


def plan(args, base: str, rates: dict[str, float] | None = None, extra: dict[str, float] | None = None) -> list[dict]:
    """Every run: {name, setting, script, argv, seed, lr}. ``rates`` None: the selection runs (every rate of
    --lr-grid, or ``extra``'s one rate per setting); else the reported runs at each setting's rate, seed-major."""
    def run(name: str, setting: str, script: str, argv: list[str], seed: int, lr: float) -> dict:
        return {"name": name, "setting": setting, "script": script, "seed": seed, "lr": lr,
                "argv": [*argv, "--lr", f"{lr:g}", "--seed", str(seed)]}

    if rates is None:
        seed = args.select_seed
        return [run(f"{name}_lr{lr:g}_seed{seed}", name, script, argv, seed, lr)
                for name, script, argv in studies.settings(args, base, studies.select_rounds(args))
                for lr in (studies.lr_grid(args, name) if extra is None else [extra[name]] if name in extra else [])]
    return [run(f"{name}_seed{seed}", name, script, argv, seed, rates[name])  # the rate is in its args.json
            for seed in range(args.num_runs) for name, script, argv in studies.settings(args, base, args.rounds)]


def check_runs(args, out: Path, base: str, rates: dict[str, float] | None) -> None:
    """Every run of the suite checked by its script before the first one starts (``jobs.check_plan``): the
    selection runs and the reported runs at each rate the selection may choose (``rates``: --lr's, no selection)."""
    lr_grid = studies.lr_grid
    names = [name for name, _, _ in studies.settings(args, base, args.rounds)]
    picks = [rates] if rates else [{n: lr_grid(args, n)[min(i, len(lr_grid(args, n)) - 1)] for n in names}
                                   for i in range(max(len(lr_grid(args, n)) for n in names))]
    runs = ([] if rates else plan(args, base)) + [r for pick in picks for r in plan(args, base, pick)]
    jobs.check_plan(jobs_of(None, runs, out), f"{studies.design(args).name} suite")


def summaries(args, out: Path, setting: str) -> dict[float, dict | None]:
    """{rate: summary.json, None when unfinished} of every selection run of ``setting`` in <out>/selection, the
    grid's and any other rate tried there, by rate."""
    found = {}
    for folder in (out / "selection").glob(f"{setting}_lr*_seed{args.select_seed}"):
        f = folder / "summary.json"
        found[float(folder.name[len(setting) + 3:-len(f"_seed{args.select_seed}")])] = \
            json.loads(f.read_text()) if f.is_file() else None
    return dict(sorted(found.items()))


def choose(args, out: Path, base: str) -> dict[str, float]:
    """{setting: rate} from the selection runs (``studies.SELECTION``'s rule: a diverged or missing run is never
    chosen); every rate's score, the choice, its edge and the rates tried beyond the setting's grid in
    <out>/selection.json (``study.write_selection``), keeping the choices of settings outside this call's plan."""
    choices = {}
    for name, _, _ in studies.settings(args, base, studies.select_rounds(args)):   # every rate tried
        found = summaries(args, out, name)
        if not found:
            continue
        grid = studies.selection_grid(args, name)
        why = {lr: s["status"] for lr, s in found.items() if s and s.get("status", "complete") != "complete"}
        choices[name] = study.choice_record(grid, grid.pick({lr: [s] for lr, s in found.items()}),
                                            extended=[lr for lr in found if lr not in grid.values], why=why)
    record = study.write_selection(
        out / "selection.json", studies.study_name(args), studies.CRITERION, choices, keep=True,
        rounds=studies.select_rounds(args), seeds=[args.select_seed],
        grid=args.lr_grid or (studies.TEXT_GRIDS if args.text else studies.VIT_GRID))
    return {name: rate for name, rate in study.chosen(record).items() if rate is not None}


def select(args, out: Path, base: str, train) -> dict[str, float]:
    """The selection stage: every setting's rates (``plan``), then the next rate past each pick at the edge of the
    rates tried, ``Design.edge_steps`` times at most (``study.extended`` over each setting's ``selection_grid``), each
    stage ``train(runs, folder, stage)`` into <out>/selection and selection.json rewritten after it (``choose``).
    {setting: rate chosen}."""
    grids = {name: studies.selection_grid(args, name)
             for name, _, _ in studies.settings(args, base, studies.select_rounds(args))}
    asked: list[dict[str, list]] = []   # each stage's candidates

    def run(values: dict[str, list]) -> dict:
        if not asked:
            train(plan(args, base), out / "selection", "learning-rate selection")
        else:  # the rate study.extended added past a setting's edge (counted: it may equal a rate no run finished)
            extra = {name: lr for name, lrs in values.items() for lr in Counter(lrs) - Counter(asked[-1][name])}
            train(plan(args, base, extra=extra), out / "selection", f"rates beyond the grid's edge ({len(asked)})")
        asked.append({name: list(lrs) for name, lrs in values.items()})
        choose(args, out, base)
        return {name: {lr: [s] for lr, s in summaries(args, out, name).items()} for name in values}

    picks = study.extended(grids, run)
    return {name: p.value for name, p in picks.items() if p.value is not None}


def smoke(args) -> None:
    """--smoke: shrink every budget so the pipeline runs in minutes (numbers meaningless); the studies' task flags,
    which every setting and the base read when they are planned."""
    studies.BASE = [{"2000": "40", "1": "0"}.get(a, a) for a in studies.BASE]
    studies.TASK = [*studies.TASK, "--max-train", "1000", "--max-test", "500"]
    studies.TEXT_TASK = [*studies.TEXT_TASK, "--max-train", "400", "--max-test", "200"]
    args.rounds, args.num_runs = 4, 1


# ---------------------------------------------------------------------------------------------- running
def base_job_of(out: Path) -> jobs.Job:
    """The pretrained base (``pretrain.py``), done when base.pt exists at its settings' cache key."""
    argv = [*studies.BASE, "--cache-dir", str(out / "base_cache")]
    key = pretrain.cache_key(pretrain.base_settings(argv)[1])
    return jobs.Job("base", "vit_sparse_fl.pretrain", argv, output=out / "base_cache" / key / "base.pt",
                    label="pretrained base")


def jobs_of(base: jobs.Job | None, runs: list[dict], folder: Path) -> list[jobs.Job]:
    """The base (none for --text), then every run (those fine-tuning the base wait for it)."""
    return ([base] if base else []) + [jobs.Job(run["name"], studies.SCRIPTS[run["script"]],
                                                [*run["argv"], "--out-dir", str(folder), "--run-name", run["name"]],
                                                after=("base",) if base and str(base.output) in run["argv"] else ())
                                       for run in runs]


def saved_sessions(path: Path) -> list[dict]:
    """Training invocations of an earlier results.json (an older file's one wall time: one session of unknown size)."""
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if "sessions" in saved:
        return saved["sessions"]
    return [{"finished_at": "before sessions were recorded", "runs_trained": None, "only": None,
             "wall_seconds": saved["wall_seconds"]}] if saved.get("wall_seconds") is not None else []


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(args.rounds >= 4 and args.rounds % 4 == 0, f"--rounds must be a positive multiple of 4 (the J sweep "
                                                         f"divides it), got {args.rounds}")
    cli.check(studies.J in args.j_values, f"--j-values must contain J = {studies.J} (the FedAvg IID run)")
    cli.check(2 in args.nc_values, "--nc-values must contain 2 (the non-IID shards of the sparse runs)")
    if args.only:
        known = {name for name, _, _ in studies.settings(args, "BASE", 4, every=True)}
        cli.check(set(args.only) <= known, f"--only: unknown settings {sorted(set(args.only) - known)}; "
                                           f"the suite's are {', '.join(sorted(known))}")
    if args.smoke:
        smoke(args)
    out = cli.check_out_dir(out_dir(args))
    t0 = time.perf_counter()
    sessions = saved_sessions(out / "results.json")
    base_job = None if args.text else base_job_of(out)
    base = args.weights if args.text else str(base_job.output)
    if args.table_only and (out / "selection").is_dir():
        choose(args, out, base)                                 # selection.json from the selection runs
    if not args.table_only:
        trained: list[str] = []

        def train(runs: list[dict], folder: Path, stage: str) -> None:
            """Runs ``runs`` into ``folder``, counting those that trained."""
            title = f"{studies.design(args).name} suite: {stage}"
            outcome = jobs.run_plan(jobs_of(base_job, runs, folder), title=title, parallel=args.jobs,
                                    threads=args.threads, log_dir=out / "logs")
            trained.extend(outcome.names("finished", "diverged", "failed"))

        rates = {name: args.lr for name, _, _ in studies.settings(args, base, args.rounds)} if args.lr else None
        check_runs(args, out, base, rates)
        if rates is None:
            rates = select(args, out, base, train)
        missing = [name for name, _, _ in studies.settings(args, base, args.rounds) if name not in rates]
        if missing:
            print(f"stopped after the selection stage: no finished selection run for {', '.join(missing)} "
                  f"(logs in {out / 'logs'})")
        else:
            train(plan(args, base, rates), out, "reported runs")
        sessions.append({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs_trained": len(trained),
                         "only": args.only, "wall_seconds": time.perf_counter() - t0})
    text, record = report.make_table(args, out, base)
    # rewritten from the run directories on every call; results.json keeps every invocation that trained
    atomic_write_text(out / "results.md", text)
    atomic_write_json(out / "results.json", {"base": base, "num_runs": args.num_runs, "rounds": args.rounds,
                                             "design": dataclasses.asdict(studies.design(args)),
                                             "sessions": sessions, "table": record})
    print(text)
    for part in sessions:
        print(f"{part['finished_at']}: {part['runs_trained'] if part['runs_trained'] is not None else '?'} runs trained"
              f"{' (--only ' + ' '.join(part['only']) + ')' if part['only'] else ''} in {part['wall_seconds']:.0f} s")
    print(f"results: {out / 'results.md'}, {out / 'results.json'} (rewritten from the run directories)")
    # the figures are plots/'s: the suite names the command rather than starting it
    print(f"figures: python plots/plot_vit.py --runs-dir {out} --out {out / 'figures'}")
    return {"table": record, "results_md": str(out / "results.md"), "sessions": sessions}


if __name__ == "__main__":
    cli.run(main)
