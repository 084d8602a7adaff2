"""Figures and the results table of lora_glue_fl, from run directories (nothing is trained here).

    python plots/plot_lora_glue.py --runs runs/lora_glue_grid --out figures/lora_glue

Reads the runs of lora_glue_fl/run_grid.py (names ``<task>_<method>[_<sharding>]_s<seed>``, method central,
svd, naive or exact; other runs of fedavg_rounds.py / main_glue_lora.py are grouped by their summary) and
writes, mean +- std over seeds:
* ``<out>/rounds_<task>.png``      the task's main metric of the fused model per round (one line per method
                                   and sharding), the client models' mean where --eval_clients logged it,
                                   and the centralized LoRA run's final value as a dashed line;
* ``<out>/svd_error_vs_rank.png``  relative error ||dW_bar - dW_r|| / ||dW_bar|| of the SVD merge against the
                                   rank r, from the client adapters saved in the last round of each svd run;
* ``<out>/summary.png``            final main metric per task, method and sharding (bars);
* ``<out>/results.md``             the same as a markdown table (the README table), followed by the masked-LM
                                   bases of ``<runs>/mlm_cache`` (held-out masked-LM loss before / after).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import cli
from plots import runs as R

NAME = re.compile(r"^(?P<task>.+?)_(?P<method>central|svd|naive|exact)"
                  r"(?:_(?P<shard>iid|category|overlap|category_overlap))?_s(?P<seed>\d+)$")
METHOD_ORDER = ("central", "svd", "naive", "exact")


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--runs", default="runs/lora_glue_grid", help="folder holding the run directories")
    p.add_argument("--out", default="figures/lora_glue", help="output folder for figures and results.md")
    p.add_argument("--max_rank", type=int, default=None, help="largest rank of the error-vs-rank curve "
                                                               "(default: the sum of the client ranks)")
    return p


def describe(run: dict) -> dict | None:
    """{task, method, shard} of a finished run, from the grid's run name or else the summary."""
    s = run["summary"]
    if not s:
        return None
    m = NAME.match(run["name"])
    if m:
        return {"task": m["task"], "method": m["method"], "shard": m["shard"] or "-"}
    if "aggregation" in s:
        return {"task": s["task"], "method": s["aggregation"], "shard": s.get("shard_mode") or "-"}
    if s.get("method") == "central_lora":
        return {"task": s["task"], "method": "central", "shard": "-"}
    return None


def grouped(runs: list[dict]) -> dict[tuple, list[dict]]:
    groups = defaultdict(list)
    for run in runs:
        d = describe(run)
        if d:
            groups[(d["task"], d["method"], d["shard"])].append(run)
    return groups


def final_stats(group: list[dict]) -> tuple[float, float, int]:
    metric = group[0]["summary"]["main_metric"]
    vals = np.array([g["summary"]["final"].get(metric, np.nan) for g in group], dtype=float)
    return float(np.nanmean(vals)), float(np.nanstd(vals)), int(np.sum(~np.isnan(vals)))


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def results_table(groups) -> str:
    tasks = sorted({k[0] for k in groups})
    cols = [("central", "-")] + [(m, s) for s in ("iid", "category") for m in ("svd", "naive", "exact")]
    cols = [c for c in cols if any((t, *c) in groups for t in tasks)]
    headers = ["task (metric)"] + ["centralized LoRA" if m == "central" else f"FedAvg {m} / {s}" for m, s in cols]
    rows = []
    for t in tasks:
        metric = next(g for k, g in groups.items() if k[0] == t)[0]["summary"]["main_metric"]
        row = [f"{t} ({metric})"]
        for m, s in cols:
            g = groups.get((t, m, s))
            if not g:
                row.append("")
                continue
            mean, std, n = final_stats(g)
            row.append(f"{mean:.3f} ± {std:.3f}" + (f" (n={n})" if n != 3 else ""))
        rows.append(row)
    return markdown_table(headers, rows)


def mlm_table(root: Path) -> str:
    """The cached masked-LM bases under ``root/mlm_cache`` (lora_glue_fl/mlm.py), one row each; '' if none."""
    import json
    rows = []
    for f in sorted(root.glob("mlm_cache/*/mlm.json")):
        r = json.loads(f.read_text())
        rows.append([f.parent.name, r["texts"], r["steps"], r["lr"], f"{r['chance_loss']:.2f}",
                     f"{r['held_out_loss_before']:.3f}", f"{r['held_out_loss_after']:.3f}"])
    if not rows:
        return ""
    return markdown_table(["masked-LM base", "texts", "steps", "lr", "ln(vocab)", "held-out loss before",
                           "after"], rows)


def plot_rounds(groups, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    written = []
    for task in sorted({k[0] for k in groups}):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        metric = None
        for (t, method, shard), group in sorted(groups.items(),
                                                key=lambda kv: (kv[0][2], METHOD_ORDER.index(kv[0][1]))):
            if t != task:
                continue
            metric = group[0]["summary"]["main_metric"]
            if method == "central":
                mean, _, _ = final_stats(group)
                ax.axhline(mean, color="k", ls="--", lw=1, label=f"centralized ({mean:.3f})")
                continue
            fused = [{**g, "rows": [r for r in g["rows"] if r.get("client") is None]} for g in group]
            x, y, e = R.mean_std(fused, metric)
            style = "-" if shard == "iid" else ":"
            line, = ax.plot(x, y, style, marker="o", ms=3, label=f"{method} / {shard}")
            ax.fill_between(x, y - e, y + e, alpha=0.15, color=line.get_color())
            clients = [{**g, "rows": [r for r in g["rows"] if r.get("client") is not None]} for g in group]
            if any(metric in r for c in clients for r in c["rows"]):
                per_round = [{**c, "rows": _client_means(c["rows"], metric)} for c in clients]
                xc, yc, _ = R.mean_std(per_round, metric)
                ax.plot(xc, yc, style, color=line.get_color(), alpha=0.5, lw=1, label=f"{method} / {shard}: clients")
        ax.set_xlabel("round")
        ax.set_ylabel(f"{metric} (validation)")
        ax.set_title(task)
        ax.legend(fontsize=6, ncol=2)
        written += R.savefig(fig, out / f"rounds_{task}.png")
    return written


def _client_means(rows, metric):
    by_round = defaultdict(list)
    for r in rows:
        if metric in r:
            by_round[r["round"]].append(r[metric])
    return [{"round": k, metric: float(np.mean(v))} for k, v in sorted(by_round.items())]


def plot_svd_error(groups, out: Path, max_rank: int | None) -> list[Path]:
    """Relative SVD merge error vs rank, from each svd run's last-round client adapters."""
    import matplotlib.pyplot as plt

    from lora_glue_fl import adapters
    fig, ax = plt.subplots(figsize=(5, 3.4))
    drawn = False
    for (task, method, shard), group in sorted(groups.items()):
        if method != "svd":
            continue
        curves = []
        for g in group:
            last = g["path"] / f"round_{g['summary']['rounds_done']}"
            dirs = sorted(last.glob("client_*/adapter"), key=lambda p: int(p.parent.name.split("_")[1]))
            if not dirs:
                continue
            clients = [adapters.load(d) for d in dirs]
            weights = g["summary"]["client_sizes"][:len(clients)]
            top = max_rank or sum(c.r for c in clients)
            ranks = list(range(1, top + 1))
            curves.append([adapters.merge_rel_error(clients, weights, adapters.merge(clients, weights, "svd", rank=r))
                           for r in ranks])
        if curves:
            y = np.mean(curves, axis=0)
            ax.plot(ranks, y, "-" if shard == "iid" else ":", marker=".", label=f"{task} / {shard}")
            drawn = True
    if not drawn:
        plt.close(fig)
        return []
    ax.set_yscale("log")
    ax.set_xlabel("rank r of the fused adapter")
    ax.set_ylabel("relative error of the merged dW")
    ax.legend(fontsize=6)
    return R.savefig(fig, out / "svd_error_vs_rank.png")


def plot_summary(groups, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    tasks = sorted({k[0] for k in groups})
    cols = [("central", "-")] + [(m, s) for s in ("iid", "category") for m in ("svd", "naive", "exact")]
    cols = [c for c in cols if any((t, *c) in groups for t in tasks)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks) + 2), 3.6))
    width = 0.8 / max(1, len(cols))
    for j, (m, s) in enumerate(cols):
        stats = [final_stats(groups[(t, m, s)]) if (t, m, s) in groups else (np.nan, 0, 0) for t in tasks]
        ax.bar(np.arange(len(tasks)) + j * width, [x[0] for x in stats], width, yerr=[x[1] for x in stats],
               label="centralized" if m == "central" else f"{m} / {s}", hatch="//" if s == "category" else None)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{t}\n({next(g for k, g in groups.items() if k[0] == t)[0]['summary']['main_metric']})"
                        for t in tasks], fontsize=7)
    ax.set_ylabel("final main metric")
    ax.legend(fontsize=6, ncol=4)
    return R.savefig(fig, out / "summary.png")


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    root = Path(args.runs)
    cli.check(root.is_dir(), f"--runs {root} does not exist")
    runs = R.load_runs(root)
    groups = grouped(runs)
    cli.check(bool(groups), f"--runs {root} holds no finished lora_glue_fl runs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(groups)
    bases = mlm_table(root)
    if bases:
        table += "\n\n" + bases
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    files = plot_rounds(groups, out) + plot_svd_error(groups, out, args.max_rank) + plot_summary(groups, out)
    print(table)
    return {"table": table, "files": [str(f) for f in files] + [str(out / "results.md")]}


if __name__ == "__main__":
    cli.run(main)
