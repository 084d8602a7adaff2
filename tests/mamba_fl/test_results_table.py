"""mamba_fl/results.py's headline table through common.study_report: the declared study's per-table Holm families
give the verdicts the per-table computation gives (``per_table``), the warnings only added beside them; the other
blocks' tables (``results.table``, both record folders) the same."""
from __future__ import annotations

import pytest

from common import results as RS
from mamba_fl import results, studies


def per_table(arms: dict, stage: str) -> dict:
    """{arm: (Paired, claim)} of arm − FedAvg over one table, Holm over the table's comparisons, computed apart."""
    ref = results.values(arms["fedavg"], stage)
    return RS.family({a: (results.values(g, stage), ref) for a, g in arms.items() if a != "fedavg"})


def test_real_table_keeps_each_tables_verdicts_and_adds_the_plateau_warnings():
    lines = results.real_table().splitlines()
    rows = [line.split(" | ") for line in lines[2:] if line.startswith("|")]
    assert "still improving" in lines[-1]  # the warning says what it means
    label_of = {v: k for k, v in results.LABELS.items()}
    warned = 0
    for row in rows:
        layers, arm = int(row[0].lstrip("| ")), label_of[row[1]]
        arms = results.grid(results.RECORDS)[(layers, "contiguous", "k4m4")]
        for stage, text in (("plateau", row[3]), ("budget", row[6].rstrip(" |"))):
            verdict, *warnings = text.split("; ")
            expected = "reference" if arm == "fedavg" else results.short(*per_table(arms, stage)[arm])
            assert verdict == expected
            assert stage == "plateau" or not warnings  # equal compute: no plateau to be short of
            still = sum(r["summary"]["best_at"] == r["summary"]["stopped_at"] for r in arms[arm])
            assert warnings == ([f"{still}/{len(arms[arm])} still improving"] if still and stage == "plateau" else [])
            warned += bool(warnings)
    assert len(rows) == 14 and warned == 12


def test_the_fedfisher_family_spans_every_setting_as_declared():
    """FISHER declares one family over every FedFisher − FedAvg comparison of the grid: the claims of the
    comparisons corrected together (``common.results.family`` over the same pairs), 'over 10' in each."""
    pairs = {(k, stage): (results.values(arms["fedfisher"], stage), results.values(arms["fedavg"], stage))
             for k, arms in results.grid(results.RECORDS).items() if "fedfisher" in arms
             for stage in ("plateau", "budget")}
    found = results.fisher_family()
    assert len(pairs) == 10 and {k: (f.paired, f.claim) for k, f in found.items()} == RS.family(pairs)
    assert list(found) == list(pairs)


@pytest.mark.parametrize("folder", [results.RECORDS, results.SOURCE])
def test_every_table_keeps_its_verdicts_and_warns_of_runs_stopped_while_improving(folder):
    for setting, arms in results.grid(folder).items():
        found = results.table(folder, setting)
        for stage in studies.STAGES:
            for arm, (d, claim) in per_table(arms, stage).items():
                f = found[arm, stage]
                assert (f.paired, f.claim) == (d, claim)
                still = sum(r["summary"]["best_at"] == r["summary"]["stopped_at"] for r in arms[arm])
                assert (f"{still}/{len(arms[arm])} still improving" in f.warnings) == (still > 0 and stage == "plateau")
