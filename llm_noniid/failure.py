"""Failure-mode detection on per-round curves (validation loss, relative client divergence).

Each rule returns the first round where its mode is seen, or None; the rules with the default ``Thresholds``
are the README's table (tested). Divergence stops ``train.py`` with the checkpoint of the round before.
Client drift is the dispersion RMS_k ||theta_k - theta_bar|| / ||theta_bar - x||: scale-free, since a measure
relative to ||theta|| grows with the learning rate and local steps alike on iid data and fired on every run.
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


def detect_divergence(rounds: list[int], losses: list[float], th: Thresholds = DEFAULT,
                      initial: float = math.inf) -> int | None:
    """``initial``: the loss before training, the first "best so far" (a run that jumps above its pretrained
    start and stays there has diverged even if it then falls slowly)."""
    best, streak_start, streak = initial, None, 0
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
        # a single spike is 2 reversals, a monotone rise (divergence) none: neither is oscillation
        if sum(1 for s, t in pairwise(signs) if s != t) >= th.osc_min_reversals:
            return rounds[end - 1]
    return None


def detect_client_drift(rounds: list[int], dispersion: list[float], th: Thresholds = DEFAULT) -> int | None:
    streak = 0
    for i, d in enumerate(dispersion):
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
    window = losses[:th.slow_rounds]
    if len(window) < th.slow_rounds or not all(math.isfinite(v) for v in window):
        return None
    if (losses[0] - min(window)) / abs(losses[0]) < th.slow_min_improvement:
        return rounds[th.slow_rounds - 1]
    return None


def detect(rows: list[dict], th: Thresholds = DEFAULT, initial_ppl: float | None = None) -> dict[str, int]:
    """Detected modes -> first round, from metric rows with ``round``, ``val_loss`` and optionally
    ``client_divergence`` / ``update_norm`` / ``participants``; ``initial_ppl``: the validation perplexity before
    training (``summary.json``'s ``initial_val_ppl``), divergence's first reference when given."""
    ev = [r for r in rows if "val_loss" in r]
    rounds, losses = [r["round"] for r in ev], [float(r["val_loss"]) for r in ev]
    dr = [(r["round"], dispersion(r)) for r in rows if dispersion(r) is not None]
    found = {
        "divergence": detect_divergence(rounds, losses, th, math.log(initial_ppl) if initial_ppl else math.inf),
        "oscillation": detect_oscillation(rounds, losses, th),
        "client_drift": detect_client_drift([r for r, _ in dr], [float(d) for _, d in dr], th),
        "slow_convergence": detect_slow_convergence(rounds, losses, th),
    }
    return {k: v for k, v in found.items() if v is not None}
