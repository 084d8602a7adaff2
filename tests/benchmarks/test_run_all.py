"""benchmarks/run_all.py: the combined table built from fabricated benchmark JSON (no benchmark is run)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_llm(overheads: dict) -> list[dict]:
    """bench_llm_round.py rows: (algorithm, lora_r) -> overhead fraction."""
    return [{"algorithm": a, "lora_r": r, "trainable_params": 16384 if r else 134912, "rounds": 10, "clients": 4,
             "train_tokens": 30720, "tokens_per_s": 15000.0, "round_s": 0.5, "client_s": 0.5 * (1 - o),
             "overhead": o, "final_val_ppl": 150.0} for (a, r), o in overheads.items()]


LLM_OK = {("fedavg", 0): 0.03, ("fedprox", 0): 0.04, ("scaffold", 0): 0.049, ("fedavg", 8): 0.02}


def fake_aggregate(speedup: float, vs_floor: float, peak_k100: float) -> dict:
    """bench_aggregate.py's summary: quiet and busy conditions, K = 10 and 100, two aggregators (add_many and
    streaming alike) and a server step (with the first K); ``speedup`` for every row quiet, ``speedup / 2`` busy."""
    mib = 2**20

    def rows(cond, factor):
        out = []
        for k in (10, 100):
            for agg in ("WeightedMean", "FisherMean") + (("FedAdam step",) if k == 10 else ()):
                step = agg == "FedAdam step"
                r = {"condition": cond, "clients": 0 if step else k, "aggregator": agg,
                     "anchor_ms": 100.0 * speedup * factor, "flat_ms": 100.0, "floor_ms": 100.0 / vs_floor,
                     "speedup": speedup * factor, "vs_floor": vs_floor}
                if agg != "FisherMean":
                    r |= {"tensors_ms": 120.0, "tensors_speedup": speedup * factor / 1.2}
                if not step:
                    r |= {"many_ms": 100.0, "many_floor_ms": 100.0 / vs_floor, "many_speedup": speedup * factor,
                          "many_vs_floor": vs_floor}
                out.append(r)
        return out
    load = {"load1": 0.5, "runnable": 1}
    return {"numel": 2_000_000, "quick": True, "threads": 2, "anchor": "Flower 1.41.0 aggregate()",
            "conditions": [{"name": "quiet", "busy_loops": 0, "load_during": load, "rows": rows("quiet", 1.0)},
                           {"name": "busy", "busy_loops": 2, "load_during": load, "rows": rows("busy", 0.5)}],
            "memory": [{"method": "stream", "clients": 10, "peak_bytes": 400 * mib, "before_bytes": 390 * mib},
                       {"method": "stream", "clients": 100, "peak_bytes": int(400 * peak_k100 * mib),
                        "before_bytes": 390 * mib},
                       {"method": "anchor", "clients": 10, "peak_bytes": 500 * mib, "before_bytes": 390 * mib},
                       {"method": "anchor", "clients": 100, "peak_bytes": 1500 * mib, "before_bytes": 390 * mib}]}


def fake_results(*, speedup=3.0, copy_fraction=1.2, peak_k100=1.05, vit_other=0.02, fedavg_overhead=0.08,
                 fisher_ratio=2.5, step_s=None, lora_round=0.024, llm=None, shard_s=1.0) -> dict:
    return {
        "data": {"labels": 1_000_000, "generate_s": {"wikitext": 1.5, "cifar100": 16.0}, "shard_s": shard_s,
                 "targets": {"generate_s": 15.0, "shard_s": 5.0}},
        "aggregate": fake_aggregate(speedup, copy_fraction, peak_k100),
        "vit": {"clients_per_round": 2, "settings": {"image_size": 32, "batch_size": 8, "local_steps": 1},
                "results": {"vit_tiny": {"train_img_s": 100.0, "sparse_train_img_s": 90.0, "eval_img_s": 400.0,
                                         "round_s": 0.2, "client_s": 0.2 * (1 - vit_other),
                                         "other_share": vit_other}}},
        "mamba": [{"layers": 1, "central_tok_s": 1000.0, "fedavg_tok_s": 800.0, "fedavg_overhead": fedavg_overhead,
                   "fedfisher_tok_s": 500.0, "fedfisher_overhead": 0.4, "kernel_path": "torch",
                   "local_steps": 4, "fedfisher_u_overhead": 0.3, "fedfisher_local_overhead": fedavg_overhead + 0.1},
                  {"layers": 1, "step_s": 0.05, "local_steps": 4, "reference_blocks": 256, "batch_size": 8,
                   "estimators": [{"name": "per_example", "seconds": 0.08, "rel_error": 0.8, "share_1_step": 0.6,
                                   "share_u_steps": 0.3},
                                  {"name": "local", "seconds": 0.001, "rel_error": 0.85, "share_1_step": 0.02,
                                   "share_u_steps": 0.005}]},
                  {"layers": 1, "vmap_s": 0.5, "loop_s": 2.0, "rel_gap": 1e-6}],
        "lora_merge": {"clients": 10, "step_s": step_s, "round_steps": 2110, "agree": 1e-6,
                       "timings_ms": {"svd (QR core, lora_glue_fl)": 20.0, "svd (dense dW + full SVD)": 300.0,
                                      "naive A/B average": 1.0, "exact (stacked)": 2.0},
                       "round": None if lora_round is None else {
                           "clients": 4, "rounds": 4, "local_epochs": 1.0, "examples_per_client": [500] * 4,
                           "round_s": 2.0, "client_s": 2.0 * (1 - lora_round), "overhead": lora_round,
                           "final_accuracy": 0.5}},
        "llm_round": fake_llm(LLM_OK if llm is None else llm),
        "fisher": {"results": [{"model": "vit_tiny", "params": 67060, "batch_size": 16, "batch_ms": 20.0,
                                "per_example_ms": 20.0 * fisher_ratio, "loop_ms": 80.0,
                                "per_example_ratio": fisher_ratio, "loop_ratio": 4.0, "rel_gap": 1e-7,
                                "vmap_fallback": False}]},
    }


def verdicts(rows, bench: str, metric_start: str) -> list[str]:
    return [r[5] for r in rows if r[0] == bench and r[2].startswith(metric_start)]


def test_targets_met_and_missed(run_all):
    rows = run_all.build_table(fake_results(), cuda=False, device="cpu")
    assert all(len(r) == len(run_all.HEADERS) for r in rows)
    # add_many: quiet >= 2.5x Flower (3x), busy >= 1x (1.5x); every K and aggregator
    assert verdicts(rows, "aggregate", "WeightedMean.add_many (K uploads in memory) vs Flower") == ["yes"] * 4
    assert verdicts(rows, "aggregate", "FisherMean.add_many (K uploads in memory) vs Flower") == ["yes"] * 4
    assert verdicts(rows, "aggregate", "WeightedMean.add_many time vs copy floor") == ["yes", "yes", "-", "-"]
    # streaming: targeted on a busy machine only (quiet, it moves three times add_many's bytes)
    stream = "WeightedMean streaming (one client at a time)"
    assert verdicts(rows, "aggregate", stream + " vs Flower") == ["-", "-", "yes", "yes"]
    assert verdicts(rows, "aggregate", stream + ", separate tensors") == ["-", "-", "yes", "yes"]
    assert verdicts(rows, "aggregate", stream + " time vs copy floor") == ["-"] * 4
    # the server step: targeted quiet and busy, no add_many
    assert verdicts(rows, "aggregate", "FedAdam step vs Flower") == ["yes", "yes"]
    assert verdicts(rows, "aggregate", "FedAdam step time vs copy floor") == ["yes", "-"]
    assert not verdicts(rows, "aggregate", "FedAdam step.add_many")
    assert verdicts(rows, "aggregate", "peak memory, WeightedMean") == ["yes"]
    assert verdicts(rows, "aggregate", "peak memory, Flower") == ["-"]      # informational, no target
    assert verdicts(rows, "vit_sparse_fl", "round overhead") == ["yes"]
    assert verdicts(rows, "mamba_fl", "FedAvg round overhead") == ["NO"]     # 8% >= 5%
    assert verdicts(rows, "mamba_fl", "FedFisher round overhead, per_example") == ["yes"]  # local 18% <= 25%
    est = {r[2].split(":")[0]: r[3] for r in rows if r[2].startswith("Fisher estimator")}
    assert est["Fisher estimator local"] == "0.5% of a 4-step client; 0.85"
    assert est["Fisher estimator per_example"].endswith("(60.0% of a 1-step one); 0.80")
    assert verdicts(rows, "fisher", "per-example (vmap)") == ["yes"]
    assert verdicts(rows, "data", "generation time") == ["yes", "NO"]      # cifar100's 16 s >= 15 s
    assert verdicts(rows, "data", "dirichlet + pathological") == ["yes"]
    assert [r[1] for r in rows if r[0] == "data"][:2] == ["synthetic.ensure('wikitext'), default size",
                                                          "synthetic.ensure('cifar100'), default size"]
    assert verdicts(rows, "lora_glue_fl", "merge share") == ["n/a"]          # training step skipped
    assert verdicts(rows, "lora_glue_fl", "round overhead (measured") == ["yes"]  # 2.4% < 5%
    llm = [r for r in rows if r[0] == "llm_noniid"]
    assert [r[5] for r in llm] == ["yes"] * 4                                  # one row per (algorithm, rank)
    assert [r[1].split(",")[0] for r in llm] == ["fedavg", "fedprox", "scaffold", "fedavg"]
    assert "LoRA r=8" in llm[3][1] and "all parameters" in llm[0][1] and all(r[4] == "< 5%" for r in llm)

    bad = run_all.build_table(fake_results(speedup=1.5, copy_fraction=1.4, peak_k100=1.5, vit_other=0.06,
                                           fedavg_overhead=0.01, fisher_ratio=3.5, step_s=1.0, lora_round=0.07,
                                           llm={("fedavg", 0): 0.049, ("scaffold", 0): 0.05, ("fedprox", 8): 0.2},
                                           shard_s=5.0),
                              cuda=False, device="cpu")
    # 1.5x: NO quiet (< 2.5x), busy 0.75x: NO; 1.4x the floor: NO
    assert verdicts(bad, "aggregate", "WeightedMean.add_many (K uploads in memory) vs Flower") == ["NO"] * 4
    assert verdicts(bad, "aggregate", stream + " vs Flower") == ["-", "-", "NO", "NO"]
    assert verdicts(bad, "aggregate", stream + ", separate tensors") == ["-", "-", "NO", "NO"]
    assert verdicts(bad, "aggregate", "WeightedMean.add_many time vs copy floor") == ["NO", "NO", "-", "-"]
    assert verdicts(bad, "aggregate", "FedAdam step time vs copy floor") == ["NO", "-"]
    assert verdicts(bad, "aggregate", "peak memory, WeightedMean") == ["NO"]
    assert verdicts(bad, "vit_sparse_fl", "round overhead") == ["NO"]
    assert verdicts(bad, "mamba_fl", "FedAvg round overhead") == ["yes"]
    assert verdicts(bad, "fisher", "per-example (vmap)") == ["NO"]
    assert verdicts(bad, "data", "dirichlet + pathological") == ["NO"]    # 5 s is not < 5 s
    assert verdicts(bad, "lora_glue_fl", "merge share") == ["-"]            # extrapolated: no target
    assert verdicts(bad, "lora_glue_fl", "round overhead (measured") == ["NO"]  # 7% >= 5%
    assert verdicts(bad, "llm_noniid", "round overhead") == ["yes", "NO", "NO"]


def test_derived_values(run_all):
    rows = run_all.build_table(fake_results(), cuda=False, device="cpu")
    value = {r[2]: r[3] for r in rows}
    assert value["centralized vs FedAvg tokens/s"] == "1000 vs 800 (0.80x)"
    # federated img/s = m * J * B / round time = 2 * 1 * 8 / 0.2
    assert value["centralized train img/s (SGD) vs federated img/s"] == "100 vs 80 (0.80x)"
    assert value["peak memory, WeightedMean"].endswith("(1.050x)")
    assert value["round overhead (measured fedavg_rounds.py)"] == "2.4% of 2.00 s"
    assert value["merge share of a roberta-base SST-2 round (extrapolated)"].startswith("not measured")
    share = {r[2]: r[3] for r in run_all.build_table(fake_results(step_s=1.0), cuda=False, device="cpu")}
    assert share["merge share of a roberta-base SST-2 round (extrapolated)"] == "0.00095%"  # 20 ms of 2110 s
    llm = [r for r in rows if r[0] == "llm_noniid"]
    assert llm[0][3] == "3.0% of 0.500 s (15000 tokens/s)"
    agg = [r for r in rows if r[0] == "aggregate"]
    # per condition: K=10 WeightedMean 5 rows, FisherMean 4, FedAdam step 3; K=100 9; and 2 peak-memory rows
    assert len(agg) == 2 * (12 + 9) + 2 and all("2 thread(s)" in r[1] for r in agg)  # bench_aggregate's threads
    first = [r[3] for r in agg if r[2] == "WeightedMean.add_many (K uploads in memory) vs Flower"][0]
    assert first == "3.00x faster (100 vs 300 ms)"
    assert any("busy (2 busy loops), load 0.5, K=100" in r[1] for r in agg)


def test_unmeasured_and_failed_rows(run_all):
    results = fake_results()
    results["vit"] = "exit 1: RuntimeError: boom"
    del results["fisher"]["results"][0]["per_example_ratio"]
    rows = run_all.build_table(results, cuda=False, device="cpu")
    assert ["vit", "-", "all", "failed: exit 1: RuntimeError: boom", "-", "n/a"] in rows
    assert any(r[0] == "fisher" and r[3].startswith("unreadable output") for r in rows)
    gpu = [r for r in rows if r[0] == "gpu"]
    assert all(r[1] == "no CUDA device" for r in gpu)  # named by the device present, never an assumed model
    assert {r[2] for r in gpu} == {"tokens/s (mamba_fl)", "images/s (vit_sparse_fl)", "TFLOP/s", "peak GPU memory"}
    assert all(r[3] == "not measured (no CUDA device)" and r[5] == "n/a" for r in gpu)
    assert not [r for r in rows if r[0] == "llm_noniid" and r[5] == "n/a"]  # measured: no placeholder row
    results["lora_merge"]["round"] = None
    del results["llm_round"]
    rows = run_all.build_table(results, cuda=False, device="cpu")
    assert verdicts(rows, "lora_glue_fl", "round overhead (measured") == ["n/a"]
    assert [r[3:] for r in rows if r[0] == "llm_noniid"] == [
        ["not measured (run the `llm_round` benchmark)", "< 5%", "n/a"]]
    procs = [r for r in rows if r[0] == "processes"]
    assert len(procs) == 1 and procs[0][3].startswith("not measured") and procs[0][4] == ">= 1.6x"
    on_gpu = run_all.build_table({}, cuda=True, device="cpu")
    assert all("--device cuda" in r[3] for r in on_gpu if r[0] == "gpu")


def test_main_writes_results_file(run_all, monkeypatch, tmp_path):
    fake = fake_results()
    monkeypatch.setattr(run_all, "run_benchmark", lambda name, args, out, *_: fake[name])
    out = tmp_path / "RESULTS.md"
    summary = run_all.main(["--only", "fisher", "mamba", "--output", str(out)])
    text = out.read_text()
    header = [line for line in text.splitlines() if line.startswith("|")][0]
    assert [c.strip() for c in header.strip("|").split("|")] == run_all.HEADERS
    assert "python benchmarks/run_all.py --only fisher mamba" in text
    assert "cores" in text and "torch " in text
    assert {r[0] for r in summary["rows"]} == {"fisher", "mamba_fl", "llm_noniid", "processes", "gpu"}


def test_processes_rows_judge_the_speedup(run_all):
    def rows_for(one_s, two_s):
        d = [{"nproc": 1, "layers": 2, "round_s": one_s, "final_val_ppl": 3422.65, "speedup": 1.0},
             {"nproc": 2, "layers": 2, "round_s": two_s, "final_val_ppl": 3422.64, "speedup": one_s / two_s}]
        return [r for r in run_all.build_table({"processes": d}, cuda=False, device="cpu") if r[0] == "processes"]

    fast = rows_for(0.421, 0.256)
    assert len(fast) == 1 and "(1.64x)" in fast[0][3] and fast[0][5] == "yes"
    slow = rows_for(0.421, 0.300)
    assert len(slow) == 1 and "(1.40x)" in slow[0][3] and slow[0][5] == "NO"


def test_aggregate_gets_every_core_the_others_one_thread(run_all, monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, env, **kw):
        name = Path(cmd[1]).stem
        seen[name] = env["OMP_NUM_THREADS"]
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps({"name": name}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(run_all.subprocess, "run", fake_run)
    args = run_all.get_args_parser().parse_args(["--threads", "1"])
    for name in ("aggregate", "fisher", "llm_round"):
        assert run_all.run_benchmark(name, args, str(tmp_path)) == {"name": run_all.BENCHMARKS[name][0][:-3]}
    assert seen == {"bench_aggregate": str(os.cpu_count()), "bench_fisher": "1", "bench_llm_round": "1"}
    assert run_all.benchmark_threads("aggregate", 0) == 0  # --threads 0 leaves every benchmark alone
    header = "\n".join(run_all.header_lines("cpu", 1, False))
    assert f"1 thread(s) per benchmark (aggregate: {os.cpu_count()}, every core)" in header


def fake_gpu() -> dict:
    row = {"model": "Mamba2 1 layer(s)", "compile": False, "kernel_path": "mamba-ssm", "batch": 16,
           "throughput": 250000.0, "unit": "tokens/s", "flops_per_step": 8e11, "step_s": 0.016,
           "tflops": 50.0, "matmul_fraction": 0.08, "peak_bytes": 3 * 2**30}
    return {"device_name": "NVIDIA H200", "quick": False,
            "matmul": {"n": 8192, "dtype": "bfloat16", "seconds": 0.0017, "tflops": 625.0},
            "rows": [row, {**row, "model": "ViT vit_small 224 px", "kernel_path": "-", "unit": "images/s",
                           "throughput": 3000.0, "compile": True}]}


def test_gpu_rows_replace_the_not_measured_rows(run_all):
    rows = run_all.build_table({"gpu": fake_gpu()}, cuda=True, device="cuda")
    assert not [r for r in rows if r[0] == "gpu" and r[5] == "n/a"]  # measured: no placeholders
    gpu = [r for r in rows if r[0] == "gpu"]
    assert gpu[0][2] == "measured bfloat16 matmul rate (n=8192)" and gpu[0][3] == "625 TFLOP/s"
    assert len(gpu) == 1 + 3 * 2
    assert "250,000 tokens/s" in gpu[1][3] and "kernels mamba-ssm" in gpu[1][1]
    assert gpu[2][3] == "50 (8.0%); 800.0 GFLOP/step"
    assert gpu[3][3] == "3,072 MiB"
    assert "compiled" in gpu[4][1] and "3,000 images/s" in gpu[4][3]


def test_a_failed_compiled_row_is_reported_not_dropped(run_all):
    d = fake_gpu()
    d["rows"].append({"model": "Mamba2 1 layer(s)", "compile": True, "kernel_path": "torch", "batch": 16,
                      "error": "InductorError: TypeError: list indices must be integers or slices, not NoneType"})
    gpu = [r for r in run_all.build_table({"gpu": d}, cuda=True, device="cuda") if r[0] == "gpu"]
    assert len(gpu) == 1 + 3 * 2 + 1
    assert "compiled" in gpu[-1][1] and gpu[-1][3].startswith("failed: InductorError")


def test_gpu_benchmark_only_in_cuda_runs_or_by_name(run_all, monkeypatch, tmp_path):
    ran, real_run_benchmark = [], run_all.run_benchmark
    monkeypatch.setattr(run_all, "run_benchmark", lambda name, args, out, *_: ran.append(name) or "skipped")
    run_all.main(["--output", ""])
    assert "gpu" not in ran and "aggregate" in ran
    ran.clear()
    run_all.main(["--device", "cuda", "--output", ""])
    assert "gpu" in ran
    seen = {}

    def fake_run(cmd, env, **kw):
        seen["cmd"] = cmd
        Path(cmd[cmd.index("--json") + 1]).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(run_all.subprocess, "run", fake_run)
    real_run_benchmark("gpu", run_all.get_args_parser().parse_args(["--only", "gpu"]), str(tmp_path))
    assert "--quick" in seen["cmd"]  # named on a CPU run: the quick sizes


def test_update_keeps_the_rows_of_benchmarks_not_rerun(run_all, tmp_path):
    old = run_all.build_table(fake_results(), cuda=False, device="cpu")
    text = "\n".join(["# Benchmark results", "", "- date: 2026-01-01 00:00 UTC", "",
                      run_all.markdown_table(run_all.HEADERS, old), ""])
    rows, date = run_all.previous_rows(text)
    assert date == "2026-01-01 00:00 UTC" and rows == [[c.strip() for c in r] for r in old]
    new = run_all.build_table({"aggregate": fake_aggregate(9.0, 1.1, 1.0)}, cuda=False, device="cpu")
    merged = run_all.merge_rows(new, rows, ["aggregate"])
    agg = [r for r in merged if r[0] == "aggregate"]
    assert agg and all(r in new for r in agg)                     # aggregate: this run's rows only
    assert [r for r in merged if r[0] != "aggregate"] == [r for r in rows if r[0] != "aggregate"]  # the rest kept


def test_update_records_when_each_benchmarks_rows_were_measured(run_all):
    """A chain of --update runs keeps each kept benchmark's own measurement date, not the last file's."""
    old = run_all.build_table(fake_results(), cuda=False, device="cpu")
    full = "\n".join(["# Benchmark results", "", "- date: 2026-01-01 00:00 UTC", "",
                      run_all.markdown_table(run_all.HEADERS, old), ""])
    dates = run_all.measured_dates(full, "2026-01-01 00:00 UTC")
    assert set(dates) == {r[0] for r in old} and set(dates.values()) == {"2026-01-01 00:00 UTC"}
    dates |= {"aggregate": "2026-01-02 09:30 UTC"}  # an --update run re-measured aggregate
    line = run_all.measured_line(dates)
    assert line.startswith("- rows measured at: 2026-01-02 09:30 UTC: aggregate; 2026-01-01 00:00 UTC: ")
    updated = full.replace("- date: 2026-01-01 00:00 UTC", "- date: 2026-01-02 09:30 UTC\n" + line)
    again = run_all.measured_dates(updated, "2026-01-02 09:30 UTC")  # read back from the updated file
    assert again == dates


def test_update_rewrites_only_the_lines_of_the_rerun_benchmark(run_all, tmp_path, monkeypatch):
    """RESULTS.md's cells are not padded to column widths, so a one-benchmark --update with longer cells leaves
    every other row's line byte for byte (a padded table re-aligned the whole file)."""
    out, results = tmp_path / "RESULTS.md", fake_results()
    monkeypatch.setattr(run_all, "run_benchmark", lambda name, *_: results[name])
    run_all.main(["--only", *results, "--output", str(out)])
    before = out.read_text().splitlines()
    results["data"] = {**results["data"], "shard_s": 123456.789}  # a much wider cell than any before
    run_all.main(["--only", "data", "--update", "--output", str(out)])
    after = out.read_text().splitlines()
    kept = [ln for ln in before if ln.startswith("|") and not ln.startswith("| data |")]
    assert kept and all(ln in after for ln in kept)
    assert [ln for ln in after if ln.startswith("| data |")] != [ln for ln in before if ln.startswith("| data |")]


def test_cross_device_rows(run_all):
    """bench_cross_device.py's summary: a row per engine (or why it did not run), the goals judged except on the
    --quick sample, and the batched goal named as unmeasured while that mode is missing."""
    ran = {"cpu_per_1k": 5.0, "s_per_1k": 5.5, "startup_s": 3.0, "peak_rss": 420 * 2**20, "heldout_loss": 3.2}
    variant = {"workload": {"hidden": 256, "clients": 1000, "per_round": 10, "rounds": 4, "local_steps": 20,
                            "batch_size": 10},
               "rows": {"engine": ran, "engine-batched": {"reason": "no batched mode yet"}, "loop": ran,
                        "flower": {"reason": "not installed"}},
               "goals": [{"goal": "sequential engine vs plain loop, time per sample", "value": "1.000x (wall 1.000x)",
                          "target": "<= 1.05x", "met": True}]}
    for quick, verdict in ((False, "yes"), (True, "-")):
        rows = run_all.build_table({"cross_device": {"variants": [variant], "quick": quick}}, cuda=False, device="cpu")
        mine = [r for r in rows if r[0] == "cross_device"]
        assert len(mine) == 6 and all(len(r) == len(run_all.HEADERS) for r in mine)
        assert mine[0][3] == "5.00 / 5.50 s; 3.0 s; 420 MiB; 3.2000" and ("--quick" in mine[0][1]) == quick
        assert mine[1][3] == "not run: no batched mode yet" and mine[1][5] == "n/a"
        assert mine[4][2].startswith("sequential engine") and mine[4][5] == verdict
        assert mine[5][2].startswith("batched engine") and mine[5][3] == "not measured: no batched mode yet"


def test_reuse_reads_a_kept_summary(run_all, tmp_path, monkeypatch):
    (tmp_path / "fisher.json").write_text(json.dumps(fake_results()["fisher"]))
    monkeypatch.setattr(run_all.subprocess, "run", lambda *a, **k: pytest.fail("ran the benchmark again"))
    (tmp_path / "cross_device.json").write_text(json.dumps({"variants": [], "command": "python b.py", "wall_s": 7}))
    out = run_all.main(["--only", "fisher", "cross_device", "--json-dir", str(tmp_path), "--reuse", "--output",
                        str(tmp_path / "R.md")])
    assert out["results"]["fisher"] == fake_results()["fisher"]
    text = (tmp_path / "R.md").read_text()
    assert "- rows of fisher tabled from a kept summary (--reuse), not re-run\n" in text
    assert "cross_device tabled from a kept summary (--reuse), not re-run: measured by `python b.py` in 7 s" in text


def test_scale_rows_hold_memory_to_the_100_client_run_and_runs_only_when_named(run_all, monkeypatch):
    """bench_scale.py's rows: peak RSS against the same row at 100 clients (<= 1.10x met, 1.2x missed), and a
    killed run's verdict; a default run leaves the tens-of-minutes benchmark out."""
    def result(row, n, rss, ratio):
        return {"row": row, "task": "t", "clients": n, "with_state": n // 2, "peak_rss_mb": rss, "rss_vs_100": ratio,
                "round_s": 1.0, "per_client_ms": 10.0, "checkpoint_kb": 100.0, "store_mb": 1.0}
    d = {"rounds": 3, "results": [result("persist", 100, 400.0, 1.0), result("persist", 1000, 404.0, 1.01),
                                  result("scaffold", 100, 400.0, 1.0), result("scaffold", 1000, 480.0, 1.2)],
         "kills": [{"row": "persist", "clients": 1000, "killed_after_round": 1, "metrics_equal": True,
                    "model_equal": False}]}
    rows = run_all.scale_rows(d)
    verdicts = {r[2]: r[5] for r in rows if r[4] != "-"}
    assert verdicts == {"persist: peak RSS vs 100 clients": "yes", "scaffold: peak RSS vs 100 clients": "NO",
                        "persist: metrics and final model vs the uninterrupted run": "NO"}
    assert all("1,000 clients (500 holding state)" in r[1] for r in rows if "vs 100 clients" in r[2])
    ran = []
    monkeypatch.setattr(run_all, "run_benchmark", lambda name, args, out, *_: ran.append(name) or "skipped")
    run_all.main(["--output", ""])
    assert "scale" not in ran and "aggregate" in ran
    ran.clear()
    run_all.main(["--only", "scale", "--output", ""])
    assert ran == ["scale"]
