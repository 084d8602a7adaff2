"""Aggregation speed side by side with Flower, on a quiet machine and on one whose every core is kept busy.

    python benchmarks/bench_aggregate.py                      # ViT-S/16 (21.7M params, 152 tensors), K = 10 50
    python benchmarks/bench_aggregate.py --conditions busy --clients 50 --no-memory
    python benchmarks/bench_aggregate.py --quick              # tiny shapes: checks the script runs

Anchor: Flower's ``flwr.server.strategy.aggregate.aggregate`` (numpy, single-threaded; K client results in
memory) when ``flwr`` is installed (``pip install -e .[bench]``), else the per-key ``torch.stack(...).mean(0)``
reference of the source projects. Ours, in the same process and the same round-robin (so load from
elsewhere hits every method alike):

  WeightedMean   ``common.aggregate.WeightedMean``. "add_many" (``ManyWeightedMean``, in aggregation.py): the K
                 uploads in memory, as Flower's ``aggregate`` receives them, summed block by block (each
                 upload read once, the sums' block in cache); the K uploads are K distinct buffers (a pool
                 of two would stay in cache block by block). "streaming": clients arriving one at a time (a
                 simulation training them in turn), each upload one flat buffer seen as parameter-shaped views
                 (``common.params.unflatten``; a model after ``common.params.flat_parameters_`` is the
                 same), so ``add`` is ONE op. "tensors": streaming, the client as 152 separate tensors
                 (small ones on one thread, ``common.params.foreach``).
  FisherMean     ``FisherMean`` (sum w F theta, sum w F, sum w theta per client); anchor: the same formula
                 built on Flower's ``aggregate`` (weighted means of F theta, F and theta; no Flower strategy
                 has a Fisher mean), or on the same numpy computation written here without flwr. add_many:
                 client k's Fisher is client k+1's upload buffer (distinct memory without another K
                 buffers; an elementwise op's time does not depend on the values).
  FedAdam step   ``common.server_opt.FedAdam.step`` on the global parameters; anchor: Flower's FedAdam
                 update (``FedAdam.aggregate_fit``'s delta / m / v / x lines) in numpy. K does not enter.
  FedAvgM step   ``common.server_opt.FedAvgM.step`` (heavy-ball form); anchor: Flower's FedAvgM update
                 (``FedAvgM.aggregate_fit``'s pseudo-gradient / momentum / x lines) in numpy.

Buffers of ours (uploads, accumulators, the copy floor's) come from ``common.params.empty_flat`` (2 MiB
aligned, transparent huge pages advised, as numpy does for its large arrays, Flower's included).
Copy floor: ``copy_`` of each of the K distinct uploads into one buffer (with the thread count ours gets: every
thread on a quiet machine, one on a busy one, ``common.params.threads_for``), timed in the same round-robin; the
time per copy (8 bytes per parameter: read and write) scaled to the bytes the aggregation must move.
Streaming: per client, read its upload and read + write the accumulators (WeightedMean 12 bytes per
parameter, FisherMean 32: theta and F read once, block by block), plus
zeroing the accumulators and writing the result once (WeightedMean 12K + 12 bytes per parameter in all).
add_many: per client, read its upload only (WeightedMean 4, FisherMean 8), plus the same once
per aggregation (WeightedMean 4K + 12).
The FedAdam step reads four tensors and writes three (28), the FedAvgM step three and two (20).
"vs floor" = time / floor time: 1.0 would be the machine's copy bandwidth.

Conditions: ``quiet`` (nothing started; the load average of the machine is printed, a shared machine is
not quiet) and ``busy``: the benchmark starts one busy loop per core (``--busy-loops``, each a separate
Python process bounded by ``--busy-limit`` seconds) and stops them afterwards, so every core is shared.
Targets, checked on the input Flower's ``aggregate`` takes (K uploads in memory: add_many): quiet:
WeightedMean and FisherMean, and the server steps, >= 2.5x the anchor at every K and within 1.3x
of the copy floor;
busy: every aggregator (add_many, streaming and separate tensors) and the server steps no slower than
their anchor (speedup >= 1x). The quiet streaming rows are reported, not targeted: one client at a time
must read and write the sums once per client, three times the bytes of add_many for the weighted mean.
Every aggregator runs as torch ops (no compiled kernels).
Peak memory: each (method, K) runs once more in a fresh process (CPU: peak resident set, VmHWM);
target: WeightedMean flat in K.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import TYPE_CHECKING

from benchlib import current_bytes, markdown_table, mib, peak_bytes, reset_peak, run_isolated, timeit_many

from common import cli, flags

if TYPE_CHECKING:
    import aggregation as A  # the parameter set, the anchors and ours: torch, numpy, Flower (loaded by main)

# bytes per parameter an aggregation must move: (per client, per aggregation), see the docstring
BYTES = {"WeightedMean": (12, 12), "FisherMean": (32, 28), "FedAdam step": (0, 28),
         "FedAvgM step": (0, 20)}
BYTES_MANY = {"WeightedMean": (4, 12), "FisherMean": (8, 28)}  # add_many


def get_args_parser(add_help: bool = True):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    g = parser.add_argument_group("what to time")
    g.add_argument("--clients", type=flags.POSITIVE_INT, nargs="+", default=[10, 50], help="values of K to time")
    g.add_argument("--aggregators", nargs="+", default=list(BYTES), choices=list(BYTES),
                   help="what to time (WeightedMean always runs: the targets are about it)")
    g.add_argument("--anchor", default="auto", choices=["auto", "flower", "reference"],
                   help="auto: Flower's aggregate when flwr is installed, else the per-key stack reference")
    g.add_argument("--pool", type=flags.POSITIVE_INT, default=2,
                   help="distinct client states the K clients cycle through")
    g.add_argument("--quick", action="store_true", help="tiny model (width 64, depth 2): a smoke run")
    g = parser.add_argument_group("timing and conditions")
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g.add_argument("--repeats", type=flags.POSITIVE_INT, default=3,
                   help="timed repetitions per configuration (median)")
    g.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (touches every buffer)")
    g.add_argument("--conditions", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"],
                   help="quiet: as the machine is; busy: one busy loop per core started by the benchmark")
    g.add_argument("--busy-loops", type=flags.COUNT, default=0, help="busy loops for `busy` (0: one per core)")
    g.add_argument("--busy-limit", type=float, default=300.0,
                   help="seconds after which a busy loop ends on its own (the benchmark stops them sooner)")
    g.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    g = parser.add_argument_group("output")
    g.add_argument("--json", default=None, help="also write the summary to this JSON file")
    g.add_argument("--summarize", nargs="+", default=None,
                   help="measure nothing: the targeted ratios across these --json summaries (repeated runs), "
                        "min / median / max and how many runs met each target")
    g.add_argument("--measure", default=None, choices=["anchor", "stream"],
                   help="internal: run one aggregation of this method and print its peak memory as JSON")
    return parser


# ----------------------------------------------------------------------------- conditions
def loadavg() -> dict:
    """The 1-minute load average and the number of runnable threads right now (/proc/loadavg)."""
    try:
        with open("/proc/loadavg") as f:
            fields = f.read().split()
        return {"load1": float(fields[0]), "runnable": int(fields[3].split("/")[0])}
    except OSError:
        return {"load1": os.getloadavg()[0], "runnable": None}


@contextlib.contextmanager
def busy_loops(n: int, limit_s: float):
    """``n`` busy-loop processes (pure Python, no memory traffic), each ending by itself after ``limit_s``
    seconds; killed when the block ends."""
    code = f"import time\nend = time.monotonic() + {float(limit_s)}\nwhile time.monotonic() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them reach the loop
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def copy_floor(dst, srcs):
    """``dst.copy_(src)`` for each of the K distinct uploads, with the thread count ours gets
    (``common.params.threads_for``): the bandwidth the machine gives a copy right now, quiet or busy, sampled
    over about as long as an aggregation of K clients takes (one 83 MiB copy lasts 3-6 ms here, and its
    time moved 1.6x from one repetition to the next)."""
    from common import params as P

    if any(src.shape != dst.shape for src in srcs):  # K whole uploads, not the elements of one
        raise ValueError("copy_floor copies whole uploads of the destination's shape")
    with P.threads_for(dst.numel(), dst.device):
        for src in srcs:
            dst.copy_(src)


def time_condition(args, c: A.Clients, device, condition: str) -> dict:
    """Every method of every K, round-robin, under one condition; one row per (K, aggregator)."""
    import aggregation as A
    import torch

    from common import params as P

    n_busy = (args.busy_loops or os.cpu_count() or 1) if condition == "busy" else 0
    dst = P.empty_flat(c.numel, torch.float32, device).zero_()
    rows = []
    before = loadavg()
    with busy_loops(n_busy, args.busy_limit) if n_busy else contextlib.nullcontext():
        during = loadavg()
        for k in args.clients:
            fns = {("WeightedMean", "anchor"): A.weighted_anchor_fn(args, c, k),
                   ("WeightedMean", "many"): A.many_fn(c, k),
                   ("WeightedMean", "flat"): A.stream_fn(c, c.flat, k),
                   ("WeightedMean", "tensors"): A.stream_fn(c, c.separate, k)}
            if "FisherMean" in args.aggregators:
                fns |= {("FisherMean", "anchor"): A.fisher_anchor_fn(c, k),
                        ("FisherMean", "many"): A.many_fn(c, k, "FisherMean"),
                        ("FisherMean", "flat"): A.stream_fn(c, c.flat, k, "FisherMean")}
            for name in A.SERVER_STEPS:  # K does not enter: timed once, with the first K
                if name in args.aggregators and k == args.clients[0]:
                    fns |= {(name, "anchor"): A.ANCHOR_STEPS[name](c), (name, "flat"): A.server_step_fn(c, name, True),
                            (name, "tensors"): A.server_step_fn(c, name, False)}
            fns[("copy", "floor")] = partial(copy_floor, dst, c.distinct(k))
            t = timeit_many(fns, warmup=args.warmup, repeats=args.repeats, device=device)
            copy_ms = t.pop(("copy", "floor")).ms / k  # per copy of one upload
            for agg in dict.fromkeys(a for a, _ in t):
                per_client, fixed = BYTES[agg]
                kk = k if agg not in A.SERVER_STEPS else 0
                floor_ms = copy_ms * (per_client * kk + fixed) / 8
                row = {"condition": condition, "clients": kk, "aggregator": agg, "copy_ms": copy_ms,
                       "floor_ms": floor_ms}
                for method in ("anchor", "flat", "tensors", "many"):
                    if (agg, method) in t:
                        row[method + "_ms"] = t[(agg, method)].ms
                        row[method + "_all_ms"] = [1e3 * s for s in t[(agg, method)].times_s]
                row["speedup"] = row["anchor_ms"] / row["flat_ms"]
                row["vs_floor"] = row["flat_ms"] / floor_ms
                if "tensors_ms" in row:
                    row["tensors_speedup"] = row["anchor_ms"] / row["tensors_ms"]
                if "many_ms" in row:
                    many_per_client, many_fixed = BYTES_MANY[agg]
                    row["many_floor_ms"] = copy_ms * (many_per_client * kk + many_fixed) / 8
                    row["many_speedup"] = row["anchor_ms"] / row["many_ms"]
                    row["many_vs_floor"] = row["many_ms"] / row["many_floor_ms"]
                rows.append(row)
            print(f"[{condition}] K={k}: " + ", ".join(f"{a} {m} {v.ms:,.1f} ms" for (a, m), v in t.items())
                  + f", copy_ {copy_ms:.1f} ms; load {loadavg()['load1']:.1f}", flush=True)
    return {"name": condition, "busy_loops": n_busy, "load_before": before, "load_during": during,
            "load_after": loadavg(), "rows": rows}


def measure_memory(args, device) -> dict:
    """One aggregation in this (fresh) process; peak memory before and during it."""
    import aggregation as A

    c = A.Clients(args, device)
    k = args.clients[0]
    reset_peak(device)
    before = current_bytes(device)  # torch, the client pool (flat, separate, numpy views, Fisher, masks)
    fn = A.weighted_anchor_fn(args, c, k) if args.measure == "anchor" else A.stream_fn(c, c.flat, k)
    result = fn()  # the aggregator's own buffers and temporaries count
    peak = peak_bytes(device)
    del result
    return {"method": args.measure, "clients": k, "before_bytes": before, "peak_bytes": peak}


def target_ratios(summary: dict) -> dict[tuple[str, str], tuple[float, str, float]]:
    """(condition, what) -> (value, direction, bound) for every targeted ratio of one summary."""
    out = {}
    for cond in summary["conditions"]:
        quiet = cond["name"] == "quiet"
        for r in cond["rows"]:
            k = f"K={r['clients']} " if r["clients"] else ""
            if "many_ms" in r:
                need = 2.5 if quiet else 1
                out[(cond["name"], f"{k}{r['aggregator']}.add_many speedup")] = (r["many_speedup"], ">=", need)
                if quiet:
                    out[(cond["name"], f"{k}{r['aggregator']}.add_many vs floor")] = (r["many_vs_floor"], "<=", 1.3)
            name = f"{k}{r['aggregator']}" + (" streaming" if "many_ms" in r else "")
            if not quiet or "many_ms" not in r:
                out[(cond["name"], f"{name} speedup")] = (r["speedup"], ">=", 2.5 if quiet else 1)
            if quiet and "many_ms" not in r:
                out[(cond["name"], f"{name} vs floor")] = (r["vs_floor"], "<=", 1.3)
            if not quiet and "tensors_ms" in r:
                out[(cond["name"], f"{name}, separate tensors, speedup")] = (r["tensors_speedup"], ">=", 1)
    return out


def _met(value: float, direction: str, bound: float) -> bool:
    return value >= bound if direction == ">=" else value <= bound


def targets(conditions: list[dict], memory: list[dict]) -> list[tuple[str, bool]]:
    """One check per condition: every ratio ``target_ratios`` targets (the misses named), and peak memory."""
    checks = []
    ratios = target_ratios({"conditions": conditions})
    for cond in conditions:
        mine = [(what, v, d, b) for (c, what), (v, d, b) in ratios.items() if c == cond["name"]]
        missed = [f"{what} {v:.2f}x" for what, v, d, b in mine if not _met(v, d, b)]
        checks.append((f"{cond['name']}: {len(mine)} targeted ratios" + (f" (missed: {', '.join(missed)})"
                                                                            if missed else ""), not missed))
    peaks = [m["peak_bytes"] for m in memory if m["method"] == "stream"]
    if len(peaks) > 1:
        checks.append(("peak memory K=max within 10% of K=min", abs(peaks[-1] / peaks[0] - 1) <= 0.10))
    return checks


def print_table(summary: dict) -> None:
    anchor = summary["anchor"]
    rows = []
    for cond in summary["conditions"]:
        where = (f"{cond['name']}, {summary['threads']} threads"
                 + (f", {cond['busy_loops']} busy loops" if cond["busy_loops"] else "")
                 + f" (load {cond['load_during']['load1']:.1f}, runnable {cond['load_during']['runnable']})")
        for r in cond["rows"]:
            many = (f"{r['many_ms']:,.1f} ({r['many_speedup']:.2f}x, {r['many_vs_floor']:.2f}x)"
                    if "many_ms" in r else "-")
            rows.append([where, r["clients"] or "-", r["aggregator"], f"{r['anchor_ms']:,.1f}", many,
                         f"{r['flat_ms']:,.1f} ({r['speedup']:.2f}x, {r['vs_floor']:.2f}x)",
                         f"{r['tensors_ms']:,.1f} ({r['tensors_speedup']:.2f}x)" if "tensors_ms" in r else "-"])
    print()
    print(f"anchor: {anchor}; (speedup over the anchor, time / copy floor of the bytes that path moves); "
          "add_many: the K uploads in memory, as the anchor takes them; streaming: one client at a time, one op each")
    print(markdown_table(["setting", "K", "aggregator", "anchor ms", "add_many ms", "streaming ms",
                          "streaming, separate tensors ms (speedup)"], rows))


def summarize(paths: list[str]) -> dict:
    """The targeted ratios of several runs side by side: min, median, max and runs that met the target."""
    runs = []
    for p in paths:
        saved = cli.read_json(p, allow_nan=True)  # as the benchmark wrote it
        cli.check(isinstance(saved, dict) and "conditions" in saved,
                  f"{p}: not a bench_aggregate.py --json summary (no 'conditions')")
        runs.append(target_ratios(saved))
    rows, table = [], []
    for key in runs[0]:
        vals = [r[key][0] for r in runs if key in r]
        _, direction, bound = runs[0][key]
        met = sum(_met(v, direction, bound) for v in vals)
        rows.append({"condition": key[0], "what": key[1], "values": vals, "target": f"{direction} {bound:g}x",
                     "met": met, "runs": len(vals)})
        table.append([key[0], key[1], f"{min(vals):.2f}x", f"{statistics.median(vals):.2f}x", f"{max(vals):.2f}x",
                      f"{direction} {bound:g}x", f"{met}/{len(vals)}"])
    print(f"{len(paths)} runs: " + ", ".join(paths))
    print(markdown_table(["condition", "ratio", "min", "median", "max", "target", "runs met"], table))
    return {"runs": len(paths), "rows": rows}


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    if args.summarize:
        return summarize(args.summarize)
    import aggregation as A  # torch, numpy and Flower load after parsing: --help and a usage error answer before them
    import torch

    device = cli.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        summary = measure_memory(args, device)
        print(json.dumps(summary))
        return summary

    c = A.Clients(args, device)
    print(f"{len(c.base)} tensors, {c.numel / 1e6:.2f}M parameters ({mib(4 * c.numel)} MiB fp32), device {device}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, anchor {A.anchor_name(args)}, "
          f"load average {loadavg()['load1']:.1f}", flush=True)
    conditions = [time_condition(args, c, device, cond) for cond in args.conditions]

    memory = []
    if not args.no_memory:
        script = os.path.abspath(__file__)
        mem_rows = []
        for method in ("anchor", "stream"):
            for k in args.clients:
                argv = ["--measure", method, "--clients", str(k), "--device", str(device), "--pool", str(args.pool),
                        "--anchor", args.anchor, "--threads", str(args.threads)] + ["--quick"] * args.quick
                m = run_isolated([script, *argv])
                memory.append(m)
                mem_rows.append([k, method, mib(m["peak_bytes"]), mib(m["peak_bytes"] - m["before_bytes"])])
        print()
        print(markdown_table(["K", "method", "peak MiB", "of which aggregation MiB"], mem_rows))

    checks = targets(conditions, memory)
    summary = {"numel": c.numel, "tensors": len(c.base), "anchor": A.anchor_name(args), "conditions": conditions,
               "memory": memory, "targets": [{"name": n, "met": ok} for n, ok in checks],
               "targets_met": all(ok for _, ok in checks), "device": str(device), "threads": torch.get_num_threads(),
               "cores": os.cpu_count(), "quick": args.quick}
    print_table(summary)
    print("\ntargets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    cli.run(main)
