"""The plateau rule of a study, checked from a run's records, and able to fail.

    rule = Plateau("best validation point not the last; 4x the rounds within 0.5 sd", check_budget="R768",
                   tolerance=0.5, metric="val_accuracy", value="final_val_accuracy", direction="max",
                   schedule="decayed")
    rule.judge(curve, value=0.81, longer=0.83, noise=0.02)   # Judged("still improving", "+0.020 at R768 > ...")
    arm_note(rule, runs, longer={seed: run})                   # '2/3 still improving' or None, from run folders

A run is judged by the first of these that applies:

- a declared second-budget record of the same arm and seed (``check_budget``: a longer continuation or a second
  budget) exists: the run is "still improving" when that record is better than it by more than ``tolerance``
  times the split's noise (the sd over seeds of the arm's value on the split the rule reads), "at plateau"
  otherwise;
- the rate was constant (``schedule`` "constant"): the run is "still improving" when its best evaluation is its
  last (strictly better than every one before), "at plateau" otherwise; with ``trend_z`` set, also "still
  improving" when its curve still trends (below), and "not checked" when the curve is too short to tell;
- the rate decayed to about 0 (a cosine): a last-fraction rule holds by construction there, so the run is "not
  checked" ("plateau not checked (decayed schedule)").

The trend check (``trend``, opt-in by ``trend_z``). On a noisy curve "best evaluation before the last" is met by one
dip at the end, however steep the rise before it. So the curve's last third is set against the third before it:
the difference of their means (k = ceil(n / 3) evaluations each, in the rule's direction), in standard errors
sigma sqrt(2 / k), where sigma, one evaluation's noise, is estimated from the curve itself: the sd of the successive
differences over those 2k evaluations, over sqrt(2) (a smooth trend shifts every difference alike and drops out of
their sd). A run is "still improving" when that difference exceeds ``trend_z`` standard errors. So the check fails a
curve that still rises over its last two thirds, dip or no dip (a dip of d at the last evaluation lowers the last
third's mean by d / k only), and passes one whose last two thirds are flat; a curve of fewer than ``TREND_MIN``
evaluations is "not checked", unless its best is its last. What it cannot tell: a curve that flattened only within
its last two thirds still reads as improving (the check errs to "still improving", never to a plateau it has not
seen); a curve flat before it started to learn reads as at plateau (a table says when a run never left its
reference); fluctuations that persist over several evaluations (a model's state carries from round to round) are
not in sigma and can read as a trend; and with many evaluations sigma sqrt(2 / k) is small, so a slow rise that
no table would care about still counts as improving.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.errors import check

SCHEDULES = ("constant", "decayed")
STATES = ("at plateau", "still improving", "not checked")
TREND_MIN = 6  # evaluations the trend check needs: thirds of 2 or more, the noise from 3 or more differences


def trend(curve: Sequence[float], direction: str = "max") -> tuple[float, float] | None:
    """(gain, its standard error) of a curve's last third over the third before (k = ceil(n / 3) points each, the
    gain in ``direction``: "max" higher is better, "min" lower), the noise from the sd of successive differences
    over those 2k points; None below ``TREND_MIN`` points."""
    points = [float(v) for v in curve]
    if len(points) < TREND_MIN:
        return None
    k = -(-len(points) // 3)
    window = points[-2 * k:]
    before, last = sum(window[:k]) / k, sum(window[k:]) / k
    steps = [b - a for a, b in zip(window, window[1:])]
    mean = sum(steps) / len(steps)
    sigma = math.sqrt(sum((d - mean) ** 2 for d in steps) / (len(steps) - 1) / 2)
    return (last - before if direction == "max" else before - last), sigma * math.sqrt(2 / k)


@dataclasses.dataclass(frozen=True)
class Judged:
    """One run's verdict (one of ``STATES``) and why."""

    state: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Plateau:
    """The plateau rule: ``rule`` in words; ``check_budget``: the budget whose runs (of ``check_seeds``, all seeds
    when empty) are the second record a run is compared with; ``tolerance``: how much better that record may be
    and the run still count as at its plateau, in sds of the split's seed-to-seed noise; ``metric``: the
    metrics.jsonl column of the run's evaluations (its curve); ``value``: the summary.json key compared across
    budgets; ``direction``: "min" a loss or perplexity, "max" an accuracy; ``schedule``: "constant" or "decayed"
    (the learning rate over the run); ``trend_z``: with a constant rate, also call a run still improving when its
    last third beats the third before by more than this many standard errors (``trend``; None: not checked)."""

    rule: str
    check_budget: str | None = None
    check_seeds: tuple[int, ...] = ()
    tolerance: float | None = None
    metric: str = "val_loss"
    value: str = ""
    direction: str = "min"
    schedule: str = "constant"
    trend_z: float | None = None

    def __post_init__(self):
        check(self.direction in ("min", "max"), f"plateau: direction is min or max, got {self.direction!r}")
        check(self.schedule in SCHEDULES, f"plateau: schedule is one of {', '.join(SCHEDULES)}, got "
                                          f"{self.schedule!r}")
        check(self.check_budget is None or (self.tolerance is not None and self.tolerance >= 0 and self.value),
              "plateau: a second budget needs a tolerance >= 0 (in sds of the split's noise) and the value compared")
        check(self.trend_z is None or self.trend_z >= 0, f"plateau: trend_z is >= 0 standard errors, got "
                                                         f"{self.trend_z}")

    def better(self, a: float, b: float) -> float:
        """How much better ``a`` is than ``b`` in the rule's direction (negative: worse)."""
        return b - a if self.direction == "min" else a - b

    def judge(self, curve: Sequence[float], value: float | None = None, longer: float | None = None,
              noise: float | None = None) -> Judged:
        """The verdict on one run: ``curve`` its evaluations in order, ``value`` its summary value, ``longer`` the
        same value of its second-budget record (None: no such record), ``noise`` the split's sd over seeds."""
        if longer is not None and value is not None:
            check(noise is not None and math.isfinite(noise), "plateau: comparing with a second budget needs the "
                                                              "split's noise (the sd over at least 2 seeds)")
            gain, tol = self.better(longer, value), self.tolerance * noise
            where = f"{gain:+.3g} at {self.check_budget}"
            if gain > tol:
                return Judged("still improving", f"{where} > {self.tolerance:g} sd ({tol:.3g})")
            return Judged("at plateau", f"{where} <= {self.tolerance:g} sd ({tol:.3g})")
        if self.schedule == "decayed":
            return Judged("not checked", "decayed schedule")
        points = [float(v) for v in curve]
        check(bool(points), "plateau: a run without evaluations cannot be judged")
        if len(points) > 1 and all(self.better(points[-1], p) > 0 for p in points[:-1]):
            return Judged("still improving", "best evaluation is the last")
        if self.trend_z is None:
            return Judged("at plateau", "best evaluation before the last")
        found = trend(points, self.direction)
        if found is None:
            return Judged("not checked", f"fewer than {TREND_MIN} evaluations for the trend check")
        gain, se = found
        where = f"last third {gain:+.3g} over the third before"
        if gain > self.trend_z * se:
            return Judged("still improving", f"{where} > {self.trend_z:g} se ({self.trend_z * se:.3g})")
        return Judged("at plateau", f"best evaluation before the last; {where} <= {self.trend_z:g} se "
                                    f"({self.trend_z * se:.3g})")


def curve(run_dir: str | Path, metric: str) -> list[float]:
    """The ``metric`` column of a run folder's metrics.jsonl, in order (rows without it skipped)."""
    rows = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [float(r[metric]) for r in map(json.loads, filter(str.strip, rows)) if r.get(metric) is not None]


def summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))


def judge_arm(rule: Plateau, runs: Mapping[int, str | Path], longer: Mapping[int, str | Path] | None = None) \
        -> dict[int, Judged]:
    """{seed: Judged} of an arm's run folders ``runs`` {seed: folder}, each against its second-budget folder in
    ``longer`` {seed: folder} where the rule declares a budget and one exists (``check_seeds`` only, when
    given); the noise is the sd over the arm's seeds of ``rule.value``."""
    longer = longer or {}
    if rule.check_budget is None:
        longer = {}
    elif rule.check_seeds:
        longer = {s: p for s, p in longer.items() if s in rule.check_seeds}
    values = {s: summary(p).get(rule.value) for s, p in runs.items()} if rule.value else {}
    ok = [float(v) for v in values.values() if v is not None]
    mean = sum(ok) / len(ok) if ok else math.nan
    noise = math.sqrt(sum((v - mean) ** 2 for v in ok) / (len(ok) - 1)) if len(ok) >= 2 else None
    out = {}
    for seed, path in sorted(runs.items()):
        second = summary(longer[seed]).get(rule.value) if seed in longer else None
        out[seed] = rule.judge(curve(path, rule.metric), values.get(seed), second, noise)
    return out


def note(judged: Mapping[int, Judged]) -> str | None:
    """What a table prints beside an arm's verdict: 'k/n still improving', 'plateau not checked (decayed schedule)'
    (or 'plateau not checked for k/n (decayed schedule)' when some were checked), both when both hold; None when
    every run is at its plateau."""
    n = len(judged)
    short = sum(j.state == "still improving" for j in judged.values())
    unchecked = [j for j in judged.values() if j.state == "not checked"]
    parts = [f"{short}/{n} still improving"] if short else []
    if unchecked:
        who = "" if len(unchecked) == n else f" for {len(unchecked)}/{n}"
        parts.append(f"plateau not checked{who} ({unchecked[0].reason})")
    return "; ".join(parts) or None


def arm_note(rule: Plateau, runs: Mapping[int, str | Path], longer: Mapping[int, str | Path] | None = None) \
        -> str | None:
    """``note`` of ``judge_arm``."""
    return note(judge_arm(rule, runs, longer))
