"""common/study.py: the one selection rule on synthetic records (direction, seed averaging, ties, missing and
diverged runs, the edge of a grid and its extension) and the jobs a declared study plans."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from common import study
from common.errors import UsageError
from common.study import Arm, Comparison, Grid, Plateau, Study


def test_direction_min_takes_a_loss_max_an_accuracy():
    per_seed = {0.01: [50.0], 0.03: [40.0], 0.1: [45.0]}
    assert study.choose(per_seed, "min").value == 0.03
    assert study.choose(per_seed, "max").value == 0.01
    with pytest.raises(UsageError, match="direction"):
        study.choose(per_seed, "lowest")


def test_scores_are_averaged_over_seeds_before_choosing():
    # seed 0 alone would take 0.01; the mean over both seeds takes 0.03
    per_seed = {0.01: [0.90, 0.60], 0.03: [0.80, 0.78], 0.1: [0.5, 0.5]}
    pick = study.choose(per_seed, "max")
    assert pick.value == 0.03 and pick.scores[0.01] == pytest.approx(0.75) and pick.scores[0.03] == pytest.approx(0.79)


def test_a_tie_goes_to_the_smaller_value_or_the_earlier_name():
    assert study.choose({0.3: [0.8], 0.1: [0.8], 1.0: [0.7]}, "max").value == 0.1
    assert study.choose({0.3: [5.0], 0.1: [5.0]}, "min").value == 0.1
    assert study.choose({"b": [1.0], "a": [1.0]}, "min").value == "b"


def test_missing_and_diverged_runs_leave_their_candidate_out():
    summaries = {0.01: [{"final_val_accuracy": 0.9}, None],               # one seed not finished
                 0.03: [{"final_val_accuracy": 0.7}, {"status": "diverged"}],
                 0.1: [{"final_val_accuracy": 0.6}, {"final_val_accuracy": 0.5}],
                 0.3: [{"final_val_accuracy": float("inf")}, {"final_val_accuracy": 0.99}]}
    pick = Grid("--lr", tuple(summaries), "final_val_accuracy", "max").pick(summaries)
    assert pick.value == 0.1 and pick.missing == (0.01,)
    assert pick.scores[0.01] is None and pick.scores[0.03] is None and pick.scores[0.3] is None
    nothing = study.choose({0.1: [None], 0.3: [math.nan]}, "min")
    assert nothing.value is None and nothing.missing == (0.1,) and not nothing.at_edge


def test_score_of_reads_a_dotted_metric_and_the_studys_own_test():
    s = {"final": {"selection_accuracy": 0.8}, "best_val_ppl": 40.0, "unigram_ppl": 30.0}
    assert study.score_of(s, "final.selection_accuracy") == 0.8
    assert study.score_of(None, "best_val_ppl") is None
    assert math.isnan(study.score_of(s, "best_val_ppl", valid=lambda r: r["best_val_ppl"] < r["unigram_ppl"]))
    assert math.isnan(study.score_of({"status": "stopped", "best_val_ppl": 1.0}, "best_val_ppl"))
    assert math.isnan(study.score_of({"best_val_ppl": True}, "best_val_ppl"))  # not a number


def test_a_pick_at_the_edge_says_so_and_names_the_next_value():
    low = study.choose({3e-3: [40.0], 1e-2: [45.0], 3e-2: [50.0]}, "min")
    assert low.edge == "low" and low.beyond == 9e-4
    high = study.choose({0.1: [1.0], 0.3: [2.0], 1.0: [3.0]}, "max")
    assert high.edge == "high" and high.beyond == 3.33
    assert study.choose({0.1: [1.0], 0.3: [2.0], 1.0: [3.0]}, "max", digits=1).beyond == 3.0
    inside = study.choose({0.1: [1.0], 0.3: [3.0], 1.0: [2.0]}, "max")
    assert inside.edge is None and inside.beyond is None
    # a diverged candidate was tried: a pick next to it is not at the edge
    assert study.choose({0.1: [1.0], 0.3: [2.0], 1.0: [math.nan]}, "max").edge is None
    assert study.choose({"local": [1.0]}, "min").edge is None and study.choose({0.1: [1.0]}, "min").edge is None


def test_extension_runs_past_the_edge_at_most_extend_times():
    ppl = {"up": lambda v: 100 - v, "inside": lambda v: abs(math.log(v / 1e-2))}  # up: the largest rate always wins
    asked = []

    def run(values):  # one plan for every grid: what each is asked to try now
        asked.append({k: list(v) for k, v in values.items()})
        return {k: {v: [{"best_val_ppl": ppl[k](v)}] for v in vs} for k, vs in values.items()}

    grids = {"up": Grid("--lr", (0.1, 0.3, 1.0), "best_val_ppl", "min", extend=2),
             "inside": Grid("--lr", (3e-3, 1e-2, 3e-2), "best_val_ppl", "min", extend=2)}
    picks = study.extended(grids, run)
    assert [a["up"] for a in asked] == [[0.1, 0.3, 1.0], [0.1, 0.3, 1.0, 3.33], [0.1, 0.3, 1.0, 3.33, 11.1]]
    assert all(a["inside"] == [3e-3, 1e-2, 3e-2] for a in asked) and picks["inside"].value == 1e-2
    assert picks["up"].value == 11.1 and picks["up"].edge == "high" and picks["up"].beyond == 37.0  # said, not run
    asked.clear()
    once = study.extended({"up": dataclasses.replace(grids["up"], extend=0)}, run)
    assert len(asked) == 1 and once["up"].value == 1.0 and once["up"].beyond == 3.33
    assert study.extended(grids, lambda values: None) is None  # runs not finished: nothing chosen


def _study(**extra):
    grids = {"lr": Grid("--lr", (0.01, 0.1), "final_val_accuracy", "max", arm="fedavg")}
    arms = (Arm("fedavg", "mamba_fl.fed_avg", ("--rounds", "4"), select="lr"), Arm("central", "mamba_fl.central"))
    return Study("toy", arms, **{"seeds": (0, 1), "grids": grids, "selection_seeds": (100,),
                                 "comparisons": (Comparison("fedavg", "central", "depth"),), **extra})


def test_a_study_plans_selection_then_reported_jobs(tmp_path):
    rule = Plateau("2x the rounds gain < 0.5 sd", "R8", tolerance=0.5, value="final_val_accuracy")
    s = _study(budgets={"R4": (), "R8": ("--rounds", "8")}, plateau=rule)
    sel = study.selection_jobs(s, "lr", tmp_path / "select")
    assert [j.name for j in sel] == ["select_fedavg_R4_lr0.01_s100", "select_fedavg_R4_lr0.1_s100"]
    assert sel[1].argv[-6:] == ["--seed", "100", "--out-dir", str(tmp_path / "select"), "--run-name", sel[1].name]
    for j, acc in zip(sel, (0.7, 0.8)):
        j.run_dir.mkdir(parents=True)
        (j.run_dir / "summary.json").write_text(json.dumps({"final_val_accuracy": acc}))
    pick = s.grids["lr"].pick(study.selection_records(sel, (0.01, 0.1), s.selection_seeds))
    assert pick.value == 0.1 and pick.edge == "high"
    rep = study.reported_jobs(s, tmp_path / "runs", {"lr": pick.value})
    assert [j.name for j in rep][:4] == ["fedavg_R4_s0", "central_R4_s0", "fedavg_R8_s0", "central_R8_s0"]
    assert len(rep) == 8 and rep[2].argv[:6] == ["--rounds", "4", "--rounds", "8", "--lr", "0.1"]
    assert "--lr" not in rep[1].argv and rep[1].script == "mamba_fl.central"
    with pytest.raises(UsageError, match="no value chosen for lr"):
        study.reported_jobs(s, tmp_path, {})
    assert list(s.families()) == ["depth"]


@pytest.mark.parametrize("change, message", [
    (dict(seeds=(0, 0)), "must be distinct"), (dict(seeds=(100,)), "apart from the selection seeds"),
    (dict(comparisons=(Comparison("fedavg", "fedprox", "f"),)), "names an arm it lacks"),
    (dict(plateau=Plateau("rule", "R999", tolerance=1, value="v")), "plateau's budget"),
    (dict(selection_seeds=()), "selection seeds"), (dict(compute="equal flops"), "compute is one of")])
def test_a_study_whose_names_disagree_is_refused(change, message):
    with pytest.raises(UsageError, match=message):
        _study(**change)
    with pytest.raises(UsageError, match="distinct candidates"):
        Grid("--lr", (0.1, 0.1), "m", "min")


def test_the_planned_jobs_pass_their_scripts_checks_and_go_to_the_runner(tmp_path, capsys):
    from common import jobs

    s = _study()
    plan = study.selection_jobs(s, "lr", tmp_path / "select") + study.reported_jobs(s, tmp_path / "runs", {"lr": 0.1})
    outcome = jobs.run_plan(plan, log_dir=tmp_path / "logs", dry_run=True, title="toy")  # each script's parser too
    assert list(outcome.status.values()) == ["planned"] * 6 and "toy: 6 runs: 0 done before, 6 to run" in \
        capsys.readouterr().out
    with pytest.raises(UsageError, match="no arm 'fedprox'"):
        s.arm("fedprox")


def test_a_selection_record_round_trips_every_score_and_why_a_candidate_has_none(tmp_path):
    lr = Grid("--lr", (0.003, 0.01, 0.03, 0.1), "best_val_ppl", "min")
    pick = lr.choose({0.003: [50.0], 0.01: [45.0], 0.03: [math.nan], 0.1: [None]})
    path = tmp_path / study.SELECTION_FILE
    study.write_selection(path, "real", "the lowest best validation perplexity", {"fedavg": study.choice_record(
        lr, pick, why={0.03: "diverged"})}, seeds=[100], rounds=3)
    record = study.read_selection(path)
    assert record["runs"] == {"seeds": [100], "rounds": 3} and record["study"] == "real"
    choice = record["choices"]["fedavg"]
    assert choice["scores"] == {"0.003": 50.0, "0.01": 45.0, "0.03": "diverged", "0.1": "missing"}
    assert choice["chosen"] == 0.01 and choice["edge"] is None and choice["split"] == "validation"
    assert study.chosen(record) == {"fedavg": 0.01} and study.numeric_scores(choice) == {0.003: 50.0, 0.01: 45.0}


def test_a_selection_written_part_by_part_keeps_the_other_parts_and_prefixes_group_them(tmp_path):
    g = Grid("--lr", (1e-3, 2e-3), "final.selection_accuracy", "max", split="selection")
    path = tmp_path / study.SELECTION_FILE
    study.write_selection(path, "glue", "best", {"sst2/central": study.choice_record(g, g.choose({1e-3: [0.8],
                                                                                                 2e-3: [0.7]}))})
    study.write_selection(path, "glue", "best", {"mrpc/central": study.choice_record(g, g.choose({1e-3: [0.6],
                                                                                                 2e-3: [0.7]}))},
                          keep=True)
    record = study.read_selection(path)
    assert study.chosen(record, "sst2/") == {"central": 1e-3} and study.chosen(record, "mrpc/") == {"central": 2e-3}
    assert record["choices"]["sst2/central"]["edge"] == "low" and record["choices"]["sst2/central"]["beyond"] == 5e-4


@pytest.mark.parametrize("text", ['{"chosen": {"fedavg": {"--lr": 0.01}}}',           # an older layout
                                  '{"study": "s", "criterion": "", "runs": {}, "choices": {"a": {"flag": "--lr", '
                                  '"split": "v", "metric": "m", "direction": "min", "scores": {"0.1": 1.0}, '
                                  '"chosen": 0.3, "edge": null, "beyond": null, "extended": []}}}'])  # chosen untried
def test_a_file_that_is_not_a_selection_record_is_refused_naming_it(tmp_path, text):
    path = tmp_path / "selection.json"
    path.write_text(text)
    with pytest.raises(UsageError, match="selection.json: not a selection record"):
        study.read_selection(path)
