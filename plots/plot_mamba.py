"""Figures of the mamba_fl runs, read from run directories (mean ± sample sd over seeds); their tables are
mamba_fl/results.py's results blocks, written from the same run directories by ``common.results``.

    python plots/plot_mamba.py --runs runs/mamba_grid --out mamba_fl/results/synthetic_grid

real_grid.py's runs (``<arm>_L<layers>_<shard>_k<K>m<M>_plateau_s<seed>``): real_L<l>_<shard>_<k>_<stage>.png
(validation curves, one line per seed, a dot at each run's best model); their tables (test perplexity of each
best-validation model, paired differences to FedAvg, Holm within a table, the plateau rule's outcome) are
results_real.md's block: ``python -m common.results --show mamba_fl.real-report --records
mamba_fl/results/real=<real_grid.py's out-dir>`` (``mamba_fl.source-report`` and ``mamba_fl/results/real_source``
for a ``--size source`` grid).
run_grid.py's runs (``<arm>_L<layers>_<shard>_s<seed>``): the curves of every arm against training sequences,
grid_L<layers>_<shard>.png, variants.png (FedAvg's client optimizers), long_budget.png; their tables are
mamba_fl/results_synthetic.py's README blocks (``python -m common.results --show mamba_fl.synthetic-tables
--records mamba_fl/results/synthetic_grid/runs=<the runs' folder>``). Any --save-deltas run: deltas_<run>.png
(heatmaps of the last deltas, every layer) and spectrum_<run>.png (singular values of the server delta per snapshot;
the final spectrum's rank at 95% of the energy). Every other finished run (a --quick run, a run of its own):
runs.png, its validation perplexity against training sequences, one line per run, with its reference points.
Nothing is written when no folder holds a finished mamba_fl run (one line, exit 2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common import cli
from common import runs as R
from common.curves import _plt, reference_lines
from plots import shared


def rank_at_energy(s: np.ndarray, energy: float = 0.95) -> int:
    """Smallest r with sum_{i<r} s_i^2 >= energy * sum s_i^2 (s sorted descending)."""
    e = np.cumsum(s.astype(np.float64) ** 2)
    return int(np.searchsorted(e, energy * e[-1]) + 1) if e[-1] > 0 else 0


def delta_figures(run: dict, out: Path) -> list[Path]:
    """Heatmaps of the last deltas and singular-value plots for one run saved with --save-deltas."""
    files = sorted((run["path"] / "deltas").glob("*.npz"))
    if len(files) < 2:
        print(f"skipped the delta figures of {run['name']}: {len(files)} snapshot(s) in deltas/, 2 needed")
        return []
    plt, written = _plt(), []
    last = np.load(files[-1])
    keys = sorted(k for k in last.files if "_delta/" in k)  # server_delta/... and client<i>_delta/...
    if keys:
        cols = min(len(keys), 4)
        rows_ = -(-len(keys) // cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 2.6 * rows_), squeeze=False)
        for ax, k in zip(axes.flat, keys):
            a = _matrix(last[k])
            lim = float(np.abs(a).max()) or 1.0
            im = ax.imshow(a, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
            ax.set_title(k, fontsize=6)
            ax.set_xlabel("input dim", fontsize=5)
            ax.set_ylabel("output dim", fontsize=5)
            ax.tick_params(labelsize=5)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(f"{run['name']}: deltas at {files[-1].stem}", fontsize=8)
        written += R.savefig(fig, out / f"deltas_{run['name']}.png")
    # singular values of the server delta per snapshot, every layer/tensor
    server_keys = sorted(k[len("server_delta/"):] for k in last.files if k.startswith("server_delta/"))
    if server_keys:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        fig, axes = plt.subplots(2, len(server_keys), figsize=(3.2 * len(server_keys), 5.2), squeeze=False)
        cmap = plt.get_cmap("viridis")
        snaps = [np.load(f) for f in files]
        for j, key in enumerate(server_keys):
            ax, ax2 = axes[0, j], axes[1, j]
            for i, z in enumerate(snaps):
                if "server_delta/" + key in z.files:
                    s = np.linalg.svd(_matrix(z["server_delta/" + key]), compute_uv=False)
                    ax.semilogy(s[:64], color=cmap(i / max(len(snaps) - 1, 1)), lw=1)
            s = np.linalg.svd(_matrix(last["server/" + key]), compute_uv=False)
            r95 = rank_at_energy(s)
            ax2.semilogy(s)
            ax2.axvline(r95, color="r", ls="--", lw=1, label=f"rank@95% = {r95}/{len(s)}")
            ax2.legend(fontsize=6)
            for a_, title in ((ax, f"{key}\nserver delta spectra (dark->light: time)"),
                              (ax2, "final weights spectrum")):
                a_.set_title(title, fontsize=6)
                a_.set_xlabel("singular value index", fontsize=6)
                a_.set_ylabel("singular value", fontsize=6)
                # plain numbers at 1, 2, 5 x 10^k: no "6x10^-2"-style minor labels
                a_.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                a_.yaxis.set_minor_locator(LogLocator(subs="auto"))
                a_.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
                a_.yaxis.set_minor_formatter(NullFormatter())
                a_.tick_params(labelsize=6)
        written += R.savefig(fig, out / f"spectrum_{run['name']}.png")
    return written


def _matrix(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1)


ARMS = ("central", "central-b4", "fedavg", "fedavgm", "fedmom-ema", "fedentropy", "fedfisher")
VARIANT_ARMS = ("central", "fedavg", "fedavg-reset", "fedavg-sgd", "fedavg-lu8")
ARM_LABELS = {
    "central": "central AdamW (FedAvg's optimizer steps, in sequence)",
    "central-b4": "central, 4x batch (FedAvg's sequential updates)",
    "fedavg": "FedAvg (client AdamW, persistent moments)",
    "fedavgm": "FedAvgM heavy-ball (Flower)",
    "fedmom-ema": "FedMomentum EMA (the source)",
    "fedentropy": "FedEntropy",
    "fedfisher": "FedFisher",
    "fedavg-reset": "FedAvg, fresh AdamW every round",
    "fedavg-sgd": "FedAvg, plain local SGD",
    "fedavg-lu8": "FedAvg, 8 local steps x rounds/8",
    "central-long": "central AdamW, longer budget",
    "fedavg-long": "FedAvg, longer budget",
    "fedfisher-long": "FedFisher, longer budget",
}
LONG_ARMS = ("central-long", "fedavg-long", "fedfisher-long")
_STYLE = {a: (m, ls) for a, m, ls in zip(ARM_LABELS, "osD^v<>XposDh", ["-", "--", "-.", ":"] * 4)}


def grid_runs(root) -> list[dict]:
    """The finished runs of a grid folder (named ``<arm>_L<layers>_...``), each with "arm", "layers" and "shard"
    added; a run without what the tables read (an unfinished one) is left out with a line."""
    out = []
    for run in R.with_keys(R.load_runs(root, "*_L*_s*"), "the mamba grid", args={"layers": int, "sequence_length": int},
                           summary={"final_val_ppl": R.NUMBER}):
        if real_setting(run["name"]) is None:  # real_grid.py's runs have their own report
            arm = run["name"].split("_")[0]
            out.append(run | {"arm": arm, "layers": run["args"].get("layers"),
                              "shard": "all" if arm.startswith("central") else run["args"].get("shard")})
    return out


def _select(runs, arm, layers, shard):
    return [r for r in runs if r["arm"] == arm and r["layers"] == layers and (arm.startswith("central")
                                                                             or r["shard"] == shard)]


def _refs(run) -> dict:
    return {k: run["summary"].get(k) for k in ("uniform_ppl", "unigram_ppl", "unigram_ppl_word", "optimal_ppl_word")}


def _curves(runs, arms, layers, shard, path, title) -> list[Path]:
    """Mean over seeds per arm (line) and the range over seeds (band: positive, so a log axis shows it)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 4.3))
    drawn, seeds = [], []  # the first run and the [seeds, points] values of each arm drawn
    for arm in arms:
        group = []
        for r in _select(runs, arm, layers, shard):
            if np.isfinite(r["summary"]["final_val_ppl"]):
                group.append(r)
            else:
                print(f"{Path(path).name}: left out {r['name']}: its final perplexity is not finite (diverged)")
        xs, ys = R.aligned(group, "val_ppl", "tokens") if group else ((), ())
        if len(xs):
            marker, ls = _STYLE.get(arm, ("o", "-"))
            R.draw_seeds(ax, xs / group[0]["args"]["sequence_length"], ys.T, ARM_LABELS.get(arm, arm),
                         spread="range", marker=marker, ls=ls, ms=4)
            drawn.append(group[0])
            seeds.append(ys)
    if not drawn:
        plt.close(fig)
        print(f"skipped {Path(path).name}: no finished runs for {title}")
        return []
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    spread = R.spread_note(seeds, "bands: range over seeds (min to max)")
    return _finish_curves(fig, ax, _refs(drawn[-1]), f"{title}\nlines: mean over seeds; {spread}", path)


def _finish_curves(fig, ax, refs: dict, title: str, path, legend_ax=None) -> list[Path]:
    """The per-token reference lines (the source's optimum is per word and has no place on this axis: the
    tables state it), a log axis reaching the uniform guess, labels, the legend (right of ``legend_ax``, default
    ``ax``); saved to ``path``."""
    reference_lines(ax, {k: refs.get(k) for k in ("uniform_ppl", "unigram_ppl")})
    ax.set_yscale("log")
    if refs.get("uniform_ppl"):
        ax.set_ylim(0.8 * ax.get_ylim()[0], 1.5 * refs["uniform_ppl"])
    ax.set_xlabel("training sequences seen (all clients together)")
    ax.set_ylabel("validation perplexity per token (log)")
    ax.set_title(title, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    (legend_ax or ax).legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                             framealpha=0.9)
    return R.savefig(fig, path)


def grid_figures(root, figures) -> list[Path]:
    """The grid's figures, into ``figures``: one per depth and shard, FedAvg's variants, the longer budget."""
    root, figures = Path(root), Path(figures)
    runs = grid_runs(root)
    layers = sorted({r["layers"] for r in runs})
    shards = sorted({r["shard"] for r in runs if not r["arm"].startswith("central")})
    counts = sorted({str(r["args"].get("num_clients")) for r in runs if not r["arm"].startswith("central")})
    clients = f"{'/'.join(counts)} clients"
    written = []
    for L in layers:
        for shard in shards:
            title = f"Mamba2 {L} layer{'s' if L > 1 else ''}, {clients}, {shard} shards (synthetic WikiText)"
            written += _curves(runs, ARMS, L, shard, figures / f"grid_L{L}_{shard}.png", title)
    if any(r["arm"] in VARIANT_ARMS[2:] for r in runs):
        L, shard = min(layers), next((s for s in shards if any(
            r["arm"] in VARIANT_ARMS[2:] and r["shard"] == s for r in runs)), shards[0])
        written += _curves(runs, VARIANT_ARMS, L, shard, figures / "variants.png",
                           f"FedAvg's client optimizer and local work, {L} layer, {shard} shards")
    if any(r["arm"] in LONG_ARMS for r in runs):
        L = min(r["layers"] for r in runs if r["arm"] in LONG_ARMS)
        written += _curves(runs, LONG_ARMS, L, "topic", figures / "long_budget.png",
                           f"longer budget, {L} layer, topic shards")
    return written


REAL_ARMS = ("central", "central-b4", "fedavg", "fedfisher", "fedfisher-local", "fedentropy", "fedavgm")
REAL_LABELS = ARM_LABELS | {"central": "central AdamW", "fedfisher": "FedFisher (per-example Fisher)",
                            "fedfisher-local": "FedFisher (--fisher-method local)"}


def real_setting(name: str) -> tuple | None:
    """(layers, shard, clients tag, stage) of a real-text grid run name, else None."""
    parts = name.split("_")
    if len(parts) == 6 and parts[4] == "plateau" and parts[1].startswith("L"):
        return int(parts[1][1:]), parts[2], parts[3], parts[4]
    return None


def _real_curves(groups: dict, path: Path, title: str) -> list[Path]:
    """Validation perplexity against sequences seen, one thin line per seed, a dot at each run's best model, a
    dotted line at the equal-compute point; left the whole run down from the uniform guess (log), right the
    plateau on a linear axis (from half the shortest run on, where the arms' gaps are a few percent)."""
    plt = _plt()
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 4.3), gridspec_kw={"width_ratios": [1, 1]})
    refs, ends, best, budget = {}, [], [], []
    for arm, g in groups.items():
        colour = f"C{REAL_ARMS.index(arm)}" if arm in REAL_ARMS else None  # an arm's colour alike in every figure
        for i, r in enumerate(g):
            x, y = R.series(r, "val_ppl", "tokens")
            if not x.size:
                continue
            x = x / r["args"]["sequence_length"]
            j = int(np.argmin(y))
            for a in (ax, zoom):
                line, = a.plot(x, y, lw=1, alpha=0.8, color=colour,
                               label=f"{REAL_LABELS.get(arm, arm)} (n={len(g)})" if i == 0 and a is ax else None)
                colour = line.get_color()
                a.plot([x[j]], [y[j]], "o", ms=4, color=colour)
            ends, best = ends + [float(x[-1])], best + [float(y[j])]
            refs = _refs(r)
            at = r["summary"].get("budget_at")
            unit = "step" if "steps_done" in r["summary"] else "round"
            budget = [row["tokens"] / r["args"]["sequence_length"] for row in r["rows"]
                      if row.get(unit) == at and "tokens" in row]
    if not refs:
        plt.close(fig)
        return []
    for a in (ax, zoom):
        if budget:
            a.axvline(budget[0], ls="--", color="0.6", lw=1, label="equal compute (--budget-at)" if a is ax else None)
        a.xaxis.set_major_formatter(lambda v, _: f"{v / 1000:g}k")
    zoom.set_xlim(min(ends) / 2, max(ends) * 1.02)  # from half the shortest run on: every arm's plateau in view
    zoom.set_ylim(0.97 * min(best), 1.15 * max(best))
    zoom.set_xlabel("training sequences seen (all clients together)")
    zoom.set_ylabel("validation perplexity per token")
    zoom.set_title("the plateau (from half the shortest run on, linear axis)", fontsize=9)
    return _finish_curves(fig, ax, refs, f"{title}\none line per seed; dots: each run's best-validation model (the "
                          "one tested)", path, legend_ax=zoom)


def real_report(root, figures) -> list[Path]:
    """One curve figure per setting of real_grid.py's runs in ``root`` (their tables: mamba_fl/results.py's
    blocks, ``python -m common.results --show mamba_fl.real-report --records mamba_fl/results/real=<out-dir>``)."""
    root, figures = Path(root), Path(figures)
    runs = [r | {"arm": r["name"].split("_")[0], "setting": real_setting(r["name"])}
            for r in R.with_keys([r for r in R.load_runs(root, "*_L*_s*") if real_setting(r["name"]) is not None],
                                 "the mamba real-text grid", summary={"test_ppl": R.NUMBER})]
    written = []
    for setting in sorted({r["setting"] for r in runs}):
        L, shard, clients, stage = setting
        groups = {a: g for a in REAL_ARMS if (g := [r for r in runs if r["setting"] == setting and r["arm"] == a])}
        written += _real_curves(groups, figures / f"real_L{L}_{shard}_{clients}_{stage}.png",
                                f"Mamba2 {L} layer{'s' if L > 1 else ''} on real WikiText-2, {shard} shards, "
                                f"{clients}, {stage}")
    return written


def single_runs(root, taken: set[str]) -> list[dict]:
    """The finished mamba_fl runs of ``root`` that no grid report reads (a --quick run, a run of its own)."""
    runs = [r for r in R.load_runs(root) if r["name"] not in taken and real_setting(r["name"]) is None]
    return shared.script_runs(runs, lambda script: script.startswith("mamba_fl/"), "the mamba_fl run curves",
                              args={"sequence_length": int}, summary={"final_val_ppl": R.NUMBER})


def run_curves(runs: list[dict], path: Path) -> list[Path]:
    """Validation perplexity per token of each run (one line each, a point per evaluation) against training
    sequences seen, with the reference points of its data (drawn when every run shares them)."""
    drawn = [r for r in runs if R.series(r, "val_ppl", "tokens")[0].size]
    if not drawn:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.3))
    for i, r in enumerate(drawn):
        x, y = R.series(r, "val_ppl", "tokens")
        marker, ls = list(_STYLE.values())[i % len(_STYLE)]
        ax.plot(x / r["args"]["sequence_length"], y, marker=marker, ls=ls, ms=4,
                label=f"{r['name']}: {r['summary']['final_val_ppl']:.1f}")
    refs = [_refs(r) for r in drawn]
    n = f"{len(drawn)} run{'s' if len(drawn) > 1 else ''}"
    return _finish_curves(fig, ax, refs[0] if all(f == refs[0] for f in refs) else {},
                          f"mamba_fl, {n}: validation perplexity per evaluation (final value in the legend)", path)


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description="Figures of mamba_fl run directories (their tables: python -m common.results "
                           "--show mamba_fl.real-report --records mamba_fl/results/real=OUT_DIR)", add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.add_argument("--runs", nargs="+", default=["runs/mamba_grid"],
                   help="folders holding the run directories (default: where run_grid.py writes)")
    p.add_argument("--out", type=cli.FOLDER, default="figures/mamba", help="folder for the PNG files")
    return p


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    for root in args.runs:
        cli.check(Path(root).is_dir(), f"--runs {root}: no such folder")
    out = cli.check_out_dir(args.out, "--out")
    written = []
    for root in args.runs:
        figures = out if len(args.runs) == 1 else out / Path(root).name  # one folder of figures per grid
        written += grid_figures(root, figures) + real_report(root, figures)
        grid = {p.name for p in R.find_runs(root, "*_L*_s*")}  # grid_figures' and real_report's runs
        written += run_curves(single_runs(root, grid), figures / "runs.png")
        written += [p for run in R.load_runs(root) if run["args"].get("save_deltas") for p in delta_figures(run, out)]
    cli.check(bool(written), f"no finished mamba_fl runs under {' '.join(args.runs)}: nothing to draw")
    return shared.listed(written)


if __name__ == "__main__":
    cli.run(main)
