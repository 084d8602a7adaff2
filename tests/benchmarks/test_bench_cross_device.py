"""benchmarks/bench_cross_device.py without Flower or pfl-research: the engine and the plain loop train the same model
on the same batches, the rates leave the first round out, and an engine that cannot run gives its one-line reason
while the others still run."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SAMPLE = Path(__file__).resolve().parents[2] / "common" / "data" / "shakespeare_sample"


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import benchlib and cross_device from their own folder
    yield importlib.import_module("bench_cross_device"), importlib.import_module("cross_device")
    for name in ("bench_cross_device", "cross_device", "benchlib"):
        sys.modules.pop(name, None)


def test_engine_and_loop_train_the_same_model(bench):
    _, X = bench
    w = X.Workload(data_dir=str(SAMPLE), clients=6, per_round=3, rounds=2, local_steps=2, hidden=8, eval_samples=0)
    models, clocks = {}, {}
    for name, run in (("engine", X.run_engine), ("loop", X.run_loop)):
        clocks[name] = X.Clock()
        models[name] = run(w, clocks[name], X.Data(w))
        assert clocks[name].rounds == 2 and all(t >= 0 for t in clocks[name].cpu_durations())
    for a, b in zip(models["engine"].parameters(), models["loop"].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # the same batches: only summation order differs
    start = dict(X.build_model(w, X.Data(w).vocab).named_parameters())
    assert any(not torch.equal(p, start[n]) for n, p in models["loop"].named_parameters())  # it trained
    data = X.Data(w)
    scores = [X.heldout(models[n], data) for n in ("engine", "loop")]
    assert scores[0]["heldout_loss"] == pytest.approx(scores[1]["heldout_loss"], abs=1e-5)
    assert X.samples_per_round(w, data) == [sum(min(len(data.train[k]), 20) for k in X.cohort(w, 6, r))
                                            for r in range(2)]


def test_rates_leave_the_first_round_out(bench):
    B, _ = bench
    row = B.summarize({"samples": [100, 200, 200], "round_s": [9.0, 1.0, 3.0], "round_cpu_s": [5.0, 1.0, 1.0]})
    assert row["s_per_1k"] == 10.0 and row["cpu_per_1k"] == 5.0 and row["first_round_s"] == 9.0
    rows = {"engine": row, "loop": B.summarize({"samples": [1, 200, 200], "round_s": [1.0, 2.0, 2.0],
                                                 "round_cpu_s": [1.0, 0.5, 0.5]})}
    (goal,) = B.goals(rows)
    assert goal["value"] == "2.000x (wall 1.000x)" and not goal["met"]


def test_missing_engines_say_why_in_one_line(bench, monkeypatch, tmp_path, capsys):
    B, _ = bench
    real = importlib.util.find_spec
    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name, *a: None if name in ("flwr", "pfl")
                        else real(name, *a))
    monkeypatch.setattr(B, "BATCHED_MODULE", "common.no_such_module")
    out = B.main(["--quick", "--engines", "engine-batched", "loop", "flower", "pfl", "--hidden", "8", "--rounds", "2",
                  "--local-steps", "2", "--json", str(tmp_path / "cd.json")])
    (variant,) = out["variants"]
    rows = variant["rows"]
    assert rows["flower"]["reason"].startswith("not installed (flwr") and "pfl missing" in rows["pfl"]["reason"]
    assert "no_such_module.py is absent" in rows["engine-batched"]["reason"]
    loop = rows["loop"]
    assert loop["s_per_1k"] > 0 and loop["startup_s"] > 0 and loop["peak_rss"] > 0 and loop["threads"] == 1
    assert len(loop["round_s"]) == 2 and variant["workload"]["hidden"] == 8 and variant["goals"] == []
    printed = capsys.readouterr().out
    assert all(reason in printed for reason in (rows["flower"]["reason"], rows["pfl"]["reason"]))
    assert json.loads((tmp_path / "cd.json").read_text())["variants"][0]["rows"]["loop"]["s_per_1k"] == loop["s_per_1k"]
    monkeypatch.setattr(B, "BATCHED_MODULE", "common.engine")
    monkeypatch.setattr(B, "BATCHED_ARGV", ("--no-such-flag",))
    assert "has no --no-such-flag flag" in B.unavailable("engine-batched")


def test_refusals(bench, tmp_path):
    B, _ = bench
    with pytest.raises(B.cli.UsageError, match="no Shakespeare build there"):
        B.main(["--data-dir", str(tmp_path)])
    with pytest.raises(B.cli.UsageError, match="CPU only"):
        B.main(["--quick", "--device", "cuda"])
