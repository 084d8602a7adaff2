"""real_grid.py's choice on the committed selection runs (mamba_fl/results/real*/runs/select_*): the same values,
scores and best other arm as the committed selection.json, whatever implementation chooses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import jobs
from mamba_fl import real_grid

RESULTS = Path(__file__).resolve().parents[2] / "mamba_fl" / "results"


def _plan(runs: Path) -> tuple[list[jobs.Job], dict]:
    """The selection jobs of the committed run directories, and {arm: candidates} as their names give them."""
    plan, candidates = [], {}
    for folder in sorted(runs.glob("select_*")):
        arm, setting = folder.name.split("_")[1:3]
        flag = real_grid.CHOICES[arm][0]
        text = setting[len(flag) - 2:].lstrip("-")
        candidates.setdefault(arm, []).append(text if isinstance(real_grid.CHOICES[arm][1][0], str) else float(text))
        plan.append(jobs.Job(folder.name, "mamba_fl.central", ["--out-dir", str(runs), "--run-name", folder.name]))
    return plan, {a: sorted(v) for a, v in candidates.items()}


@pytest.mark.parametrize("grid", ["real", "real_source"])
def test_committed_selection_is_chosen_again(grid):
    committed = json.loads((RESULTS / grid / "selection.json").read_text())
    plan, candidates = _plan(RESULTS / grid / "runs")
    assert len(plan) >= 10
    found = real_grid.choose(plan, candidates)
    assert found["chosen"] == committed["chosen"]
    assert found["scores"] == committed["scores"]
    assert found.get("best_other") == committed.get("best_other")
    # the source-size grid's rates stopped at the top of their extended candidates: said, not hidden
    assert found["edge"] == ({"central": "high", "fedavg": "high"} if grid == "real_source" else {})
