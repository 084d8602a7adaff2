"""plots.plot_mamba on a grid of fake run directories: the grid's figures, with data only, and no table (the
tables are README blocks: tests/mamba_fl/test_results_synthetic.py)."""
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


def test_grid_figures_draw_each_block_and_write_no_table(grid, tmp_path, capsys):
    """One figure per depth and shard with runs; the tables are mamba_fl/results_synthetic.py's README blocks."""
    written = PM.grid_figures(grid, tmp_path / "figs")
    assert [p.name for p in written] == ["grid_L1_topic.png"]
    assert not list(tmp_path.rglob("results.md"))
    runs = {r["name"]: r for r in PM.grid_runs(grid)}
    assert runs["central_L1_synthetic_s0"]["shard"] == "all" and runs["fedavg_L1_topic_s1"]["shard"] == "topic"
    assert math.isfinite(runs["fedfisher_L1_topic_s2"]["summary"]["final_val_ppl"])
