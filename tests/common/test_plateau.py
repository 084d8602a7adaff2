"""common/plateau.py: the plateau rule checked from a run's records, on synthetic run folders: it passes, it fails
(a constant-rate run whose best point is its last; a second budget better by more than the tolerance), and a
decayed schedule without a second budget is not checked), and the opt-in trend check, on synthetic noisy curves:
a rising curve with a dip at the end is still improving, a flat one at its plateau, a short one not judged."""
from __future__ import annotations

import json
import math
import random

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
    with pytest.raises(UsageError, match="trend_z"):
        Plateau("rule", trend_z=-1)


TREND = Plateau("best point not the last, last third within 2 se of the third before", metric="val_accuracy",
                direction="max", trend_z=2)


def noisy(start: float, slope: float, n: int = 15, sd: float = 0.006, seed: int = 0) -> list[float]:
    """A curve of n evaluations rising by ``slope`` each, with Gaussian noise of ``sd`` (an accuracy's 0.6 points)."""
    rng = random.Random(seed)
    return [start + slope * i + rng.gauss(0, sd) for i in range(n)]


def test_the_trend_is_the_last_third_over_the_third_before_in_standard_errors_of_the_curves_own_noise():
    assert plateau.trend([1, 2, 3, 4, 5, 6]) == (2.0, 0.0)   # k = 2: 5.5 - 3.5; a straight line has no noise
    gain, se = plateau.trend([0, 0, 1, 0, 1, 1])              # steps -1, 1, 0 over [1, 0, 1, 1]: sd 1, sigma 1/sqrt 2
    assert gain == pytest.approx(0.5) and se == pytest.approx(math.sqrt(1 / 2) * math.sqrt(2 / 2))
    assert plateau.trend([0, 0, 1, 0, 1, 1], "min")[0] == pytest.approx(-0.5)
    assert plateau.trend(range(7))[0] == pytest.approx(3.0)   # k = ceil(7 / 3) = 3: mean(4, 5, 6) - mean(1, 2, 3)
    assert plateau.trend([1, 2, 3, 4, 5]) is None


def test_a_rising_noisy_curve_with_a_dip_at_the_end_is_still_improving_by_the_trend_check():
    curve = noisy(0.20, 0.005)
    curve[-1] = max(curve) - 0.014   # one dip at the end: the best evaluation is before the last
    assert CONSTANT.judge(curve) == plateau.Judged("at plateau", "best evaluation before the last")  # unset: as before
    judged = TREND.judge(curve)
    assert judged.state == "still improving" and judged.reason.startswith("last third +0.0")
    gain, se = plateau.trend(curve)
    assert gain > 2 * se and gain == pytest.approx(0.005 * 5, abs=0.01)   # 5 evaluations' rise between the thirds


def dipped(curve: list[float]) -> list[float]:
    return curve[:-1] + [max(curve) - 0.01]


def test_a_flat_noisy_curve_is_at_its_plateau_and_a_short_one_is_not_judged():
    # over 200 noise draws with a dip at the end: a rise of 2/3 of the noise per evaluation is caught nearly always,
    # a flat curve called still improving about as often as a one-sided 2-se test on its own noise allows
    rising = [TREND.judge(dipped(noisy(0.2, 0.004, seed=s))).state for s in range(200)]
    flat = [TREND.judge(dipped(noisy(0.35, 0.0, seed=s))) for s in range(200)]
    assert rising.count("still improving") >= 190
    assert sum(j.state == "still improving" for j in flat) <= 12   # 6 %; about 3.7 % expected at 15 evaluations
    at = next(j for j in flat if j.state == "at plateau")
    assert at.reason.startswith("best evaluation before the last; last third") and at.reason.endswith(")")
    assert TREND.judge([0.2, 0.3, 0.35, 0.34, 0.35]) == plateau.Judged(
        "not checked", f"fewer than {plateau.TREND_MIN} evaluations for the trend check")
    assert TREND.judge([0.2, 0.3, 0.35, 0.34, 0.36]).state == "still improving"   # best is last: a verdict still
    assert CONSTANT.judge([0.2, 0.3, 0.35, 0.34, 0.35]).state == "at plateau"
    loss = Plateau("lowest loss not the last, trend", direction="min", trend_z=2)   # lower is better: a falling loss
    assert loss.judge([3.0 - 0.1 * i for i in range(10)] + [2.2]).state == "still improving"
    assert plateau.note({0: TREND.judge([0.2, 0.3, 0.35, 0.34, 0.35])}) == \
        f"plateau not checked (fewer than {plateau.TREND_MIN} evaluations for the trend check)"
