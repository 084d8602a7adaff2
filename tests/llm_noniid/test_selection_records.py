"""run_experiments.py's choice (the pretrained regime's rate, then FedProx's mu per partition) on the committed
selection scores (llm_noniid/results/pretrained/grid/selection.json, ``common.study``'s record: its runs are not
committed): the same rate and mus, edges and record again, whatever implementation chooses."""
from __future__ import annotations

from pathlib import Path

from common import study
from llm_noniid import data as D
from llm_noniid import run_experiments as E
from llm_noniid import studies as ST

COMMITTED = Path(__file__).resolve().parents[2] / "llm_noniid" / "results" / "pretrained" / "grid" / "selection.json"


def test_committed_selection_is_chosen_again(tmp_path, monkeypatch):
    committed = study.read_selection(COMMITTED)
    parts = [part for part, _ in ST.SELECT_PARTS]
    assert list(committed["choices"]) == ["learning_rate", *(f"mu/{part}" for part in parts)]
    lr = committed["choices"]["learning_rate"]["scores"]
    mu = {part: committed["choices"][f"mu/{part}"]["scores"] for part in parts}
    assert list(lr) == list(ST.LR_GRID) and all(list(v) == list(ST.MUS) for v in mu.values())
    assert lr["0.03"] == "diverged"   # every other score a number
    assert all(not isinstance(v, str) for v in [*list(lr.values())[:-1], *(s for m in mu.values() for s in m.values())])
    phases = iter([list(lr.values()), [mu[part][m] for part in parts for m in ST.MUS]])
    monkeypatch.setattr(E, "_selection_scores", lambda *a, **k: next(phases))  # the runs' scores, in plan order
    monkeypatch.setattr(E, "base_folder", lambda args: committed["runs"]["base"])
    monkeypatch.setattr(E, "split_data", lambda csv, out: out)
    monkeypatch.setattr(D, "split_ag_news_csv", lambda *a, **k: tmp_path)
    args = E.get_args_parser().parse_args(["--mode", "select", "--regime", "pretrained", "--out-dir", str(tmp_path),
                                           "--rounds", str(2 * committed["runs"]["rounds"])])
    setting = E.select(args, [])
    assert setting == ST.setting_of(committed) == {"learning_rate": 0.01, "mu": dict.fromkeys(parts, "0.001")}
    again = study.read_selection(tmp_path / "selection.json")
    assert again["choices"] == committed["choices"]   # every score, choice and edge
    # the diverged 0.03 was tried: the rate is inside its grid; every mu is the smallest tried, and is said to be
    assert again["choices"]["learning_rate"]["edge"] is None
    assert {k: (c["edge"], c["beyond"]) for k, c in again["choices"].items() if k != "learning_rate"} == \
        {f"mu/{part}": ("low", 0.0001) for part in parts}
    assert again["runs"] == {"base": committed["runs"]["base"], "rounds": committed["runs"]["rounds"],
                             "seeds": [ST.SELECT_SEED]}
    # a finished selection is read, not run again
    def run_again(*a, **k):
        raise AssertionError("a finished selection ran again")

    monkeypatch.setattr(E, "_selection_scores", run_again)
    assert E.select(args, []) == setting
