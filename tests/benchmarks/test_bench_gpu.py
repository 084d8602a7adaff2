"""benchmarks/bench_gpu.py: the FLOP count against a hand count, and the --quick run on the CPU."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_gpu():
    sys.path.insert(0, str(BENCH))  # benchlib sits next to the script
    try:
        spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "bench_gpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_flop_count_of_a_linear_layer(bench_gpu):
    """Forward 2*i*o, backward 2*i*o for the input gradient and 2*i*o for the weight gradient."""
    def step(model, dev):
        model(torch.randn(1, 24, device=dev, requires_grad=True)).sum().backward()

    assert bench_gpu.count_flops(lambda dev: torch.nn.Linear(24, 10, bias=False).to(dev), step) == 6 * 24 * 10


def test_quick_run_reports_every_model(bench_gpu, tmp_path):
    out = bench_gpu.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "gpu.json")])
    assert out["matmul"]["tflops"] > 0 and out["matmul"]["dtype"] == "float32"
    models = [r["model"] for r in out["rows"]]
    assert models == ["Mamba2 1 layer(s)", "ViT vit_tiny 32 px"]
    for r in out["rows"]:
        assert r["throughput"] > 0 and r["flops_per_step"] > 0 and r["peak_bytes"] > 0
        assert r["tflops"] == pytest.approx(r["flops_per_step"] / r["step_s"] / 1e12)
    assert out["rows"][0]["kernel_path"] == "torch" and out["rows"][0]["unit"] == "tokens/s"
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"][1]["unit"] == "images/s"


def test_a_failing_compiled_step_becomes_an_error_row(bench_gpu):
    """An inductor failure in the compiled step keeps the run's other rows; an eager failure is a crash."""
    import argparse

    def broken():
        raise RuntimeError("codegen failed\nmore detail")

    a = argparse.Namespace(steps=2, warmup=1)
    row = bench_gpu.timed_row(broken, torch.device("cpu"), a, {"compile": True, "items_per_step": 4})
    assert row["error"] == "RuntimeError: codegen failed" and "throughput" not in row
    with pytest.raises(RuntimeError):
        bench_gpu.timed_row(broken, torch.device("cpu"), a, {"compile": False, "items_per_step": 4})
    ok = bench_gpu.timed_row(lambda: None, torch.device("cpu"), a, {"compile": True, "items_per_step": 4})
    assert ok["throughput"] == 4 / ok["step_s"] and "error" not in ok


def test_kernel_check_compares_two_processes(tmp_path):
    """check_mamba_kernels.py runs each path in a process of its own from the same seed: the reference path
    against itself must agree exactly (a CPU has no kernel path; on CUDA the same code compares mamba-ssm)."""
    import math

    import procs

    out = tmp_path / "kernels.json"
    done = procs.run([sys.executable, str(BENCH / "check_mamba_kernels.py"), "--quick", "--device", "cpu", "--paths",
                      "torch", "torch", "--layers", "1", "--steps", "2", "--warmup", "0", "--json", str(out)],
                     "check_mamba_kernels.py (two child processes, each importing torch and transformers)", 240,
                     env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == ["torch", "torch"]
    assert abs(rows[0]["loss_float32"] - math.log(256)) < 0.5  # an untrained model: about a uniform guess
    assert rows[1]["loss_diff_float32"] == 0.0 and rows[1]["grad_rel_diff_float32"] == 0.0
    assert all(r["ms"] > 0 and r["tokens_per_s"] > 0 and "loss_bf16" not in r for r in rows)
