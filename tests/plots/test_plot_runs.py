"""common.runs on run directories written by RunDir: finding, loading, grouping over seeds, mean +- std."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common import runs as R
from common.runlog import RunDir, run_name


def _fake_run(root, method, k, seed, ppls, summary=True):
    args = {"method": method, "num_clients": k, "seed": seed, "out_dir": str(root), "quiet": True, "lr": 0.1}
    rd = RunDir(root, run_name(method, k=k, s=seed), args, kind="mamba_fl/fed_avg")
    for r, ppl in enumerate(ppls):
        rd.log({"round": r, "ppl": ppl, "step": 10 * r})
    if summary:
        rd.write_summary({"final_ppl": ppls[-1]})
    return rd.path


@pytest.fixture
def root(out_dir):
    _fake_run(out_dir, "fedavg", 4, 0, [30.0, 20.0, 10.0])
    _fake_run(out_dir, "fedavg", 4, 1, [34.0, 22.0, 14.0])
    _fake_run(out_dir, "fedavg", 4, 2, [32.0, 24.0], summary=False)  # unfinished: only two rounds
    _fake_run(out_dir, "fedfisher", 4, 0, [25.0, 15.0, 9.0])
    _fake_run(out_dir, "fedfisher", 8, 0, [27.0, 16.0, 8.0])
    (out_dir / "not_a_run").mkdir()  # no args.json: ignored
    return out_dir


def test_find_and_load_runs(root):
    names = [p.name for p in R.find_runs(root)]
    assert names == ["fedavg_k4_s0", "fedavg_k4_s1", "fedavg_k4_s2", "fedfisher_k4_s0", "fedfisher_k8_s0"]
    assert [p.name for p in R.find_runs(root, "fedfisher_*")] == ["fedfisher_k4_s0", "fedfisher_k8_s0"]
    assert [p.name for p in R.find_runs(root.parent, "**/fedavg_k4_s1")] == ["fedavg_k4_s1"]
    run = R.load_run(root / "fedavg_k4_s1")
    assert run["name"] == "fedavg_k4_s1" and run["args"]["seed"] == 1 and run["meta"]["git_commit"]
    assert [r["ppl"] for r in run["rows"]] == [34.0, 22.0, 14.0]
    assert run["summary"]["final_ppl"] == 14.0
    assert R.load_run(root / "fedavg_k4_s2")["summary"] is None


def test_group_runs_pools_seeds_only(root):
    groups = R.group_runs(R.load_runs(root))
    assert [sorted(r["args"]["seed"] for r in g) for _, g in groups] == [[0, 1, 2], [0], [0]]
    configs = [c for c, _ in groups]
    assert all("seed" not in c and "out_dir" not in c for c in configs)
    assert R.varying_keys(configs) == ["method", "num_clients"]
    assert R.label(configs[2], ["method", "num_clients"]) == "method=fedfisher, num_clients=8"
    by_k = R.group_runs(R.load_runs(root), ignore=R.DEFAULT_GROUP_IGNORE + ("method",))
    assert [len(g) for _, g in by_k] == [4, 1]
    runs = R.load_runs(root)
    runs[0]["args"]["checkpoint_every"] = 1  # how often a run saves (a flag newer than the others' runs) pools
    assert [len(g) for _, g in R.group_runs(runs)] == [3, 1, 1]
    for run in runs[1:]:  # a flag the first run's script did not have yet, at one value in every later run: pools
        run["args"]["aggregator"] = "mean"
    assert [len(g) for _, g in R.group_runs(runs)] == [3, 1, 1]
    runs[-1]["args"]["aggregator"] = "fisher"  # later runs disagree: the run without it is its own configuration
    assert [len(g) for _, g in R.group_runs(runs)] == [1, 2, 1, 1]


def test_aligned_on_common_rounds(root):
    (_, fedavg), *_ = R.group_runs(R.load_runs(root))
    x, ys = R.aligned(fedavg, "ppl")
    np.testing.assert_array_equal(x, [0, 1])  # seed 2 stopped after round 1
    np.testing.assert_allclose(ys, [[30, 20], [34, 22], [32, 24]])
    x_steps, ys_steps = R.aligned(fedavg[:2], "ppl", x="step")
    np.testing.assert_array_equal(x_steps, [0, 10, 20])
    np.testing.assert_allclose(ys_steps.mean(0), [32.0, 21.0, 12.0])
    assert R.aligned(fedavg, "missing_metric")[0].size == 0
    with pytest.raises(ValueError):
        R.aligned([], "ppl")


def test_draw_seeds_bands_points_and_bars(root):
    import matplotlib.pyplot as plt
    (_, fedavg), *_ = R.group_runs(R.load_runs(root))
    x, ys = R.aligned(fedavg, "ppl")
    fig, ax = plt.subplots()
    line = R.draw_seeds(ax, x, ys.T, "FedAvg")
    assert line.get_label() == "FedAvg (n=3)"
    np.testing.assert_allclose(line.get_ydata(), [32.0, 22.0])
    band = ax.collections[-1].get_paths()[0].vertices[:, 1]  # mean ± sample sd (ddof=1): 2.0 at both rounds
    assert band.min() == pytest.approx(20.0) and band.max() == pytest.approx(34.0)
    R.draw_seeds(ax, x, ys.T, "range", spread="range")
    band = ax.collections[-1].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(20.0) and band.max() == pytest.approx(34.0)
    R.draw_seeds(ax, x[:1], [[30.0]], "one seed")
    assert len(ax.collections) == 2  # no band for one seed
    bars = R.draw_seeds(ax, [0, 1], [[1.0, 3.0], [5.0]], "bars", kind="bars", width=0.4)
    assert [b.get_height() for b in bars] == [2.0, 5.0] and bars.get_label() == "bars (n=1-2)"
    points = R.draw_seeds(ax, [0], [[1.0, 3.0]], kind="points", horizontal=True)
    assert points.has_xerr and not points.has_yerr
    plt.close(fig)


def test_by_seed_one_run_per_seed(root):
    runs = R.load_runs(root)
    fedavg = [r for r in runs if r["args"]["method"] == "fedavg"]
    assert R.by_seed(fedavg, "final_ppl") == {0: 10.0, 1: 14.0}
    with pytest.raises(ValueError, match="seed 0"):
        R.by_seed(fedavg + fedavg[:1], "final_ppl")


def test_savefig_writes_png_and_pdf_into_new_folders(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt
    assert matplotlib.get_backend().lower() == "agg"
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    written = R.savefig(fig, tmp_path / "figs" / "deep" / "curve.png", pdf=True)
    assert [p.name for p in written] == ["curve.png", "curve.pdf"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[1].read_bytes()[:4] == b"%PDF"
    assert not plt.fignum_exists(fig.number)  # closed


def test_load_roots_reads_several_folders_once(root, tmp_path, capsys):
    other = tmp_path / "other"
    _fake_run(other, "fedavg", 2, 0, [5.0, 4.0])
    runs = R.load_roots([root, other, root])
    assert [r["name"] for r in runs] == ["fedavg_k4_s0", "fedavg_k4_s1", "fedfisher_k4_s0", "fedfisher_k8_s0",
                                         "fedavg_k2_s0"]
    assert "left out" in capsys.readouterr().out  # the unfinished fedavg_k4_s2, once
    with pytest.raises(R.UsageError, match="--runs nowhere: no such folder"):
        R.load_roots([root, "nowhere"])


def test_with_keys_leaves_out_missing_and_mistyped(root, capsys):
    runs = R.load_roots([root])
    capsys.readouterr()
    runs[0]["summary"]["final_ppl"] = "12"
    del runs[1]["args"]["lr"]
    runs[2]["args"]["num_clients"] = True  # a bool is not a number here
    kept = R.with_keys(runs, "the test", args={"lr": R.NUMBER, "num_clients": int}, summary={"final_ppl": R.NUMBER})
    assert [r["name"] for r in kept] == ["fedfisher_k8_s0"]
    out = capsys.readouterr().out.splitlines()
    assert out == [f"left out of the test: {root / 'fedavg_k4_s0'} (summary.json: final_ppl is '12', not int/float)",
                   f"left out of the test: {root / 'fedavg_k4_s1'} (args.json has no lr)",
                   f"left out of the test: {root / 'fedfisher_k4_s0'} (args.json: num_clients is True, not int)"]


def test_split_by_and_split_configs(root):
    runs = R.load_runs(root)
    parts = R.split_by(runs, ["num_clients", "lr"])
    assert [(label, len(g)) for label, g in parts] == [("num_clients=4", 4), ("num_clients=8", 1)]
    assert R.split_by(runs, ["lr"]) == [("", runs)]
    groups = R.split_configs({("panel", "all"): runs, ("panel", "k8"): runs[-1:]})
    assert {k: len(v) for k, v in groups.items()} == {
        ("panel", "all [method=fedavg, num_clients=4]"): 3, ("panel", "all [method=fedfisher, num_clients=4]"): 1,
        ("panel", "all [method=fedfisher, num_clients=8]"): 1, ("panel", "k8"): 1}


def test_series_skips_values_that_are_not_numbers(root):
    run = R.load_run(root / "fedavg_k4_s0")
    run["rows"][1]["ppl"] = "n/a"
    run["rows"][2]["round"] = None
    x, y = R.series(run, "ppl")
    assert x.tolist() == [0.0] and y.tolist() == [30.0]


def test_shown_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    """A report committed from a checkout names its folders relative to it, never a machine's absolute path."""
    monkeypatch.chdir(tmp_path)
    assert R.shown(tmp_path / "runs" / "base") == str(Path("runs") / "base")
    assert R.shown("runs/base") == str(Path("runs") / "base")
    outside = tmp_path.parent / "elsewhere"
    assert R.shown(outside) == str(Path("..") / "elsewhere")
    assert R.shown(None) is None and R.shown("tiny-gpt2") == "tiny-gpt2"
