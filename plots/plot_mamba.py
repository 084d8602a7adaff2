"""Figures of the mamba_fl runs, read from run directories (mean +- std over seeds).

    python plots/plot_mamba.py --runs runs --out figures/mamba

Writes whichever figures the runs found allow:
  central_vs_fedavg.png   validation perplexity vs training tokens, central and FedAvg, per depth
  local_updates.png       FedAvg with --local-updates 1 vs 8 (and any other values found), vs training tokens
  methods_<config>.png    FedAvg / FedMomentum / FedEntropy / FedFisher per round, one figure per depth
  depth_<method>.png      1 / 2 / 4 layers for each method (central included)
  deltas_<run>.png        heatmaps of the last server and client deltas, every layer (runs with --save-deltas)
  results.md              the README table: final/best perplexity per method and depth, mean +- std over seeds
  spectrum_<run>.png      singular values of the server delta per snapshot, and the final spectrum with the
                          rank holding 95% of the energy, every layer
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from plots import runs as R

METHODS = ("central", "fedavg", "fedmomentum", "fedentropy", "fedfisher")
GROUP_IGNORE = R.DEFAULT_GROUP_IGNORE + ("kernel_path", "rounds", "eval_every", "quick")


def _plt():
    import matplotlib.pyplot as plt
    return plt


def perplexity_curve(rows: list[dict], path, title: str = "", optimal: float | None = None) -> Path:
    """One run's validation perplexity per evaluation: the PNG each script leaves in its run directory.
    Kept cheap (linear axes, fixed layout, low dpi): it is drawn at the end of every run."""
    plt = _plt()
    x_key = "round" if rows and "round" in rows[0] else "step"
    evals = [r for r in rows if "val_ppl" in r]
    xs = [r[x_key] for r in evals]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(xs, [r["val_ppl"] for r in evals], marker="o", ms=3, label="per token")
    if evals and "val_ppl_word" in evals[0]:
        ax.plot(xs, [r["val_ppl_word"] for r in evals], marker="s", ms=3, label="per word")
    if optimal:
        ax.axhline(optimal, color="k", ls="--", lw=1, label=f"optimal per word ({optimal:.1f})")
    ax.set_xlabel(x_key)
    ax.set_ylabel("validation perplexity")
    ax.set_title(title, fontsize=7)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.16, bottom=0.15, right=0.97, top=0.9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _method(run: dict) -> str:
    return run["summary"].get("method") if run.get("summary") else run["name"].split("_")[0]


def _band(ax, group, key, x, label, scale=1.0):
    xs, mean, std = R.mean_std(group, key, x=x)
    if xs.size == 0:
        return
    ax.plot(xs * scale, mean, label=f"{label} (n={len(group)})")
    ax.fill_between(xs * scale, mean - std, mean + std, alpha=0.2)


def _finish(ax, xlabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _groups(runs, **match):
    sel = [r for r in runs if r.get("summary") and all(r["args"].get(k) == v for k, v in match.items() if k != "method")
           and ("method" not in match or _method(r) == match["method"])]
    return R.group_runs(sel, GROUP_IGNORE)


def comparison_figures(runs: list[dict], out: Path) -> list[Path]:
    plt, written = _plt(), []
    runs = [r for r in runs if not r["args"].get("save_deltas")]  # delta runs only feed delta_figures
    layers = sorted({r["args"].get("layers") for r in runs if r.get("summary")})
    # central vs FedAvg: x = training tokens, which both log
    fig, ax = plt.subplots(figsize=(6, 4))
    for L in layers:
        for m in ("central", "fedavg"):
            match = {"local_updates": 1} if m == "fedavg" else {}
            for _cfg, g in _groups(runs, method=m, layers=L, **match):
                _band(ax, g, "val_ppl", "tokens", f"{m} {L}L")
    _finish(ax, "training tokens", "central vs FedAvg")
    written += R.savefig(fig, out / "central_vs_fedavg.png")
    # local updates: same client compute (tokens), fewer rounds with more local steps
    fig, ax = plt.subplots(figsize=(6, 4))
    for cfg, g in _groups(runs, method="fedavg"):
        _band(ax, g, "val_ppl", "tokens", f"FedAvg {cfg['layers']}L, local updates {cfg['local_updates']}")
    _finish(ax, "training tokens", "local updates per round")
    written += R.savefig(fig, out / "local_updates.png")
    for L in layers:  # methods per depth
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in METHODS[1:]:
            for _cfg, g in _groups(runs, method=m, layers=L, local_updates=1):
                _band(ax, g, "val_ppl", "round", m)
        _finish(ax, "round", f"methods, pure_ssm_{L}_layer")
        written += R.savefig(fig, out / f"methods_pure_ssm_{L}_layer.png")
    for m in METHODS:  # depth per method
        fig, ax = plt.subplots(figsize=(6, 4))
        x = "step" if m == "central" else "round"
        for L in layers:
            for _cfg, g in (_groups(runs, method=m, layers=L) if m == "central"
                            else _groups(runs, method=m, layers=L, local_updates=1)):
                _band(ax, g, "val_ppl", x, f"{L} layer{'s' if L > 1 else ''}")
        _finish(ax, x, f"depth, {m}")
        written += R.savefig(fig, out / f"depth_{m}.png")
    return written


def rank_at_energy(s: np.ndarray, energy: float = 0.95) -> int:
    """Smallest r with sum_{i<r} s_i^2 >= energy * sum s_i^2 (s sorted descending)."""
    e = np.cumsum(s.astype(np.float64) ** 2)
    return int(np.searchsorted(e, energy * e[-1]) + 1) if e[-1] > 0 else 0


def delta_figures(run: dict, out: Path) -> list[Path]:
    """Heatmaps of the last deltas and singular-value plots for one run saved with --save-deltas."""
    files = sorted((run["path"] / "deltas").glob("*.npz"))
    if len(files) < 2:
        return []
    plt, written = _plt(), []
    last = np.load(files[-1])
    keys = sorted(k for k in last.files if "_delta/" in k and (k.startswith("server_delta/") or k.startswith("client")))
    if keys:
        cols = min(len(keys), 4)
        rows_ = -(-len(keys) // cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 2.6 * rows_), squeeze=False)
        for ax, k in zip(axes.flat, keys):
            a = last[k]
            a = a.reshape(a.shape[0], -1)
            lim = float(np.abs(a).max()) or 1.0
            ax.imshow(a, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(k, fontsize=6)
            ax.set_xticks([]), ax.set_yticks([])
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(f"{run['name']}: deltas at {files[-1].stem}", fontsize=8)
        written += R.savefig(fig, out / f"deltas_{run['name']}.png")
    # singular values of the server delta per snapshot, every layer/tensor
    server_keys = sorted(k[len("server_delta/"):] for k in last.files if k.startswith("server_delta/"))
    if server_keys:
        fig, axes = plt.subplots(2, len(server_keys), figsize=(3.2 * len(server_keys), 5.2), squeeze=False)
        cmap = plt.get_cmap("viridis")
        snaps = [np.load(f) for f in files]
        for j, key in enumerate(server_keys):
            ax, ax2 = axes[0, j], axes[1, j]
            for i, z in enumerate(snaps):
                if "server_delta/" + key in z.files:
                    a = z["server_delta/" + key]
                    s = np.linalg.svd(a.reshape(a.shape[0], -1), compute_uv=False)
                    ax.semilogy(s[:64], color=cmap(i / max(len(snaps) - 1, 1)), lw=1)
            ax.set_title(f"{key}\nserver delta spectra (dark->light: time)", fontsize=6)
            a = last["server/" + key]
            s = np.linalg.svd(a.reshape(a.shape[0], -1), compute_uv=False)
            r95 = rank_at_energy(s)
            ax2.semilogy(s)
            ax2.axvline(r95, color="r", ls="--", lw=1, label=f"rank@95% = {r95}/{len(s)}")
            ax2.set_title("final weights spectrum", fontsize=6)
            ax2.legend(fontsize=6)
        written += R.savefig(fig, out / f"spectrum_{run['name']}.png")
    return written


def results_table(runs: list[dict]) -> str:
    """Markdown: one row per method, per depth the final and best validation perplexity per token and the
    final per word, mean +- std over seeds (n), and the synthetic source's optimal perplexity per word."""
    # the table's runs: one local update per round, no delta snapshots (those are figure runs)
    runs = [r for r in runs if r["args"].get("local_updates", 1) == 1 and not r["args"].get("save_deltas")]
    layers = sorted({r["args"].get("layers") for r in runs if r.get("summary")})
    head = ["method"] + [f"{L}L {k}" for L in layers for k in ("final ppl", "best ppl", "final ppl/word")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    optimal = {r["summary"].get("optimal_ppl_word") for r in runs if r.get("summary")} - {None}
    for m in METHODS:
        cells = [m]
        for L in layers:
            group = [r for r in runs if r.get("summary") and _method(r) == m and r["args"].get("layers") == L]
            for key in ("final_val_ppl", "best_val_ppl", "final_val_ppl_word"):
                mean, std, n = R.summary_stats(group, key)
                cells.append(f"{mean:.1f} ± {std:.1f} ({n})" if n else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if optimal:
        lines.append(f"\nOptimal perplexity per word of the synthetic source: {', '.join(f'{o:.2f}' for o in optimal)}")
    return "\n".join(lines)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from common import cli

    p = cli.ArgumentParser(description="Figures of mamba_fl run directories", add_help=add_help)
    p.add_argument("--runs", nargs="+", default=["runs"], help="folders holding the run directories")
    p.add_argument("--pattern", default="*", help="glob of run directory names to include")
    p.add_argument("--out", default="figures/mamba", help="folder for the PNG files")
    return p


def main(argv=None) -> dict:
    from common import cli

    args = cli.parse(get_args_parser(), argv)
    runs = [r for root in args.runs for r in R.load_runs(root, args.pattern)
            if re.match(r"^(central|fedavg|fedmomentum|fedentropy|fedfisher)_", r["name"])]
    cli.check(bool(runs), f"no mamba_fl run directories under {args.runs} matching {args.pattern!r}")
    out = Path(args.out)
    written = comparison_figures(runs, out)
    for run in runs:
        written += delta_figures(run, out)
    table = results_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    print(table)
    for p in written:
        print(p)
    return {"figures": [str(p) for p in written], "table": table}


if __name__ == "__main__":
    from common import cli

    cli.run(main)
