"""mamba_fl/results.py's headline table through common.study_report: the declared study's per-table Holm families
give the verdicts the per-table computation gives (``table_family``), the warnings only added beside them."""
from __future__ import annotations

from mamba_fl import results


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
            expected = "reference" if arm == "fedavg" else results.short(*results.table_family(arms, stage)[arm])
            assert verdict == expected
            assert stage == "plateau" or not warnings  # equal compute: no plateau to be short of
            still = sum(r["summary"]["best_at"] == r["summary"]["stopped_at"] for r in arms[arm])
            assert warnings == ([f"{still}/{len(arms[arm])} still improving"] if still and stage == "plateau" else [])
            warned += bool(warnings)
    assert len(rows) == 14 and warned == 12


def test_the_fedfisher_family_spans_every_setting_as_declared():
    """FISHER declares one family over every FedFisher − FedAvg comparison of the grid: the claims of the
    comparisons corrected together (``common.results.family`` over the same pairs), 'over 10' in each."""
    from common import results as RS

    pairs = {(k, stage): (results.values(arms["fedfisher"], stage), results.values(arms["fedavg"], stage))
             for k, arms in results.grid(results.RECORDS).items() if "fedfisher" in arms
             for stage in ("plateau", "budget")}
    assert len(pairs) == 10 and results.fisher_family() == RS.family(pairs)
    assert list(results.fisher_family()) == list(pairs)
