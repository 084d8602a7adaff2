"""Figures of the vit_sparse_fl runs, read from their run directories (this script never trains).

    python plots/plot_vit.py --runs-dir runs/vit_quick --out runs/vit_quick/figures

vit_accuracy_vs_rounds.png   validation accuracy vs local steps (rounds x J): FedAvg (left), sparse (right)
vit_accuracy_vs_nc.png       test accuracy vs classes per client Nc (IID as a reference line)
vit_accuracy_vs_j.png        test accuracy vs local steps J at a fixed rounds x J budget
vit_strategies.png           test accuracy per mask strategy (bars: mean, error bars: std over seeds)
vit_mask_density.png         share of trainable coordinates per layer for each strategy
Curves and bars are means over seeds; bands and error bars are the standard deviation.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import cli
from plots import runs as R

FED, SPARSE, CENTRAL = "vit_sparse_fl/train_federated", "vit_sparse_fl/train_federated_sparse", \
    "vit_sparse_fl/train_centralized"


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument("--runs-dir", default="runs/vit_all", help="folder holding the run directories")
    parser.add_argument("--out", default=None, help="folder for the figures (default <runs-dir>/figures)")
    parser.add_argument("--pdf", action="store_true", help="also write PDF files")
    return parser


def setting(run: dict) -> str:
    a = run["args"]
    shard = "IID" if a.get("sharding") == "iid" else f"Nc={a.get('nc')}"
    if run["meta"].get("script") == SPARSE:
        return f"{a['mask_strategy']} ({shard})"
    return f"FedAvg {shard}, J={a.get('local_steps')}"


def order_key(run: dict) -> tuple:
    """IID first, then Nc ascending, then J ascending; strategies by name."""
    a = run["args"]
    return (a.get("mask_strategy") or "", a.get("sharding") != "iid", a.get("nc") or 0,
            a.get("local_steps") or 0)


def groups_by(runs: list[dict], key) -> dict:
    out = defaultdict(list)
    for r in runs:
        out[key(r)].append(r)
    return dict(out)


def bar_stats(groups: dict, x_of) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = sorted(groups, key=x_of)
    stats = [R.summary_stats(groups[x], "test_accuracy", ddof=1 if len(groups[x]) > 1 else 0) for x in xs]
    return np.array([x_of(x) for x in xs]), np.array([s[0] for s in stats]), np.array([s[1] for s in stats])


def layer_of(name: str) -> str:
    parts = name.split(".")
    if parts[1] == "blocks":
        return f"block {parts[2]}"
    return "final norm" if parts[1] == "norm" else "embed"


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    import matplotlib.pyplot as plt

    root = Path(args.runs_dir)
    cli.check(root.is_dir(), f"--runs-dir {root}: no such folder; "
                             "expected the --out-dir of the vit_sparse_fl runs")
    runs = [r for r in R.load_runs(root, "*") if r["summary"] is not None]
    fed = [r for r in runs if r["meta"].get("script") == FED]
    sparse = [r for r in runs if r["meta"].get("script") == SPARSE]
    cli.check(fed or sparse, f"--runs-dir {root}: no finished vit_sparse_fl federated runs found")
    out = Path(args.out) if args.out else root / "figures"
    written = []
    base_j = 4

    # ---------------------------------------------------------------- accuracy vs rounds
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, group, title in ((axes[0], fed, "FedAvg"), (axes[1], sparse, "Sparse FedAvg (mask strategies)")):
        groups = groups_by(group, setting)
        for name in sorted(groups, key=lambda n: order_key(groups[n][0])):
            members = groups[name]
            x, m, s = R.mean_std(members, "val_accuracy", x="step")
            if x.size:
                ax.plot(x, 100 * m, marker=".", label=f"{name} (n={len(members)})")
                ax.fill_between(x, 100 * (m - s), 100 * (m + s), alpha=0.15)
        ax.set(title=title, xlabel="local steps per client (rounds x J)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation accuracy (%)")
    written += R.savefig(fig, out / "vit_accuracy_vs_rounds.png", pdf=args.pdf)

    iid = [r for r in fed if r["args"]["sharding"] == "iid" and r["args"]["local_steps"] == base_j]
    iid_acc = R.summary_stats(iid, "test_accuracy")[0] if iid else None

    # ---------------------------------------------------------------- accuracy vs Nc
    nonfed = [r for r in fed if r["args"]["sharding"] == "non_iid"]
    if nonfed:
        x, m, s = bar_stats(groups_by(nonfed, lambda r: r["args"]["nc"]), lambda v: v)
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.errorbar(x, 100 * m, yerr=100 * s, marker="o", capsize=3, label="non-IID (pathological)")
        if iid_acc is not None:
            ax.axhline(100 * iid_acc, color="gray", ls="--", label="IID")
        ax.set(xscale="log", xlabel="classes per client Nc", ylabel="test accuracy (%)",
               title="FedAvg vs heterogeneity")
        ax.set_xticks(x, [str(int(v)) for v in x])
        ax.legend()
        written += R.savefig(fig, out / "vit_accuracy_vs_nc.png", pdf=args.pdf)

    # ---------------------------------------------------------------- accuracy vs J
    iid_all = [r for r in fed if r["args"]["sharding"] == "iid"]
    if len({r["args"]["local_steps"] for r in iid_all}) > 1:
        x, m, s = bar_stats(groups_by(iid_all, lambda r: r["args"]["local_steps"]), lambda v: v)
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.errorbar(x, 100 * m, yerr=100 * s, marker="o", capsize=3)
        ax.set(xscale="log", xlabel="local steps J (rounds x J fixed)", ylabel="test accuracy (%)",
               title="FedAvg IID vs local steps")
        ax.set_xticks(x, [str(int(v)) for v in x])
        written += R.savefig(fig, out / "vit_accuracy_vs_j.png", pdf=args.pdf)

    # ---------------------------------------------------------------- strategy comparison
    if sparse:
        by_strategy = groups_by(sparse, lambda r: r["args"]["mask_strategy"])
        names = sorted(by_strategy)
        stats = [R.summary_stats(by_strategy[n], "test_accuracy", ddof=1 if len(by_strategy[n]) > 1 else 0)
                 for n in names]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.bar(range(len(names)), [100 * s[0] for s in stats], yerr=[100 * s[1] for s in stats], capsize=4)
        if iid_acc is not None:
            ax.axhline(100 * iid_acc, color="gray", ls="--", label="dense FedAvg IID")
            ax.legend()
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set(ylabel="test accuracy (%)",
               title=f"mask strategies, sparsity {sparse[0]['args']['sparsity_ratio']:g}")
        written += R.savefig(fig, out / "vit_strategies.png", pdf=args.pdf)

        # ------------------------------------------------------------ mask density per layer
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for name in names:
            run = sorted(by_strategy[name], key=lambda r: r["args"]["seed"])[0]
            path = run["path"] / "mask_density.json"
            if not path.is_file():
                continue
            dens = json.loads(path.read_text())
            kept, total = defaultdict(float), defaultdict(float)
            for tensor, d in dens["per_tensor"].items():
                n = dens.get("numel", {}).get(tensor, 1)
                kept[layer_of(tensor)] += d * n
                total[layer_of(tensor)] += n
            layers = sorted(total, key=lambda k: (k != "embed", k == "final norm",
                                                  int(k.split()[-1]) if "block" in k else 0))
            ax.plot(range(len(layers)), [100 * kept[k] / total[k] for k in layers], marker="o", label=name)
            ax.set_xticks(range(len(layers)), layers, fontsize=8, rotation=30)
        ax.set(ylabel="trainable coordinates (%)", title="mask density per layer (seed 0)")
        ax.legend(fontsize=7)
        written += R.savefig(fig, out / "vit_mask_density.png", pdf=args.pdf)

    for p in written:
        print(p)
    return {"figures": [str(p) for p in written]}


if __name__ == "__main__":
    cli.run(main)
