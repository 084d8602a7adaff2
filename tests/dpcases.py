"""Checks of a DP run through a subproject's quick script (tests/<subproject>/test_dp.py): every client update
clipped within C, the rows' per-client norms, epsilon in metrics.jsonl and summary.json against dp.epsilon called
directly."""
from __future__ import annotations

import json
import math

import pytest
import torch

from common import dp


def log_clips(monkeypatch) -> list[tuple[float, float, float]]:
    """(norm before, norm after, C) of every client update DPMean clips from now on (the real ``dp.clip_``)."""
    log, real = [], dp.clip_

    def logged(flat, clip):
        norm = real(flat, clip)
        log.append((norm, float(torch.linalg.vector_norm(flat, dtype=torch.float64)), clip))
        return norm

    monkeypatch.setattr(dp, "clip_", logged)
    return log


def check_run(run_dir, log, q: float, n_clients: int) -> list[dict]:
    """Every clipped update within C, some clipped (real updates); the rows' dp_norm / dp_clipped agree; each
    row's epsilon is dp.epsilon(q, z, rounds so far, delta = 1 / N^1.1); summary.json holds the last. The rows."""
    assert log and all(after <= clip for _, after, clip in log) and any(norm > clip for norm, _, clip in log)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    for row in rows:
        assert row["dp_delta"] == pytest.approx(1 / n_clients ** 1.1) and row["dp_rounds"] == row["round"]
        assert row["dp_epsilon"] == dp.epsilon(q, row["dp_noise"], row["round"], row["dp_delta"])
        assert row["dp_clipped"] == {k: v > row["dp_clip"] for k, v in row["dp_norm"].items()}
    assert summary["dp_epsilon"] == rows[-1]["dp_epsilon"] and summary["dp_rate"] == q
    assert math.isfinite(summary["dp_epsilon"]) and summary["dp_delta"] == rows[-1]["dp_delta"]
    return rows
