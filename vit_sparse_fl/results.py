"""The README blocks of vit_sparse_fl's results, generated from the committed records of run_all_experiments.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs).

Records: ``RECORDS/r<rounds>/runs/<setting>_seed<seed>/`` (args.json, summary.json, metrics.jsonl). A mask
table is the study studies.py declares for the suite's table (``mask_study``: its ``table_study``), one Holm family:
every row against dense FedAvg and against the head-only probe, test accuracy and interference; its verdicts go
through ``common.study_report``, with each arm's plateau (``PLATEAU``, against the longer runs the suite's table does
not know of) and selection (``r<rounds>/runs/selection.json``, ``common.study``'s selection record) beside them.
"""
from __future__ import annotations

import re
from functools import cache

from common import plateau, stats, study, study_report
from common import results as RS
from vit_sparse_fl import compare_budgets as budgets_script
from vit_sparse_fl import report, studies
from vit_sparse_fl.studies import LONGER, PLATEAU, SETTLED, mask_study

RECORDS = "vit_sparse_fl/results"  # one folder a suite: r<rounds>/ with its runs/, tables and selection
PROBE = "probe: head + final norm"


@cache
def groups(folder: str) -> dict:
    """{setting: [runs]} of the committed suite ``RECORDS/<folder>/runs`` (``r192``, ``text_r24``, ...)."""
    out: dict = {}
    for r in RS.records(f"{RECORDS}/{folder}/runs", "*_seed*"):
        out.setdefault(r["name"].rsplit("_seed", 1)[0], []).append(r)
    return out


def suite(rounds: int) -> dict:
    """{setting: [runs]} of the synthetic-CIFAR suite at R = ``rounds``."""
    return groups(f"r{rounds}")


def pct(runs: list[dict], metric: str) -> dict:
    """{seed: 100 * summary[metric]}: accuracy in %, interference in points (as the suite's tables)."""
    return RS.by_seed(runs, metric, 100.0)


def selection(rounds: int) -> dict:
    """The selection record of the synthetic-CIFAR suite at R = ``rounds``."""
    return picked(f"r{rounds}")


def notes(rounds: int):
    """notes(setting, metric) -> [its plateau (against ``LONGER``'s runs), its rate at an edge of the grid]."""
    def of(key: str, metric: str) -> list[str]:
        longer = {r["args"]["seed"]: r["path"] for r in RS.records(f"{RECORDS}/{LONGER[rounds]}", f"{key}_seed*")} \
            if rounds in LONGER else {}
        found = {r["args"]["seed"]: r["path"] for r in suite(rounds)[key]}
        return [n for n in [plateau.arm_note(PLATEAU, found, longer)] if n] + \
            report.rate_notes(selection(rounds))(key, metric)
    return of


@cache
def mask_family(rounds: int, shard: str, sparsity: float) -> dict:
    """{(setting, ref, metric): Finding} of one mask table (Holm over all its differences), with warnings."""
    g = suite(rounds)
    found = study_report.compare(mask_study(rounds, shard, sparsity), lambda key, m: pct(g.get(key, []), m),
                                 notes(rounds), spent=report.spent(g, "equal steps"))
    return {(c.arm, c.reference, c.metric): f for c, f in found.items()}


def minus(text: str) -> str:
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


# ------------------------------------------------------------------- any committed suite, as its table states it
def seeds_of(folder: str) -> tuple[int, ...]:
    """The reported seeds of a suite: 0-4 for the text suites (``--num-runs 5``), 0-2 for the ViT's."""
    return tuple(range(5 if folder.startswith("text") else 3))


@cache
def picked(folder: str) -> dict:
    """The suite's selection.json (``study.read_selection``: every selection score and the rate chosen per
    setting)."""
    return study.read_selection(RS.path(RECORDS) / folder / "runs" / "selection.json")


def values(folder: str, key: str, metric: str = "test_accuracy") -> dict:
    """{seed: value} of a setting of a suite (accuracy in %, interference in points)."""
    return pct(groups(folder).get(key, []), metric)


def cell(folder: str, key: str, metric: str = "test_accuracy") -> str:
    """'88.6 ± 1.1': mean ± sample sd over the setting's seeds, as the suite's table writes it."""
    return study_report.seeds_cell(values(folder, key, metric).values(), len(seeds_of(folder)))


def mean(folder: str, key: str, metric: str = "test_accuracy") -> float:
    return stats.summarize(values(folder, key, metric).values()).mean


def rate(folder: str, key: str) -> str:
    """The setting's learning rate, as its table's lr column writes it."""
    return report.rate(groups(folder).get(key, []))


@cache
def table_family(folder: str, shard: str, sparsity: float | None = None) -> dict:
    """{(setting, ref, metric): Finding} of one mask table of a suite as report.py writes it
    (``make_table``: every row against dense FedAvg and the head-only probe in test accuracy and interference, one
    Holm family, equal steps; warnings: a rate at the edge of its grid). ``sparsity``: the ViT table's (its
    s = 0.9 table holds the true-Fisher score's row); the text tables hold every mask of their shard."""
    rows = studies.text_names(shard) if folder.startswith("text") else \
        [key for key, _ in studies.mask_rows(shard, sparsity, sparsity == 0.9)]
    s = studies.table_study(f"{folder}_{shard}_{sparsity}", rows, [f"fedavg_{shard}", f"probe_{shard}_head"],
                                 ("test_accuracy", "interference"), "equal steps", seeds_of(folder))
    g = groups(folder)
    found = study_report.compare(s, lambda key, m: values(folder, key, m), report.rate_notes(picked(folder)),
                                 spent=report.spent(g, "equal steps"))
    return {(c.arm, c.reference, c.metric): f for c, f in found.items()}


def m_of(family: dict) -> int:
    """The size of a family (its comparisons with an interval), as its verdicts name it ("over m")."""
    return sum(f.paired.n >= 2 for f in family.values())


@cache
def budget_family() -> dict:
    """{(arm, ref): Finding} of the text budgets table as compare_budgets.py writes it (``make_table``): every setting
    against dense FedAvg at each budget ("vs reference", one Holm family) and every setting's last budget step
    (another); an arm is ``setting@rounds``."""
    designs: list = []
    suites = budgets_script.load_suites([str(RS.path(f"{RECORDS}/{f}/runs")) for f in TEXT_BUDGETS], designs)
    order = list(dict.fromkeys(k for s in suites.values() for k in s))

    def of(arm: str, _: str = "") -> dict:
        setting, rounds = arm.rsplit("@", 1)
        return suites[int(rounds)].get(setting, {})

    found = study_report.compare(studies.budget_study(suites, order), of)
    return {(c.arm, c.reference): f for c, f in found.items()}


TEXT_BUDGETS = ("text_r12", "text_r24", "text_r48", "text_r96")


def contrasts(pairs: dict, digits: int = 1) -> dict:
    """{name: claim} of comparisons no table declares, {name: (a {seed: v}, b {seed: v})}, Holm-corrected together:
    the family the sentences name."""
    return {k: claim for k, (_, claim) in RS.family(pairs, digits).items()}


def r192_nc2() -> str:
    """The masks against dense FedAvg and against the head-only probe at Nc = 2, s = 0.9, R = 192."""
    fam = mask_family(192, "nc2", 0.9)
    m = len(fam)
    common, each = study_report.shared(fam.values())
    acc = {(k, ref): study_report.said(f, w) for ((k, ref, metric), f), w in zip(fam.items(), each)
           if metric == "test_accuracy"}
    dense, probe = "fedavg_nc2", "probe_nc2_head"
    ls, rnd, fisher = "sparse_nc2_s0.9_least_sensitive", "sparse_nc2_s0.9_random", \
        "sparse_nc2_s0.9_least_sensitive_fisher"
    over_probe = fam[ls, probe, "test_accuracy"].paired
    return minus(
        f"- Test accuracy minus dense FedAvg's (points, Holm over the table's {m} differences, 3 seeds"
        + (f"; every row: {'; '.join(common)}" if common else "")
        + "".join(f"; dense FedAvg itself: {n}" for n in notes(192)(dense, "test_accuracy")) + "): "
        f"least_sensitive {acc[ls, dense]}; random {acc[rnd, dense]}; least_sensitive with the true-Fisher score "
        f"{acc[fisher, dense]}; the head-only probe ({PROBE}) {acc[probe, dense]}.\n"
        f"- least_sensitive − probe: {acc[ls, probe]}; random − probe {acc[rnd, probe]}. So over training the "
        f"head and the final norm alone, a least-sensitive mask buys at most "
        f"{stats.ruled_out(over_probe, m):.1f} points here.\n"
        f"- Plateau (the rate decays by a cosine, so a run is checked against the same setting at R = 768): "
        f"k/3 still improving: k seeds fail \"{PLATEAU.rule}\".")


def study_r192() -> str:
    """The top README's line for the R = 192 mask tables."""
    fam = mask_family(192, "nc2", 0.9)
    ls, dense, probe = "sparse_nc2_s0.9_least_sensitive", "fedavg_nc2", "probe_nc2_head"
    g = suite(192)
    mean = {k: stats.summarize(pct(g[k], "test_accuracy").values()).mean for k in (ls, dense, probe)}
    return minus(
        f"at Nc = 2 (R = 192, each arm at its own rate, 3 seeds) a 90 %-sparse least-sensitive mask ends at "
        f"{mean[ls]:.1f} % against dense FedAvg's {mean[dense]:.1f} % "
        f"({study_report.said(fam[ls, dense, 'test_accuracy'])}) and the probe's ({PROBE}) {mean[probe]:.1f} % "
        f"({study_report.said(fam[ls, probe, 'test_accuracy'])})")


# ------------------------------------------------------------------------------------------ sentence parts
def label(key: str) -> str:
    """A setting's name in a sentence: 'dense FedAvg', 'the probe', 'least_sensitive s = 0.9', ..."""
    if key.startswith("fedavg_"):
        return "dense FedAvg"
    if key.startswith("probe_"):
        return "the probe" if key.endswith("_head") else "the probe with the last block"
    m = re.fullmatch(r"sparse_\w+?_s([\d.]+)_(\w+?)(_fisher)?", key)
    return f"{m[2]}{' (true-Fisher score)' if m[3] else ''} s = {m[1]}" if m else key


def said(fam: dict, key: str, ref: str, metric: str = "test_accuracy") -> str:
    """The claim of ``key − ref`` in ``metric`` of a family, its warnings inside its parenthesis."""
    return study_report.said(fam[key, ref, metric])


def masks(shard: str, sparsity: float, strategies=("least_sensitive", "most_sensitive", "random")) -> list[str]:
    return [f"sparse_{shard}_s{sparsity:g}_{s}" for s in strategies]


def spread(numbers) -> str:
    """'−0.6 … +1.2': the smallest and largest of signed numbers (one alone)."""
    numbers = sorted(numbers)
    lo, hi = f"{numbers[0]:+.1f}", f"{numbers[-1]:+.1f}"
    return lo if lo == hi else f"{lo} … {hi}"


def survive(fam: dict, metric: str, ref: str | None = None, arms: str = "") -> str:
    """'0 of the 7 interference differences survive Holm (the others' simultaneous intervals rule out more than
    1.5-6.0 points)': over the family's differences in ``metric`` (against ``ref`` only, of arms starting with
    ``arms``), the intervals simultaneous over the whole family."""
    found = [f for (key, r, m), f in fam.items() if m == metric and f.paired.n >= 2 and ref in (None, r)
             and key.startswith(arms)]
    kept = [f for f in found if "p_Holm" in f.claim]
    out = f"{len(kept)} of the {len(found)} {metric.replace('_', ' ')} differences survive Holm"
    ruled = [stats.ruled_out(f.paired, m_of(fam)) for f in found if f not in kept]
    return out + (f" (the others' simultaneous intervals rule out more than {RS.range_of(ruled)} points)"
                  if ruled else "")


# ------------------------------------------------------------------------------ ViT, R = 192: the reading
def base() -> str:
    """The pretrained base every fine-tuning run of the committed suites loads: its test accuracy on its own 50
    classes against chance, from its record (``r192/runs/base_cache/<key>.run``)."""
    (run,) = RS.records(f"{RECORDS}/r192/runs/base_cache", "*.run")
    s = run["summary"]
    return (f"It reaches {100 * s['test_accuracy']:.1f} % test accuracy on those 50 classes ({s['test_images']:,} "
            f"test images; chance {100 * s['chance_accuracy']:.0f} %) after {s['steps_done']:,} steps, "
            f"{s['wall_seconds']:.0f} s on one core (its record: `results/r192/runs/base_cache/`).")


def r192_selection() -> str:
    """The selection stage of R = 192: each named setting's validation accuracy at every rate and its pick."""
    sel = selection(192)
    choices, chosen = sel["choices"], study.chosen(sel)

    def scores(key: str) -> str:
        shown = ", ".join(f"{lr} → {v if isinstance(v, str) else f'{v:.2f}'}"
                          for lr, v in choices[key]["scores"].items())
        return f"{key} chose {chosen[key]:g} ({shown})"

    keys = ["fedavg_nc2", "fedavg_iid", "probe_nc2_head", "probe_iid_head"]
    top = [k for k in choices if k.startswith("sparse_nc2") and 1.0 in study.numeric_scores(choices[k])]
    high = sorted(k for k, lr in chosen.items() if k.startswith("sparse_nc2") and lr == 0.1)
    return minus(
        f"- Selection runs (R = {sel['runs']['rounds']}, seed {', '.join(map(str, sel['runs']['seeds']))}; final "
        "validation accuracy by rate): " + "; ".join(scores(k) for k in keys) + ".\n"
        f"- At Nc = 2 and rate 1.0 the masks reach at most "
        f"{max(study.numeric_scores(choices[k])[1.0] for k in top):.2f} on validation (or diverge); the Nc = 2 masks "
        f"that chose 0.1: {', '.join(label(k) for k in high)}.")


def r192_more() -> str:
    """R = 192 beyond the headline: the other masks against the probe, the s = 0.5 table, IID, interference."""
    nc2, half, iid = mask_family(192, "nc2", 0.9), mask_family(192, "nc2", 0.5), table_family("r192", "iid", 0.9)
    iid5 = table_family("r192", "iid", 0.5)
    probe, dense = "probe_nc2_head", "fedavg_nc2"
    strategies = ("least_sensitive", "lowest_magnitude", "random", "highest_magnitude", "most_sensitive")
    vs_probe = "; ".join(f"{label(k)} {said(half, k, probe)}" for k in masks("nc2", 0.5, strategies))
    sensitive = "; ".join(f"{label(k)} {said(nc2, k, probe)}" for k in masks("nc2", 0.9, ("most_sensitive",
                                                                                           "highest_magnitude")))
    g = suite(192)
    inter = ", ".join(f"{label(k)} {mean('r192', k, 'interference'):.1f}" for k in
                      [dense, probe, *masks("nc2", 0.9, strategies)])
    within = lambda fam, sp: spread(fam[k, "fedavg_iid", "test_accuracy"].paired.mean  # noqa: E731
                                    for k in masks("iid", sp, strategies))
    plateau_nc2 = max(sum(bool(r["summary"].get("plateau_reached")) for r in runs)
                      for k, runs in g.items() if "nc2" in k)
    return minus(
        f"- Nc = 2, s = 0.9, the masks that keep high-score coordinates against the probe: {sensitive}; "
        f"the probe with the last block − the probe {said(nc2, 'probe_nc2_last', probe)}.\n"
        f"- Nc = 2, s = 0.5, every mask against the probe (Holm over that table's {m_of(half)}): {vs_probe}.\n"
        f"- IID: dense FedAvg {cell('r192', 'fedavg_iid')}; the probe − dense "
        f"{said(iid, 'probe_iid_head', 'fedavg_iid')}; "
        f"the masks − dense span {within(iid, 0.9)} at s = 0.9 and {within(iid5, 0.5)} at s = 0.5; at s = 0.9 "
        f"{survive(iid, 'test_accuracy', 'fedavg_iid', 'sparse')}.\n"
        f"- Interference at Nc = 2 (points, means): {inter}; in the s = 0.9 table {survive(nc2, 'interference')}.\n"
        f"- Plateau (per-run criterion): at most {plateau_nc2} of 3 runs of a Nc = 2 cell meets it.")



# ------------------------------------------------------------------ ViT, R = 768, each arm at its own rate again
R768 = "r768_rates"


def r768_headline() -> str:
    """The R = 768 mask tables: every mask against dense at Nc = 2, the probe, IID, interference."""
    nc2, half, iid = table_family(R768, "nc2", 0.9), table_family(R768, "nc2", 0.5), table_family(R768, "iid", 0.9)
    dense = "fedavg_nc2"
    arms = [(nc2, k) for k in masks("nc2", 0.9)] + [(half, k) for k in masks("nc2", 0.5, ("least_sensitive",
                                                                                         "random"))]
    inter = [dense, "probe_nc2_head", *(k for _, k in arms)]
    means = {k: mean(R768, k, "interference") for k in inter}
    return minus(
        f"- Nc = 2, test accuracy minus dense FedAvg's ({cell(R768, dense)} %; points, Holm over the s = 0.9 table's "
        f"{m_of(nc2)} differences and the s = 0.5 table's {m_of(half)}): "
        + "; ".join(f"{label(k)} {said(fam, k, dense)}" for fam, k in arms) + ".\n"
        f"- The probe − dense FedAvg: {said(nc2, 'probe_nc2_head', dense)} at Nc = 2, "
        f"{said(iid, 'probe_iid_head', 'fedavg_iid')} on IID shards.\n"
        f"- IID, s = 0.9, masks − dense FedAvg ({cell(R768, 'fedavg_iid')} %): "
        + "; ".join(f"{label(k)} {said(iid, k, 'fedavg_iid')}" for k in masks("iid", 0.9)) + ".\n"
        f"- Interference at Nc = 2 (points): every arm's mean between {min(means.values()):.1f} and "
        f"{max(means.values()):.1f} (dense FedAvg {means[dense]:.1f}, the probe {means['probe_nc2_head']:.1f}); "
        f"{survive(nc2, 'interference')} in the s = 0.9 table, {survive(half, 'interference')} in the s = 0.5 table.")


def r768_more() -> str:
    """R = 768 beyond the headline: the masks against the probe, s = 0.5 on IID shards, the plateau."""
    nc2, iid5 = table_family(R768, "nc2", 0.9), table_family(R768, "iid", 0.5)
    g = groups(R768)

    def passed(key: str) -> str:
        return report.plateau(g.get(key, []))

    moved = {k: [100 * r["summary"]["plateau_change"] for r in runs] for k, runs in g.items() if "nc2" in k}
    cells = ", ".join(f"{label(k)} {passed(k)}" for k in g if k.endswith("_nc2") or "_nc2_" in k)
    return minus(
        "- Nc = 2, s = 0.9, masks − the probe: "
        + "; ".join(f"{label(k)} {said(nc2, k, 'probe_nc2_head')}" for k in masks("nc2", 0.9)) + ".\n"
        "- IID, s = 0.5, masks − dense FedAvg: "
        + "; ".join(f"{label(k)} {said(iid5, k, 'fedavg_iid')}" for k in masks("iid", 0.5, ("least_sensitive",
                                                                                            "random"))) + ".\n"
        "- Plateau (per-run criterion), IID cells: "
        + ", ".join(f"{label(k)} {passed(k)}" for k in g if k.endswith("_iid") or "_iid_" in k)
        + f"; Nc = 2 cells: {cells}. Since the last evaluation at or before 80 % of the run the Nc = 2 runs' "
        f"validation accuracy still moved by {spread(v for vs in moved.values() for v in vs)} points (dense FedAvg "
        "by seed: "
        f"{' / '.join(f'{v:.1f}' for v in moved['fedavg_nc2'])}).")



# --------------------------------------------------------------------- MiniLM-L6 on AG News, R = 24, 5 seeds
TEXT = "text_r24"


@cache
def skew_family(folder: str = TEXT) -> dict:
    """{(setting, ref, metric): Finding} of the suite's skew table (report.py ``skew``: accuracy
    lost to skew, metric "test_accuracy" against the same arm on IID shards, and that loss minus dense's, metric
    "skew"), one Holm family."""
    s, of, _ = report.skew(groups(folder), studies.TEXT, seeds_of(folder))
    return {(c.arm, c.reference, c.metric): f for c, f in study_report.compare(s, of).items()}


def text_headline() -> str:
    """The R = 24 text tables: the least-sensitive mask against dense FedAvg and the probe on each shard, the
    interference and the accuracy lost to Nc = 1 skew."""
    fam = {shard: table_family(TEXT, shard) for shard in ("iid", "nc2", "nc1")}
    skew = skew_family()
    ls = "sparse_{}_s0.9_least_sensitive"

    def vs(shard: str) -> str:
        return (f"{label(ls.format(shard))} {cell(TEXT, ls.format(shard))} − dense FedAvg "
                f"{said(fam[shard], ls.format(shard), f'fedavg_{shard}')}, − the probe "
                f"{said(fam[shard], ls.format(shard), f'probe_{shard}_head')}")

    nc1 = fam["nc1"]
    return minus(
        f"- Test accuracy (%; Holm over each shard's table, {m_of(fam['iid'])} differences): IID: {vs('iid')}; the "
        f"probe − dense {said(fam['iid'], 'probe_iid_head', 'fedavg_iid')}.\n"
        f"- Nc = 2: {vs('nc2')}. Nc = 1: {vs('nc1')}.\n"
        f"- Interference at Nc = 1 (points): dense FedAvg {cell(TEXT, 'fedavg_nc1', 'interference')}, the probe "
        f"{cell(TEXT, 'probe_nc1_head', 'interference')}, least_sensitive s = 0.9 "
        f"{cell(TEXT, ls.format('nc1'), 'interference')}; the probe − dense "
        f"{said(nc1, 'probe_nc1_head', 'fedavg_nc1', 'interference')}, least_sensitive − dense "
        f"{said(nc1, ls.format('nc1'), 'fedavg_nc1', 'interference')}.\n"
        f"- Accuracy lost to Nc = 1 skew (Nc = 1 minus IID by seed; Holm over the skew table's {m_of(skew)}): dense "
        f"FedAvg {said(skew, 'fedavg_nc1', 'fedavg_iid')}, least_sensitive s = 0.9 "
        f"{said(skew, ls.format('nc1'), ls.format('iid'))}; its loss minus dense's "
        f"{said(skew, ls.format('nc1'), 'fedavg_nc1', 'skew')}.")


def text_more() -> str:
    """The R = 24 text tables beyond the headline: which 10 %, half the weights, the plateau."""
    fam = {shard: table_family(TEXT, shard) for shard in ("iid", "nc2", "nc1")}
    skew = skew_family()
    at = lambda sp, s, shard: f"sparse_{shard}_s{sp:g}_{s}"  # noqa: E731
    pairs = {(sp, shard, metric): (values(TEXT, at(sp, "least_sensitive", shard), metric),
                                   values(TEXT, at(sp, "random", shard), metric))
             for sp in (0.9, 0.5) for shard in ("iid", "nc2", "nc1") for metric in ("test_accuracy", "interference")}
    pairs |= {("0.9 − 0.5", s, "nc1"): (values(TEXT, at(0.9, s, "nc1")), values(TEXT, at(0.5, s, "nc1")))
              for s in ("least_sensitive", "random")}
    c = contrasts(pairs)
    title = studies.TEXT.shard_title
    lines = [
        "- Random s = 0.9 − dense FedAvg: "
        + "; ".join(f"{title(sh)} {said(fam[sh], at(0.9, 'random', sh), f'fedavg_{sh}')}" for sh in fam)
        + f"; its accuracy lost to Nc = 1 skew {said(skew, at(0.9, 'random', 'nc1'), at(0.9, 'random', 'iid'))} and "
        f"its Nc = 1 interference {cell(TEXT, at(0.9, 'random', 'nc1'), 'interference')}.",
        f"- least_sensitive − random, paired by seed (not in the tables; Holm over these {len(c)} contrasts): "
        + "; ".join(f"s = {sp:g}, {title(sh)}, {'accuracy' if m == 'test_accuracy' else 'interference'} {c[sp, sh, m]}"
                    for sp in (0.9, 0.5) for sh in ("iid", "nc2", "nc1") for m in ("test_accuracy", "interference"))
        + "; from s = 0.5 to s = 0.9 at Nc = 1 (accuracy), least_sensitive "
        f"{c['0.9 − 0.5', 'least_sensitive', 'nc1']}, random {c['0.9 − 0.5', 'random', 'nc1']}.",
        "- lowest_magnitude s = 0.9: IID − dense "
        f"{said(fam['iid'], at(0.9, 'lowest_magnitude', 'iid'), 'fedavg_iid')}; "
        f"Nc = 1 {cell(TEXT, at(0.9, 'lowest_magnitude', 'nc1'))} %, interference "
        f"{cell(TEXT, at(0.9, 'lowest_magnitude', 'nc1'), 'interference')}, lost to skew "
        f"{said(skew, at(0.9, 'lowest_magnitude', 'nc1'), at(0.9, 'lowest_magnitude', 'iid'))}. most_sensitive s = 0.9 "
        f"at Nc = 1: interference {cell(TEXT, at(0.9, 'most_sensitive', 'nc1'), 'interference')}, − the probe "
        f"{said(fam['nc1'], at(0.9, 'most_sensitive', 'nc1'), 'probe_nc1_head', 'interference')}.",
    ]
    for sh in ("iid", "nc2", "nc1"):
        ls, rnd = at(0.5, "least_sensitive", sh), at(0.5, "random", sh)
        lines.append(
            f"- Half the weights, {title(sh)}: least_sensitive s = 0.5 {cell(TEXT, ls)} (rate {rate(TEXT, ls)}; "
            "− dense "
            f"{said(fam[sh], ls, f'fedavg_{sh}')}; − the probe {said(fam[sh], ls, f'probe_{sh}_head')}), random "
            f"s = 0.5 {cell(TEXT, rnd)} (rate {rate(TEXT, rnd)}; − dense {said(fam[sh], rnd, f'fedavg_{sh}')})"
            + (f"; interference {cell(TEXT, ls, 'interference')} and {cell(TEXT, rnd, 'interference')}"
               if sh != "iid" else "") + ".")
    lines.append(
        "- Lost to Nc = 1 skew by the s = 0.5 arms: "
        + "; ".join(f"{label(at(0.5, s, 'nc1'))} {said(skew, at(0.5, s, 'nc1'), at(0.5, s, 'iid'))}, minus dense's "
                    f"{said(skew, at(0.5, s, 'nc1'), 'fedavg_nc1', 'skew')}" for s in ("least_sensitive", "random"))
        + ".")
    g = groups(TEXT)
    met = {sh: [sum(bool(r["summary"].get("plateau_reached")) for r in runs) for k, runs in g.items() if f"_{sh}" in k]
           for sh in ("iid", "nc2", "nc1")}
    lines.append("- Plateau (per-run criterion) at R = 24, runs meeting it per arm: "
                 + "; ".join(f"{title(sh)} {RS.range_of(n, 0)} of 5" for sh, n in met.items()) + ".")
    return minus("\n".join(lines))



# ----------------------------------------------------------------------- the text budgets, R = 12, 24, 48, 96
def budget_rounds() -> list[int]:
    return [int(f.rsplit("_r", 1)[1]) for f in TEXT_BUDGETS]


def by_budget(key: str, metric: str = "test_accuracy") -> str:
    """'79.8 ± 1.4 / 82.3 ± 2.4 / – / 87.3 ± 0.5': a setting's cells at each budget ('–' where not run)."""
    return " / ".join(cell(f, key, metric) if groups(f).get(key) else "–" for f in TEXT_BUDGETS)


def last_step(key: str) -> str:
    """'R 48 → 96 +1.2 [...] (...), settled' of a setting's last budget step in the budgets table."""
    fam = budget_family()
    (arm, ref), f = next(((a, r), f) for (a, r), f in fam.items() if a.startswith(f"{key}@") and
                         r.startswith(f"{key}@"))
    settled = "settled" if abs(f.paired.mean) < SETTLED else "not settled"
    return f"R {ref.rsplit('@', 1)[1]} → {arm.rsplit('@', 1)[1]} {study_report.said(f)}, {settled}"


def budgets_headline() -> str:
    """At Nc = 1: dense FedAvg, the probe and the least-sensitive mask at four budgets; their gaps per budget, their
    last budget steps, the mask against the probe at the largest budget, the interference per budget."""
    fam = budget_family()
    dense, probe, ls = "fedavg_nc1", "probe_nc1_head", "sparse_nc1_s0.9_least_sensitive"
    m_vs = sum(f.paired.n >= 2 for (a, r), f in fam.items() if a.split("@")[0] != r.split("@")[0])
    m_step = sum(f.paired.n >= 2 for (a, r), f in fam.items() if a.split("@")[0] == r.split("@")[0])
    gaps = lambda key: "; ".join(f"R = {r} {study_report.said(fam[f'{key}@{r}', f'{dense}@{r}'])}"  # noqa: E731
                                 for r in budget_rounds() if (f"{key}@{r}", f"{dense}@{r}") in fam)
    r96 = table_family("text_r96", "nc1")
    rounds = " / ".join(str(r) for r in budget_rounds())
    return minus(
        f"- Test accuracy (%) at Nc = 1, R = {rounds}: dense FedAvg {by_budget(dense)}; the probe "
        f"{by_budget(probe)}; least_sensitive s = 0.9 {by_budget(ls)}.\n"
        f"- least_sensitive − dense FedAvg (Holm over the budgets table's {m_vs} differences): {gaps(ls)}. The probe − "
        f"dense FedAvg: {gaps(probe)}.\n"
        f"- Last budget step (Holm over the table's {m_step}; settled: it moves the mean by less than "
        f"{SETTLED:g} point): dense FedAvg {last_step(dense)}; least_sensitive {last_step(ls)}; the "
        f"probe {last_step(probe)}.\n"
        f"- At R = 96, least_sensitive − the probe {said(r96, ls, probe)} and − dense FedAvg {said(r96, ls, dense)} "
        f"(the R = 96 table, Holm over its {m_of(r96)}).\n"
        f"- Interference at Nc = 1 (points), R = {rounds}: dense FedAvg {by_budget(dense, 'interference')}; the probe "
        f"{by_budget(probe, 'interference')}; least_sensitive {by_budget(ls, 'interference')}.")


def budgets_more() -> str:
    """The budgets beyond the headline: random and most_sensitive at R = 96, the interference gaps at R = 48 and 96,
    least-sensitive against random, and the collapsed seeds at R = 48."""
    r96, r48 = table_family("text_r96", "nc1"), table_family("text_r48", "nc1")
    nc2_48, iid_48 = table_family("text_r48", "nc2"), table_family("text_r48", "iid")
    dense, probe, ls = "fedavg_nc1", "probe_nc1_head", "sparse_nc1_s0.9_least_sensitive"
    rnd, ms = "sparse_nc1_s0.9_random", "sparse_nc1_s0.9_most_sensitive"
    c = contrasts({(f, k, m): (values(f, ls, m), values(f, k, m)) for f in ("text_r48", "text_r96")
                   for k in (rnd, ms) for m in ("test_accuracy", "interference") if groups(f).get(k)})
    inter = lambda fam, f: "; ".join(  # noqa: E731
        f"{label(k)} − dense {said(fam, k, dense, 'interference')}" for k in (ls, probe))
    seeds = lambda f, k: ", ".join(f"{v:.1f}" for _, v in sorted(values(f, k).items()))  # noqa: E731
    sel48 = study.chosen(picked("text_r48"))
    return minus(
        f"- R = 96, random s = 0.9 {cell('text_r96', rnd)} (rate {rate('text_r96', rnd)}): − dense "
        f"{said(r96, rnd, dense)}, − the probe {said(r96, rnd, probe)}, interference "
        f"{cell('text_r96', rnd, 'interference')}; its last budget step {last_step(rnd)}.\n"
        f"- R = 96, most_sensitive s = 0.9 {cell('text_r96', ms)} (rate {rate('text_r96', ms)}; at R = 24 "
        f"{cell(TEXT, ms)}): − dense {said(r96, ms, dense)}, interference {cell('text_r96', ms, 'interference')}.\n"
        f"- Interference gaps at Nc = 1, R = 96 (Holm over {m_of(r96)}): {inter(r96, 'text_r96')}; least_sensitive − "
        f"the probe {said(r96, ls, probe, 'interference')}. R = 48 (Holm over {m_of(r48)}): {inter(r48, 'text_r48')}.\n"
        f"- least_sensitive − other masks at Nc = 1 (not in the tables; Holm over these {len(c)} contrasts): "
        + "; ".join(f"R = {f.rsplit('_r', 1)[1]}, − {label(k)}, "
                    f"{'accuracy' if m == 'test_accuracy' else 'interference'} {claim}"
                    for (f, k, m), claim in c.items())
        + ".\n"
        "- R = 48, the two cells with a collapsed seed: dense FedAvg at Nc = 2 (rate "
        f"{rate('text_r48', 'fedavg_nc2')}, at R = 24 {rate(TEXT, 'fedavg_nc2')}) {cell('text_r48', 'fedavg_nc2')}, "
        f"by seed {seeds('text_r48', 'fedavg_nc2')}; "
        f"least_sensitive on IID shards (rate {sel48['sparse_iid_s0.9_least_sensitive']:g}) by seed "
        f"{seeds('text_r48', 'sparse_iid_s0.9_least_sensitive')}. The rest of Nc = 2 at R = 48: least_sensitive "
        f"{cell('text_r48', 'sparse_nc2_s0.9_least_sensitive')}, the probe {cell('text_r48', 'probe_nc2_head')}, "
        f"least_sensitive − the probe {said(nc2_48, 'sparse_nc2_s0.9_least_sensitive', 'probe_nc2_head')}; "
        f"IID at R = 48: the probe − dense {said(iid_48, 'probe_iid_head', 'fedavg_iid')}.")


BLOCKS = {"base": base, "r192-nc2": r192_nc2, "study-r192": study_r192, "r192-selection": r192_selection,
          "r192-more": r192_more,
          "r768-headline": r768_headline, "r768-more": r768_more,
          "text-headline": text_headline, "text-more": text_more,
          "budgets-headline": budgets_headline, "budgets-more": budgets_more}
