"""The README blocks of vit_sparse_fl's results, generated from the committed records of run_all_experiments.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs).

Records: ``RECORDS/r<rounds>/runs/<setting>_seed<seed>/`` (args.json, summary.json, metrics.jsonl). A mask
table is the study run_all_experiments.py's table declares (``mask_study``: its ``table_study``), one Holm family:
every row against dense FedAvg and against the head-only probe, test accuracy and interference; its verdicts go
through ``common.study_report``, with each arm's plateau (``PLATEAU``, against the longer runs the suite's table does
not know of) and selection (``r<rounds>/selection_R<rounds>.json``) beside them.
"""
from __future__ import annotations

import dataclasses
import json
import re
from functools import cache

from common import plateau, stats, study, study_report
from common import results as RS
from vit_sparse_fl import compare_budgets as budgets_script
from vit_sparse_fl import run_all_experiments as suite_script

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


# every arm's rate decays by a cosine, so its last evaluations are flat by construction: a run is judged against
# the same setting at 4x the rounds (r768_rates/runs, its rate chosen again there), within half the seeds' sd of
# the final validation accuracy (the selection split's noise)
PLATEAU = plateau.Plateau("4x the rounds raise the final validation accuracy by at most 0.5 sd of the seeds",
                          "R768", tolerance=0.5, metric="val_accuracy", value="final_val_accuracy", direction="max",
                          schedule="decayed")
LONGER = {192: "r768_rates/runs"}  # a budget's second budget: the folder of its longer runs


def mask_study(rounds: int, shard: str, sparsity: float) -> study.Study:
    """One mask table of the suite at R = ``rounds`` as run_all_experiments.py declares it (``table_study``): each
    row against dense FedAvg and the head-only probe in test accuracy and interference, one Holm family; equal steps
    (rounds times local steps); with the plateau's second budget, R = 768."""
    rows = [key for key, _ in suite_script.mask_rows(shard, sparsity, sparsity == 0.9)]
    s = suite_script.table_study(f"masks_R{rounds}_{shard}_s{sparsity:g}", rows,
                                 [f"fedavg_{shard}", f"probe_{shard}_head"], ("test_accuracy", "interference"),
                                 "equal steps", (0, 1, 2))
    return dataclasses.replace(s, budgets={f"R{rounds}": (), "R768": ("--rounds", "768")}, plateau=PLATEAU)


@cache
def selection(rounds: int) -> dict:
    return json.loads((RS.path(RECORDS) / f"r{rounds}" / f"selection_R{rounds}.json").read_text(encoding="utf-8"))


def notes(rounds: int):
    """notes(setting, metric) -> [its plateau (against ``LONGER``'s runs), its rate at an edge of the grid]."""
    def of(key: str, metric: str) -> list[str]:
        longer = {r["args"]["seed"]: r["path"] for r in RS.records(f"{RECORDS}/{LONGER[rounds]}", f"{key}_seed*")} \
            if rounds in LONGER else {}
        found = {r["args"]["seed"]: r["path"] for r in suite(rounds)[key]}
        return [n for n in [plateau.arm_note(PLATEAU, found, longer)] if n] + \
            suite_script.rate_notes(selection(rounds))(key, metric)
    return of


@cache
def mask_family(rounds: int, shard: str, sparsity: float) -> dict:
    """{(setting, ref, metric): Finding} of one mask table (Holm over all its differences), with warnings."""
    g = suite(rounds)
    found = study_report.compare(mask_study(rounds, shard, sparsity), lambda key, m: pct(g.get(key, []), m),
                                 notes(rounds), spent=suite_script.spent(g, "equal steps"))
    return {(c.arm, c.reference, c.metric): f for c, f in found.items()}


def minus(text: str) -> str:
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


# ------------------------------------------------------------------- any committed suite, as its table states it
def seeds_of(folder: str) -> tuple[int, ...]:
    """The reported seeds of a suite: 0-4 for the text suites (``--num-runs 5``), 0-2 for the ViT's."""
    return tuple(range(5 if folder.startswith("text") else 3))


@cache
def picked(folder: str) -> dict:
    """The suite's selection.json (every selection score and the rate chosen per setting)."""
    return json.loads((RS.path(RECORDS) / folder / "runs" / "selection.json").read_text(encoding="utf-8"))


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
    return suite_script.rate(groups(folder).get(key, []))


@cache
def table_family(folder: str, shard: str, sparsity: float | None = None) -> dict:
    """{(setting, ref, metric): Finding} of one mask table of a suite as run_all_experiments.py writes it
    (``make_table``: every row against dense FedAvg and the head-only probe in test accuracy and interference, one
    Holm family, equal steps; warnings: a rate at the edge of its grid). ``sparsity``: the ViT table's (its
    s = 0.9 table holds the true-Fisher score's row); the text tables hold every mask of their shard."""
    rows = suite_script.text_names(shard) if folder.startswith("text") else \
        [key for key, _ in suite_script.mask_rows(shard, sparsity, sparsity == 0.9)]
    s = suite_script.table_study(f"{folder}_{shard}_{sparsity}", rows, [f"fedavg_{shard}", f"probe_{shard}_head"],
                                 ("test_accuracy", "interference"), "equal steps", seeds_of(folder))
    g = groups(folder)
    found = study_report.compare(s, lambda key, m: values(folder, key, m), suite_script.rate_notes(picked(folder)),
                                 spent=suite_script.spent(g, "equal steps"))
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

    found = study_report.compare(budgets_script.budget_study(suites, order), of)
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


BLOCKS = {"r192-nc2": r192_nc2, "study-r192": study_r192}
