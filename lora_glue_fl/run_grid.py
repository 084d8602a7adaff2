"""The README results grid: centralized LoRA vs FedAvg (svd / naive / exact) x (iid / category shards).

    python lora_glue_fl/run_grid.py --out-dir runs/lora_glue_grid --workers 2
    python plots/plot_lora_glue.py --runs runs/lora_glue_grid --out figures/lora_glue

Tasks: the embedded SST-2, MRPC and STS-B layouts (common.synthetic) and, when --real_data_dir holds them,
real GLUE SST-2 and MRPC. Each gets --train_samples labelled training examples drawn with a fixed seed, written
as a GLUE TSV folder (dev.tsv whole) so that every script reads it through the normal --data_dir reader.
Model: the tiny RoBERTa, first pretrained with --pretrain_mlm_steps masked-LM steps on the task's whole
training split used as unlabelled text (at most --pretrain_mlm_max_texts texts; one cached base per task,
shared by every method and seed: see lora_glue_fl/mlm.py), then LoRA on query/value + classifier head.
--pretrain_mlm_steps 0 gives the random base of the first table in the README. Every run is an ordinary
run directory; runs already finished are skipped, so the grid can be restarted.
"""
from __future__ import annotations

import csv
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from common import cli

TASKS = {  # name -> (task, source, max_seq_length)
    "syn-sst2": ("sst2", "synthetic", 64),
    "syn-mrpc": ("mrpc", "synthetic", 64),
    "syn-stsb": ("stsb", "synthetic", 64),
    "sst2": ("sst2", "glue_sst2", 64),
    "mrpc": ("mrpc", "glue_mrpc", 96),
}
METHODS = ("svd", "naive", "exact")
SHARDINGS = ("iid", "category")


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--out-dir", default="runs/lora_glue_grid", help="parent of all run directories")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="grid rows")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per cell")
    p.add_argument("--real_data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                   help="folder holding glue_sst2/ and glue_mrpc/ (real tasks are skipped when absent)")
    p.add_argument("--train_samples", type=int, default=500, help="training examples per task")
    p.add_argument("--eval_samples", type=int, default=200, help="validation examples per task")
    p.add_argument("--num_clients", type=int, default=4, help="clients K")
    p.add_argument("--rounds", type=int, default=4, help="FedAvg rounds")
    p.add_argument("--local_epochs", type=float, default=2.0,
                   help="local epochs per round (centralized runs train rounds x local_epochs epochs)")
    p.add_argument("--lora_r", type=int, default=8, help="client LoRA rank = svd rank")
    p.add_argument("--learning_rate", type=float, default=1e-2, help="AdamW rate (a random base needs a large one)")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size (clients and centralized)")
    p.add_argument("--pretrain_mlm_steps", type=int, default=1500,
                   help="masked-LM steps of the tiny base on the task's unlabelled training texts (0: random base)")
    p.add_argument("--pretrain_mlm_lr", type=float, default=5e-3, help="AdamW rate of the masked-LM stage")
    p.add_argument("--pretrain_mlm_max_texts", type=int, default=20000, help="unlabelled texts for it, at most")
    p.add_argument("--tasks_real_tokenizer", choices=["roberta", "bpe"], default="bpe",
                   help="real tasks: the RoBERTa-base tokenizer (50k tokens, slow masked-LM head) or a 2,000-token "
                        "BPE trained on the training texts like the embedded tasks")
    p.add_argument("--workers", type=int, default=1, help="processes running grid cells in parallel")
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


def cells(args) -> list[tuple[str, list[str]]]:
    """(script, argv) of every grid cell."""
    from lora_glue_fl import make_shards
    out = Path(args.out_dir)
    jobs = []
    from common import synthetic
    for name in args.tasks:
        task, source, seq = TASKS[name]
        if source == "synthetic":
            src = synthetic.ensure(f"glue-{task}")
        else:
            src = Path(args.real_data_dir) / source
            if not src.is_dir():
                print(f"skipping {name}: {src} not found")
                continue
        folder = subset_folder(src, out / "data" / f"{name}_{args.train_samples}", args.train_samples)
        data = ["--data_dir", str(folder)]
        tokenizer = (["--tokenizer", str(Path(args.real_data_dir) / "roberta_base_tokenizer")]
                     if source != "synthetic" and args.tasks_real_tokenizer == "roberta"
                     else ["--tokenizer_vocab_size", "2000"])
        if args.pretrain_mlm_steps > 0:  # one base per task in <out-dir>/mlm_cache, keyed by its settings
            # unlabelled texts: the real training split, or as many fresh sentences of the embedded generator
            mlm_src = src if source != "synthetic" else synthetic.ensure(f"glue-{task}",
                                                                         n_train=args.pretrain_mlm_max_texts)
            tokenizer += ["--pretrain_mlm_steps", str(args.pretrain_mlm_steps), "--pretrain_mlm_lr",
                          str(args.pretrain_mlm_lr), "--pretrain_mlm_data_dir", str(mlm_src),
                          "--pretrain_mlm_max_texts", str(args.pretrain_mlm_max_texts)]
        common_args = data + tokenizer + ["--task_name", task, "--model_size", "tiny", "--max_seq_length", str(seq),
                                          "--max_eval_samples", str(args.eval_samples), "--quiet",
                                          "--out-dir", str(out)]
        for seed in args.seeds:
            central = ["--do_train", "--do_eval", "--num_train_epochs", str(args.rounds * args.local_epochs),
                       "--learning_rate", str(args.learning_rate), "--lora_r", str(args.lora_r),
                       "--lora_alpha", str(args.lora_r),
                       "--per_device_train_batch_size", str(args.batch_size), "--seed", str(seed),
                       "--run-name", f"{name}_central_s{seed}"]
            jobs.append(("main_glue_lora", common_args + central))
            for sharding in SHARDINGS:
                shard_dir = out / "shards" / f"{name}_{sharding}_k{args.num_clients}_s{seed}"
                if not (shard_dir / "summary.json").is_file():
                    shard_argv = data + ["--no_plot", "--task_name", task, "--k", str(args.num_clients),
                                         "--mode", sharding, "--seed", str(seed), "--out_dir", str(shard_dir)]
                    if sharding == "category":
                        shard_argv += ["--category_key", "label"]
                    make_shards.main(shard_argv)
                for method in METHODS:
                    jobs.append(("fedavg_rounds", common_args + [
                        "--shard_dir", str(shard_dir), "--aggregation", method, "--rounds", str(args.rounds),
                        "--local_epochs", str(args.local_epochs), "--learning_rate", str(args.learning_rate),
                        "--lora_r", str(args.lora_r), "--lora_alpha", str(args.lora_r), "--svd_rank", str(args.lora_r),
                        "--eval_each_round", "--save_client_adapters", "last", "--batch_size", str(args.batch_size),
                        "--seed", str(seed), "--run-name", f"{name}_{method}_{sharding}_s{seed}"]
                        + (["--eval_clients"] if method == "svd" else [])))
    # seed-major order (an interrupted grid still has every cell for the first seeds), tasks interleaved so
    # that parallel workers start on different tasks instead of waiting for the same masked-LM base
    seed_of = lambda j: int(j[1][j[1].index("--seed") + 1])  # noqa: E731
    task_of = lambda j: j[1][j[1].index("--run-name") + 1].split("_")[0]  # noqa: E731
    count, keyed = {}, []
    for j in jobs:
        k = (seed_of(j), task_of(j))
        count[k] = count.get(k, 0) + 1
        keyed.append(((seed_of(j), count[k], args.tasks.index(task_of(j))), j))
    return [j for _, j in sorted(keyed, key=lambda kj: kj[0])]


def run_cell(job) -> str:
    script, argv = job
    import importlib
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    out_dir, run_name = argv[argv.index("--out-dir") + 1], argv[argv.index("--run-name") + 1]
    if (Path(out_dir) / run_name / "summary.json").is_file():
        return f"{run_name}: done before"
    t = time.time()
    mod = importlib.import_module(f"lora_glue_fl.{script}")
    s = mod.main(argv)
    return f"{run_name}: {s['main_metric']}={s['final'].get(s['main_metric'])} ({time.time() - t:.0f}s)"


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    jobs = cells(args)
    print(f"{len(jobs)} runs")
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for line in pool.imap_unordered(run_cell, jobs):
                print(line, flush=True)
    else:
        for job in jobs:
            print(run_cell(job), flush=True)
    return {"runs": len(jobs), "out_dir": args.out_dir}


if __name__ == "__main__":
    cli.run(main)
