"""The sentence parts of vit_sparse_fl's results blocks (the blocks themselves are checked against their records by
``python -m common.results --check``): a family's survivors counted over the differences asked for, with the
simultaneous intervals of the whole family; a setting's name; the spread of signed numbers."""
from __future__ import annotations

from common import stats, study_report
from vit_sparse_fl import results as V


def _finding(a: dict, b: dict) -> study_report.Finding:
    return study_report.Finding(stats.paired(a, b), "", ())


def test_survive_counts_the_asked_differences_and_rules_out_over_the_whole_family():
    big, none = _finding({0: 10.0, 1: 11.0, 2: 10.5}, {0: 0.0, 1: 0.2, 2: 0.1}), \
        _finding({0: 1.0, 1: -1.0, 2: 0.5}, {0: 0.0, 1: 0.0, 2: 0.0})
    big = study_report.Finding(big.paired, "+10.4 [...] (n=3; p_Holm = 0.01 over 3)", ())
    fam = {("sparse_a", "dense", "test_accuracy"): big, ("sparse_b", "dense", "test_accuracy"): none,
           ("probe", "dense", "test_accuracy"): none, ("sparse_a", "dense", "interference"): none}
    said = V.survive(fam, "test_accuracy", "dense", "sparse")
    assert said.startswith("1 of the 2 test accuracy differences survive Holm")
    assert f"{stats.ruled_out(none.paired, 4):.1f} points" in said        # m = the whole family's 4, not 2
    assert V.survive(fam, "interference").startswith("0 of the 1 interference differences")


def test_label_and_spread():
    assert V.label("sparse_nc2_s0.9_least_sensitive_fisher") == "least_sensitive (true-Fisher score) s = 0.9"
    assert V.label("sparse_iid_s0.5_random") == "random s = 0.5"
    assert (V.label("fedavg_nc1"), V.label("probe_nc2_head"), V.label("probe_iid_last")) == \
        ("dense FedAvg", "the probe", "the probe with the last block")
    assert V.spread([1.2, -0.6, 0.3]) == "-0.6 … +1.2" and V.spread([0.04, 0.01]) == "+0.0"
