"""run_all_experiments.py's choice on the committed selection runs (vit_sparse_fl/results/<suite>/runs/selection/): the
committed selection.json (``common.study``'s selection record) written again whole, every rate's score, the rates
chosen, their edges and the rates tried beyond a grid, and the same rates beyond a grid's edge to try next
(``study.extended``'s next stage), whatever implementation chooses."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from common import study
from vit_sparse_fl import run_all_experiments as suite
from vit_sparse_fl import studies

RESULTS = Path(__file__).resolve().parents[2] / "vit_sparse_fl" / "results"
SUITES = sorted(p.parent.parent.name for p in RESULTS.glob("*/runs/selection.json"))
# the rates a next stage past the grid's edge would add on each committed selection.json: the picks still at an edge
# of the rates tried (the ViT suites do not extend; the text suites extended twice at most)
EDGES = {"r192": {"probe_iid_head": 3.0, "sparse_iid_s0.9_lowest_magnitude": 3.0, "sparse_iid_s0.9_random": 3.0},
         "r768_rates": {"probe_iid_head": 3.0, "sparse_iid_s0.5_least_sensitive": 3.0},
         "text_r12": {}, "text_r24": {}, "text_r48": {}, "text_r96": {}}
# the rates tried past a setting's grid (its "extended"): r768_rates' 0.03 below its --lr-grid 0.1 0.3 1, text_r48's
# rate 9 above the masks' grid
EXTENDED = {"r768_rates": {"fedavg_nc2": [0.03], "sparse_nc2_s0.9_most_sensitive": [0.03]},
            "text_r48": {"sparse_iid_s0.9_least_sensitive": [9.0]}}


def test_every_suite_has_its_committed_selection():
    assert SUITES == sorted(EDGES)


@pytest.mark.parametrize("name", SUITES)
def test_committed_selection_is_chosen_again(name, tmp_path, monkeypatch):
    committed = study.read_selection(RESULTS / name / "runs" / "selection.json")
    runs = committed["runs"]
    text = name.startswith("text_")
    rounds = runs["rounds"] * (studies.TEXT if text else studies.VIT).select_fraction
    argv = ["--rounds", str(rounds), "--select-seed", str(*runs["seeds"])] + (["--text"] if text else [])
    if not text and runs["grid"] != studies.VIT_GRID:      # a suite run with its own --lr-grid
        argv += ["--lr-grid", *map(str, runs["grid"])]
    args = suite.get_args_parser().parse_args(argv)
    assert (args.lr_grid or (studies.TEXT_GRIDS if text else studies.VIT_GRID)) == runs["grid"]
    monkeypatch.setattr(studies, "settings", lambda *a, **k: [(s, "", []) for s in committed["choices"]])
    (tmp_path / "selection").symlink_to(RESULTS / name / "runs" / "selection")
    chosen = suite.choose(args, tmp_path, "base.pt")
    assert chosen == study.chosen(committed) and None not in chosen.values()
    saved = study.read_selection(tmp_path / "selection.json")
    assert saved == committed                       # study, criterion, runs and every setting's choice whole
    assert (tmp_path / "selection.json").read_text() == (RESULTS / name / "runs" / "selection.json").read_text()
    for choice in saved["choices"].values():        # every run finished; a diverged one is named so
        assert all(isinstance(v, float) or v == "diverged" for v in choice["scores"].values())
        assert {study.candidate_key(lr) for lr in choice["extended"]} <= set(choice["scores"])
    assert {s: c["extended"] for s, c in saved["choices"].items() if c["extended"]} == EXTENDED.get(name, {})
    # the next stage study.extended asks for (one step allowed, the ViT suites' too): the rate past each edge pick
    asked = []

    def run(values: dict) -> dict:
        asked.append({s: list(v) for s, v in values.items()})
        return {s: {lr: [x] for lr, x in suite.summaries(args, tmp_path, s).items()} for s in values}

    study.extended({s: dataclasses.replace(studies.selection_grid(args, s), extend=1) for s in saved["choices"]}, run)
    added = {s: [lr for lr in asked[-1][s] if lr not in asked[0][s]] for s in asked[0]}
    assert {s: lrs for s, lrs in added.items() if lrs} == {s: [lr] for s, lr in EDGES[name].items()}
    # selection.json says which picks are at an edge, and the rate beyond it
    assert {s: (c["edge"], c["beyond"]) for s, c in saved["choices"].items() if c["edge"]} == \
        {s: ("high", lr) for s, lr in EDGES[name].items()}
