"""Figures for llm_noniid from run directories (never trains).

    python plots/plot_llm_noniid.py --runs runs/llm_noniid/quick --out figures/llm_noniid/quick

Writes, per participation rate, ``ppl_curves_p<p>.png`` and ``divergence_curves_p<p>.png`` (one panel per
partition, one line per algorithm, mean +- std over seeds), ``final_ppl.png`` (bars with error bars over
seeds) and ``partition_<partition>.png`` (topic histogram per client and the per-client length spread).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import cli
from plots import runs as R

ALGO_ORDER = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadam")


def partition_label(args: dict) -> str:
    """iid | topic_skew a=0.01 | style_skew (length) | token_skew (frequency)."""
    p = args.get("partition", "?")
    if p == "topic_skew":
        return f"topic_skew a={args.get('alpha'):g}"
    if p == "style_skew":
        return f"style_skew ({args.get('style_criterion')})"
    if p == "token_skew":
        return f"token_skew ({args.get('token_skew')})"
    return p


def grouped(runs: list[dict]) -> dict[tuple, list[dict]]:
    """(participation, partition label, algorithm) -> runs of every seed."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        a = run["args"]
        out[(a.get("participation_rate"), partition_label(a), a.get("algorithm"))].append(run)
    return dict(out)


def _algo_key(name: str) -> int:
    return ALGO_ORDER.index(name) if name in ALGO_ORDER else len(ALGO_ORDER)


def plot_curves(runs: list[dict], key: str, ylabel: str, out: Path, log: bool = False) -> list[Path]:
    """One figure per participation rate: panels = partitions, lines = algorithms, bands = std over seeds."""
    import matplotlib.pyplot as plt

    groups, written = grouped(runs), []
    for p in sorted({k[0] for k in groups}):
        parts = sorted({k[1] for k in groups if k[0] == p})
        fig, axes = plt.subplots(1, len(parts), figsize=(4 * len(parts), 3.2), squeeze=False)
        for ax, part in zip(axes[0], parts):
            for algo in sorted({k[2] for k in groups if k[:2] == (p, part)}, key=_algo_key):
                g = groups[(p, part, algo)]
                x, m, s = R.mean_std(g, key)
                finite = np.isfinite(m)
                if not finite.any():
                    continue
                ax.plot(x[finite], m[finite], label=f"{algo} (n={len(g)})")
                ax.fill_between(x[finite], (m - s)[finite], (m + s)[finite], alpha=0.2)
            ax.set_title(part, fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        written += R.savefig(fig, out / f"{key}_curves_p{p:g}.png")
    return written


def plot_final(runs: list[dict], out: Path, key: str = "final_val_ppl") -> list[Path]:
    """Bars of the summary metric per (partition, algorithm), error bars = std over seeds."""
    import matplotlib.pyplot as plt

    groups = grouped([r for r in runs if r.get("summary")])
    if not groups:
        return []
    ps = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(1, len(ps), figsize=(6 * len(ps), 3.5), squeeze=False)
    for ax, p in zip(axes[0], ps):
        parts = sorted({k[1] for k in groups if k[0] == p})
        algos = sorted({k[2] for k in groups if k[0] == p}, key=_algo_key)
        width = 0.8 / max(len(algos), 1)
        for j, algo in enumerate(algos):
            stats = [R.summary_stats(groups.get((p, part, algo), []), key) for part in parts]
            ax.bar(np.arange(len(parts)) + j * width, [s[0] for s in stats], width,
                   yerr=[0 if math.isnan(s[1]) else s[1] for s in stats], label=algo, capsize=3)
        ax.set_xticks(np.arange(len(parts)) + width * (len(algos) - 1) / 2, parts, rotation=20, fontsize=7)
        ax.set_ylabel(key)
        ax.set_title(f"participation {p:g}")
        ax.legend(fontsize=7)
    return R.savefig(fig, out / f"{key.replace('final_val_', 'final_')}.png")


def plot_partition(run: dict, out: Path) -> list[Path]:
    """Topic histogram per client (stacked bars) and trained tokens per example (10/50/90 % quantiles)."""
    import matplotlib.pyplot as plt

    path = Path(run["path"]) / "partition.json"
    if not path.is_file():
        return []
    stats = json.loads(path.read_text())
    clients = stats["clients"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    if clients and clients[0].get("label_hist") is not None:
        hist = np.array([c["label_hist"] for c in clients])  # [K, classes]
        bottom = np.zeros(len(clients))
        for j in range(hist.shape[1]):
            a1.bar(range(len(clients)), hist[:, j], bottom=bottom, label=f"class {j}")
            bottom += hist[:, j]
        a1.legend(fontsize=6)
    a1.set_xlabel("client")
    a1.set_ylabel("examples")
    a1.set_title(f"{partition_label(run['args'])}: topics", fontsize=9)
    q = np.array([c["length_quantiles"] for c in clients])
    a2.errorbar(range(len(clients)), q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]], fmt="o", capsize=3)
    a2.set_xlabel("client")
    a2.set_ylabel("trained tokens / example (10-50-90 %)")
    a2.set_title(f"vocab Jaccard {stats.get('mean_vocab_jaccard', float('nan')):.2f}", fontsize=9)
    name = partition_label(run["args"]).replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
    return R.savefig(fig, out / f"partition_{name}.png")


def make_figures(runs_root: str | Path, out: str | Path) -> list[Path]:
    """Every figure for the runs under ``runs_root`` (searched recursively)."""
    runs = R.load_runs(runs_root, "**/*")
    cli.check(bool(runs), f"no run directories under {runs_root}; expected folders with args.json")
    out = Path(out)
    written = plot_curves(runs, "val_ppl", "validation perplexity", out, log=True)
    written += plot_curves(runs, "client_divergence_rel", "client divergence / ||theta||", out)
    written += plot_final(runs, out)
    seen = set()
    for run in runs:  # one partition figure per partition kind
        lab = partition_label(run["args"])
        if lab not in seen:
            seen.add(lab)
            written += plot_partition(run, out)
    return written


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--runs", default="runs/llm_noniid", help="folder holding llm_noniid run directories (recursive)")
    p.add_argument("--out", default="figures/llm_noniid", help="folder for the PNG figures")
    return p


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    written = make_figures(args.runs, args.out)
    for w in written:
        print(w)
    return {"figures": [str(w) for w in written]}


if __name__ == "__main__":
    cli.run(main)
