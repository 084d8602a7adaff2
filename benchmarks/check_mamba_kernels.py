"""The mamba-ssm kernel path of Mamba2 against its PyTorch reference path: the same weights and batch give the
same loss and gradients (float32, and bf16 autocast on CUDA), and each path's training-step time.

    python benchmarks/check_mamba_kernels.py --device cuda          # needs mamba-ssm and causal-conv1d
    python benchmarks/check_mamba_kernels.py --quick --device cpu   # the reference path twice: checks the script

A process binds one path (``mamba_fl.model.select_kernels``), so each path runs in a child process of its own.
Both build the model from the same seed on the CPU and draw the same batch, so no weights travel between them.
The step is ``mamba_fl.federated.train_steps`` (AdamW; bf16 autocast on CUDA), the median of ``--steps`` after
``--warmup`` (the kernel path's first steps compile and autotune its Triton kernels). Float32 on the kernel
path uses tf32 matrix products inside the Triton kernels, so expect a gradient difference near 1e-3 there, and
near 1e-2 under bf16 autocast; the reference path against itself must agree exactly.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_gpu import mamba_args
from benchlib import markdown_table, peak_bytes, reset_peak, sync, timeit

from common import cli

FULL = dict(d_model=512, d_state=128, head_dim=64, vocab=50257, seq=256)
QUICK = dict(d_model=32, d_state=16, head_dim=16, vocab=256, seq=32)


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--layers", type=int, default=2, help="Mamba2 depth")
    p.add_argument("--batch", type=int, default=16, help="blocks per timed step (the loss check uses half)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (Triton compilation, autotuning)")
    p.add_argument("--paths", nargs="+", default=["mamba-ssm", "torch"], choices=["mamba-ssm", "torch"],
                   help="the paths to compare, the first as the reference of the differences")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: the path a child runs
    p.add_argument("--child-dir", default=None, help=argparse.SUPPRESS)  # internal: where it writes
    return p


def run_path(path: str, a, out: Path) -> None:
    """In a process of its own: losses and gradients of one batch, and the step's time, on ``path``."""
    import torch

    from mamba_fl import federated
    from mamba_fl import model as mmodel

    device = cli.resolve_device(a.device)
    bound = mmodel.select_kernels(device, "auto" if path == "mamba-ssm" else "torch")
    mmodel.quiet_kernel_warnings()
    size = QUICK if a.quick else FULL
    vocab, seq, pad = size["vocab"], size["seq"], size["vocab"] - 1
    torch.manual_seed(0)
    model = mmodel.build_model(mamba_args(a.layers, size), vocab, pad, pad).to(device).train()
    blocks = torch.randint(0, vocab - 1, (a.batch, seq), generator=torch.Generator().manual_seed(1)).to(device)
    row = {"path": bound, "device": str(device)}
    for dtype in ["float32", "bf16"] if device.type == "cuda" else ["float32"]:
        half = blocks[: max(1, a.batch // 2)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(input_ids=half, labels=half).loss
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        torch.save(grads.cpu(), out / f"{path}_{dtype}.pt")
        row[f"loss_{dtype}"] = loss.item()
        model.zero_grad(set_to_none=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    steps = [list(range(a.batch))]
    for _ in range(a.warmup):
        federated.train_steps(model, opt, blocks, steps, pad, device)
    sync(device)
    reset_peak(device)
    t = timeit(lambda: (federated.train_steps(model, opt, blocks, steps, pad, device), sync(device)),
               warmup=0, repeats=a.steps, device=device)
    row |= {"ms": t.ms, "tokens_per_s": a.batch * seq / t.median_s, "peak_mib": peak_bytes(device) / 2**20}
    (out / f"{path}.json").write_text(json.dumps(row))


def main(argv=None) -> list[dict]:
    a = cli.parse(get_args_parser(), argv)
    import torch  # after parsing: --help and a usage error answer before it loads

    if a.child:
        run_path(a.child, a, Path(a.child_dir))
        return []
    rows, grads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(a.paths):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            own = list(argv if argv is not None else sys.argv[1:])
            subprocess.run([sys.executable, __file__, *own, "--child", path, "--child-dir", str(folder)], check=True)
            rows.append(json.loads((folder / f"{path}.json").read_text()))
            grads.append({d: torch.load(f) for d in ("float32", "bf16") if (f := folder / f"{path}_{d}.pt").is_file()})
    table = []
    for row, g in zip(rows, grads):
        cells = [row["path"], f"{row['loss_float32']:.6f}"]
        for dtype in ("float32", "bf16"):
            if dtype in g:
                row[f"loss_diff_{dtype}"] = row[f"loss_{dtype}"] - rows[0][f"loss_{dtype}"]
                row[f"grad_rel_diff_{dtype}"] = ((g[dtype] - grads[0][dtype]).norm() / grads[0][dtype].norm()).item()
                cells += [f"{row[f'loss_diff_{dtype}']:+.1e}", f"{row[f'grad_rel_diff_{dtype}']:.1e}"]
            else:
                cells += ["-", "-"]
        cells += [f"{row['ms']:.1f}", f"{row['tokens_per_s']:,.0f}", f"{row['peak_mib']:,.0f}",
                  f"{rows[0]['ms'] / row['ms']:.2f}x"]
        table.append(cells)
    print(markdown_table(["path", "loss (fp32)", "loss diff fp32", "grad rel diff fp32", "loss diff bf16",
                          "grad rel diff bf16", "ms/step", "tokens/s", "peak MiB", f"speed vs {rows[0]['path']}"],
                         table))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    cli.run(main)
