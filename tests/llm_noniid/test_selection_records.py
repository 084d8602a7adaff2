"""run_experiments.py's choice (the pretrained regime's rate, then FedProx's mu per partition) on the committed
selection scores (llm_noniid/results/pretrained/grid/selection.json: its runs are not committed): the same rate and
mus again, whatever implementation chooses."""
from __future__ import annotations

import json
import math
from pathlib import Path

from llm_noniid import data as D
from llm_noniid import run_experiments as E

COMMITTED = Path(__file__).resolve().parents[2] / "llm_noniid" / "results" / "pretrained" / "grid" / "selection.json"


def test_committed_selection_is_chosen_again(tmp_path, monkeypatch):
    committed = json.loads(COMMITTED.read_text())
    lr, mu = committed["scores"]["learning_rate (FedAvg, iid)"], committed["scores"]["mu (FedProx)"]
    assert list(lr) == list(E.LR_GRID) and all(list(v) == list(E.MUS) for v in mu.values())
    phases = iter([list(lr.values()), [mu[part][m] for part, _ in E.SELECT_PARTS for m in E.MUS]])
    monkeypatch.setattr(E, "_selection_scores", lambda *a, **k: next(phases))  # the runs' scores, in plan order
    monkeypatch.setattr(E, "base_folder", lambda args: committed["base"])
    monkeypatch.setattr(E, "split_data", lambda csv, out: out)
    monkeypatch.setattr(D, "split_ag_news_csv", lambda *a, **k: tmp_path)
    args = E.get_args_parser().parse_args(["--mode", "select", "--regime", "pretrained", "--out-dir", str(tmp_path),
                                           "--rounds", str(2 * committed["rounds"])])
    chosen = E.select(args, [])
    assert chosen["learning_rate"] == committed["learning_rate"] and chosen["mu"] == committed["mu"]
    assert chosen["scores"]["learning_rate (FedAvg, iid)"]["0.03"] == math.inf
    # the diverged 0.03 was tried: the rate is inside its grid; every mu is the smallest tried, and is said to be
    assert chosen["edge"] == {f"mu ({part})": "low" for part, _ in E.SELECT_PARTS}
