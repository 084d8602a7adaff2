"""Run every benchmark of the project and print one table of results against the targets.

    python benchmarks/run_all.py                 # small settings (a few minutes on 2 cores), writes RESULTS.md
    python benchmarks/run_all.py --full          # the benchmarks' own (bigger) default settings
    python benchmarks/run_all.py --only fisher aggregate --output /tmp/results.md
    python benchmarks/run_all.py --device cuda --full  # on a GPU: adds `gpu` (full-size throughput, TFLOP/s)

Each benchmark runs in its own process with ``--json PATH`` and its summary is read back; one that fails
gives a "failed" row and the others still run. Every timing is already a median of repeated runs inside
the benchmark, or (round overheads) a total over many rounds. The benchmarks run one after the other with
``--threads`` threads each, except ``aggregate``, which gets every core of the machine: it measures memory
bandwidth, which one thread cannot saturate (K=10 was 1.60x at 1 thread, 3.17x at the 2 cores' default).
The table has one row per (benchmark, setting, metric) with the target and whether it is met ("yes",
"NO", "-" when the row has no target, "n/a" when it was not measured); the header gives the date, the
machine's core count, the device, the torch version and the load average. Targets (issue 7):
  aggregation   (issue 17) quiet machine: every aggregator given the K uploads in memory (add_many, the
                input of Flower's aggregate) and the server steps >= 2.5x Flower (the per-key torch.stack
                reference without flwr) and within 1.3x of the copy floor; one busy loop per core: every
                aggregator (add_many and streaming) and the server step no slower than its anchor
                (bench_aggregate.py); quiet streaming rows (one client at a time) are reported untargeted
  overhead      time outside the clients' forward/backward < 5% of the round, in every subproject
                (mamba_fl FedAvg, vit_sparse_fl, llm_noniid per algorithm, lora_glue_fl measured rounds)
  memory        peak memory flat in clients per round: K=100 within 10% of K=10
  Fisher        per-example (vmap) Fisher <= 3x one batch forward+backward; FedFisher with
                --fisher-method local <= 25% of a round (issue 17)
  data          every embedded dataset generated in < 15 s; 1M labels sharded (Dirichlet + pathological) in < 5 s
  processes     2 processes >= 1.6x faster per round than 1 on a 2-core machine (compute-bound model)
  cross-device  (issue 80) on one workload, one thread each: this engine's sequential rounds within 5% of a plain
                PyTorch loop per sample, its batched mode >= 2x faster per round than pfl-research, peak memory at
                most pfl-research's (bench_cross_device.py; judged on CPU seconds, wall seconds beside)
  scale         (issue 80) the real scripts at 1,000 / 10,000 clients peak within 10% of the same run at 100
                (FedAvg, SCAFFOLD, persistent client AdamW; bench_scale.py); a run SIGKILLed in its second round
                resumes to the uninterrupted run's metrics and model bit for bit. About 40 minutes on 2 cores:
                run only when named (``--only scale --update --timeout 3600``)
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # benchlib lives next to this file; tests import run_all from elsewhere
    sys.path.insert(0, str(HERE))

from benchlib import markdown_table  # noqa: E402

from common import cli, flags  # noqa: E402

HEADERS = ["benchmark", "setting", "metric", "value", "target", "met?"]
NO_NPROC = "not measured (run the `processes` benchmark)"

# name -> (script, arguments for the default small run, arguments for --full)
BENCHMARKS = {
    "aggregate": ("bench_aggregate.py", ["--repeats", "5"], ["--repeats", "7"]),
    "vit": ("bench_vit.py", ["--archs", "vit_tiny", "--repeats", "3"], []),
    "mamba": ("bench_mamba_round.py", ["--layers", "1", "--rounds", "5"], []),
    # roberta-base merge timing + measured fedavg_rounds.py rounds on the tiny RoBERTa; --full adds the
    # roberta-base training step and the extrapolated merge share of an SST-2 round
    "lora_merge": ("bench_lora_merge.py", ["--skip_step", "--repeats", "3"], ["--round_rounds", "8"]),
    # llm_noniid train.py rounds: FedAvg / FedProx / SCAFFOLD, all parameters and LoRA r=8
    "llm_round": ("bench_llm_round.py", ["--rounds", "10"], ["--rounds", "30", "--max-train-examples", "480"]),
    # embedded dataset generation and sharding of 1M labels (what a run waits for before training)
    "data": ("bench_data.py", [], ["--repeats", "5"]),
    "fisher": ("bench_fisher.py", ["--repeats", "3"], ["--batch-size", "32", "--lm-layers", "4", "--lm-width", "128"]),
    # FedAvg rounds of a compute-bound Mamba2 under torchrun with 1 and 2 processes
    "processes": ("bench_mamba_round.py",
                  ["--nproc", "1", "2", "--layers", "2", "--d-model", "128", "--rounds", "24", "--repeats", "3"],
                  ["--nproc", "1", "2", "--layers", "2", "--d-model", "256", "--rounds", "32", "--repeats", "3"]),
    # the source's full sizes on a GPU (Mamba2 d_model 512 / GPT-2 vocabulary / sequence 256, ViT-S/16 224 px):
    # tokens/s, images/s, TFLOP/s against the measured bf16 matmul rate, peak memory. Runs with --device cuda
    "gpu": ("bench_gpu.py", [], ["--compile"]),
    # one cross-device FedAvg workload (LEAF Shakespeare roles, character LSTM) in this engine, a plain loop, Flower
    # and pfl-research (the `bench` extra); small: the committed 12-role sample (offline, no targets judged);
    # --full: 1,000 roles of the full build in data/shakespeare (python -m common.shakespeare --out data/shakespeare)
    "cross_device": ("bench_cross_device.py", ["--quick"], []),
    # the real scripts at 100 / 1,000 / 10,000 clients: peak RSS, checkpoint, client store, round time; kill + resume
    "scale": ("bench_scale.py", [], []),
}
GPU_ONLY = {"gpu"}  # left out of a CPU run unless named with --only (then in its --quick form)
NAMED_ONLY = {"scale"}  # left out unless named with --only (tens of minutes)
# benchmarks that get every core instead of --threads (they run alone, so nothing competes for the cores)
ALL_CORES = {"aggregate"}


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--full", action="store_true", help="the benchmarks' bigger default settings instead of small ones")
    p.add_argument("--only", nargs="+", default=None, choices=sorted(BENCHMARKS), help="run only these benchmarks")
    p.add_argument("--device", default="cpu", help="cpu | cuda: passed to every benchmark")
    p.add_argument("--threads", type=flags.COUNT, default=1,
                   help="OMP_NUM_THREADS of each benchmark process, except `aggregate`, which gets every core "
                        "(0: leave the environment alone for all of them)")
    p.add_argument("--timeout", type=flags.POSITIVE, default=900, help="seconds allowed to each benchmark")
    p.add_argument("--output", default=str(HERE / "RESULTS.md"), help="markdown file to write ('' for none)")
    p.add_argument("--json-dir", default=None, help="also keep each benchmark's JSON summary in this folder")
    p.add_argument("--reuse", action="store_true", help="with --json-dir: a benchmark whose JSON summary is in that "
                   "folder already is not run again; its rows are built from the file (a long run, tabled later)")
    p.add_argument("--update", action="store_true",
                   help="with --only: keep the rows of the other benchmarks from the existing --output file "
                        "(the header says which rows are kept and from when)")
    return p


# ----------------------------------------------------------------------------- formatting helpers
def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def _row(bench, setting, metric, value, target="-", ok: bool | None = None) -> list[str]:
    return [bench, setting, metric, value, target, _verdict(ok)]


def _missing(bench, setting, metric, why, target="-") -> list[str]:
    return [bench, setting, metric, why, target, "n/a"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# ----------------------------------------------------------------------------- one block of rows per benchmark
def aggregate_rows(d: dict) -> list[list[str]]:
    """``bench_aggregate.py``: per condition (quiet, busy) and K, each aggregator against its anchor (Flower's
    ``aggregate`` when installed) and against the copy floor; peak memory against K."""
    size = "tiny ViT shapes" if d.get("quick") else "ViT-S/16 shapes"
    base = f"{size}, {d['numel'] / 1e6:.2f}M params, {d['threads']} thread(s)"
    anchor = "Flower" if d["anchor"].startswith("Flower") else "per-key stack reference"
    rows = []
    for cond in d["conditions"]:
        quiet = cond["name"] == "quiet"
        load = cond["load_during"]
        where = (f"{base}, {cond['name']}" + (f" ({cond['busy_loops']} busy loops)" if cond["busy_loops"] else "")
                 + f", load {load['load1']:.1f}")
        for r in cond["rows"]:
            s = where + (f", K={r['clients']}" if r["clients"] else "")
            need = 2.5 if quiet else 1.0
            many = "many_ms" in r  # an aggregator: add_many is targeted, streaming is targeted when busy only
            if many:
                rows.append(_row("aggregate", s, f"{r['aggregator']}.add_many (K uploads in memory) vs {anchor}",
                                 f"{r['many_speedup']:.2f}x faster ({r['many_ms']:,.0f} vs {r['anchor_ms']:,.0f} ms)",
                                 f">= {need:g}x", r["many_speedup"] >= need))
                rows.append(_row("aggregate", s, f"{r['aggregator']}.add_many time vs copy floor",
                                 f"{r['many_vs_floor']:.2f}x ({r['many_floor_ms']:,.0f} ms)",
                                 "<= 1.3x" if quiet else "-", r["many_vs_floor"] <= 1.3 if quiet else None))
            name = f"{r['aggregator']} streaming (one client at a time)" if many else r["aggregator"]
            targeted = not (quiet and many)
            rows.append(_row("aggregate", s, f"{name} vs {anchor}",
                             f"{r['speedup']:.2f}x faster ({r['flat_ms']:,.0f} vs {r['anchor_ms']:,.0f} ms)",
                             f">= {need:g}x" if targeted else "-", r["speedup"] >= need if targeted else None))
            if "tensors_ms" in r:
                rows.append(_row("aggregate", s, f"{name}, separate tensors, vs {anchor}",
                                 f"{r['tensors_speedup']:.2f}x faster ({r['tensors_ms']:,.0f} ms)",
                                 "-" if quiet else ">= 1x", None if quiet else r["tensors_speedup"] >= 1.0))
            floor_target = quiet and targeted
            rows.append(_row("aggregate", s, f"{name} time vs copy floor",
                             f"{r['vs_floor']:.2f}x ({r['floor_ms']:,.0f} ms)",
                             "<= 1.3x" if floor_target else "-", r["vs_floor"] <= 1.3 if floor_target else None))
    for method in ("stream", "anchor"):
        mem = sorted((m for m in d.get("memory", []) if m["method"] == method), key=lambda m: m["clients"])
        if len(mem) < 2:
            continue
        lo, hi = mem[0], mem[-1]
        ratio = hi["peak_bytes"] / lo["peak_bytes"]
        name = "WeightedMean" if method == "stream" else anchor
        rows.append(_row("aggregate", f"{base}, K={lo['clients']} -> {hi['clients']} clients per round",
                         f"peak memory, {name}",
                         f"{lo['peak_bytes'] / 2**20:,.0f} -> {hi['peak_bytes'] / 2**20:,.0f} MiB ({ratio:.3f}x)",
                         "flat (<= 1.10x)" if method == "stream" else "-",
                         abs(ratio - 1) <= 0.10 if method == "stream" else None))
    if not d.get("memory"):
        rows.append(_missing("aggregate", base, "peak memory vs clients per round", "not measured (--no-memory)"))
    return rows


def vit_rows(d: dict) -> list[list[str]]:
    s = d["settings"]
    m = d["clients_per_round"]
    rows = []
    for arch, r in d["results"].items():
        setting = f"{arch}, {s['image_size']} px, B={s['batch_size']}, J={s['local_steps']}, m={m}"
        rows.append(_row("vit_sparse_fl", setting, "round overhead (outside client compute)",
                         f"{_pct(r['other_share'])} of {r['round_s']:.2f} s", "< 5%", r["other_share"] < 0.05))
        fed = m * s["local_steps"] * s["batch_size"] / r["round_s"]
        rows.append(_row("vit_sparse_fl", setting, "centralized train img/s (SGD) vs federated img/s",
                         f"{r['train_img_s']:.0f} vs {fed:.0f} ({fed / r['train_img_s']:.2f}x)"))
        rows.append(_row("vit_sparse_fl", setting, "train img/s SparseSGDM; eval img/s",
                         f"{r['sparse_train_img_s']:.0f}; {r['eval_img_s']:.0f}"))
    return rows


def mamba_rows(d: list) -> list[list[str]]:
    rows = []
    for r in d:
        setting = f"{r['layers']} layer(s)"
        if "central_tok_s" in r:
            setting += f", {r.get('kernel_path', '')} path"
            rows.append(_row("mamba_fl", setting, "FedAvg round overhead", _pct(r["fedavg_overhead"]), "< 5%",
                             r["fedavg_overhead"] < 0.05))
            rows.append(_row("mamba_fl", setting, "FedFisher round overhead (includes its Fisher)",
                             _pct(r["fedfisher_overhead"])))
            if "fedfisher_local_overhead" in r:
                u = r["local_steps"]
                rows.append(_row("mamba_fl", f"{setting}, {u} local steps", "FedFisher round overhead, per_example "
                                 "Fisher vs --fisher-method local",
                                 f"{_pct(r['fedfisher_u_overhead'])} vs {_pct(r['fedfisher_local_overhead'])}",
                                 "local <= 25%", r["fedfisher_local_overhead"] <= 0.25))
            rows.append(_row("mamba_fl", setting, "centralized vs FedAvg tokens/s",
                             f"{r['central_tok_s']:.0f} vs {r['fedavg_tok_s']:.0f} "
                             f"({r['fedavg_tok_s'] / r['central_tok_s']:.2f}x)"))
        elif "estimators" in r:
            setting = (f"{r['layers']} layer(s), {r['batch_size']} blocks per step, {r['local_steps']} local steps, "
                       f"F = per-example Fisher of {r['reference_blocks']} blocks")
            for e in r["estimators"]:
                share = f"{_pct(e['share_u_steps'])} of a {r['local_steps']}-step client"
                if e["name"] != "local":
                    share += f" ({_pct(e['share_1_step'])} of a 1-step one)"
                rows.append(_row("mamba_fl", setting, f"Fisher estimator {e['name']}: time; error ‖F_hat - F‖/‖F‖",
                                 f"{share}; {e['rel_error']:.2f}"))
        elif "vmap_s" in r:
            rows.append(_row("mamba_fl", setting, "Fisher vmap vs per-example loop",
                             f"{r['vmap_s']:.2f} vs {r['loop_s']:.2f} s ({r['loop_s'] / r['vmap_s']:.1f}x faster), "
                             f"gap {r['rel_gap']:.0e}"))
    return rows


def lora_rows(d: dict) -> list[list[str]]:
    """``bench_lora_merge.py``: roberta-base merge timing (and with --full its extrapolated share of an SST-2
    round, no target: a model, not a measurement), and the measured overhead of tiny-RoBERTa rounds."""
    setting = f"{d['clients']} clients, roberta-base query/value adapters"
    svd = next(v for k, v in d["timings_ms"].items() if k.startswith("svd (QR"))
    dense = next((v for k, v in d["timings_ms"].items() if k.startswith("svd (dense")), None)
    value = f"{svd:.1f} ms" + (f" (dense reference {dense:.1f} ms)" if dense is not None else "")
    rows = [_row("lora_glue_fl", setting, "SVD merge time", value)]
    metric = "merge share of a roberta-base SST-2 round (extrapolated)"
    if d.get("step_s") is None:
        rows.append(_missing("lora_glue_fl", setting, metric, "not measured (training step skipped; run with --full)"))
    else:
        share = svd / 1e3 / (d["round_steps"] * d["step_s"] + svd / 1e3)
        rows.append(_row("lora_glue_fl", setting, metric, f"{100 * share:.2g}%"))
    r = d.get("round")
    metric = "round overhead (measured fedavg_rounds.py)"
    if r is None:
        rows.append(_missing("lora_glue_fl", "tiny RoBERTa, embedded SST-2", metric, "not measured (--skip_round)",
                             "< 5%"))
    else:
        setting = (f"tiny RoBERTa, embedded SST-2, {r['clients']} clients x {r['examples_per_client'][0]} examples, "
                   f"{r['rounds']} rounds x {r['local_epochs']:g} epoch(s)")
        rows.append(_row("lora_glue_fl", setting, metric, f"{_pct(r['overhead'])} of {r['round_s']:.2f} s",
                         "< 5%", r["overhead"] < 0.05))
    return rows


def llm_rows(d: list) -> list[list[str]]:
    """``bench_llm_round.py``: train.py round overhead per algorithm, all parameters or LoRA."""
    rows = []
    for r in d:
        trained = "all parameters" if r["lora_r"] == 0 else f"LoRA r={r['lora_r']}"
        setting = f"{r['algorithm']}, tiny GPT-2, {trained}, {r['clients']} clients x {r['rounds']} rounds"
        rows.append(_row("llm_noniid", setting, "round overhead (outside local steps)",
                         f"{_pct(r['overhead'])} of {r['round_s']:.3f} s ({r['tokens_per_s']:.0f} tokens/s)",
                         "< 5%", r["overhead"] < 0.05))
    return rows


def fisher_rows(d: dict) -> list[list[str]]:
    rows = []
    for r in d["results"]:
        setting = f"{r['model']}, {r['params']:,} params, batch {r['batch_size']}"
        note = " (vmap fell back to the loop)" if r["vmap_fallback"] else ""
        rows.append(_row("fisher", setting, "per-example (vmap) Fisher / batch fwd+bwd",
                         f"{r['per_example_ratio']:.2f}x ({r['per_example_ms']:.1f} vs {r['batch_ms']:.1f} ms){note}",
                         "<= 3x", r["per_example_ratio"] <= 3))
        rows.append(_row("fisher", setting, "per-example loop / batch fwd+bwd",
                         f"{r['loop_ratio']:.2f}x ({r['loop_ms']:.1f} ms); vmap vs loop gap {r['rel_gap']:.0e}"))
    return rows


def data_rows(d: dict) -> list[list[str]]:
    """``bench_data.py``: seconds to generate each embedded dataset, and to shard ``labels`` labels."""
    gen, shard_s = d["targets"]["generate_s"], d["targets"]["shard_s"]
    return [*(_row("data", f"synthetic.ensure('{kind}'), default size", "generation time", f"{s:.2f} s",
                   f"< {gen:g} s", s < gen) for kind, s in d["generate_s"].items()),
            _row("data", f"{d['labels']:,} labels, 100 classes, 100 clients", "dirichlet + pathological sharding",
                 f"{d['shard_s']:.2f} s", f"< {shard_s:g} s", d["shard_s"] < shard_s)]


def processes_rows(d: list) -> list[list[str]]:
    """``bench_mamba_round.py --nproc 1 2``: seconds per FedAvg round with 1 and 2 processes."""
    by_n = {r["nproc"]: r for r in d}
    one, two = by_n[1], by_n[2]
    speedup = one["round_s"] / two["round_s"]
    reps = f", median of {len(one['runs_s'])} alternating runs" if len(one.get("runs_s", [])) > 1 else ""
    setting = f"mamba_fl FedAvg, {one['layers']} layers, 1 thread per process{reps}"
    return [_row("processes", setting, "1 vs 2 processes wall time per round",
                 f"{one['round_s']:.3f} vs {two['round_s']:.3f} s ({speedup:.2f}x); "
                 f"final ppl {one['final_val_ppl']:.4f} vs {two['final_val_ppl']:.4f}", ">= 1.6x", speedup >= 1.6)]


def gpu_rows(d: dict) -> list[list[str]]:
    """``bench_gpu.py``: the measured matmul ceiling, then per model its throughput, achieved TFLOP/s (FLOPs
    counted per step) as a fraction of that ceiling, and its peak device memory."""
    where = d["device_name"] + (" (--quick sizes)" if d.get("quick") else "")
    mm = d["matmul"]
    rows = [_row("gpu", where, f"measured {mm['dtype']} matmul rate (n={mm['n']})", f"{mm['tflops']:.3g} TFLOP/s")]
    for r in d["rows"]:
        setting = (f"{where}, {r['model']}, batch {r['batch']}, kernels {r['kernel_path']}"
                   f"{', compiled' if r['compile'] else ''}")
        if "error" in r:
            rows.append(_row("gpu", setting, "training throughput", f"failed: {r['error']}"))
            continue
        rows.append(_row("gpu", setting, "training throughput", f"{r['throughput']:,.0f} {r['unit']}"))
        rows.append(_row("gpu", setting, "achieved TFLOP/s (of the matmul rate)",
                         f"{r['tflops']:.3g} ({_pct(r['matmul_fraction'])}); "
                         f"{r['flops_per_step'] / 1e9:.1f} GFLOP/step"))
        rows.append(_row("gpu", setting, "peak memory", f"{r['peak_bytes'] / 2**20:,.0f} MiB"))
    return rows


def cross_device_rows(d: dict) -> list[list[str]]:
    """``bench_cross_device.py``: per model variant one row per engine (CPU and wall seconds per 1,000 samples,
    start-up, peak RSS of its process tree, held-out loss; or why it did not run), then issue 80's goals. The --quick
    sample is too small to judge a goal: its rows carry no verdict."""
    rows = []
    for v in d["variants"]:
        w = v["workload"]
        setting = (f"LSTM {w['hidden']}, {w['clients']:,} roles{' (--quick sample)' if d.get('quick') else ''}, "
                   f"{w['per_round']}/round, {w['rounds']} rounds, <= {w['local_steps'] or 'all'} local steps, "
                   f"B={w['batch_size']}, 1 thread")
        for name, r in v["rows"].items():
            metric = f"{CROSS_DEVICE_TITLES.get(name, name)}: CPU / wall s per 1k samples; start-up; peak RSS; loss"
            if "reason" in r:
                rows.append(_missing("cross_device", setting, metric, f"not run: {r['reason']}"))
                continue
            rows.append(_row("cross_device", setting, metric,
                             f"{r['cpu_per_1k']:.2f} / {r['s_per_1k']:.2f} s; {r['startup_s']:.1f} s; "
                             f"{r['peak_rss'] / 2**20:,.0f} MiB; {r['heldout_loss']:.4f}"))
        judged = {g["goal"] for g in v["goals"]}
        for g in v["goals"]:
            rows.append(_row("cross_device", setting, g["goal"], g["value"], g["target"],
                             None if d.get("quick") else g["met"]))
        batched = v["rows"].get("engine-batched", {})
        if "reason" in batched and not any(g.startswith("batched") for g in judged):
            rows.append(_missing("cross_device", setting, "batched engine vs pfl-research, time per round",
                                 f"not measured: {batched['reason']}", ">= 2x"))
    return rows


CROSS_DEVICE_TITLES = {"engine": "this engine, sequential", "engine-batched": "this engine, batched",
                       "loop": "plain PyTorch loop", "flower": "Flower (simulation, Ray)", "pfl": "pfl-research"}


def scale_rows(d: dict) -> list[list[str]]:
    """``bench_scale.py``: per row and N, peak RSS against the same row at 100 clients (target: within 10%),
    round time, checkpoint and store size; the killed and resumed runs against the uninterrupted ones."""
    rows = []
    for r in d["results"]:
        setting = f"{r['task']}, {r['clients']:,} clients ({r['with_state']:,} holding state), {d['rounds']} rounds"
        base = r["clients"] == min(b["clients"] for b in d["results"] if b["row"] == r["row"])
        rows.append(_row("scale", setting, f"{r['row']}: peak RSS" + ("" if base else " vs 100 clients"),
                         f"{r['peak_rss_mb']:,.1f} MiB" + ("" if base else f" ({r['rss_vs_100']:.3f}x)"),
                         "-" if base else "<= 1.10x", None if base else r["rss_vs_100"] <= 1.10))
        rows.append(_row("scale", setting, f"{r['row']}: s / round; checkpoint; client store on disk",
                         f"{r['round_s']:.2f} s ({r['per_client_ms']:.0f} ms / client); {r['checkpoint_kb']:,.0f} KiB; "
                         f"{r['store_mb']:,.1f} MiB"))
    for k in d["kills"]:
        ok = k["metrics_equal"] and k["model_equal"]
        rows.append(_row("scale", f"{k['row']}, {k['clients']:,} clients, SIGKILL in round 2 (checkpoint of round "
                                  f"{k['killed_after_round']}), resumed",
                         f"{k['row']}: metrics and final model vs the uninterrupted run",
                         "bit-equal" if ok else f"differ (metrics equal {k['metrics_equal']}, model equal "
                                                f"{k['model_equal']})", "bit-equal", ok))
    return rows


ROW_BUILDERS = {"aggregate": aggregate_rows, "vit": vit_rows, "mamba": mamba_rows, "lora_merge": lora_rows,
                "llm_round": llm_rows, "data": data_rows, "fisher": fisher_rows, "processes": processes_rows,
                "gpu": gpu_rows, "cross_device": cross_device_rows, "scale": scale_rows}


def fixed_rows(cuda: bool, device: str, measured: set[str] = frozenset()) -> list[list[str]]:
    """Rows nothing in this run measures: the llm_noniid overhead and 1 vs 2 processes unless their benchmarks
    ran, and the GPU figures."""
    import torch

    rows = []
    if "llm_round" not in measured:
        rows.append(_missing("llm_noniid", "-", "round overhead", "not measured (run the `llm_round` benchmark)",
                             "< 5%"))
    if "processes" not in measured:
        rows.append(_missing("processes", "2-core machine, compute-bound model", "1 vs 2 processes wall time per round",
                             NO_NPROC, ">= 1.6x"))
    if "gpu" in measured and device.startswith("cuda"):
        return rows
    where = torch.cuda.get_device_name(0) if cuda and torch.cuda.is_available() else (
        "CUDA device" if cuda else "no CUDA device")  # the device this run had, never a model it did not
    if not cuda:
        why = "not measured (no CUDA device)"
    elif not device.startswith("cuda"):
        why = "not measured (run with --device cuda)"
    else:
        why = "not measured (the `gpu` benchmark failed; see its row above)"
    for metric in ("tokens/s (mamba_fl)", "images/s (vit_sparse_fl)", "TFLOP/s", "peak GPU memory"):
        rows.append(_missing("gpu", where, metric, why))
    return rows


# the first column of each benchmark's rows
ROW_NAMES = {"aggregate": {"aggregate"}, "vit": {"vit_sparse_fl"}, "mamba": {"mamba_fl"},
             "lora_merge": {"lora_glue_fl"}, "llm_round": {"llm_noniid"}, "fisher": {"fisher"},
             "processes": {"processes"}, "gpu": {"gpu", "gpu (H200)"}}  # older files named the GPU rows so


def previous_rows(text: str) -> tuple[list[list[str]], str]:
    """The table rows and the date line of an existing RESULTS.md."""
    rows, date = [], "unknown date"
    lines = text.splitlines()
    for line in lines:
        if line.startswith("- date:"):
            date = line[len("- date:"):].strip()
    table = [line for line in lines if line.startswith("|")]
    for line in table[2:]:  # after the header and the separator
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [r for r in rows if len(r) == len(HEADERS)], date


MEASURED = "- rows measured at: "


def measured_dates(text: str, date: str) -> dict[str, str]:
    """When each benchmark's rows (column 1 of the table) of an existing RESULTS.md were measured: from its
    ``- rows measured at:`` line (written by ``--update``), else the file's date for every one."""
    rows, _ = previous_rows(text)
    dates = {r[0]: date for r in rows}
    for line in text.splitlines():
        if line.startswith(MEASURED):
            for part in line[len(MEASURED):].split("; "):
                when, _, names = part.partition(": ")
                dates |= {n.strip(): when.strip() for n in names.split(",") if n.strip() in dates}
    return dates


def measured_line(dates: dict[str, str]) -> str:
    """``- rows measured at: DATE: bench, bench; DATE: bench``, newest first."""
    by_date: dict[str, list[str]] = {}
    for name, when in dates.items():
        by_date.setdefault(when, []).append(name)
    return MEASURED + "; ".join(f"{when}: {', '.join(sorted(names))}"
                                for when, names in sorted(by_date.items(), reverse=True))


def merge_rows(new: list[list[str]], old: list[list[str]], ran: Sequence[str]) -> list[list[str]]:
    """This run's rows of the benchmarks in ``ran`` (and its failure rows), then the old rows of the others."""
    mine = set().union(*(ROW_NAMES.get(n, {n}) for n in ran))
    return [r for r in new if r[0] in mine or r[0] in ran] + [r for r in old if r[0] not in mine]


def build_table(results: dict[str, object], *, cuda: bool, device: str) -> list[list[str]]:
    """Rows for every benchmark in ``results`` (name -> parsed JSON, or an error string when it failed)."""
    rows = []
    for name, d in results.items():
        if isinstance(d, str):
            rows.append(_missing(name, "-", "all", f"failed: {d}"))
            continue
        try:
            rows += ROW_BUILDERS[name](d)
        except (KeyError, TypeError, ValueError, StopIteration, ZeroDivisionError) as e:
            rows.append(_missing(name, "-", "all", f"unreadable output ({type(e).__name__}: {e})"))
    return rows + fixed_rows(cuda, device, {name for name, d in results.items() if not isinstance(d, str)})


def header_lines(device: str, threads: int, full: bool) -> list[str]:
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    own = f" ({', '.join(sorted(ALL_CORES))}: {os.cpu_count()}, every core)" if threads else ""
    return [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"load average {os.getloadavg()[0]:.1f} at the end",
            f"- device: {device} (CUDA: {cuda}); torch {torch.__version__}, Python {platform.python_version()}",
            f"- settings: {'--full' if full else 'small (default)'}, "
            f"{threads if threads else 'default'} thread(s) per benchmark"
            f"{own}; "
            f"values are medians of repeated runs or totals over many rounds"]


def benchmark_threads(name: str, threads: int) -> int:
    """OMP_NUM_THREADS for one benchmark: every core for ALL_CORES, else ``threads`` (0: environment's)."""
    if threads and name in ALL_CORES:
        return os.cpu_count() or threads
    return threads


# ----------------------------------------------------------------------------- running the benchmarks
def run_benchmark(name: str, args, out_dir: str, position: str = "") -> dict | list | str:
    """Run one benchmark script (a progress line before and after it); its JSON, or why there is none."""
    script, small, full = BENCHMARKS[name]
    path = os.path.join(out_dir, name + ".json")
    if args.reuse and args.json_dir and os.path.exists(path):
        print(f"{position}{name}: rows from {path} (--reuse)", flush=True)
        with open(path) as f:
            return json.load(f)
    extra = ["--quick"] if name in GPU_ONLY and not args.device.startswith("cuda") else []
    cmd = [sys.executable, str(HERE / script), *(full if args.full else small), *extra, "--device", args.device,
           "--json", path]
    env = dict(os.environ)
    threads = benchmark_threads(name, args.threads)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    print(f"{position}{name}: running {script} on {args.device} (at most {args.timeout:.0f} s) ...", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        print(f"{position}{name}: timed out after {args.timeout:.0f} s", flush=True)
        return f"timed out after {args.timeout:.0f} s"
    print(f"{position}{name}: done in {time.perf_counter() - start:.0f} s, exit {proc.returncode}", flush=True)
    if proc.returncode != 0 or not os.path.exists(path):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"exit {proc.returncode}: {last[:200]}"
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    import torch  # after parsing: --help and a usage error answer before it loads

    names = args.only or [n for n in BENCHMARKS
                          if n not in NAMED_ONLY and (n not in GPU_ONLY or args.device.startswith("cuda"))]
    reused = [n for n in names if args.reuse and args.json_dir and os.path.exists(os.path.join(args.json_dir,
                                                                                                n + ".json"))]
    with tempfile.TemporaryDirectory() as out:
        results = {name: run_benchmark(name, args, args.json_dir or out, f"[{i}/{len(names)}] ")
                   for i, name in enumerate(names, start=1)}
    rows = build_table(results, cuda=torch.cuda.is_available(), device=args.device)
    command = " ".join(["python benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    header = header_lines(args.device, args.threads, args.full)
    kept = []
    if args.update and args.only and args.output and Path(args.output).is_file():
        previous = Path(args.output).read_text()
        old, date = previous_rows(previous)
        rows = merge_rows(rows, old, names)
        now = header[0][len("- date: "):]
        mine = set().union(*(ROW_NAMES.get(n, {n}) for n in names))
        dates = {b: when for b, when in measured_dates(previous, date).items() if b not in mine}
        dates |= {r[0]: now for r in rows if r[0] in mine or r[0] in names}
        kept = [f"- rows re-measured by this command: {', '.join(names)}; the others are kept from earlier runs "
                "of this file (their commands are in its history)", measured_line(dates)]
    for name in reused:  # what measured them, where the summary says (bench_cross_device.py's does)
        d = results[name]
        said = (f": measured by `{d['command']}`" + (f" in {d['wall_s']:.0f} s" if "wall_s" in d else "")
                if isinstance(d, dict) and "command" in d else "")
        kept.append(f"- rows of {name} tabled from a kept summary (--reuse), not re-run{said}")
    head = ["# Benchmark results", "", *header, f"- command: `{command}`", *kept, ""]
    print()
    print("\n".join([*head, markdown_table(HEADERS, rows), ""]))
    if args.output:  # unpadded: an --update changes the lines of the rows it re-measured only
        Path(args.output).write_text("\n".join([*head, markdown_table(HEADERS, rows, padded=False), ""]))
    return {"rows": rows, "results": results}


if __name__ == "__main__":
    cli.run(main)
