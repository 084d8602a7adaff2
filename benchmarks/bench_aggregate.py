"""Aggregation speed and memory: the streaming WeightedMean vs the per-key torch.stack reference.

    python benchmarks/bench_aggregate.py                      # ViT-S/16 (~21.7M params, 152 tensors), K = 10 100
    python benchmarks/bench_aggregate.py --device cuda --repeats 10
    python benchmarks/bench_aggregate.py --quick              # tiny shapes: checks the script runs

(a) reference, as in the source projects: K client state dicts in memory, then per key
    ``torch.stack([sd[key] for sd in dicts]).mean(0)``.
(b) ``common.aggregate.WeightedMean``: clients arrive one at a time; each client's upload is one flat
    buffer (seen as parameter-shaped views), so ``add`` is ONE axpy into the flat float32 accumulator,
    and ``result(out=...)`` writes the mean into existing tensors. Row "stream-tensors": the same
    aggregator fed 152 separate tensors per client (one fused ``torch._foreach_add_``); on CPU that is
    152 parallel regions per client, which on a loaded machine each wait for their slowest thread.

Clients come from a small pool of distinct perturbed copies of the base parameters (``--pool``); the K
reference dicts alias that pool (holding K real copies would need K x 83 MiB; a real run does hold them),
so every method reads the same memory and the time measured is the aggregation alone.

Bandwidth: per client (b) reads the client and reads+writes the accumulator (12 bytes per parameter);
zeroing (4) and the final scale (read 4, write 4) add 12 bytes per parameter per aggregation. GB/s is
those bytes over the median time, compared with a ``copy_`` of the same size (8 bytes per parameter:
read + write) timed in the same round-robin, so that both see the same load on a shared machine.

Peak memory: each (method, K) runs once more in a fresh process, which reports its peak resident set
(CPU, VmHWM) or the CUDA allocator's peak; the process holds the pool, the base and torch itself.
Targets: (b) >= 2x faster than (a), >= 50% of copy bandwidth, peak memory at K=100 within 10% of K=10.
"""
from __future__ import annotations

import json
import os

import torch
from benchlib import current_bytes, markdown_table, mib, peak_bytes, reset_peak, run_isolated, timeit_many

from common import cli
from common import params as P
from common.aggregate import WeightedMean


def get_args_parser(add_help: bool = True):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100], help="values of K to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per configuration (median)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed repetitions first (buffers are pre-touched and the median drops one outlier)")
    parser.add_argument("--pool", type=int, default=2, help="distinct client states the K clients cycle through")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--quick", action="store_true", help="tiny model (width 64, depth 2): a smoke run")
    parser.add_argument("--measure", default=None, choices=["reference", "stream"],
                        help="internal: run one aggregation of this method and print its peak memory as JSON")
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    return parser


# ----------------------------------------------------------------------------- the parameter set
def vit_shapes(dim: int = 384, depth: int = 12, patch: int = 16, img: int = 224, classes: int = 100,
               mlp_ratio: int = 4) -> dict[str, tuple]:
    """Parameter names and shapes of a ViT (DINO naming); defaults: ViT-S/16 with a 100-class head."""
    tokens = (img // patch) ** 2 + 1
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes |= {b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                   b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                   b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                   b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                   b + "mlp.fc1.weight": (mlp_ratio * dim, dim), b + "mlp.fc1.bias": (mlp_ratio * dim,),
                   b + "mlp.fc2.weight": (dim, mlp_ratio * dim), b + "mlp.fc2.bias": (dim,)}
    return shapes | {"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (classes, dim), "head.bias": (classes,)}


def make_clients(args, device):
    """(names, base tensors, pool of client uploads): each upload is one flat fp32 buffer, seen as a list
    of parameter-shaped views (``common.params.unflatten``), the way a client sends its parameters."""
    shapes = vit_shapes(dim=64, depth=2, img=64) if args.quick else vit_shapes()
    g = torch.Generator().manual_seed(0)
    base = [(0.02 * torch.randn(s, generator=g)).to(device) for s in shapes.values()]
    pool = []
    for _ in range(args.pool):
        flat = P.flatten(base)
        flat += 1e-3 * torch.randn(flat.shape, generator=g).to(device)
        pool.append(P.unflatten(flat, base))
    return list(shapes), base, pool


# ----------------------------------------------------------------------------- the two methods
def reference_fn(names, pool, k):
    dicts = [dict(zip(names, pool[i % len(pool)])) for i in range(k)]  # K state dicts (aliasing the pool)
    return lambda: {key: torch.stack([sd[key] for sd in dicts]).mean(0) for key in names}


def stream_fn(base, pool, k):
    agg, out = WeightedMean(base), [torch.zeros_like(t) for t in base]  # touched: no page faults timed
    weights = [1.0 + (i % 7) for i in range(k)]  # sample counts; the weighting costs nothing extra

    def aggregate():
        agg.reset()
        for i in range(k):
            agg.add(pool[i % len(pool)], weights[i])
        return agg.result(out=out)
    return aggregate




def measure_memory(args, device) -> dict:
    """One aggregation in this (fresh) process; peak memory before and during it."""
    names, base, pool = make_clients(args, device)
    k = args.clients[0]
    reset_peak(device)
    before = current_bytes(device)  # torch, the base and the client pool
    fn = reference_fn(names, pool, k) if args.measure == "reference" else stream_fn(base, pool, k)
    result = fn()  # the aggregator's own buffers and temporaries count
    peak = peak_bytes(device)
    del result
    return {"method": args.measure, "clients": k, "before_bytes": before, "peak_bytes": peak}


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    device = cli.resolve_device(args.device)
    cli.check(args.pool >= 1 and args.repeats >= 1 and min(args.clients) >= 1,
              "--pool, --repeats and --clients must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        summary = measure_memory(args, device)
        print(json.dumps(summary))
        return summary

    names, base, pool = make_clients(args, device)
    numel, size = P.numel(base), P.numel(base) * 4
    separate_pool = [[t.clone() for t in c] for c in pool]
    src, dst = P.flatten(base), torch.zeros(numel, device=device)
    print(f"{len(base)} tensors, {numel / 1e6:.2f}M parameters ({mib(size)} MiB fp32), device {device}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)

    rows, results = [], []
    for k in args.clients:
        # copy_ is timed in the same round-robin, so the bandwidth it sets is measured under the same load
        fns = {"reference": reference_fn(names, separate_pool, k), "stream": stream_fn(base, pool, k),
               "stream-tensors": stream_fn(base, separate_pool, k), "copy_": lambda: dst.copy_(src)}
        timings = timeit_many(fns, warmup=args.warmup, repeats=args.repeats, device=device)
        copy_gbs = 8 * numel / timings.pop("copy_").median_s / 1e9  # read + write
        moved = (12 * k + 12) * numel  # bytes (b) must read + write, see the docstring
        for method, t in timings.items():
            gbs = moved / t.median_s / 1e9 if method != "reference" else None
            speedup = timings["reference"].median_s / t.median_s
            results.append({"clients": k, "method": method, "ms": t.ms, "min_ms": 1e3 * t.min_s, "gb_s": gbs,
                            "copy_gb_s": copy_gbs, "copy_fraction": gbs / copy_gbs if gbs else None,
                            "speedup": speedup})
            rows.append([k, method, f"{t.ms:,.1f}", f"{speedup:.2f}x", f"{gbs:.1f}" if gbs else "-",
                         f"{copy_gbs:.1f}", f"{100 * gbs / copy_gbs:.0f}%" if gbs else "-"])
        print(f"K={k}: " + ", ".join(f"{m} {t.ms:,.1f} ms" for m, t in timings.items())
              + f", copy_ {copy_gbs:.1f} GB/s", flush=True)
    print()
    print(markdown_table(["K", "method", "ms / aggregation", "speedup vs (a)", "GB/s", "copy_ GB/s", "of copy_"],
                         rows))

    memory = []
    if not args.no_memory:
        script = os.path.abspath(__file__)
        mem_rows = []
        for method in ("reference", "stream"):
            for k in args.clients:
                flags = ["--measure", method, "--clients", str(k), "--device", str(device), "--pool", str(args.pool)]
                flags += ["--quick"] * args.quick + ["--threads", str(args.threads)]
                m = run_isolated([script, *flags])
                memory.append(m)
                held = k * size if method == "reference" else size  # client states a real run holds
                mem_rows.append([k, method, mib(m["peak_bytes"]), mib(m["peak_bytes"] - m["before_bytes"]),
                                 mib(held)])
        print()
        print(markdown_table(["K", "method", "peak MiB", "of which aggregation MiB",
                              "client states a real run holds MiB"], mem_rows))
        for method in ("reference", "stream"):
            peaks = [m["peak_bytes"] for m in memory if m["method"] == method]
            print(f"{method}: peak at K={args.clients[-1]} is {peaks[-1] / peaks[0]:.3f}x the peak at "
                  f"K={args.clients[0]}")

    stream = [r for r in results if r["method"] == "stream"]
    checks = [(">= 2x faster than (a)", min(r["speedup"] for r in stream) >= 2),
              (">= 50% of copy_ bandwidth", min(r["copy_fraction"] for r in stream) >= 0.5)]
    if memory:
        peaks = [m["peak_bytes"] for m in memory if m["method"] == "stream"]
        checks.append(("peak memory K=max within 10% of K=min", abs(peaks[-1] / peaks[0] - 1) <= 0.10))
    print("\ntargets for (b) stream: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks))
    summary = {"numel": numel, "tensors": len(base), "timings": results, "memory": memory,
               "targets_met": all(ok for _, ok in checks), "device": str(device),
               "threads": torch.get_num_threads(), "quick": args.quick}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    cli.run(main)
