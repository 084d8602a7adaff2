"""Every benchmark script runs end to end in its smallest form (--quick), so a change to the code a
benchmark drives cannot silently break it; the tables' numbers are checked only for being measured."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"smoke_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def benchlib_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import benchlib from their own folder
    yield
    sys.modules.pop("benchlib", None)


def test_bench_vit_quick(tmp_path):
    out = load("bench_vit").main(["--quick", "--device", "cpu", "--json", str(tmp_path / "vit.json")])
    r = out["vit_tiny"]
    assert r["train_img_s"] > 0 and r["sparse_train_img_s"] > 0 and r["eval_img_s"] > 0
    assert 0 <= r["other_share"] < 1 and r["client_s"] <= r["round_s"]
    assert json.loads((tmp_path / "vit.json").read_text())["results"]["vit_tiny"]["round_s"] == r["round_s"]


def test_bench_aggregate_quick(tmp_path):
    out = load("bench_aggregate").main(["--quick", "--no-memory", "--repeats", "1", "--clients", "3",
                                        "--json", str(tmp_path / "agg.json")])
    methods = {t["method"] for t in out["timings"]}
    assert {"reference", "stream"} <= methods
    assert all(t["clients"] == 3 and t["gb_s"] > 0 for t in out["timings"] if t["method"] == "stream")


def test_bench_fisher_quick(tmp_path):
    out = load("bench_fisher").main(["--quick", "--json", str(tmp_path / "fisher.json")])
    for r in out["results"]:
        assert r["per_example_ms"] > 0 and r["batch_ms"] > 0
        assert r["rel_gap"] < 1e-4  # vmap and the per-example loop compute the same Fisher
