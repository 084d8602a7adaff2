"""Failure detectors on constructed curves: each fires on its pattern, none fires on a healthy curve."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from llm_noniid import failure


def rows(losses, gap=None):
    """Metric rows; ``gap`` is the validation loss minus the clients' local training loss per round (nats)."""
    gap = gap if gap is not None else [0.1] * len(losses)
    return [{"round": i + 1, "val_loss": float(v), "train_loss": float(v) - float(g), "participants": [0, 1, 2]}
            for i, (v, g) in enumerate(zip(losses, gap))]


def healthy(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return 2.0 + 3.0 * np.exp(-np.arange(n) / 6.0) + rng.normal(0, 0.005, n)


def test_healthy_curve_triggers_nothing():
    assert failure.detect(rows(healthy())) == {}


def test_diverging_curve_detected_at_the_start_of_the_rise():
    losses = list(healthy(12)) + [3.5, 4.5, 6.0, 9.0, 14.0]  # best ~2.4; rises from round 13
    found = failure.detect(rows(losses))
    assert found["divergence"] == 13 and "oscillation" not in found  # a monotone rise is not oscillation


def test_non_finite_loss_is_divergence_at_that_round():
    losses = list(healthy(6)) + [math.nan]
    assert failure.detect(rows(losses))["divergence"] == 7
    assert failure.detect(rows(list(healthy(4)) + [math.inf]))["divergence"] == 5


def test_a_jump_above_the_start_that_stays_is_divergence_from_the_model_before_training():
    """A pretrained start at loss 5.3 (ppl 200) that jumps to 6.7 and then falls slowly, still far above it: never
    above its own best after the jump, so only the start as the first reference flags it (at the first
    evaluation); a run that stays below its start is not flagged."""
    jumped = [6.7, 6.3, 6.25, 6.2, 6.15, 6.12]
    assert failure.detect(rows(jumped)) == {}
    assert failure.detect(rows(jumped), initial_ppl=200.0) == {"divergence": 1}
    assert failure.detect(rows(list(healthy(12))), initial_ppl=200.0) == {}


def test_single_spike_is_not_divergence():
    losses = list(healthy(10))
    losses[5] *= 1.5
    assert failure.detect(rows(losses)) == {}  # neither divergence nor oscillation


def test_oscillating_curve_detected():
    base = healthy(8)
    osc = [3.0 + (0.4 if i % 2 else -0.4) for i in range(10)]
    found = failure.detect(rows(list(base) + osc))
    assert "oscillation" in found and found["oscillation"] > 8
    assert "oscillation" not in failure.detect(rows(healthy(18)))
    # irregular up-and-down while trending down (the shape of the failure grid's curves) also counts
    noisy = [4.76, 4.49, 4.50, 4.59, 4.55, 4.43, 4.06, 4.18, 4.21, 3.96, 3.92, 3.94, 4.02]
    assert failure.detect(rows(noisy)).get("oscillation") == 8


def test_flat_curve_is_slow_convergence():
    flat = 5.0 - 0.01 * np.arange(15)  # 2 % better after 10 rounds
    found = failure.detect(rows(flat))
    assert found == {"slow_convergence": 10}


def test_client_drift_needs_a_sustained_gap():
    gap = [0.1] * 5 + [0.6, 0.7, 0.8, 0.9] + [0.1] * 3  # clients fit their own texts far below the global loss
    assert failure.detect(rows(healthy(12), gap))["client_drift"] == 6
    blip = [0.1] * 5 + [0.9, 0.1, 0.9, 0.1] + [0.1] * 3
    assert "client_drift" not in failure.detect(rows(healthy(12), blip))
    at_edge = [0.1] * 5 + [0.5] * 7  # the threshold itself is not an excess
    assert "client_drift" not in failure.detect(rows(healthy(12), at_edge))
    # a non-finite gap (a diverged model) is divergence's: it breaks a drift streak rather than extending it
    diverged = rows(list(healthy(8)) + [math.inf] * 4, [0.1] * 6 + [0.9, 0.9, math.nan, math.nan, math.nan, math.nan])
    found = failure.detect(diverged)
    assert found.get("divergence") == 9 and "client_drift" not in found
    no_train_loss = [{k: v for k, v in r.items() if k != "train_loss"} for r in rows(healthy(12), [2.0] * 12)]
    assert "client_drift" not in failure.detect(no_train_loss)  # rows without local losses: nothing to measure


def rules_table(th: failure.Thresholds = failure.DEFAULT) -> str:
    """The rules as a Markdown table with the thresholds' values: the README's table is this text."""
    rows = [
        ("divergence", f"a non-finite validation loss, or the loss > {1 + th.div_rel_increase:g} × the best so far "
                       f"(the model before training included) for {th.div_patience} consecutive evaluations "
                       "(reported at the first of them); the run stops "
                       "(`status: diverged`) and the checkpoint stays at the last round before"),
        ("oscillation", f"in a window of {th.osc_window} evaluations, loss changes larger than "
                        f"{100 * th.osc_min_change:g} % of the window's mean loss reverse direction at least "
                        f"{th.osc_min_reversals} times"),
        ("client drift", f"the validation loss exceeds the clients' mean loss over their local steps by more than "
                         f"{th.drift_gap:g} nats at {th.drift_patience} consecutive evaluations (the clients fit "
                         "their own texts far beyond what the averaged model keeps)"),
        ("slow convergence", f"after {th.slow_rounds} evaluations the loss improved < "
                             f"{100 * th.slow_min_improvement:g} % relative to the first"),
    ]
    return "\n".join(["| mode | rule |", "|---|---|", *(f"| {m} | {r} |" for m, r in rows)])


def test_readme_rules_are_the_codes():
    readme = (Path(__file__).resolve().parents[2] / "llm_noniid" / "README.md").read_text(encoding="utf-8")
    assert rules_table() in readme  # one source of truth: change the thresholds, paste rules_table()


def test_thresholds_are_tunable():
    flat = 5.0 - 0.01 * np.arange(15)
    assert failure.detect(rows(flat), failure.Thresholds(slow_min_improvement=0.01)) == {}
