"""Every benchmark script runs end to end in its smallest form (--quick), so a change to the code a
benchmark drives cannot silently break it; the tables' numbers are checked only for being measured."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from common.cli import UsageError

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


def test_bench_data_quick(tmp_path):
    out = load("bench_data").main(["--quick", "--json", str(tmp_path / "data.json")])
    assert out["labels"] == 100_000 and list(out["generate_s"]) == ["wikitext"]
    assert out["generate_s"]["wikitext"] > 0 and out["shard_s"] > 0
    assert json.loads((tmp_path / "data.json").read_text())["shard_s"] == out["shard_s"]


def test_bench_aggregate_quick(tmp_path):
    out = load("bench_aggregate").main(["--quick", "--no-memory", "--repeats", "1", "--warmup", "0", "--clients", "3",
                                        "--busy-limit", "30", "--json", str(tmp_path / "agg.json")])
    assert [c["name"] for c in out["conditions"]] == ["quiet", "busy"]
    busy = out["conditions"][1]
    assert busy["busy_loops"] == (os.cpu_count() or 1) and busy["load_during"]["load1"] >= 0
    for cond in out["conditions"]:
        aggs = {r["aggregator"] for r in cond["rows"]}
        assert aggs == {"WeightedMean", "FisherMean", "FedAdam step", "FedAvgM step"}
        assert all(r["flat_ms"] > 0 and r["anchor_ms"] > 0 and r["floor_ms"] > 0 for r in cond["rows"])
        many = {r["aggregator"] for r in cond["rows"] if r.get("many_ms", 0) > 0 and r["many_floor_ms"] > 0}
        assert many == {"WeightedMean", "FisherMean"}  # add_many timed for every aggregator
    assert json.loads((tmp_path / "agg.json").read_text())["anchor"] == out["anchor"]
    summary = load("bench_aggregate").main(["--summarize", str(tmp_path / "agg.json"), str(tmp_path / "agg.json")])
    rows = {(r["condition"], r["what"]): r for r in summary["rows"]}
    many = rows[("quiet", "K=3 WeightedMean.add_many speedup")]  # the same run twice: min = max
    assert summary["runs"] == 2 and many["runs"] == 2 and many["values"][0] == many["values"][1]
    assert many["met"] == 2 * (many["values"][0] >= 2.5) and many["target"] == ">= 2.5x"
    assert ("busy", "K=3 WeightedMean streaming, separate tensors, speedup") in rows
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "other.json").write_text('{"rows": []}')
    for bad, message in (("missing.json", "no such file"), ("broken.json", "not JSON"),
                         ("other.json", "not a bench_aggregate.py --json summary")):
        with pytest.raises(UsageError, match=message):
            load("bench_aggregate").main(["--summarize", str(tmp_path / bad)])
    ref = load("bench_aggregate").main(["--quick", "--no-memory", "--repeats", "1", "--warmup", "0", "--clients", "2",
                                        "--conditions", "quiet", "--aggregators", "WeightedMean", "--anchor",
                                        "reference"])
    assert ref["anchor"] == "per-key stack reference" and len(ref["conditions"][0]["rows"]) == 1


def test_bench_fisher_quick(tmp_path):
    out = load("bench_fisher").main(["--quick", "--json", str(tmp_path / "fisher.json")])
    for r in out["results"]:
        assert r["per_example_ms"] > 0 and r["batch_ms"] > 0
        assert r["rel_gap"] < 1e-4  # vmap and the per-example loop compute the same Fisher


def test_bench_aggregate_copy_floor_copies_k_whole_uploads(monkeypatch):
    """The copy floor times K copies of a whole upload: handing it one upload (whose elements it would copy
    one by one, each broadcast over the destination) is refused, and the timed run gives it K uploads."""
    import torch

    bench = load("bench_aggregate")
    dst, ups = torch.zeros(6), [torch.full((6,), float(i)) for i in range(3)]
    bench.copy_floor(dst, ups)
    assert torch.equal(dst, ups[-1])
    with pytest.raises(ValueError, match="whole uploads"):
        bench.copy_floor(dst, ups[0])
    seen, real = [], bench.copy_floor
    monkeypatch.setattr(bench, "copy_floor", lambda d, srcs: (seen.append(len(srcs)), real(d, srcs)))
    bench.main(["--quick", "--no-memory", "--repeats", "1", "--warmup", "0", "--clients", "3", "4",
                "--conditions", "quiet", "--aggregators", "WeightedMean"])
    assert sorted(set(seen)) == [3, 4]


def test_bench_client_store_quick(tmp_path):
    """Peak RSS, checkpoint size and the store's rows at 100 vs 1,000 (FedAvg) / 300 (SCAFFOLD) clients: measured,
    and the checkpoint holds no client's row (its size does not grow with the clients)."""
    out = load("bench_client_store").main(["--quick", "--json", str(tmp_path / "store.json")])
    rows = {(r["algorithm"], r["clients"]): r for r in out["results"]}
    assert set(rows) == {("fedavg", 100), ("fedavg", 1000), ("scaffold", 100), ("scaffold", 300)}
    for r in rows.values():
        assert r["peak_rss_mb"] > 0 and r["save_ms"] > 0 and r["rows"] >= 10 and r["store_disk_kb"] > 0
        assert r["checkpoint_kb"] < r["rows"] * r["row_kb"] / 4
    assert rows[("fedavg", 1000)]["checkpoint_kb"] < 1.1 * rows[("fedavg", 100)]["checkpoint_kb"]


def test_bench_scale_one_run_reads_its_store(tmp_path):
    """One bench_scale run in this process (SCAFFOLD on 12 synthetic Shakespeare clients, 4 a round, 3 rounds):
    every client trained holds a c_i in the store the checkpoint names, and the checkpoint holds none of their rows."""
    bench = load("bench_scale")
    r = bench.one_run("scaffold", 12, str(tmp_path), "s", resume=False)
    assert r["tables"] == ["scaffold_c0"] and 4 <= r["with_state"] <= 12 and r["round_s"] > 0
    row_mb = r["store_mb"] / r["with_state"] / 2  # at most two slots a client
    assert r["checkpoint_kb"] / 1024 < r["with_state"] * row_mb
