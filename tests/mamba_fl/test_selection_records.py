"""real_grid.py's choice on the committed selection runs (mamba_fl/results/real*/runs/select_*): the selection run
again from its first candidates, extended as real_grid.py extends it, gives the committed selection.json's every
choice (scores, value, edge, the values added past an edge, the best other arm), whatever implementation chooses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import jobs, study
from mamba_fl import real_grid, studies

RESULTS = Path(__file__).resolve().parents[2] / "mamba_fl" / "results"
# the source-size grid started from an earlier list than CHOICES' (mamba_fl/README.md: "from 3e-4")
FIRST = {"real": {}, "real_source": {"central": [3e-4, 1e-3, 3e-3], "fedavg": [3e-4, 1e-3, 3e-3]}}
EXTEND = {"real": {"fedavgm": 3}, "real_source": {}}  # --extend: 2, FedAvgM's server rate given a third


def _plan(runs: Path) -> tuple[list[jobs.Job], dict]:
    """The selection jobs of the committed run directories, and {arm: candidates} as their names give them."""
    plan, candidates = [], {}
    for folder in sorted(runs.glob("select_*")):
        arm, setting = folder.name.split("_")[1:3]
        flag = studies.CHOICES[arm][0]
        text = setting[len(flag) - 2:].lstrip("-")
        candidates.setdefault(arm, []).append(text if isinstance(studies.CHOICES[arm][1][0], str) else float(text))
        plan.append(jobs.Job(folder.name, "mamba_fl.central", ["--out-dir", str(runs), "--run-name", folder.name]))
    return plan, {a: sorted(v) for a, v in candidates.items()}


@pytest.mark.parametrize("grid", ["real", "real_source"])
def test_committed_selection_is_chosen_again(grid):
    committed = study.read_selection(RESULTS / grid / "selection.json")
    plan, candidates = _plan(RESULTS / grid / "runs")
    assert len(plan) >= 10
    records = real_grid.records_of(plan, candidates)

    def trained(values: dict) -> dict:  # study.extended's runs: the committed ones (a KeyError for one not there)
        return {arm: {v: records[arm][v] for v in values[arm]} for arm in values}

    picks = {}
    for phase in studies.PHASES:  # phase by phase, as real_grid.select runs them
        arms = [a for a in phase if a in records]
        if arms:
            picks |= study.extended({a: studies.grid_of(a, FIRST[grid], EXTEND[grid].get(a, 2)) for a in arms},
                                    trained)
    found = real_grid.choices_of(picks, records, FIRST[grid])
    assert found == committed["choices"]
    assert real_grid.choose(plan, candidates, FIRST[grid]) == found  # the candidates all at once: the same
    for arm, choice in found.items():  # every committed run was asked for: none left out of the choice
        assert arm == studies.BEST_OTHER or list(choice["scores"]) == [study.candidate_key(v)
                                                                         for v in candidates[arm]]
    # the source-size grid's rates stopped at the top of their extended candidates: said, not hidden
    assert {a: c["edge"] for a, c in found.items() if c["edge"]} == (
        {"central": "high", "fedavg": "high"} if grid == "real_source" else {})
    assert (studies.BEST_OTHER in found) == (grid == "real")
    # what the selection runs shared, as their args.json have it; the second phase at FedAvg's chosen rate
    args = {j.name: json.loads((j.run_dir / "args.json").read_text())["args"] for j in plan}
    assert {a["seed"] for a in args.values()} == set(committed["runs"]["seeds"]) == {studies.SELECTION_SEED}
    assert {a["layers"] for a in args.values()} == {committed["runs"]["layers"]}
    assert {a["patience"] for a in args.values()} == {committed["runs"]["patience"]}
    assert {a["lr"] for n, a in args.items() if n.split("_")[1] in studies.OTHERS} <= {found["fedavg"]["chosen"]}
