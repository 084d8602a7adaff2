"""Figures for llm_noniid from run directories (never trains).

    python plots/plot_llm_noniid.py --runs runs/llm_noniid/ag_news/runs --out runs/llm_noniid/ag_news/figures/all

Writes ``val_ppl_curves.png``, ``personal_val_ppl_curves.png``, ``client_divergence_rel_curves.png``,
``final_ppl.png`` and ``partition_<partition>.png`` (what they show: llm_noniid/README.md, ``analyze``). Runs are
grouped by (partition label, arm label): ``default_arm`` from args.json, or the grid's labels with ``--arms FILE``
(JSON {run directory name: [partition label, arm label]}; other runs are left out). Runs on other data, model,
tokenizer or client count get panels of their own ("iid [model=tiny-gpt2]"); runs of one arm that differ in any
other argument are separate lines, labelled with it. Several --runs folders are read together.

    python plots/plot_llm_noniid.py --runs runs/llm_noniid/runs --arms arms.json --out runs/llm_noniid/figures/main
"""
from __future__ import annotations

import json
from itertools import accumulate
from pathlib import Path

import numpy as np

from common import cli
from common import runs as R
from plots import shared

# what splits runs into panels of their own (next to the partition); every other difference splits lines
PANEL_KEYS = ("data", "model", "tokenizer", "bpe_vocab_size", "seq_len", "num_clients", "max_eval_examples")
IGNORE = R.DRAW_IGNORE + ("eval_every",)

TOPIC_NAMES = ("World", "Sports", "Business", "Sci/Tech")  # AG News classes 1-4
STYLES = list(zip("os^DvPX*<>h", ["-", "--", "-.", ":"] * 3))  # (marker, line style) per arm


def default_arm(args: dict) -> tuple[str, str]:
    """(partition label, arm label) from args.json alone, for runs not made by run_experiments.py."""
    part = str(args.get("partition", "?"))
    if part == "topic_skew":
        part = f"topic a={args.get('alpha')}"
    algo = str(args.get("algorithm", "?"))
    if algo == "fedprox":
        algo += f" mu={args.get('mu')}"
    if args.get("clustering", "none") != "none":
        algo += f" + {args['clustering']} clusters"
    if isinstance(args.get("participation_rate"), (int, float)) and args["participation_rate"] < 1.0:
        algo += f", participation {args['participation_rate']:g}"
    return part, algo


LOG_TICKS = (20, 30, 50, 70, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 5000, 10000)
X = "local_steps_total"  # the curves' x: local optimizer steps summed over clients and rounds (the compute spent)
# the reference lines' legend names (other keys: the key with spaces)
REF_NAMES = {"initial_val_ppl": "before training (random init, or a base's zero-shot)"}


def add_local_steps(run: dict) -> dict:
    """Adds ``X`` to every row: the run's local steps up to and including its round (a round logged twice, as
    after a resume, counts once)."""
    per_round = {r["round"]: r.get("step", 0) for r in run["rows"]
                 if isinstance(r.get("round"), int) and isinstance(r.get("step", 0), (int, float))}
    cum = dict(zip(sorted(per_round), accumulate(per_round[rnd] for rnd in sorted(per_round))))
    for r in run["rows"]:
        if r.get("round") in cum:
            r[X] = cum[r["round"]]
    return run


def grouped(runs: list[dict], arm_of, labels: dict | None = None) -> dict[tuple, list[dict]]:
    """{(panel, arm): runs}: the partition label with the distinguishing ``PANEL_KEYS``, the arm label of
    ``arm_of`` (or ``labels[run name]``) with any other argument that differs (``R.split_configs``)."""
    out: dict[tuple, list[dict]] = {}
    for panel, members in R.split_by(runs, PANEL_KEYS):
        for run in members:
            part, arm = labels[run["name"]] if labels else arm_of(run["args"])
            out.setdefault((part + (f" [{panel}]" if panel else ""), arm), []).append(add_local_steps(run))
    return R.split_configs(out, IGNORE)


def partitions(groups: dict) -> dict[str, dict[str, list[dict]]]:
    """{partition: {arm: runs}} of ``grouped``'s {(partition, arm): runs}: partitions sorted, arms as they come."""
    out: dict = {}
    for (part, arm), runs in groups.items():
        out.setdefault(part, {})[arm] = runs
    return dict(sorted(out.items()))


def _reference(runs: list[dict], key: str) -> tuple[float, str] | None:
    """(mean, legend text with the range) of the runs' ``key`` (a reference perplexity); None if no run has it."""
    vals = [r["summary"][key] for r in runs if isinstance((r.get("summary") or {}).get(key), (int, float))]
    if not vals:
        return None
    spread = f", {min(vals):.0f}-{max(vals):.0f} over {len(vals)} runs" if max(vals) > 1.005 * min(vals) else ""
    return float(np.mean(vals)), f"{REF_NAMES.get(key, key.replace('_', ' '))} {np.mean(vals):.0f}{spread}"


def plot_curves(groups: dict, key: str, ylabel: str, out: Path, ref_keys: tuple[str, ...] = (),
                log: bool = False) -> list[Path]:
    """Panels = partitions, lines = arms (mean over seeds, band ± sample sd), references dashed, then dotted."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    parts = partitions(groups)
    order = list(dict.fromkeys(a for _, a in groups))  # an arm looks the same in every panel
    below = 7  # a panel of this many arms or more has its legend below it, and the figure grows by its height
    most = max(map(len, parts.values()))
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4.0 + (0.13 * (most + 2) if most >= below
                                                                               else 0)), squeeze=False)
    drawn = 0
    for ax, (part, arms) in zip(axes[0], parts.items()):
        for arm, runs in arms.items():
            x, ys = R.aligned(runs, key, X)
            ok = np.isfinite(ys).all(0)
            if not ok.any():
                print(f"{part} / {arm}: no {key} at a step every run reached, not drawn in {key}")
                continue
            i = order.index(arm)
            marker, style = STYLES[i % len(STYLES)]
            color = plt.cm.tab20(i % 20) if len(order) > 10 else f"C{i}"  # the default cycle repeats after 10
            R.draw_seeds(ax, x[ok] / 1000, ys[:, ok].T, arm, marker=marker, linestyle=style, markersize=3,
                         markevery=max(1, ok.sum() // 8), color=color)
            drawn += 1
        for ref_key, style in zip(ref_keys, ("--", ":")):
            if ref := _reference(sum(arms.values(), []), ref_key):
                ax.axhline(ref[0], color="k", linestyle=style, linewidth=1, label=ref[1])
        ax.set_title(f"{part}\nlines: mean over seeds; {R.spread_note(arms.values(), 'band: ± sample sd over seeds')}",
                     fontsize=9)
        ax.set(xlabel="local optimizer steps, all clients (thousands)", ylabel=ylabel)
        if log:
            ax.set_yscale("log")
            lo, hi = ax.get_ylim()
            ax.set_yticks([t for t in LOG_TICKS if lo <= t <= hi])  # readable perplexities, not only powers of 10
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        if not ax.get_legend_handles_labels()[0]:
            continue
        if len(arms) < below:
            ax.legend(fontsize=6)
        else:  # below the panel (inside it the legend hides curves), one column: no wider than its panel
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    if not drawn:
        plt.close(fig)
        print(f"no run has {key}: {out / (key + '_curves.png')} not written")
        return []
    return R.savefig(fig, out / f"{key}_curves.png")


def plot_final(groups: dict, out: Path) -> list[Path]:
    """Final global and personalised perplexity per arm (bars: mean, error bars: sample sd over seeds)."""
    import matplotlib.pyplot as plt

    parts = partitions(groups)
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4.8), squeeze=False)
    for ax, (part, arms) in zip(axes[0], parts.items()):
        panel = sum(arms.values(), [])
        for j, (key, ref_key, label) in enumerate((("final_val_ppl", "unigram_val_ppl", "global validation"),
                                                   ("final_personal_val_ppl", "personal_unigram_ppl",
                                                    "own held-out texts"))):
            vals = [[v for v in R.by_seed(runs, key).values() if np.isfinite(v)] for runs in arms.values()]
            if not any(vals):  # not measured (no --client-holdout): no empty bars
                continue
            R.draw_seeds(ax, np.arange(len(arms)) + (0.2 if j else -0.2), vals, label, kind="bars", horizontal=True,
                         width=0.4, color=f"C{j}")
            if ref := _reference(panel, ref_key):
                ax.axvline(ref[0], color=f"C{j}", linestyle="--", linewidth=1, label=ref[1])
        if ref := _reference(panel, "initial_val_ppl"):
            ax.axvline(ref[0], color="k", linestyle=":", linewidth=1, label=ref[1])
        ax.set_yticks(np.arange(len(arms)), list(arms), fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("final perplexity (lower is better)")
        ax.set_title(part, fontsize=10)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    spread = R.spread_note([g for arms in parts.values() for g in arms.values()], "error bars: ± sample sd over seeds")
    fig.suptitle(f"bars: mean over seeds; {spread}", fontsize=9)
    return R.savefig(fig, out / "final_ppl.png")


def plot_partition(runs: list[dict], out: Path, label: str) -> list[Path]:
    """Topic histogram per client (stacked, AG News names) of the first run of a partition, and the clusters
    of every clustered run of that partition and seed (one row per method)."""
    import matplotlib.pyplot as plt

    run = runs[0]
    path = Path(run["path"]) / "partition.json"
    clients = json.loads(path.read_text())["clients"] if path.is_file() else None
    if not clients or clients[0].get("label_hist") is None:
        missing = "partition.json" if clients is None else "topic histogram"
        print(f"{run['path']}: no {missing}, partition figure skipped")
        return []
    hist = np.array([c["label_hist"] for c in clients])  # [K, topics]
    clustered = [r for r in runs if r.get("summary") and (r["summary"].get("num_clusters") or 1) > 1
                 and r["args"].get("seed") == run["args"].get("seed")]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bottom = np.zeros(len(clients))
    names = TOPIC_NAMES if hist.shape[1] == len(TOPIC_NAMES) else [f"topic {j}" for j in range(hist.shape[1])]
    for j in range(hist.shape[1]):
        ax.bar(range(len(clients)), hist[:, j], bottom=bottom, label=names[j])
        bottom += hist[:, j]
    top = bottom.max()
    for i, r in enumerate(clustered):
        for k, g in enumerate(r["summary"]["clusters"]):
            ax.text(k, top * (1.04 + 0.07 * i), str(g), ha="center", fontsize=7)
        ax.text(len(clients) - 0.4, top * (1.04 + 0.07 * i), f"{r['args']['clustering']} "
                f"({r['summary']['num_clusters']} clusters)", fontsize=6, va="center", ha="left")
    ax.set(ylim=(0, top * (1.1 + 0.07 * len(clustered))), xticks=range(len(clients)), ylabel="training texts")
    ax.set_xlabel("client" + (f" (numbers above: its cluster in each clustered run, seed {run['args'].get('seed')})"
                              if clustered else ""), fontsize=8)
    ax.set_title(f"{label}: topics per client", fontsize=10)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.0, 0.0))
    name = label.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
    return R.savefig(fig, out / f"partition_{name}.png")


def make_figures(runs: list[dict], out: str | Path, labels: dict | None = None) -> list[Path]:
    """Every figure of ``runs``, grouped by ``default_arm`` or by ``labels`` (``--arms``)."""
    out = Path(out)
    groups = grouped(runs, default_arm, labels)
    # log scale: an arm stuck near the unigram (FedProx mu = 1) would otherwise flatten the others' curves
    written = plot_curves(groups, "val_ppl", "validation perplexity (global, log scale)", out,
                          ("unigram_val_ppl", "initial_val_ppl"), log=True)
    written += plot_curves(groups, "personal_val_ppl", "perplexity on own held-out texts (log scale)", out,
                           ("personal_unigram_ppl",), log=True)
    # one client a round has no spread to measure: those runs' zeros are left out
    spread = {k: g for k, g in groups.items() if any(len(r.get("participants", ())) > 1 for x in g for r in x["rows"])}
    written += plot_curves(spread, "client_divergence_rel", "client divergence / ||theta||", out) if spread else []
    written += plot_final(groups, out)
    for part, arms in partitions(groups).items():
        written += plot_partition(sum(arms.values(), []), out, part)
    return written


def llm_runs(runs: list[dict]) -> list[dict]:
    """The finished runs of llm_noniid/train.py with what the figures read (a malformed one left out with a line)."""
    return shared.script_runs(runs, "llm_noniid/train".__eq__, "the llm_noniid figures",
                              {"partition": str, "algorithm": str}, {"final_val_ppl": R.NUMBER})


def arms_from_file(path: str) -> dict:
    """{run directory name: (partition label, arm label)} from ``--arms`` (a grid script writes it)."""
    arms = cli.read_json(path, f"--arms {path}: no such file")
    cli.check(isinstance(arms, dict) and all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
                                             for v in arms.values()),
              f"--arms {path}: expected {{run directory name: [partition label, arm label]}}")
    return {name: tuple(v) for name, v in arms.items()}


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.add_argument("--runs", nargs="+", default=["runs/llm_noniid"],
                   help="folders holding llm_noniid run directories (searched recursively; several are read together)")
    p.add_argument("--out", type=cli.FOLDER, default="figures/llm_noniid", help="folder for the PNG figures")
    p.add_argument("--arms", default=None, help="JSON file {run directory name: [partition label, arm label]}: "
                                                "draw only these runs, under these labels (a grid's own arms)")
    return p


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check_out_dir(args.out, "--out")
    arms = arms_from_file(args.arms) if args.arms else None
    runs = llm_runs(R.load_roots(args.runs, "**/*"))
    if arms:
        runs = [r for r in runs if r["name"] in arms]
        cli.check(bool(runs), f"--arms {args.arms}: none of its runs is a finished run under {' '.join(args.runs)}")
    cli.check(bool(runs), f"no finished llm_noniid runs under {' '.join(args.runs)}: nothing to draw")
    return shared.listed(make_figures(runs, args.out, labels=arms))


if __name__ == "__main__":
    cli.run(main)
