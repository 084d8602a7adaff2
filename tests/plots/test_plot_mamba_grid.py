"""plots.plot_mamba on a grid of fake run directories: paired statistics in results.md, plateau check,
figures with data only."""
from __future__ import annotations

import math

import pytest

from common.runlog import RunDir
from plots import plot_mamba as PM

REFS = {"uniform_ppl": 2048.0, "unigram_ppl": 250.0, "unigram_ppl_word": 300.0, "optimal_ppl_word": 9.1}


def _run(root, arm, layers, shard, seed, final, flat=True):
    args = {"layers": layers, "seed": seed, "sequence_length": 64, "shard": shard}
    name = f"{arm}_L{layers}_{'synthetic' if arm == 'central' else shard}_s{seed}"
    rd = RunDir(root, name, args, kind="mamba_fl/fed_avg")
    key = "step" if arm == "central" else "round"
    for i in range(1, 6):  # flat: last 20% moves < 5%; else still falling 20% per evaluation
        ppl = final * (1.0 + (0 if flat and i >= 4 else 0.2 * (5 - i)))
        rd.log({key: 10 * i, "tokens": 640 * i, "val_ppl": ppl}
               | ({"fisher_eps_share": 0.01} if arm == "fedfisher" else {}))
    rd.write_summary({"method": arm, "final_val_ppl": final, "final_val_ppl_word": final * 1.1} | REFS)


@pytest.fixture
def grid(tmp_path):
    root = tmp_path / "grid"
    for s, noise in zip((0, 1, 2), (0.0, 1.0, -1.0)):
        _run(root, "central", 1, None, s, 20 + noise)
        _run(root, "fedavg", 1, "topic", s, 30 + noise)
        _run(root, "fedfisher", 1, "topic", s, 40 + noise + 0.1 * s, flat=s != 2)  # clearly worse than FedAvg
        _run(root, "fedentropy", 1, "topic", s, 30 + noise + (0.5, -0.5, 0.1)[s])  # within noise
        _run(root, "fedavgm", 1, "topic", s, 300 + noise)  # every seed above the unigram (250)
    return root


def test_grid_report_tables_and_figures(grid, tmp_path):
    written = PM.grid_report(grid, tmp_path / "figs")
    text = (grid / "results.md").read_text(encoding="utf-8")
    assert (tmp_path / "figs" / "results.md").read_text(encoding="utf-8") == text
    assert "1 layer, topic shards" in text
    fisher = next(line for line in text.splitlines() if line.startswith("| FedFisher"))
    assert "40.1 ± 1.0 (n=3)" in fisher and "+10.1 [" in fisher and "p_Holm" in fisher
    assert "no difference" not in fisher
    assert "| 2/3 |" in fisher and "floor decides 1.0% of coordinates" in fisher   # seed 2 is still falling
    entropy = next(line for line in text.splitlines() if line.startswith("| FedEntropy"))
    assert "no difference after Holm (rules out > " in entropy
    fedavgm = next(line for line in text.splitlines() if line.startswith("| FedAvgM"))
    assert "diverged (every seed above the unigram)" in fedavgm and "no difference" not in fedavgm
    assert "unigram (fitted on the training split) 250.0" in text and "optimum of the source 9.10" in text
    assert [p.name for p in written] == ["grid_L1_topic.png"]


def test_plateau_needs_three_evaluations(grid):
    run = next(r for r in PM.grid_runs(grid) if r["name"] == "fedfisher_L1_topic_s2")
    assert PM.plateau(run) is False
    run["rows"] = run["rows"][:2]
    assert PM.plateau(run) is None
    assert math.isfinite(run["summary"]["final_val_ppl"])
