"""The suite's tables, from its run directories: ``make_table`` gives results.md's text (and the record results.json
keeps) of a suite folder of ``run_all_experiments.py``, which writes them on every call; ``results.py`` reads the
same cells and verdicts for the README blocks. What each table compares, over which Holm family, is ``studies.py``'s.

Every table is ``common.study_report.table``'s: a row per setting, its cells mean ± sample sd over seeds, its
differences paired by seed and Holm-corrected over the table, and beside a verdict its warnings (fewer than 3 seeds,
compute not matched, a rate at the edge of its grid: ``rate_notes`` from the suite's selection.json).
"""
from __future__ import annotations

from pathlib import Path

from common import runs as R
from common import study, study_report
from vit_sparse_fl import studies
from vit_sparse_fl.studies import SKEW_ARMS, TEXT, VIT, Design, J


def setting_names(args) -> list[str]:
    """Every setting of the suite, in the plan's order (no file read: the table needs only the names)."""
    if args.text:
        return [name for shard in TEXT.shards for name in studies.text_names(shard)]
    return [name for name, _, _ in studies.vit_settings(args, "", args.rounds)]


def load_settings(args, out: Path, base: str) -> dict[str, list[dict]]:
    """{setting: [loaded finished reported run, ...]}."""
    groups: dict[str, list[dict]] = {}
    for seed in range(args.num_runs):
        for name in setting_names(args):   # --only limits what trains, not the table
            path = out / f"{name}_seed{seed}"
            if (path / "summary.json").is_file():
                groups.setdefault(name, []).append(R.load_run(path))
    return groups


def pct(runs: list[dict], key: str) -> dict:
    """{seed: 100 * summary[key]}"""
    return {s: 100 * v for s, v in R.by_seed(runs, key).items()}


def plateau(runs: list[dict]) -> str:
    """'2/3': how many of a cell's runs met the per-run plateau check."""
    return f"{sum(bool(r['summary'].get('plateau_reached')) for r in runs)}/{len(runs)}" if runs else "–"


def rate(runs: list[dict]) -> str:
    """The learning rate(s) of a cell's runs."""
    return "/".join(sorted({f"{r['args']['lr']:g}" for r in runs})) or "–"


def compute(runs: list[dict]) -> str:
    """Sample gradients of a cell, the mask calibration's per-example gradients included."""
    total = {r["summary"].get("sample_gradients", 0) + r["summary"].get("calibration_sample_gradients", 0)
             for r in runs}
    return "/".join(f"{t:,}" for t in sorted(total)) or "–"


def spent(groups: dict[str, list[dict]], matched: str):
    """spent(setting, metric) -> {seed: compute} in what a table's arms are matched on (``matched``, one of
    ``study.COMPUTE``): client steps (rounds times local steps), or sample gradients with the calibration's."""
    def amount(s: dict) -> float | None:
        if matched == "equal steps":
            return s["rounds_done"] * s["local_steps"] if "rounds_done" in s and "local_steps" in s else None
        return s["sample_gradients"] + s.get("calibration_sample_gradients", 0) if "sample_gradients" in s else None

    return lambda key, _: {r["args"]["seed"]: a for r in groups.get(key, []) if (a := amount(r["summary"])) is not None}


def rate_notes(selection: dict):
    """notes(setting, metric) -> ['rate at the high edge of its grid'] where the suite's selection (a selection.json,
    ``study.read_selection``; {} none) chose the smallest or largest rate it tried; [] inside the grid or not
    selected."""
    def of(key: str, _: str = "") -> list[str]:
        choice = selection.get("choices", {}).get(key)
        if choice is None or choice["chosen"] is None:
            return []
        edge = study_report.edge_note(choice["scores"], choice["chosen"], "rate")
        return [edge] if edge else []
    return of


def skew(g: dict[str, list[dict]], d: Design, seeds: tuple[int, ...]):
    """(study, values, rows) of the skew table (``studies.skew_study``) over the arms of ``SKEW_ARMS`` that ran on
    IID and a skewed shard; values(key, metric) -> {seed: value}, metric "skew" the accuracy lost to skew (on the
    arm's skewed shard minus on its IID shards, by seed). None when no arm ran on both."""
    skewed = [shard for shard in d.shards if shard != "iid"]
    rows = [arm for arm, name in SKEW_ARMS.items() if g.get(name.format("iid")) and any(g.get(name.format(shard))
                                                                                     for shard in skewed)]
    if not rows:
        return None
    iid = {name.format(shard): name.format("iid") for name in SKEW_ARMS.values() for shard in d.shards}

    def values(key: str, metric: str) -> dict:   # "skew": accuracy minus the same arm's on IID shards, by seed
        acc, ref = pct(g.get(key, []), "test_accuracy"), pct(g.get(iid[key], []), "test_accuracy")
        return acc if metric == "test_accuracy" else {seed: v - ref[seed] for seed, v in acc.items() if seed in ref}

    return studies.skew_study(rows, d, seeds), values, rows


def skew_table(g: dict[str, list[dict]], d: Design, seeds: tuple[int, ...]) -> list[str]:
    """``skew``'s table: per arm and skewed shard, the accuracy lost to skew and that minus dense's."""
    found = skew(g, d, seeds)
    if found is None:
        return []
    s, values, rows = found
    columns = [study_report.Text("arm", str)]
    for shard in (shard for shard in d.shards if shard != "iid"):
        at = lambda arm, shard=shard: SKEW_ARMS[arm].format(shard)  # noqa: E731
        columns += [study_report.Delta(f"lost to skew, {d.shard_title(shard)}", "test_accuracy", lambda arm: SKEW_ARMS[
                        arm].format("iid"), of=at),
                    study_report.Delta(f"minus dense's, {d.shard_title(shard)}", "skew", f"fedavg_{shard}", of=at)]
    return ["**Accuracy lost to skew: test accuracy on the skewed shards minus on IID shards (points, paired by "
            "seed); minus dense's: that loss minus dense FedAvg's (positive: the arm loses less); Holm over the "
            "table**", "", *study_report.table(s, values, columns, rows), ""]


def make_table(args, out: Path, base: str) -> tuple[str, dict]:
    """(results.md's text, results.json's "table" record) of the suite folder ``out`` for its arguments ``args``:
    every table of the suite from the finished reported runs there, with its selection.json's edge notes."""
    g = load_settings(args, out, base)
    lines, record, seeds = [], {}, tuple(range(args.num_runs))
    path = out / "selection.json"
    notes = rate_notes(study.read_selection(path) if path.is_file() else {})

    def section(title: str, refs: list[tuple[str, str]], rows: list[tuple[str, str]], interference: bool = False,
                matched: str = "equal samples"):
        """One table: a Δ column per reference, every difference of the table in one Holm family."""
        metrics = ("test_accuracy", "interference") if interference else ("test_accuracy",)
        names = dict(rows)
        s = studies.table_study(title, list(names), [ref for ref, _ in refs], metrics, matched, seeds)
        runs = lambda key: g.get(key, [])  # noqa: E731
        columns = [study_report.Text("setting", names.get), study_report.Text("lr", lambda k: rate(runs(k))),
                   study_report.Text("n", lambda k: len(runs(k))),
                   study_report.Value("test accuracy (%)", "test_accuracy"),
                   *(study_report.Delta(f"Δ vs {label}", "test_accuracy", ref) for ref, label in refs),
                   study_report.Text("plateau", lambda k: plateau(runs(k))),
                   study_report.Text("sample gradients", lambda k: compute(runs(k)))]
        if interference:
            columns += [study_report.Value("interference (points)", "interference"),
                        *(study_report.Delta(f"Δ interference vs {label}", "interference", ref) for ref, label in refs)]
        lines.extend([f"**{title}**", "", *study_report.table(s, lambda key, m: pct(runs(key), m), columns,
                                                               notes=notes, spent=spent(g, matched), labels=names),
                      ""])
        for key in names:
            record[key] = {"n": len(runs(key)), "lr": rate(runs(key)), "test_accuracy": pct(runs(key), "test_accuracy"),
                           "interference": pct(runs(key), "interference") if interference else None}

    d = studies.design(args)
    examples = "texts" if d is TEXT else "images"
    every = max(1, args.rounds // 6) if d is TEXT else studies.EVAL_EVERY
    since = int(0.8 * args.rounds) // every * every  # experiment.plateau's reference evaluation
    caption = (f"Chance accuracy: {100.0 / d.classes:.1f} % ({d.classes} classes). Test set: "
               f"{next(iter(g.values()))[0]['summary']['test_images'] if g else '?'} {examples}. "
               f"Cells: mean ± sample sd over seeds (n when not all {args.num_runs}); Δ: paired difference by seed, "
               "mean [95% t interval], verdicts Holm-corrected over each table's differences ('no difference after "
               "Holm over m' names the effect the simultaneous interval rules out), warnings after a verdict: fewer "
               "than 3 seeds, compute not matched (sample gradients; in the mask tables client steps), a rate at the "
               "edge of the grid it was chosen from; lr: the setting's rate, chosen on validation (selection.json); "
               "plateau: runs whose validation accuracy moved < 1 point since the last evaluation at or before 80 % "
               f"of the run (in the mask tables: since round {since} of {args.rounds}); sample gradients: one per "
               f"{examples[:-1]} of every local step, head warm-up and mask calibration included; interference: "
               "own-class test accuracy, local minus aggregated model, in points.")
    devices = sorted({str(r["meta"].get("device", "?")) for rs in g.values() for r in rs})
    lines += [caption + (f" Runs measured on: {'; '.join(devices)}." if devices else ""), ""]
    if d is TEXT:
        for shard in d.shards:
            title, (dense, probe, *masks) = d.shard_title(shard), studies.text_names(shard)
            rows = [(dense, f"dense FedAvg ({title})"), (probe, "probe: head")]
            rows += [(name, f"{s}{' (TaLoS score)' if 'sensitive' in s else ''}, s = {sp:g}")
                     for name, (sp, s) in zip(masks, studies.TEXT_MASKS)]
            section(f"Sparse fine-tuning of {args.weights} on AG News, {title} shards",
                    [(dense, f"dense {title}"), (probe, "probe (head)")], rows, interference=True,
                    matched="equal steps")
        lines.extend(skew_table(g, d, seeds))
        return "\n".join(lines) + "\n", record
    iid = f"FedAvg IID, J={J}, from the base"
    section("Pretrained base vs random initialisation, and centralized at equal sample gradients",
            [("fedavg_iid", iid)], [("fedavg_iid", iid), ("fedavg_iid_scratch", "FedAvg IID, J=4, from scratch"),
             ("centralized", "Centralized, from the base, same sample gradients")])
    section("Heterogeneity (pathological shards, Nc classes per client)", [("fedavg_iid", iid)],
            [("fedavg_iid", "IID")] + [(f"fedavg_nc{nc}", f"Nc = {nc}") for nc in sorted(args.nc_values, reverse=True)],
            interference=True)
    for shard in args.j_shards:
        ref = f"fedavg_{shard}"
        section(f"Local steps J at equal sample gradients (R x J fixed), {VIT.shard_title(shard)}",
                [(ref, iid if shard == "iid" else f"FedAvg Nc = 2, J={J}")],
                [(ref if j == J else f"fedavg_{shard}_J{j}", f"J = {j}, R = {max(1, round(args.rounds * J / j))}")
                 for j in sorted(args.j_values)], interference=shard != "iid")
    for shard in VIT.shards:
        title, dense, probe = VIT.shard_title(shard), f"fedavg_{shard}", f"probe_{shard}_head"
        for sp in args.sparsities:
            section(f"Sparse fine-tuning, {title} shards, sparsity {sp:g}", [(dense, f"dense {title}"),
                                                                             (probe, "probe (head)")],
                    studies.mask_rows(shard, sp, sp == args.sparsities[0]), interference=True, matched="equal steps")
    return "\n".join(lines) + "\n", record
