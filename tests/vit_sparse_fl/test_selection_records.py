"""run_all_experiments.py's choice on the committed selection runs (vit_sparse_fl/figures/runs_*/selection/): the
same rates and scores as the committed selection.json, and the same rates beyond a grid's edge, whatever
implementation chooses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vit_sparse_fl import run_all_experiments as suite

FIGURES = Path(__file__).resolve().parents[2] / "vit_sparse_fl" / "figures"
SUITES = sorted(p.name for p in FIGURES.glob("runs_*") if (p / "selection.json").is_file())
# what edge_rates gives on each committed selection.json: the picks still at an edge of the rates tried (the ViT
# suites do not extend; the text suites extended twice at most)
EDGES = {"runs_R192": {"probe_iid_head": 3.0, "sparse_iid_s0.9_lowest_magnitude": 3.0, "sparse_iid_s0.9_random": 3.0},
         "runs_R768_rates": {"probe_iid_head": 3.0, "sparse_iid_s0.5_least_sensitive": 3.0},
         "runs_text_R12": {}, "runs_text_R24": {}, "runs_text_R48": {}, "runs_text_R96": {}}


@pytest.mark.parametrize("name", SUITES)
def test_committed_selection_is_chosen_again(name, tmp_path, monkeypatch):
    committed = json.loads((FIGURES / name / "selection.json").read_text())
    rounds = committed["rounds"] * (suite.TEXT if name.startswith("runs_text") else suite.VIT).select_fraction
    args = suite.get_args_parser().parse_args(["--rounds", str(rounds)] + (["--text"] if "text" in name else []))
    monkeypatch.setattr(suite, "settings", lambda *a, **k: [(s, "", []) for s in committed["scores"]])
    (tmp_path / "selection").symlink_to(FIGURES / name / "selection")
    chosen = suite.choose(args, tmp_path, "base.pt")
    assert chosen == committed["chosen"]
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert saved["scores"] == committed["scores"]
    assert suite.edge_rates(args, chosen, tmp_path / "selection.json") == EDGES[name]
    assert saved["edge"] == dict.fromkeys(EDGES[name], "high")  # selection.json says which picks are at an edge
