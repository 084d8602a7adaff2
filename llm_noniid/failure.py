"""Failure-mode detection on per-round curves (validation loss, relative client divergence).

Rules (defaults in ``Thresholds``; each returns the first round where the mode is seen, or None):

* divergence: a non-finite validation loss, or a sustained relative increase: the loss stays more than
  ``div_rel_increase`` (10 %) above the best loss so far for ``div_patience`` (3) consecutive evaluations.
  Reported at the first evaluation of the streak. ``train.py`` stops the run there and keeps the last
  checkpoint taken before it.
* oscillation: within a window of ``osc_window`` (8) evaluations, the loss changes larger than
  ``osc_min_change`` (0.25 %) of the window's mean loss reverse direction at least ``osc_min_reversals`` (3)
  times (down-up-down-up): the loss goes up and down instead of settling. A single spike (2 reversals) or a
  monotone rise (divergence) is not oscillation. Reported at the window's last round.
* client drift: the clients' dispersion around their mean, relative to the mean update,
  RMS_k ||theta_k - theta_bar|| / ||theta_bar - x|| (``client_divergence / update_norm`` of the metric rows),
  exceeds ``drift_dispersion`` for ``drift_patience`` consecutive rounds: the clients disagree more than they
  agree. Scale-free (a relative-to-||theta|| measure grows with the learning rate and local steps alike on
  iid data, and fired on every run); rounds with one client carry no dispersion and are skipped.
* slow convergence: after ``slow_rounds`` (10) evaluations the loss has improved by less than
  ``slow_min_improvement`` (5 %) relative to the first evaluation. Reported at that evaluation.
A healthy curve (steady decrease, small noise) triggers none of them. The defaults are calibrated on runs whose
behaviour is known by construction (``run_experiments.py --mode failure`` and ``--mode calibrate``; rates in the
README): the lowest oscillation threshold that flags no healthy iid run; a drift threshold above every healthy
iid run (dispersion does not separate topic skew from iid there, so it detects none of those runs either).
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
    osc_min_change: float = 0.0025
    osc_min_reversals: int = 3
    drift_dispersion: float = 4.0
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


def detect_client_drift(rounds: list[int], dispersion: list[float], th: Thresholds = DEFAULT) -> int | None:
    streak = 0
    for i, (_, d) in enumerate(zip(rounds, dispersion)):
        streak = streak + 1 if (not math.isfinite(d) or d > th.drift_dispersion) else 0
        if streak >= th.drift_patience:
            return rounds[i - th.drift_patience + 1]
    return None


def dispersion(row: dict) -> float | None:
    """RMS_k ||theta_k - theta_bar|| / ||theta_bar - x|| of a metric row (None without two or more clients)."""
    if "client_divergence" not in row or len(row.get("participants", [0, 0])) < 2:
        return None
    return row["client_divergence"] / max(row.get("update_norm", 0.0), 1e-12)


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
    ``client_divergence`` / ``update_norm`` / ``participants``."""
    ev = [r for r in rows if "val_loss" in r]
    rounds, losses = [r["round"] for r in ev], [float(r["val_loss"]) for r in ev]
    dr = [(r["round"], dispersion(r)) for r in rows if dispersion(r) is not None]
    found = {
        "divergence": detect_divergence(rounds, losses, th),
        "oscillation": detect_oscillation(rounds, losses, th),
        "client_drift": detect_client_drift([r for r, _ in dr], [float(d) for _, d in dr], th),
        "slow_convergence": detect_slow_convergence(rounds, losses, th),
    }
    return {k: v for k, v in found.items() if v is not None}


def rules_table(th: Thresholds = DEFAULT) -> str:
    """The rules as a Markdown table with the thresholds' values: the README's table is this text (tested)."""
    rows = [
        ("divergence", f"a non-finite validation loss, or the loss > {1 + th.div_rel_increase:g} × the best so far for "
                       f"{th.div_patience} consecutive evaluations (reported at the first of them); the run stops "
                       "(`status: diverged`) and the checkpoint stays at the last round before"),
        ("oscillation", f"in a window of {th.osc_window} evaluations, loss changes larger than "
                        f"{100 * th.osc_min_change:g} % of the window's mean loss reverse direction at least "
                        f"{th.osc_min_reversals} times"),
        ("client drift", f"RMS_k ‖θₖ − θ̄‖ / ‖θ̄ − x‖ > {th.drift_dispersion:g} for {th.drift_patience} consecutive "
                         "rounds with two or more clients"),
        ("slow convergence", f"after {th.slow_rounds} evaluations the loss improved < "
                             f"{100 * th.slow_min_improvement:g} % relative to the first"),
    ]
    return "\n".join(["| mode | rule |", "|---|---|", *(f"| {m} | {r} |" for m, r in rows)])
