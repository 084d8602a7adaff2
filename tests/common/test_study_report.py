"""common/study_report.py: a study's comparisons Holm-corrected over the family it declares (not the table), with
the seed count, plateau and selection warnings beside each verdict."""
from __future__ import annotations

from common import stats, study_report
from common.study import Arm, Comparison, Study

VALUES = {"fedavg": {0: 50.0, 1: 51.0, 2: 52.0, 3: 50.5}, "fisher": {0: 48.0, 1: 49.5, 2: 49.0, 3: 48.5},
          "central": {0: 45.0, 1: 45.5}, "scaffold": {0: 50.2, 1: 50.9, 2: 52.3, 3: 50.4}}


def _study(family_of):
    arms = tuple(Arm(a, "mamba_fl.fed_avg") for a in VALUES)
    return Study("toy", arms, seeds=(0, 1, 2, 3),
                 comparisons=tuple(Comparison(a, "fedavg", family_of(a)) for a in VALUES if a != "fedavg"))


def test_holm_runs_over_the_declared_family_not_the_table():
    one = study_report.compare(_study(lambda a: "all"), lambda arm, metric: VALUES[arm])
    apart = study_report.compare(_study(lambda a: a), lambda arm, metric: VALUES[arm])
    diffs = {c.arm: stats.paired(VALUES[c.arm], VALUES["fedavg"]) for c in one}
    holm = stats.holm(diffs)
    for c, (d, claim, _) in one.items():
        assert d == diffs[c.arm] and claim == stats.claim(d, holm[c.arm], 3)
        assert "over 3" in claim or "no difference" in claim
    assert all("over" not in claim or "p_Holm" not in claim for _, claim, _ in apart.values())  # a family of one
    assert [c.arm for c in one] == ["fisher", "central", "scaffold"]


def test_warnings_name_few_seeds_and_the_arms_own_notes():
    notes = {"fisher": ["2/4 still improving"], "central": ["lr at the high edge of its grid"]}
    found = study_report.compare(_study(lambda a: "all"), lambda arm, metric: VALUES[arm],
                                 lambda arm, metric: notes.get(arm, []))
    by_arm = {c.arm: f for c, f in found.items()}
    assert by_arm["central"].warnings == ("2 seeds", "lr at the high edge of its grid")
    assert by_arm["fisher"].warnings == ("2/4 still improving",) and by_arm["scaffold"].warnings == ()
    assert study_report.warned("+1.0 [-0.5, +2.5]", by_arm["central"].warnings) == \
        "+1.0 [-0.5, +2.5]; 2 seeds; lr at the high edge of its grid"
    missing = study_report.compare(_study(lambda a: "all"), lambda arm, metric: {} if arm == "central" else VALUES[arm])
    assert {c.arm for c in missing} == {"fisher", "scaffold"}  # an arm without runs: not compared, not counted


def test_edge_notes():
    scores = {"0.003": 50.0, "0.01": 49.0, "0.03": 48.0}
    assert study_report.edge_note(scores, 0.03, "lr") == "lr at the high edge of its grid"
    assert study_report.edge_note(scores, 0.01, "lr") is None
    assert study_report.edge_note({"local": 52.8}, "local", "fisher-method") is None


def test_unmatched_compute_is_named_as_the_study_states_it_and_shared_warnings_once():
    spent = {"fedavg": {0: 720, 1: 720}, "fisher": {0: 720, 1: 724}, "central": {0: 1404, 1: 1404},
             "scaffold": {0: 720}}
    s = Study("toy", tuple(Arm(a, "mamba_fl.fed_avg") for a in VALUES), seeds=(0, 1, 2, 3), compute="equal steps",
              comparisons=tuple(Comparison(a, "fedavg", "all") for a in VALUES if a != "fedavg"))
    found = study_report.compare(s, lambda arm, metric: VALUES[arm], lambda arm, metric: ["not checked"],
                                 spent=lambda arm, metric: spent[arm])
    by_arm = {c.arm: f.warnings for c, f in found.items()}
    assert by_arm["central"] == ("2 seeds", "unmatched compute (equal steps: 1.4e+03 vs 720)", "not checked")
    assert by_arm["fisher"] == by_arm["scaffold"] == ("not checked",)   # within 1 %: matched
    unstated = study_report.compare(_study(lambda a: "all"), lambda arm, metric: VALUES[arm],
                                    spent=lambda arm, metric: spent[arm])
    assert all("unmatched" not in w for f in unstated.values() for w in f.warnings)  # no compute declared
    common, each = study_report.shared(found.values())
    assert common == ("not checked",) and each == [(), ("2 seeds", "unmatched compute (equal steps: 1.4e+03 vs 720)"),
                                                   ()]


def test_a_sentence_puts_the_warnings_inside_the_claims_parenthesis():
    d = stats.paired(VALUES["fisher"], VALUES["fedavg"])
    f = study_report.Finding(d, "-2.1 [-3.0, -1.2] (n=4; p_Holm = 0.01 over 3)", ("3/4 still improving",))
    assert study_report.said(f) == "-2.1 [-3.0, -1.2] (n=4; p_Holm = 0.01 over 3; 3/4 still improving)"
    assert study_report.said(f, ()) == f.claim
    assert study_report.said(study_report.Finding(d, "-2.1 (n=1, no interval", ("1 seed",))) == \
        "-2.1 (n=1, no interval (1 seed)"


def _cells(lines, row):
    return next([c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith(f"| {row} |"))


def test_a_table_shows_each_arm_and_its_declared_comparisons_in_the_one_vocabulary():
    s = _study(lambda a: "all")
    values = {**VALUES, "scaffold": {**VALUES["scaffold"], 3: float("nan")}}   # one seed diverged
    notes = {"central": ["lr at the high edge of its grid"]}
    lines = study_report.table(s, lambda arm, metric: values[arm],
                               [study_report.Text("arm", str), study_report.Value("accuracy"),
                                study_report.Delta("− FedAvg", reference="fedavg")],
                               notes=lambda arm, metric: notes.get(arm, []))
    assert lines[:2] == ["| arm | accuracy | − FedAvg |", "|---|---|---|"] and len(lines) == 2 + len(VALUES)
    found = study_report.compare(s, lambda arm, metric: {k: v for k, v in values[arm].items() if v == v})
    by_arm = {c.arm: f for c, f in found.items()}
    fedavg, central, scaffold = (_cells(lines, a) for a in ("fedavg", "central", "scaffold"))
    assert fedavg == ["fedavg", stats.fmt(stats.summarize(VALUES["fedavg"].values())).split(" (")[0], "–"]
    assert central[1] == "45.2 ± 0.4 (n=2)"                     # n only where it is not the study's 4 seeds
    assert central[2] == f"{by_arm['central'].claim}; 2 seeds; lr at the high edge of its grid"
    assert "over 3" in by_arm["fisher"].claim and _cells(lines, "fisher")[2] == by_arm["fisher"].claim
    assert scaffold[1].endswith("(n=3), 1 diverged") and "(n=3;" in scaffold[2]     # the finite seeds paired


def test_a_table_skips_diverged_arms_points_to_reversed_comparisons_and_picks_by_family():
    arms = ("dense", "probe", "mask", "lost")
    vals = {"dense": {0: 80.0, 1: 81.0, 2: 83.0}, "probe": {0: 78.0, 1: 78.5, 2: 80.0},
            "mask": {0: 79.0, 1: 80.5, 2: 82.0}, "lost": {0: float("inf")} | {1: 20.0, 2: 21.0}}
    s = Study("masks", tuple(Arm(a, "vit_sparse_fl.train_federated") for a in arms), seeds=(0, 1, 2),
              comparisons=(Comparison("probe", "dense", "table"), Comparison("mask", "dense", "table"),
                           Comparison("mask", "probe", "table"), Comparison("lost", "dense", "table"),
                           Comparison("mask", "probe", "alone")))
    cols = [study_report.Text("arm", str), study_report.Delta("Δ dense", reference="dense"),
            study_report.Delta("Δ probe", reference="probe", family="table"),
            study_report.Delta("alone", family="alone")]
    lines = study_report.table(s, lambda arm, metric: vals[arm], cols, labels={"probe": "probe: head"},
                               skip={"lost": "diverged"})
    found = study_report.compare(s, lambda arm, metric: vals[arm] if arm != "lost" else {})
    assert _cells(lines, "dense")[1:3] == ["–", "= −Δ in row 'probe: head'"]
    assert _cells(lines, "lost")[1:] == ["diverged", "–", "–"]        # declared, skipped: not counted in Holm
    mask = _cells(lines, "mask")
    assert mask[2] == found[Comparison("mask", "probe", "table")].claim and "over 3" in mask[2]
    assert mask[3] == found[Comparison("mask", "probe", "alone")].claim and "a single comparison" in mask[3]
    rows = study_report.table(s, lambda arm, metric: vals[arm], [study_report.Value("dense", of=lambda r: "dense")],
                              rows=["probe"])
    assert rows[2] == "| 81.3 ± 1.5 |"                               # a column about another arm than the row
