"""The suite at several budgets side by side: which results still move when the budget grows?

    python vit_sparse_fl/compare_budgets.py runs/vit_suite_R48 runs/vit_suite_R192 runs/vit_suite_R768 \\
        --out runs/vit_budgets

Each argument is a suite folder of ``run_all_experiments.py`` (its ``results.json``: per-seed test accuracies,
rounds R, design), one budget of sample gradients for every setting; ViT and ``--text`` suites are compared each
with their own kind. Writes ``<out>/results_budgets.md`` and ``<out>/{vit,text}_accuracy_vs_budget.png``.

A setting has *settled* when the last budget step moves its mean test accuracy by less than 1 point; a
difference is read as final only where both settings have settled (under a cosine schedule every curve
flattens at the end, so a run can pass the per-run plateau check and still end higher at a larger budget).
The comparisons, their Holm families and the settled rule are ``studies.py``'s (``budget_study``, ``SETTLED``).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from common import cli, stats, study_report
from common import runs as R
from common.checkpoint import atomic_write_text
from vit_sparse_fl.studies import SETTLED, TEXT_MASKS, VIT, Design, at, budget_study, reference


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    parser.add_argument("suites", nargs="+", help="suite folders holding results.json (any order)")
    parser.add_argument("--out", type=cli.FOLDER, default="runs/vit_budgets",
                        help="folder for the table and the figure")
    parser.add_argument("--no-plots", action="store_true", help="skip the figure")
    return parser


def load_suites(paths: list[str], designs: list | None = None) -> dict[int, dict[str, dict]]:
    """{rounds: {setting: {seed: test accuracy in points}}} from each suite's results.json; each suite's
    ``Design`` is appended to ``designs`` when given (none recorded: a ViT suite)."""
    suites: dict[int, dict[str, dict]] = {}
    for p in paths:
        f = Path(p) / "results.json"
        saved = cli.read_json(f, f"{p}: no results.json (run vit_sparse_fl/run_all_experiments.py there first)",
                              allow_nan=True)  # its table: nan for a statistic of one seed
        rounds, design, table = _suite_record(f, saved)
        if designs is not None:
            designs.append(design)
        cli.check(rounds not in suites, f"two suites with R = {rounds}: {p} and another")
        suites[rounds] = table
    return dict(sorted(suites.items()))


def _suite_record(f: Path, saved) -> tuple[int, Design, dict[str, dict]]:
    """(rounds, design, {setting: {seed: test accuracy}}) of a results.json, its shape checked (one line naming
    the file otherwise; no design recorded: a ViT suite)."""
    problem = f"{f}: not a suite's results.json (written by run_all_experiments.py): "
    cli.check(isinstance(saved, dict) and "rounds" in saved and "table" in saved, problem + "no 'rounds' / 'table'")
    rounds, table, design = saved["rounds"], saved["table"], saved.get("design")
    cli.check(type(rounds) is int and rounds > 0, problem + f"'rounds' {rounds!r} is not a positive integer")
    fields = {fl.name: {"int": int, "str": str}.get(fl.type, dict) for fl in dataclasses.fields(Design)}
    required = {fl.name for fl in dataclasses.fields(Design) if fl.default is dataclasses.MISSING}
    cli.check(design is None or isinstance(design, dict) and required <= set(design) <= set(fields)
              and all(type(v) is fields[k] for k, v in design.items()),
              problem + f"'design' is not an object of {', '.join(sorted(fields))}")
    cli.check(isinstance(table, dict) and all(isinstance(rec, dict) and isinstance(rec.get("test_accuracy"), dict)
                                              for rec in table.values()),
              problem + "'table' is not {setting: {\"test_accuracy\": {seed: accuracy}}}")
    accuracies = {k: rec["test_accuracy"] for k, rec in table.items() if rec["test_accuracy"]}
    cli.check(all(s.isdigit() and type(v) in (int, float) for acc in accuracies.values() for s, v in acc.items()),
              problem + "a test accuracy is not {seed: number}")
    return (rounds, Design(**design) if design else VIT,
            {k: {int(s): v for s, v in acc.items()} for k, acc in accuracies.items()})


def label(setting: str) -> str:
    names = {"fedavg_iid": "FedAvg IID", "fedavg_iid_scratch": "FedAvg IID from scratch", "centralized": "centralized"}
    if setting in names:
        return names[setting]
    title = VIT.shard_title
    if m := re.fullmatch(r"fedavg_(nc\d+)", setting):
        return f"FedAvg {title(m.group(1))}"
    if m := re.fullmatch(r"fedavg_(iid|nc2)_J(\d+)", setting):
        return f"FedAvg {title(m.group(1))}, J = {m.group(2)}"
    if m := re.fullmatch(r"probe_(iid|nc\d+)_(head|last)", setting):
        return f"probe (head{' + last block' if m.group(2) == 'last' else ''}), {title(m.group(1))}"
    if m := re.fullmatch(r"sparse_(iid|nc\d+)_s([\d.]+)_(\w+?)(_fisher)?", setting):
        return f"{m.group(3)}{' (true Fisher)' if m.group(4) else ''}, {title(m.group(1))}, s = {m.group(2)}"
    return setting


def make_table(suites: dict[int, dict[str, dict]], d: Design = VIT) -> tuple[str, dict]:
    budgets = list(suites)
    order = list(dict.fromkeys(k for s in suites.values() for k in s))
    have = {setting: [r for r in budgets if setting in suites[r]] for setting in order}

    def values(arm: str, _: str = "") -> dict:
        setting, rounds = arm.rsplit("@", 1)
        return suites[int(rounds)].get(setting, {})

    def settled(setting: str) -> str:
        if len(have[setting]) < 2:
            return "–"
        step = stats.paired(*(values(at(setting, r)) for r in have[setting][-1:-3:-1]))
        return "yes" if abs(step.mean) < SETTLED else "no"

    last = lambda setting: at(setting, have[setting][-1])  # noqa: E731
    columns = [study_report.Text("setting", label),
               *(study_report.Value(f"R = {r}", of=lambda s, r=r: at(s, r)) for r in budgets),
               study_report.Text("last step", lambda s: f"R {have[s][-2]} → {have[s][-1]}" if have[s][1:] else "–"),
               study_report.Delta("change", family="last step", of=last), study_report.Text("settled", settled),
               *(study_report.Delta(f"Δ vs reference, R = {r}", family="vs reference", of=lambda s, r=r: at(s, r))
                 for r in budgets)]
    s = budget_study(suites, order)
    lines = [
        "Test accuracy (%) of every setting at each budget: mean ± sample sd over seeds (n when not every seed). "
        f"Budget R = rounds of the J = {d.local_steps} runs; every run of a suite evaluates (R + {d.warmup})·"
        f"{d.per_round}·{d.local_steps}·{d.batch} sample gradients ("
        + ", ".join(f"R = {r}: {d.sample_gradients(r)}" for r in budgets) + "). Last step: the change from the "
        "previous budget to the largest one the setting has, paired by seed, mean [95% t interval], its verdict "
        f"Holm-corrected over every setting's last step. Settled: that change is below {SETTLED:g} point. Δ vs "
        "reference: paired difference to FedAvg IID (FedAvg settings) or dense FedAvg on the same shards (J sweep, "
        "masks, probes) at the same budget (each suite at its own rates: its selection.json), verdicts "
        "Holm-corrected over every Δ of the table; fewer than 3 seeds are said after a verdict.",
        "", *study_report.table(s, values, columns, order)]
    record = {setting: {"reference": reference(setting), "settled": {"yes": True, "no": False}.get(settled(setting)),
                        "test_accuracy": {r: suites[r].get(setting, {}) for r in budgets}} for setting in order}
    return "\n".join(lines) + "\n", record


def panels(d: Design) -> list[tuple[str, list[str]]]:
    """(title, settings) of the figure's panels; the last one's masks are also drawn as differences to dense."""
    if d.name == "ag_news":
        arms = [f"{sp:g}_{s}" for sp, s in TEXT_MASKS]
        return [(f"{d.shard_title(shard)}: dense, probe, masks",
                 [f"fedavg_{shard}", f"probe_{shard}_head", *(f"sparse_{shard}_s{a}" for a in arms)])
                for shard in d.shards]
    return [("FedAvg vs heterogeneity", ["centralized", "fedavg_iid", "fedavg_iid_scratch", "fedavg_nc5",
                                         "fedavg_nc2", "fedavg_nc1"]),
            ("local steps J on Nc = 2 (R x J fixed)", ["fedavg_nc2", "fedavg_nc2_J8", "fedavg_nc2_J16"]),
            ("masks on Nc = 2, sparsity 0.9", ["fedavg_nc2", "sparse_nc2_s0.9_least_sensitive",
                                               "sparse_nc2_s0.9_most_sensitive", "sparse_nc2_s0.9_lowest_magnitude",
                                               "sparse_nc2_s0.9_highest_magnitude", "sparse_nc2_s0.9_random",
                                               "probe_nc2_head"])]


def plot(suites: dict[int, dict[str, dict]], path: Path, d: Design = VIT) -> list[Path]:
    """Test accuracy vs sample gradients, one line per setting (error bars: sd); last panel: the arms of the panel
    most measured at several budgets as paired differences to its dense FedAvg (error bars: 95% t interval)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    grid = panels(d)
    fig, axes = plt.subplots(1, len(grid) + 1, figsize=(5.2 * (len(grid) + 1), 4.2), squeeze=False)
    # the differences panel: the panel with the most settings measured at several budgets (ties: the last)
    masks = max(reversed(grid), key=lambda panel: sum(sum(st in s for s in suites.values()) > 1 for st in panel[1]))[1]
    dense = reference(masks[-1])
    sample_gradients, chance = d.sample_gradients, 100.0 / d.classes
    for k, (ax, (title, settings)) in enumerate(zip(axes[0], [*grid, (f"arms − {label(dense)}", masks)])):
        delta = k == len(grid)
        for i, setting in enumerate(settings):
            ref = reference(setting)
            if delta and setting == dense:
                continue
            pts = [(sample_gradients(r), stats.paired(s[setting], s[ref]) if delta else
                    stats.summarize(s[setting].values())) for r, s in suites.items()
                   if setting in s and (not delta or ref in s)]
            if not pts:
                continue
            ns = sorted({p[1].n for p in pts})
            bars = [0 if p[1].n < 2 else (p[1].half_width if delta else p[1].sd) for p in pts]
            ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts], yerr=bars, marker="os^Dv<>"[i % 7],
                        capsize=3, ls="--" if setting == "centralized" else "-",
                        color="k" if setting == reference(settings[-1]) else f"C{i - 1}" if delta else None,
                        label=f"{label(setting)} (n={ns[0]}" + (f"-{ns[-1]})" if len(ns) > 1 else ")"))
        if delta:
            ax.axhline(0, color="k", lw=1, label=label(dense))
        else:
            ax.axhline(chance, color="k", ls=":", lw=1, label=f"chance ({chance:g} %)")
        ax.set(xscale="log", xlabel="sample gradients per run (suite rounds R)", title=title,
               ylabel="Δ test accuracy (points), 95% interval" if delta else "test accuracy (%)")
        ax.set_xticks([sample_gradients(r) for r in suites], [f"{sample_gradients(r) / 1000:.0f}k\n(R={r})"
                                                                for r in suites], fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7, loc="upper right" if delta else "lower right")
    return R.savefig(fig, path)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    out = cli.check_out_dir(args.out, "--out")
    designs: list[Design] = []
    suites = load_suites(args.suites, designs)
    cli.check(len(suites) >= 2, "give at least two suites of different rounds")
    cli.check(len({json.dumps(dataclasses.asdict(d), sort_keys=True) for d in designs}) == 1,
              "the suites have different designs (task, clients, local steps, batch): compare suites of one kind")
    text, record = make_table(suites, designs[0])
    atomic_write_text(out / "results_budgets.md", text)  # makes the folder
    print(text)
    name = "text" if designs[0].name == "ag_news" else "vit"
    written = [] if args.no_plots else plot(suites, out / f"{name}_accuracy_vs_budget.png", designs[0])
    return {"table": record, "results_md": str(out / "results_budgets.md"), "figures": [str(p) for p in written]}


if __name__ == "__main__":
    cli.run(main)
