"""Figures of lora_glue_fl, from run directories (nothing is trained here).

    python plots/plot_lora_glue.py --runs runs/lora_glue_minilm --out runs/lora_glue_minilm/figures

Reads the runs of lora_glue_fl/run_grid.py (``<task>_<method>[_<sharding>]_s<seed>``, one-shot naive merges'
``fuse_manifest.json``) and other runs of the training scripts (grouped by their summary), from several --runs
folders. Other data, model, sequence length or evaluation subset: a panel of its own ("sst2 [model=tiny]"); any
other differing argument: a row of its own. Writes ``<out>/rounds_<task>.png``, ``svd_error_vs_rank.png`` and
``summary.png``. The tables are lora_glue_fl/results.py's README blocks, written by the same code from a grid's
out-dir (``TABLES``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from common import cli, stats
from common import runs as R
from plots import shared

# what splits runs into panels of their own (args.json, else summary.json); any other difference splits rows
PANEL_KEYS = ("data", "model", "max_seq_length", "max_eval_samples", "tokenizer")
# per-seed paths and bookkeeping: never a difference between configurations
IGNORE = R.DRAW_IGNORE + ("shard_dir", "adapter_output_dir", "eval_each_round", "eval_clients", "save_client_adapters")

SHARDS = ("iid", "dir1", "dir0.1", "category", "overlap", "category_overlap")
NAME = re.compile(r"^(?P<task>[^_]+)_(?P<method>central|svd|naive|exact|oneshot|oneshot-naive)"
                  r"(?:_(?P<shard>iid|dir[0-9.]+|category|overlap|category_overlap))?_s(?P<seed>\d+)$")
# run_grid --budget_check: a centralized or one-shot run (and its naive merge) at twice the (local) epochs
TWIN = re.compile(r"^[^_]+_(central|oneshot|oneshot-naive)-x2(_[^_]+)?_s\d+$")
METHOD_ORDER = ("central", "svd", "naive", "exact", "oneshot", "oneshot-naive")
METHOD_LABEL = {"central": "centralized LoRA", "svd": "FedAvg svd", "naive": "FedAvg naive", "exact": "FedAvg exact",
                "oneshot": "one-shot svd", "oneshot-naive": "one-shot naive"}
SHARD_LABEL = {"iid": "iid", "dir1": "Dirichlet α=1", "dir0.1": "Dirichlet α=0.1", "category": "one label per client"}
LINESTYLE = {"svd": "-", "naive": "--", "exact": ":"}
SELECT = "selection_"  # the training scripts' prefix of metrics on the selection split
TABLES = ("python -m common.results --show lora_glue_fl.sst2-table lora_glue_fl.sst2-contrasts lora_glue_fl.selection "
          "lora_glue_fl.plateau --records lora_glue_fl/results/minilm_glue={runs}")  # a grid's tables
MARKER = {"svd": "o", "naive": "s", "exact": "D", "oneshot": "*", "oneshot-naive": "x"}  # colour: the partition


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.add_argument("--runs", nargs="+", default=["runs/lora_glue_minilm"],
                   help="folders holding the run directories (several are read together)")
    p.add_argument("--out", type=cli.FOLDER, default="figures/lora_glue", help="output folder for the figures")
    p.add_argument("--max_rank", type=int, default=None, help="largest rank of the error-vs-rank curve "
                                                               "(default: the sum of the client ranks)")
    return p


def describe(run: dict) -> dict | None:
    """{task, method, shard} of a finished run, from the grid's run name or else the summary."""
    s, m = run["summary"], NAME.match(run["name"])
    if TWIN.match(run["name"]):  # run_grid --budget_check's second budget of a run: no arm of a figure
        return None
    if m:
        return {"task": m["task"], "method": m["method"], "shard": m["shard"] or "-"}
    if "aggregation" in s:
        return {"task": s["task"], "method": s["aggregation"], "shard": s.get("shard_mode") or "-"}
    if s.get("method") == "central_lora":
        return {"task": s["task"], "method": "central", "shard": "-"}
    return None


def merge_runs(roots: list[str], runs: list[dict]) -> list[dict]:
    """One-shot merges by fedavg_merge.py --do_eval as run-like dicts (their metrics in the manifest, the
    arguments those of the one-shot run whose client adapters they merged)."""
    by_path = {r["path"].resolve(): r for r in runs}
    out = []
    for f in sorted(f for root in roots for f in Path(root).glob("*/adapter/fuse_manifest.json")):
        m = NAME.match(f.parent.parent.name)
        if TWIN.match(f.parent.parent.name):  # a --budget_check twin's merge: no arm of a figure
            continue
        try:
            manifest = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            print(f"left out {f}: not readable JSON ({type(e).__name__})")
            continue
        if not (m and isinstance(manifest, dict) and isinstance(manifest.get("final"), dict)):
            continue
        source = next((by_path.get(Path(a).resolve().parents[2]) for a in manifest.get("adapters", [])[:1]), None)
        if source is None:
            print(f"left out {f.parent.parent}: the one-shot run of its client adapters is not among the runs read")
            continue
        out.append({"path": f.parent.parent, "name": f.parent.parent.name, "rows": [],
                    "args": {**source["args"], "seed": int(m["seed"])}, "meta": {"script": "lora_glue_fl/fedavg_merge"},
                    "summary": {**source["summary"], **manifest, "task": manifest.get("task")}})
    return out


def grouped(runs: list[dict]) -> dict[tuple, list[dict]]:
    """{(task, method, shard): runs}: task with its panel's arguments ("sst2 [model=tiny]", only what differs
    within the task), shard with the row's ("iid [rounds=2]") when one cell holds several configurations."""
    groups = {}
    for task, task_runs in shared.groups_by([r for r in runs if describe(r)], lambda r: describe(r)["task"]).items():
        for panel, members in R.split_by(task_runs, PANEL_KEYS):
            for run in members:
                d = describe(run)
                groups.setdefault((task + (f" [{panel}]" if panel else ""), d["method"], d["shard"]), []).append(run)
    groups = R.split_configs(groups, IGNORE)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "central", _shard_rank(kv[0][2]),
                                                       _rank(METHOD_ORDER, kv[0][1]), kv[0][2])))


def _rank(order: tuple, item: str) -> int:
    return order.index(item) if item in order else len(order)


def base_shard(shard: str) -> str:
    """The partition of a row label without the arguments ``R.split_configs`` added."""
    return shard.split(" [")[0]


def _shard_rank(shard: str) -> int:
    return _rank(SHARDS, base_shard(shard))


def central_of(groups: dict, task: str) -> tuple | None:
    """The key of ``task``'s centralized runs (the rows' reference) when they are one configuration."""
    cells = [k for k in groups if k[0] == task and k[1] == "central"]
    if len(cells) > 1:
        print(f"{task}: {len(cells)} centralized configurations; no centralized reference line or column")
    return cells[0] if len(cells) == 1 else None


def metric_of(group: list[dict]) -> str:
    return group[0]["summary"]["main_metric"]


def _number(v) -> float | None:
    """``v`` if it is a number (a summary value of another type is not drawn)."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def seed_values(group: list[dict], metric: str) -> dict:
    """{seed: final ``metric``} of the runs that report it as a number."""
    return R.by_seed([{**g, "summary": {"v": _number(g["summary"]["final"].get(metric))}} for g in group], "v")


def label_of(method: str, shard: str) -> str:
    base, extra = base_shard(shard), shard[len(base_shard(shard)):]
    return METHOD_LABEL.get(method, method) + ("" if base == "-" else f" / {SHARD_LABEL.get(base, base)}") + extra


def majority_baseline(runs: list[dict], task: str, key: str = "majority") -> dict:
    """{metric: value, "label": majority label} of predicting the most frequent training label, from summary.json
    (``key``: "majority" on validation, "selection_majority" on the selection split); {} (said once for
    validation) when no run holds it or the runs disagree, so no wrong line is drawn."""
    seen = {json.dumps(s[key], sort_keys=True): s for s in (r["summary"] for r in runs)
            if isinstance(s.get(key), dict) and all(_number(v) is not None for v in s[key].values())}
    if len(seen) != 1:
        if key == "majority":  # the selection split's line is drawn where every run agrees on it, else left out
            print(f"{task}: drawn without the majority-class baseline (" + (
                "no run's summary.json holds it: runs older than the 'majority' key" if not seen else
                f"{len(seen)} different values: the runs trained on different subsets") + ")")
        return {}
    s = next(iter(seen.values()))
    return {**s[key], "label": s.get("majority_label")}


def _fused_rows(group: list[dict]) -> list[dict]:
    """The runs with only the fused model's rows."""
    return [{**g, "rows": [r for r in g["rows"] if r.get("client") is None]} for g in group]


def has_selection(runs: list[dict], metric: str) -> bool:
    """Whether the runs were scored on a selection split (``selection_<metric>`` rows)."""
    return any(SELECT + metric in row for r in runs for row in r["rows"])


def epochs_of(group: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x [P], values [seeds, P]) of ``key`` against the epochs of training data processed, one compute axis for
    every arm: a centralized run's epoch, a federated run's round x --local_epochs (--local-steps: its round)."""
    if any("epoch" in row for row in group[0]["rows"]):  # centralized
        return R.aligned(group, key, x="epoch")
    x, ys = R.aligned(_fused_rows(group), key)
    a = group[0]["args"]
    return x * ((a.get("local_epochs") or 1.0) if a.get("local_steps") is None else 1.0), ys


def plot_rounds(groups: dict, base: dict, out: Path) -> list[Path]:
    """Per task: the selection metric (else the validation metric; a point per cell when only the last round was
    scored) against the epochs processed, the clients' mean training loss and the merge error per round."""
    import matplotlib.pyplot as plt
    written = []
    colors = {s: f"C{i}" for i, s in enumerate(SHARDS)}  # per partition; a row with arguments of its own: the next free
    for task in sorted({k[0] for k in groups}):
        fed = [(key, g) for key, g in groups.items() if key[0] == task and key[1] != "central"]
        if not fed:
            print(f"skipped rounds_{task}.png: no federated runs of {task} (centralized only)")
            continue
        metric, k, fed_runs = metric_of(fed[0][1]), 0, [r for _, g in fed for r in g]
        central = groups.get(central_of(groups, task))
        select = has_selection(fed_runs, metric)
        key = SELECT + metric if select else metric
        per_round = select or any(len([r for g in grp for r in g["rows"] if r.get("client") is None and metric in r])
                                  > len(grp) for _, grp in fed)   # some cell scored more than its last round
        # only the last round scored: no metric panel (the final metric is in summary.png)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [3, 2, 2]}) if per_round \
            else plt.subplots(1, 2, figsize=(11, 4.2))
        ax, ax_loss, ax_err = axes if per_round else (None, *axes)
        last = max([1.0] + [float(epochs_of(g, key)[0].max(initial=0)) for (_, m, _), g in fed
                            if not m.startswith("oneshot") and g[0]["rows"]])
        for (_, method, shard), group in fed:  # the metric: lines, or points at the last round (offset)
            label, ls, fused = label_of(method, shard), LINESTYLE.get(method, "-"), _fused_rows(group)
            style = {"color": colors.get(shard) or colors.setdefault(shard, f"C{len(colors)}"),
                     "marker": MARKER.get(method, "o")}
            if ax is not None and not (select and method == "oneshot-naive"):  # scored on validation only
                if method.startswith("oneshot") and not select:
                    x, vals = np.array([last]), [list(seed_values(group, metric).values())]
                else:
                    x, ys = epochs_of(group, key)
                    vals = ys.T
                if len(x) > 1:
                    R.draw_seeds(ax, x, vals, label, ls=ls, ms=4, **style)
                elif len(x):
                    k += 1
                    R.draw_seeds(ax, x + 0.03 * last * k, vals, label, kind="points", ms=7, **style)
            if method.startswith("oneshot"):
                continue
            xl, yl = R.aligned(fused, "train_loss")
            ax_loss.plot(xl, yl.mean(0), ls, label=label, ms=4, **style)
            xe, ye = R.aligned(fused, "merge_rel_error")
            if len(xe) and np.all(ye.mean(0) > 0):
                ax_err.plot(xe, ye.mean(0), ls, label=label, ms=4, **style)
            elif len(xe):
                print(f"rounds_{task}.png: {label} left out of the merge-error panel (a zero error has no log)")
        if ax is not None:
            if central and select:
                x, ys = epochs_of(central, key)
                R.draw_seeds(ax, x, ys.T, "centralized LoRA", ls="-", ms=3, color="k", marker=".")
            elif central:
                c_mean = stats.summarize(seed_values(central, metric).values()).mean
                ax.axhline(c_mean, color="k", ls="--", lw=1.2,
                           label=f"centralized LoRA ({c_mean:.3f}, n={len(central)})")
            ref, split = base.get(task, {}), "validation"
            if select:  # the selection split's own majority where the runs record it (older runs: validation's)
                sel = majority_baseline(fed_runs + list(central or []), task, "selection_majority")
                ref, split = (sel, "selection split") if metric in sel else (ref, split)
            if metric in ref:
                ax.axhline(ref[metric], color="0.5", ls=":", lw=1.5,
                           label=f"majority baseline, {split} ({ref[metric]:.3f})")
            where = "selection split (held out of training)" if select else "validation"
            ax.set(xlabel="epochs of training data processed (federated: round x local epochs; one-shot: its "
                          "single merge)", ylabel=f"{metric} ({where})",
                   title=f"{metric} per epoch: mean over seeds; {R.spread_note([g for _, g in fed], 'band: ± sd')}")
            ax.title.set_fontsize(9)
            ax.legend(fontsize=6, loc="best")
        n_labels = next((r["summary"]["num_labels"] for r in fed_runs  # None: older runs
                         if isinstance(r["summary"].get("num_labels"), int)), None)
        if n_labels and n_labels > 1:  # the loss of a uniform prediction: a client at this line has learned nothing
            ax_loss.axhline(np.log(n_labels), color="0.5", ls=":", lw=1.5,
                            label=f"uniform prediction, ln {n_labels} = {np.log(n_labels):.3f}")
        ax_loss.set(xlabel="round", ylabel="clients' mean training loss in the round")
        ax_loss.set_title("local training loss (mean over seeds)", fontsize=9)
        ax_err.set(yscale="log", xlabel="round", ylabel="relative merge error of dW")
        ax_err.set_title("merge error per round (mean over seeds)", fontsize=9)
        fig.suptitle(task, fontsize=11)
        for a in (ax_loss, ax_err):
            a.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        R.figure_legend(fig, (ax_loss, ax_err), fontsize=7)
        written += R.savefig(fig, out / f"rounds_{task}.png")
    return written


def plot_svd_error(groups, out: Path, max_rank: int | None) -> list[Path]:
    """Relative SVD merge error vs rank of each svd run's last-round client adapters (``svd_error_by_rank``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (task, method, shard), group in groups.items():
        if method != "svd":
            continue
        curves = [c for c in (g["summary"].get("svd_error_by_rank") for g in group)
                  if isinstance(c, list) and all(_number(v) is not None for v in c)]
        top = min([len(c) for c in curves] + ([max_rank] if max_rank else []), default=0)
        if curves and top:
            y = np.mean([c[:top] for c in curves], axis=0)
            ax.plot(range(1, top + 1), np.maximum(y, 1e-8), "-" if base_shard(shard) == "iid" else ":", ms=4,
                    marker="osD^v<>"[len(ax.lines) % 7],
                    label=f"{task} / {label_of('', shard).lstrip(' /')} (n={len(curves)}, mean)")
        else:
            print(f"svd_error_vs_rank.png: {task} / {shard} left out (no svd_error_by_rank in its summary.json: "
                  "a run older than that key, or resumed from one that kept no client adapters)")
    if not ax.lines:
        plt.close(fig)
        print("skipped svd_error_vs_rank.png: no svd run has svd_error_by_rank in its summary.json")
        return []
    ax.set(yscale="log", xlabel="rank r of the fused adapter", ylabel="relative error of the merged dW",
           title="SVD merge of the last round's client adapters")
    ax.legend(fontsize=6)
    return R.savefig(fig, out / "svd_error_vs_rank.png")


def plot_summary(groups, base: dict, out: Path) -> list[Path]:
    """Final main metric per cell: seeds as dots, mean ± sample sd as a bar; centralized and majority as lines."""
    import matplotlib.pyplot as plt
    tasks = sorted({k[0] for k in groups})
    rows = max(sum(1 for k in groups if k[0] == t) for t in tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), max(3.0, 1.2 + 0.32 * rows)), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        keys = [k for k in groups if k[0] == task]
        metric = metric_of(groups[keys[0]])
        values = [seed_values(groups[k], metric) for k in keys]
        ypos = np.arange(len(keys))[::-1]
        for y, k, vals in zip(ypos, keys, values):
            color = "k" if k[1] == "central" else f"C{_shard_rank(k[2])}"
            R.draw_seeds(ax, [y], [list(vals.values())], kind="points", horizontal=True, marker="D", color=color,
                         ms=6, zorder=3)
            ax.scatter(list(vals.values()), [y - 0.18] * len(vals), s=12, color="0.3", zorder=2)
        ax.set_yticks(ypos)
        ax.set_yticklabels([f"{label_of(k[1], k[2])} (n={len(v)})" for k, v in zip(keys, values)], fontsize=7)
        if metric in base.get(task, {}):
            ax.axvline(base[task][metric], color="0.4", ls=":", lw=1.5, label=f"majority ({base[task][metric]:.3f})")
        central = groups.get(central_of(groups, task))
        if central:
            c_mean = stats.summarize(seed_values(central, metric).values()).mean
            ax.axvline(c_mean, color="k", ls="--", lw=1, label=f"centralized ({c_mean:.3f})")
        ax.set(ylim=(-0.7, len(keys) - 0.4), title=task,
               xlabel=f"final validation {metric}: seeds (dots), mean (diamond); "
                      f"{R.spread_note(values, 'error bars: ± sample sd')}")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    return R.savefig(fig, out / "summary.png")


def lora_runs(runs: list[dict]) -> list[dict]:
    """The finished lora_glue_fl runs with the summary keys the tables need (a malformed one left out with a line)."""
    return shared.script_runs(runs, lambda script: script.startswith("lora_glue_fl/"), "the lora_glue_fl tables",
                              summary={"task": str, "main_metric": str, "final": dict})


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    out = cli.check_out_dir(args.out, "--out")
    runs = lora_runs(R.load_roots(args.runs))
    groups = grouped(runs + merge_runs(args.runs, runs))
    cli.check(bool(groups), f"--runs {' '.join(args.runs)} holds no finished lora_glue_fl runs: nothing to draw")
    tasks = sorted({k[0] for k in groups})
    base = {t: majority_baseline([r for k, g in groups.items() if k[0] == t for r in g], t) for t in tasks}
    files = plot_rounds(groups, base, out) + plot_svd_error(groups, out, args.max_rank)
    files += plot_summary(groups, base, out)
    print(f"tables of a run_grid.py out-dir: {TABLES.format(runs=args.runs[0])}")
    return {"baselines": base, "files": [str(f) for f in files]}


if __name__ == "__main__":
    cli.run(main)
