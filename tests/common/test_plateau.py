"""common/plateau.py: the plateau rule checked from a run's records, on synthetic run folders: it passes, it fails
(a constant-rate run whose best point is its last; a second budget better by more than the tolerance), and a
decayed schedule without a second budget is not checked."""
from __future__ import annotations

import json

import pytest

from common import plateau
from common.errors import UsageError
from common.plateau import Plateau


def _run(folder, curve, value):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"round": i, "val_accuracy": v}) + "\n"
                                                  for i, v in enumerate(curve)) + json.dumps({"round": 99}) + "\n")
    (folder / "summary.json").write_text(json.dumps({"final_val_accuracy": value}))
    return folder


CONSTANT = Plateau("best point not the last", metric="val_accuracy", direction="max")
SECOND = Plateau("4x the rounds within 0.5 sd", "R768", tolerance=0.5, metric="val_accuracy",
                 value="final_val_accuracy", direction="max", schedule="decayed")


def test_a_constant_rate_run_passes_before_its_last_point_and_fails_at_it(tmp_path):
    flat = _run(tmp_path / "flat", [0.5, 0.7, 0.72, 0.71], 0.71)
    rising = _run(tmp_path / "rising", [0.5, 0.7, 0.72, 0.73], 0.73)
    tied = _run(tmp_path / "tied", [0.5, 0.72, 0.72], 0.72)   # no better than before: not still improving
    judged = plateau.judge_arm(CONSTANT, {0: flat, 1: rising, 2: tied})
    assert [j.state for j in judged.values()] == ["at plateau", "still improving", "at plateau"]
    assert plateau.note(judged) == "1/3 still improving"
    assert plateau.arm_note(CONSTANT, {0: flat, 2: tied}) is None
    loss = Plateau("lowest loss not the last", metric="val_accuracy", direction="min")  # lower is better
    assert loss.judge([3.0, 2.5, 2.4]).state == "still improving" and loss.judge([3.0, 2.4, 2.5]).state == \
        "at plateau"


def test_a_decayed_schedule_is_not_checked_without_a_second_budget(tmp_path):
    runs = {s: _run(tmp_path / f"r{s}", [0.5, 0.7, 0.72 + s / 100], 0.72 + s / 100) for s in range(3)}
    judged = plateau.judge_arm(SECOND, runs)
    assert {j.state for j in judged.values()} == {"not checked"}
    assert plateau.note(judged) == "plateau not checked (decayed schedule)"


def test_a_second_budget_is_compared_within_a_tolerance_of_the_splits_noise(tmp_path):
    # the arm's values 0.70, 0.72, 0.74: sd 0.02, so 0.5 sd = 0.01
    runs = {s: _run(tmp_path / f"r{s}", [0.5, 0.7 + s / 50], 0.70 + s / 50) for s in range(3)}
    longer = {0: _run(tmp_path / "l0", [0.71], 0.705), 1: _run(tmp_path / "l1", [0.75], 0.75)}
    judged = plateau.judge_arm(SECOND, runs, longer)
    assert judged[0] == plateau.Judged("at plateau", "+0.005 at R768 <= 0.5 sd (0.01)")
    assert judged[1].state == "still improving" and judged[1].reason.startswith("+0.03 at R768 > 0.5 sd")
    assert judged[2].state == "not checked"   # no continuation of seed 2, and the schedule decayed
    assert plateau.note(judged) == "1/3 still improving; plateau not checked for 1/3 (decayed schedule)"
    only0 = Plateau(**{**SECOND.__dict__, "check_seeds": (0,)})   # a stated subset: seed 1's record is not read
    assert plateau.note(plateau.judge_arm(only0, runs, longer)) == "plateau not checked for 2/3 (decayed schedule)"


def test_a_rule_that_cannot_be_checked_is_refused():
    with pytest.raises(UsageError, match="needs a tolerance"):
        Plateau("2x the rounds", "R8")
    with pytest.raises(UsageError, match="schedule"):
        Plateau("rule", schedule="cosine")
    with pytest.raises(UsageError, match="split's noise"):
        SECOND.judge([0.7], value=0.7, longer=0.8, noise=None)
