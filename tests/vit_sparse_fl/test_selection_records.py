"""run_all_experiments.py's choice on the committed selection runs (vit_sparse_fl/results/<suite>/runs/selection/): the
same rates and scores as the committed selection.json, and the same rates beyond a grid's edge, whatever
implementation chooses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vit_sparse_fl import run_all_experiments as suite

RESULTS = Path(__file__).resolve().parents[2] / "vit_sparse_fl" / "results"
SUITES = sorted(p.parent.parent.name for p in RESULTS.glob("*/runs/selection.json"))
# what edge_rates gives on each committed selection.json: the picks still at an edge of the rates tried (the ViT
# suites do not extend; the text suites extended twice at most)
EDGES = {"r192": {"probe_iid_head": 3.0, "sparse_iid_s0.9_lowest_magnitude": 3.0, "sparse_iid_s0.9_random": 3.0},
         "r768_rates": {"probe_iid_head": 3.0, "sparse_iid_s0.5_least_sensitive": 3.0},
         "text_r12": {}, "text_r24": {}, "text_r48": {}, "text_r96": {}}


@pytest.mark.parametrize("name", SUITES)
def test_committed_selection_is_chosen_again(name, tmp_path, monkeypatch):
    committed = json.loads((RESULTS / name / "runs" / "selection.json").read_text())
    rounds = committed["rounds"] * (suite.TEXT if name.startswith("text_") else suite.VIT).select_fraction
    args = suite.get_args_parser().parse_args(["--rounds", str(rounds)] + (["--text"] if "text" in name else []))
    monkeypatch.setattr(suite, "settings", lambda *a, **k: [(s, "", []) for s in committed["scores"]])
    (tmp_path / "selection").symlink_to(RESULTS / name / "runs" / "selection")
    chosen = suite.choose(args, tmp_path, "base.pt")
    assert chosen == committed["chosen"]
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert saved["scores"] == committed["scores"]
    assert suite.edge_rates(args, chosen, tmp_path / "selection.json") == EDGES[name]
    assert saved["edge"] == dict.fromkeys(EDGES[name], "high")  # selection.json says which picks are at an edge
