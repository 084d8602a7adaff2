"""Failure-mode detection on per-round curves (validation loss, the clients' local training loss).

Each rule returns the first round where its mode is seen, or None; with the default ``Thresholds`` they are the
README's table (tested), calibrated on runs whose behaviour is known by construction (``run_experiments.py --mode
failure`` and ``calibrate``): the lowest oscillation and drift thresholds that flag no healthy iid run.
``detector_study.py`` chooses each threshold from ``SWEEPS`` by that rule on those runs and counts hits and false
alarms on runs of other seeds. Divergence stops ``train.py`` with the checkpoint of the round before. Client drift
is the gap between the global model's validation loss and the clients' loss during their local steps (clients
fitting their own texts far beyond what the average keeps), not the dispersion of the updates
(``client_divergence_rel``): as a decaying rate reaches the optimum that becomes noise of the same size on every
split, healthy or not (measured: README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

MODES = ("divergence", "oscillation", "client_drift", "slow_convergence")


@dataclass
class Thresholds:
    div_rel_increase: float = 0.10
    div_patience: int = 3
    osc_window: int = 8
    osc_min_change: float = 0.0025
    osc_min_reversals: int = 3
    drift_gap: float = 0.5
    drift_patience: int = 3
    slow_rounds: int = 10
    slow_min_improvement: float = 0.05


DEFAULT = Thresholds()


@dataclass(frozen=True)
class Sweep:
    """A detector's key threshold (a ``Thresholds`` field) and the values its calibration tries, the most sensitive
    (the one that flags the most runs) first."""

    key: str
    values: tuple[float, ...]


# what the calibration tries (report.py's detector table, detector_study.choose); a rise, a change, a gap flag more
# runs the smaller they are, a least improvement the larger it is
SWEEPS = {"divergence": Sweep("div_rel_increase", (0.05, 0.1, 0.2, 0.5)),
          "oscillation": Sweep("osc_min_change", (0.0025, 0.005, 0.01, 0.02)),
          "client_drift": Sweep("drift_gap", (0.3, 0.4, 0.5, 0.6, 0.8)),
          "slow_convergence": Sweep("slow_min_improvement", (0.1, 0.05, 0.02))}


def detect_divergence(rounds: list[int], losses: list[float], th: Thresholds = DEFAULT,
                      initial: float = math.inf) -> int | None:
    """``initial``: the loss before training, the first "best so far" (a run that jumps above its pretrained
    start and stays there has diverged even if it then falls slowly)."""
    best, streak = initial, 0
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            return rounds[i]
        streak = streak + 1 if loss > best * (1 + th.div_rel_increase) else 0
        if streak >= th.div_patience:
            return rounds[i - streak + 1]
        best = min(best, loss)
    return None


def detect_oscillation(rounds: list[int], losses: list[float], th: Thresholds = DEFAULT) -> int | None:
    for end in range(th.osc_window, len(losses) + 1):
        w = losses[end - th.osc_window:end]
        if not all(math.isfinite(v) for v in w):
            return None
        least = th.osc_min_change * abs(sum(w) / len(w))
        signs = [math.copysign(1.0, b - a) for a, b in pairwise(w) if abs(b - a) > least]  # noise dropped
        # a single spike is 2 reversals, a monotone rise (divergence) none: neither is oscillation
        if sum(1 for s, t in pairwise(signs) if s != t) >= th.osc_min_reversals:
            return rounds[end - 1]
    return None


def detect_client_drift(rounds: list[int], gaps: list[float], th: Thresholds = DEFAULT) -> int | None:
    """``gaps``: validation loss minus the clients' mean local training loss (nats) at each evaluation; a
    non-finite one (a diverged model) is divergence's, not drift's."""
    streak = 0
    for i, g in enumerate(gaps):
        streak = streak + 1 if g > th.drift_gap and math.isfinite(g) else 0
        if streak >= th.drift_patience:
            return rounds[i - th.drift_patience + 1]
    return None


def detect_slow_convergence(rounds: list[int], losses: list[float], th: Thresholds = DEFAULT) -> int | None:
    window = losses[:th.slow_rounds]
    slow = len(window) == th.slow_rounds and all(map(math.isfinite, window)) and \
        (losses[0] - min(window)) / abs(losses[0]) < th.slow_min_improvement
    return rounds[th.slow_rounds - 1] if slow else None


def detect(rows: list[dict], th: Thresholds = DEFAULT, initial_ppl: float | None = None) -> dict[str, int]:
    """Detected modes -> first round, from metric rows with ``round``, ``val_loss`` and ``train_loss`` (the
    clients' size-weighted mean loss over their local steps); ``initial_ppl``: the validation perplexity before
    training (``summary.json``'s ``initial_val_ppl``), divergence's first reference when given."""
    ev = [r for r in rows if "val_loss" in r]
    rounds, losses = [r["round"] for r in ev], [float(r["val_loss"]) for r in ev]
    tr = [r for r in ev if "train_loss" in r]
    found = {
        "divergence": detect_divergence(rounds, losses, th, math.log(initial_ppl) if initial_ppl else math.inf),
        "oscillation": detect_oscillation(rounds, losses, th),
        "client_drift": detect_client_drift([r["round"] for r in tr],
                                            [float(r["val_loss"]) - float(r["train_loss"]) for r in tr], th),
        "slow_convergence": detect_slow_convergence(rounds, losses, th),
    }
    return {k: v for k, v in found.items() if v is not None}
