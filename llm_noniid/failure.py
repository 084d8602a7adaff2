"""Failure-mode detection on per-round curves (validation loss, relative client divergence).

Rules (defaults in ``Thresholds``; each returns the first round where the mode is seen, or None):

* divergence: a non-finite validation loss, or a sustained relative increase: the loss stays more than
  ``div_rel_increase`` (10 %) above the best loss so far for ``div_patience`` (3) consecutive evaluations.
  Reported at the first evaluation of the streak. ``train.py`` stops the run there and keeps the last
  checkpoint taken before it.
* oscillation: within a window of ``osc_window`` (8) evaluations, the loss changes larger than
  ``osc_min_change`` (1 %) of the window's mean loss reverse direction at least ``osc_min_reversals`` (3)
  times (down-up-down-up): the loss goes up and down instead of settling. A single spike (2 reversals) or a
  monotone rise (divergence) is not oscillation. Reported at the window's last round.
* client drift: the relative client update divergence mean ||theta_k - theta_bar|| / ||theta_bar|| exceeds
  ``drift_rel`` (0.05) for ``drift_patience`` (3) consecutive rounds: clients pull the model apart.
* slow convergence: after ``slow_rounds`` (10) evaluations the loss has improved by less than
  ``slow_min_improvement`` (5 %) relative to the first evaluation. Reported at that evaluation.
A healthy curve (steady decrease, small noise) triggers none of them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import pairwise

MODES = ("divergence", "oscillation", "client_drift", "slow_convergence")


@dataclass
class Thresholds:
    div_rel_increase: float = 0.10
    div_patience: int = 3
    osc_window: int = 8
    osc_min_change: float = 0.01
    osc_min_reversals: int = 3
    drift_rel: float = 0.05
    drift_patience: int = 3
    slow_rounds: int = 10
    slow_min_improvement: float = 0.05

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT = Thresholds()


def detect_divergence(rounds: list[int], losses: list[float], th: Thresholds = DEFAULT) -> int | None:
    best, streak_start, streak = math.inf, None, 0
    for r, loss in zip(rounds, losses):
        if not math.isfinite(loss):
            return r
        if loss > best * (1 + th.div_rel_increase):
            streak_start = r if streak == 0 else streak_start
            streak += 1
            if streak >= th.div_patience:
                return streak_start
        else:
            streak = 0
        best = min(best, loss)
    return None


def detect_oscillation(rounds: list[int], losses: list[float], th: Thresholds = DEFAULT) -> int | None:
    for end in range(th.osc_window, len(losses) + 1):
        w = losses[end - th.osc_window:end]
        if not all(math.isfinite(v) for v in w):
            return None
        least = th.osc_min_change * abs(sum(w) / len(w))
        signs = [math.copysign(1.0, b - a) for a, b in pairwise(w) if abs(b - a) > least]  # noise dropped
        if sum(1 for s, t in pairwise(signs) if s != t) >= th.osc_min_reversals:
            return rounds[end - 1]
    return None


def detect_client_drift(rounds: list[int], drift_rel: list[float], th: Thresholds = DEFAULT) -> int | None:
    streak = 0
    for i, (_, d) in enumerate(zip(rounds, drift_rel)):
        streak = streak + 1 if (not math.isfinite(d) or d > th.drift_rel) else 0
        if streak >= th.drift_patience:
            return rounds[i - th.drift_patience + 1]
    return None


def detect_slow_convergence(rounds: list[int], losses: list[float], th: Thresholds = DEFAULT) -> int | None:
    if len(losses) < th.slow_rounds or not math.isfinite(losses[0]):
        return None
    window = losses[:th.slow_rounds]
    if not all(math.isfinite(v) for v in window):
        return None
    if (losses[0] - min(window)) / abs(losses[0]) < th.slow_min_improvement:
        return rounds[th.slow_rounds - 1]
    return None


def detect(rows: list[dict], th: Thresholds = DEFAULT) -> dict[str, int]:
    """Detected modes -> first round, from metric rows with ``round``, ``val_loss`` and optionally
    ``client_divergence_rel``."""
    ev = [r for r in rows if "val_loss" in r]
    rounds, losses = [r["round"] for r in ev], [float(r["val_loss"]) for r in ev]
    dr = [r for r in rows if "client_divergence_rel" in r]
    found = {
        "divergence": detect_divergence(rounds, losses, th),
        "oscillation": detect_oscillation(rounds, losses, th),
        "client_drift": detect_client_drift([r["round"] for r in dr],
                                            [float(r["client_divergence_rel"]) for r in dr], th),
        "slow_convergence": detect_slow_convergence(rounds, losses, th),
    }
    return {k: v for k, v in found.items() if v is not None}
