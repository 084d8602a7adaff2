"""Training throughput at the source projects' full sizes, against the device's measured matmul rate.

    python benchmarks/bench_gpu.py --device cuda                  # H200: Mamba2 1/2/4 layers, ViT-S/16 224 px
    python benchmarks/bench_gpu.py --device cuda --compile        # the same with torch.compile'd forwards
    python benchmarks/bench_gpu.py --quick                        # tiny sizes on the CPU: checks the script runs

Rows:
  matmul     the ceiling: median time of a square matrix product (bf16 on CUDA, n = 8192; float32 on a CPU),
             rotating over three input sets so the cache does not serve them, in TFLOP/s (2 n^3 per product).
  mamba_fl   one client's training step as ``mamba_fl.federated.train_steps`` runs it (bf16 autocast on CUDA,
             AdamW, token blocks resident on the device), the source's size: d_model 512, d_state 128, head dim
             64, GPT-2 vocabulary (50257), sequence 256, 1/2/4 layers. ``kernel_path`` says whether the
             mamba-ssm kernels ran.
  vit        one client's step as ``vit_sparse_fl.experiment.train_steps`` runs it: ViT-S/16 at 224 px, SGD,
             uint8 CIFAR images resident on the device, upsampled and augmented on the device.
For each: tokens/s or images/s, the step's FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
on a CPU copy of the model (the PyTorch path: every matmul, einsum and attention of forward and backward,
per example, times the batch), achieved TFLOP/s and its fraction of the measured matmul rate, and the
peak device memory of the step (CUDA allocator; resident set on a CPU).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from typing import TYPE_CHECKING

from benchlib import markdown_table, peak_bytes, reset_peak, sync

from common import cli, compiled

if TYPE_CHECKING:
    import torch

MAMBA_FULL = dict(d_model=512, d_state=128, head_dim=64, vocab=50257, seq=256)
MAMBA_QUICK = dict(d_model=64, d_state=16, head_dim=16, vocab=512, seq=64)


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4], help="Mamba2 depths")
    p.add_argument("--mamba-batch", type=int, default=16, help="blocks per Mamba2 step")
    p.add_argument("--vit-batch", type=int, default=64, help="images per ViT step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (after --warmup)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--matmul-n", type=int, default=0, help="matrix size for the ceiling (0: 8192 on CUDA, 1024 CPU)")
    p.add_argument("--compile", action="store_true", help="also time each model with torch.compile'd forward")
    p.add_argument("--skip", nargs="*", default=[], choices=["mamba", "vit"], help="models to leave out")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps: checks the script runs")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p


# ----------------------------------------------------------------------------- the ceiling
def matmul_rate(device: torch.device, n: int, repeats: int = 10) -> dict:
    """Measured rate of an n x n x n product (bf16 on CUDA, float32 on a CPU) in TFLOP/s."""
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    sets = [(torch.randn(n, n, device=device, generator=g).to(dtype),
             torch.randn(n, n, device=device, generator=g).to(dtype)) for _ in range(3)]
    out = torch.empty(n, n, device=device, dtype=dtype)
    for a, b in sets:  # warm-up: library handles, kernel selection
        torch.matmul(a, b, out=out)
    times = []
    for i in range(repeats):
        a, b = sets[i % 3]
        sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync(device)
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}


# ----------------------------------------------------------------------------- FLOPs of one step
def count_flops(build, run_step) -> int:
    """FLOPs of forward + backward of ONE example, counted on a CPU copy (the PyTorch reference path)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build(torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        run_step(model, torch.device("cpu"))
    return int(counter.get_total_flops())


def time_steps(step, device: torch.device, steps: int, warmup: int) -> tuple[float, int]:
    """(median seconds per step, peak memory bytes) of ``step()``."""
    for _ in range(warmup):
        step()
    sync(device)
    reset_peak(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], peak_bytes(device)


def timed_row(step, device: torch.device, a, row: dict) -> dict:
    """``row`` with the step's median time, throughput and peak memory. A compiled step that fails (an inductor
    error, say) gives the row an ``error`` instead, so the eager rows of the run are kept."""
    try:
        seconds, peak = time_steps(step, device, a.steps, a.warmup)
    except Exception as e:  # noqa: BLE001 - any compiler failure is a result to report, not a crash
        if not row["compile"]:
            raise
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        return {**row, "error": f"{type(e).__name__}: {first[:160]}"}
    return {**row, "step_s": seconds, "throughput": row["items_per_step"] / seconds, "peak_bytes": peak}


# ----------------------------------------------------------------------------- Mamba2 (mamba_fl)
def mamba_args(layers: int, size: dict):
    from mamba_fl import central, federated

    argv = ["--layers", str(layers), "--d-model", str(size["d_model"]), "--d-state", str(size["d_state"]),
            "--head-dim", str(size["head_dim"]), "--sequence-length", str(size["seq"])]
    parser = central.get_args_parser()
    federated.finish_args(args := parser.parse_args(argv))
    return args


def mamba_flops_per_block(layers: int, size: dict) -> int:
    """FLOPs of one block's forward + backward on the PyTorch path, counted on the CPU (a process of its own)."""
    import torch

    from mamba_fl import federated
    from mamba_fl import model as mmodel

    mmodel.select_kernels(torch.device("cpu"))
    mmodel.quiet_kernel_warnings()
    args, vocab, seq = mamba_args(layers, size), size["vocab"], size["seq"]

    def build(dev):
        torch.manual_seed(0)
        return mmodel.build_model(args, vocab, vocab - 1, vocab - 1).to(dev).train()

    def one_example(model, dev):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        federated.train_steps(model, opt, torch.randint(0, vocab - 1, (1, seq)).to(dev), [[0]], vocab - 1, dev)

    return count_flops(build, one_example)


def bench_mamba(layers: int, size: dict, batch: int, device, a) -> dict:
    import torch

    from mamba_fl import federated
    from mamba_fl import model as mmodel

    mmodel.quiet_kernel_warnings()
    args = mamba_args(layers, size)
    vocab, seq, pad = size["vocab"], size["seq"], size["vocab"] - 1

    def build(dev):
        torch.manual_seed(0)
        return mmodel.build_model(args, vocab, pad, pad).to(dev).train()

    def blocks_on(dev, n):
        return torch.randint(0, vocab - 1, (n, seq), generator=torch.Generator().manual_seed(1)).to(dev)

    if mmodel.select_kernels(device) == "torch":
        flops_per_block = mamba_flops_per_block(layers, size)
    else:  # the CPU copy needs the reference path, and this process has bound the kernels: count in a new one
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            flops_per_block = pool.apply(mamba_flops_per_block, (layers, size))
    rows = []
    for use_compile in ([False, True] if a.compile else [False]):
        model = build(device)
        fwd = compiled.maybe_compile(model, argparse.Namespace(compile=use_compile, compile_mode="default",
                                                               compile_backend="inductor"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        blocks = blocks_on(device, 4 * batch)
        idx = [list(range(i * batch, (i + 1) * batch)) for i in range(4)]
        state = {"i": 0}

        def step(fwd=fwd, opt=opt, blocks=blocks, idx=idx, state=state):
            state["i"] = (state["i"] + 1) % 4
            federated.train_steps(fwd, opt, blocks, [idx[state["i"]]], pad, device)

        rows.append(timed_row(step, device, a, {
            "model": f"Mamba2 {layers} layer(s)", "compile": use_compile, "kernel_path": mmodel.kernel_path(device),
            "batch": batch, "params": sum(p.numel() for p in model.parameters()), "items_per_step": batch * seq,
            "unit": "tokens/s", "flops_per_step": flops_per_block * batch}))
    return rows


# ----------------------------------------------------------------------------- ViT-S/16 (vit_sparse_fl)
def bench_vit(batch: int, device, a) -> list[dict]:
    import torch

    from vit_sparse_fl import data as cifar
    from vit_sparse_fl import experiment as exp
    from vit_sparse_fl import federated
    from vit_sparse_fl import train_federated as fed

    argv = ["--arch", "vit_tiny" if a.quick else "vit_small", "--weights", "none",
            "--image-size", "32" if a.quick else "224", "--num-classes", "100", "--data", "synthetic"]
    args = fed.get_args_parser().parse_args(argv)
    federated.finish_args(args)
    g = torch.Generator().manual_seed(2)

    def split_on(dev, n):
        return cifar.Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(dev),
                           torch.randint(0, 100, (n,), generator=g).to(dev))

    def build(dev):
        torch.manual_seed(0)
        return exp.build_model(args, 100, dev)[0]

    def steps_on(model, split, dev, n_steps, bs):
        gen = torch.Generator(device=dev).manual_seed(3)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        stream = cifar.batches(split, bs, n_steps, gen, args.image_size)
        return exp.train_steps(model, opt, stream, label_smoothing=0.1, device=dev)

    flops_per_image = count_flops(build, lambda m, dev: steps_on(m, split_on(dev, 1), dev, 1, 1))
    rows = []
    for use_compile in ([False, True] if a.compile else [False]):
        model = build(device)
        fwd = compiled.maybe_compile(model, argparse.Namespace(compile=use_compile, compile_mode="default",
                                                               compile_backend="inductor"))
        split = split_on(device, 4 * batch)
        rows.append(timed_row(lambda fwd=fwd, split=split: steps_on(fwd, split, device, 1, batch), device, a, {
            "model": f"ViT {args.arch} {args.image_size} px", "compile": use_compile, "kernel_path": "-",
            "batch": batch, "params": sum(p.numel() for p in model.parameters()), "items_per_step": batch,
            "unit": "images/s", "flops_per_step": flops_per_image * batch}))
    return rows


def main(argv=None) -> dict:
    a = cli.parse(get_args_parser(), argv)
    import torch  # after parsing: --help and a usage error answer before it loads

    device = cli.resolve_device(a.device)
    if a.quick:
        a.steps, a.warmup, a.layers = min(a.steps, 3), min(a.warmup, 1), a.layers[:1]
        a.mamba_batch, a.vit_batch = min(a.mamba_batch, 4), min(a.vit_batch, 8)
    cli.check(a.steps >= 1 and a.warmup >= 0, "--steps must be >= 1 and --warmup >= 0")
    n = a.matmul_n or (8192 if device.type == "cuda" else (256 if a.quick else 1024))
    ceiling = matmul_rate(device, n)
    rows = []
    if "mamba" not in a.skip:
        for layers in a.layers:
            rows += bench_mamba(layers, MAMBA_QUICK if a.quick else MAMBA_FULL, a.mamba_batch, device, a)
    if "vit" not in a.skip:
        rows += bench_vit(a.vit_batch, device, a)
    for r in rows:
        if "error" in r:
            continue
        r["tflops"] = r["flops_per_step"] / r["step_s"] / 1e12
        r["matmul_fraction"] = r["tflops"] / ceiling["tflops"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; measured {ceiling['dtype']} matmul (n={n}): {ceiling['tflops']:.1f} TFLOP/s")
    table = [[r["model"], "yes" if r["compile"] else "no", r["kernel_path"], str(r["batch"]),
              f"{r['throughput']:,.0f} {r['unit']}", f"{r['step_s'] * 1e3:.1f}", f"{r['flops_per_step'] / 1e9:.1f}",
              f"{r['tflops']:.2f} ({100 * r['matmul_fraction']:.1f}%)", f"{r['peak_bytes'] / 2**20:,.0f}"]
             if "error" not in r else
             [r["model"], "yes", r["kernel_path"], str(r["batch"]), f"failed: {r['error']}", "-", "-", "-", "-"]
             for r in rows]
    print(markdown_table(["model", "compile", "kernels", "batch", "throughput", "ms/step", "GFLOP/step",
                          "TFLOP/s (of matmul)", "peak MiB"], table))
    out = {"device": str(device), "device_name": name, "matmul": ceiling, "rows": rows, "quick": a.quick}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    cli.run(main)
