"""The whole suite: centralized, FedAvg IID, the Nc sweep, the J sweep, sparse fine-tuning and the mask
strategy comparison, for --num-runs seeds, into one results table (mean +- std) and the figures.

    python vit_sparse_fl/run_all_experiments.py --quick --num-runs 3 --out-dir runs/vit_quick
    python vit_sparse_fl/run_all_experiments.py --full --num-runs 3 -- \
        --data cifar100 --data-dir data --weights dino_deitsmall16_pretrain.pth

Each experiment is the corresponding script's main() with that script's flags, so every run leaves its
own run directory under --out-dir; this file only chooses the settings and collects the summaries.
Writes <out-dir>/results.json, <out-dir>/results.md and the figures under <out-dir>/figures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common import cli
from common.checkpoint import atomic_write_json, atomic_write_text
from vit_sparse_fl import train_centralized
from vit_sparse_fl import train_federated as fed
from vit_sparse_fl import train_federated_sparse as fsp
from vit_sparse_fl.sparse import STRATEGIES


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="tiny ViT on the embedded data (minutes on a CPU)")
    mode.add_argument("--full", action="store_true", help="the paper-scale settings (a GPU and real data)")
    parser.add_argument("--num-runs", type=int, default=3, help="seeds 0..N-1 per setting")
    parser.add_argument("--out-dir", default="runs/vit_all", help="parent folder of every run directory")
    parser.add_argument("--nc-values", type=int, nargs="+", default=None,
                        help="Nc sweep (default 1 5 10 50; --quick: 1 2 5 10 of its 10 classes)")
    parser.add_argument("--j-values", type=int, nargs="+", default=[4, 8, 16], help="J sweep (rounds scaled)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES),
                        help="mask strategies to compare")
    parser.add_argument("--resume", action="store_true", help="pass --resume to every run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("extra", nargs="*",
                        help="further flags for every script, after '--' (e.g. -- --data-dir d)")
    return parser


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return float("nan"), 0.0
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(args.num_runs >= 1, f"--num-runs must be >= 1, got {args.num_runs}")
    nc_values = args.nc_values or ([1, 2, 5, 10] if args.quick else [1, 5, 10, 50])
    out = Path(args.out_dir)
    common = ["--quick"] if args.quick else []
    common += ["--out-dir", str(out)] + (["--resume"] if args.resume else [])
    common += ["--quiet"] if args.quiet else []
    common += list(args.extra)
    base_j = 4
    results: dict[str, list[float]] = {}

    def record(key: str, summary: dict) -> None:
        results.setdefault(key, []).append(summary["test_accuracy"])

    # ---------------------------------------------------------------- every setting, every seed
    for seed in range(args.num_runs):
        s = ["--seed", str(seed), *common]
        print(f"== seed {seed}: centralized", flush=True)
        record("centralized", train_centralized.main(s))
        print(f"== seed {seed}: FedAvg IID", flush=True)
        iid = fed.main([*s, "--local-steps", str(base_j)])
        record("fedavg_iid", iid)
        record(f"J={base_j}", iid)
        print(f"== seed {seed}: Nc sweep {nc_values}", flush=True)
        sweep = fed.main([*s, "--heterogeneity-experiment", "--nc-values", *map(str, nc_values)])
        for key, summ in sweep["results"].items():
            record(key, summ)
        others = [j for j in args.j_values if j != base_j]
        if others:
            print(f"== seed {seed}: J sweep {others} (J={base_j} is the IID run)", flush=True)
            sweep = fed.main([*s, "--local-steps", str(base_j), "--local-steps-experiment",
                              "--j-values", *map(str, others)])
            for key, summ in sweep["results"].items():
                record(key, summ)
        print(f"== seed {seed}: sparse fine-tuning, strategies {args.strategies}", flush=True)
        for strategy in args.strategies:
            record(f"sparse_{strategy}", fsp.main([*s, "--mask-strategy", strategy]))

    # ---------------------------------------------------------------- table
    labels = {"centralized": "Centralized", "fedavg_iid": f"FedAvg IID (J={base_j})",
              **{f"nc={v}": f"FedAvg non-IID Nc={v}" for v in nc_values},
              **{f"J={j}": f"FedAvg IID J={j} (rounds x J fixed)" for j in args.j_values},
              **{f"sparse_{s}": f"Sparse FedAvg, {s}" for s in STRATEGIES}}
    table = {k: {"mean": mean_std(v)[0], "std": mean_std(v)[1], "runs": v} for k, v in results.items()}
    lines = ["| setting | test accuracy (mean ± std) | runs |", "|---|---|---|"]
    for key, row in table.items():
        lines.append(f"| {labels.get(key, key)} | {100 * row['mean']:.1f} ± {100 * row['std']:.1f} % "
                     f"| {len(row['runs'])} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "results.md", text)
    atomic_write_json(out / "results.json",
                      {"mode": "quick" if args.quick else "full", "num_runs": args.num_runs, "table": table})
    print(text)
    if not args.no_plots:
        from plots import plot_vit
        plot_vit.main(["--runs-dir", str(out), "--out", str(out / "figures")])
    return {"table": table, "results_md": str(out / "results.md")}


if __name__ == "__main__":
    cli.run(main)
