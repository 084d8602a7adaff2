"""compare_budgets: the suites at several budgets, the change of the last budget step paired by seed, and the
settled verdict."""
from __future__ import annotations

import json

import pytest

from common.checkpoint import atomic_write_json
from common.cli import UsageError
from vit_sparse_fl import compare_budgets as cb


def _suite(path, rounds, table):
    """A suite folder as run_all_experiments writes it: results.json with per-seed test accuracies."""
    record = {k: {"n": len(v), "test_accuracy": v, "interference": None} for k, v in table.items()}
    record["fedavg_nc1"] = {"n": 0, "test_accuracy": {}, "interference": None}    # a setting with no runs
    atomic_write_json(path / "results.json", {"base": "b.pt", "num_runs": 3, "rounds": rounds, "sessions": [],
                                              "table": record})
    return str(path)


@pytest.fixture
def suites(tmp_path):
    small = _suite(tmp_path / "a", 48, {"fedavg_iid": {0: 80.0, 1: 81.0, 2: 82.0},
                                        "fedavg_nc2": {0: 50.0, 1: 52.0, 2: 54.0},
                                        "sparse_nc2_s0.9_random": {0: 60.0, 1: 61.0, 2: 65.0}})
    large = _suite(tmp_path / "b", 192, {"fedavg_iid": {0: 80.5, 1: 81.0, 2: 82.2},       # +0.5, +0, +0.2
                                         "fedavg_nc2": {0: 60.0, 1: 63.0, 2: 66.0},       # +10, +11, +12
                                         "sparse_nc2_s0.9_random": {0: 59.0, 1: 64.0, 2: 66.0}})
    return small, large


def test_last_step_is_paired_by_seed_and_settled_is_below_one_point(suites, tmp_path):
    small, large = suites
    out = cb.main([large, small, "--out", str(tmp_path / "out"), "--no-plots"])   # any order: sorted by R
    t = out["table"]
    assert t["fedavg_iid"]["settled"] is True                       # mean change 0.23 < 1
    assert t["fedavg_nc2"]["settled"] is False                      # mean change 11
    assert "fedavg_nc1" not in t
    assert t["fedavg_nc2"]["reference"] == "fedavg_iid"
    assert t["sparse_nc2_s0.9_random"]["reference"] == "fedavg_nc2"
    assert list(t["fedavg_iid"]["test_accuracy"]) == [48, 192]
    md = (tmp_path / "out" / "results_budgets.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| FedAvg Nc = 2 |"))
    # change 192 - 48 per seed: 10, 11, 12 -> mean 11, sd 1, t(0.975, 2) = 4.303: [8.5, 13.5]; Holm over the 3
    # settings' last steps
    assert "| R 48 → 192 | +11.0 [+8.5, +13.5] (n=3; p_Holm = " in row and " over 3) | no |" in row
    # Δ vs FedAvg IID at R = 48: -30, -29, -28 -> -29.0 [-31.5, -26.5]; Holm over the table's 4 Δ
    assert "| -29.0 [-31.5, -26.5] (n=3; p_Holm = " in row
    assert row.startswith("| FedAvg Nc = 2 | 52.0 ± 2.0 | 63.0 ± 3.0 |")   # every seed: no n
    masks = next(line for line in md.splitlines() if line.startswith("| random, Nc = 2, s = 0.9 |"))
    # vs dense Nc = 2 at R = 192: -1, +1, 0 -> no difference
    assert "+0.0 [-2.5, +2.5] (n=3; no difference after Holm over 4; rules out > " in masks


def test_figure_and_refusals(suites, tmp_path):
    small, large = suites
    out = cb.main([small, large, "--out", str(tmp_path / "fig")])
    assert [p.rsplit("/", 1)[-1] for p in out["figures"]] == ["vit_accuracy_vs_budget.png"]
    with pytest.raises(UsageError, match="at least two suites"):
        cb.main([small, "--out", str(tmp_path / "x"), "--no-plots"])
    with pytest.raises(UsageError, match="two suites with R = 48"):
        cb.main([small, small, "--out", str(tmp_path / "x"), "--no-plots"])
    with pytest.raises(UsageError, match="no results.json"):
        cb.main([small, str(tmp_path), "--out", str(tmp_path / "x"), "--no-plots"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"x": 1}')
    with pytest.raises(UsageError, match="not a suite's results.json"):
        cb.main([small, str(tmp_path / "bad"), "--out", str(tmp_path / "x"), "--no-plots"])
    (tmp_path / "bad" / "results.json").write_text("not json")
    with pytest.raises(UsageError, match="not JSON"):
        cb.main([small, str(tmp_path / "bad"), "--out", str(tmp_path / "x"), "--no-plots"])


def test_reads_what_run_all_experiments_writes(tmp_path):
    """The record run_all_experiments.make_table keeps (seed keys become strings in JSON) loads back."""
    rec = {"fedavg_iid": {"n": 2, "test_accuracy": {0: 90.0, 1: 91.0}, "interference": None}}
    (tmp_path / "results.json").write_text(json.dumps({"rounds": 768, "table": rec}))
    assert cb.load_suites([str(tmp_path)]) == {768: {"fedavg_iid": {0: 90.0, 1: 91.0}}}


def test_text_suites_use_their_own_design_and_mixed_kinds_are_refused(suites, tmp_path):
    import dataclasses

    from vit_sparse_fl import studies
    paths = []
    for rounds, shift in ((24, 0.0), (96, 2.0)):
        folder = tmp_path / f"text{rounds}"
        acc = {"fedavg_nc1": {0: 70.0 + shift, 1: 71.0 + shift, 2: 72.0},
               "probe_nc1_head": {0: 80.0, 1: 81.0, 2: 82.0}}
        atomic_write_json(folder / "results.json", {
            "rounds": rounds, "design": dataclasses.asdict(studies.TEXT),
            "table": {k: {"n": 3, "test_accuracy": v, "interference": None} for k, v in acc.items()}})
        paths.append(str(folder))
    out = cb.main([*paths, "--out", str(tmp_path / "t")])
    assert [p.rsplit("/", 1)[-1] for p in out["figures"]] == ["text_accuracy_vs_budget.png"]
    md = (tmp_path / "t" / "results_budgets.md").read_text()
    assert f"R = 24: {studies.TEXT.sample_gradients(24)}" in md and "(R + 2)·5·4·8" in md
    row = next(line for line in md.splitlines() if line.startswith("| probe (head), Nc = 1 |"))
    assert "| yes |" in row and out["table"]["probe_nc1_head"]["reference"] == "fedavg_nc1"
    with pytest.raises(UsageError, match="different designs"):
        cb.main([suites[0], paths[1], "--out", str(tmp_path / "x"), "--no-plots"])
