"""mamba_fl.model.select_kernels: a CPU model must not reach installed mamba-ssm / causal-conv1d kernels.

transformers binds the kernel packages when it first imports its Mamba2 module and then calls them on any
device, so on a CUDA machine with mamba-ssm installed a ``--device cpu`` run crashed inside causal-conv1d
("Expected x.is_cuda() to be true"; seen on an H100). Here stand-in packages whose every kernel raises play
the installed ones; each case runs in a fresh interpreter, since the binding is once per process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mamba_fl import model as mmodel

REPO = Path(__file__).resolve().parents[2]
KERNEL = "def {name}(*args, **kwargs):\n    raise RuntimeError('stand-in kernel {name} called')\n"


@pytest.fixture
def kernel_packages(tmp_path: Path) -> Path:
    """mamba_ssm and causal_conv1d at the paths transformers imports, every kernel raising when called."""
    files = {
        "mamba_ssm/__init__.py": "",
        "mamba_ssm/ops/__init__.py": "",
        "mamba_ssm/ops/triton/__init__.py": "",
        "mamba_ssm/ops/triton/ssd_combined.py": KERNEL.format(name="mamba_chunk_scan_combined")
        + KERNEL.format(name="mamba_split_conv1d_scan_combined"),
        "mamba_ssm/ops/triton/selective_state_update.py": KERNEL.format(name="selective_state_update"),
        "causal_conv1d/__init__.py": KERNEL.format(name="causal_conv1d_fn")
        + KERNEL.format(name="causal_conv1d_update"),
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def run_python(packages: Path, *codes: str) -> list[subprocess.CompletedProcess]:
    """Each of ``codes`` in a fresh interpreter that finds the stand-in packages, all at once (each process one
    thread, importing torch and transformers for seconds); their results in order."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(packages), str(REPO)])}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for code in codes]
    try:
        printed = [p.communicate(timeout=300) for p in procs]
        return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, printed)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


FORWARD = """
    import argparse, torch
    from mamba_fl import model as mmodel
    args = argparse.Namespace(expand=2, d_model=32, d_state=8, head_dim=16, d_conv=4, n_groups=1, layers=1,
                              chunk_size=16, no_tie_embeddings=False)
    {select}
    torch.manual_seed(0)
    m = mmodel.build_model(args, 64, 63, 63)
    x = torch.randint(0, 63, (2, 16))
    loss = m(input_ids=x, labels=x).loss
    loss.backward()
    print("loss", float(loss))
"""


def test_cpu_model_takes_the_reference_path_with_kernels_installed(kernel_packages):
    # and without the choice, transformers binds the installed packages and the CPU forward reaches a kernel
    chosen, unchosen = run_python(kernel_packages, FORWARD.format(
        select="print('path', mmodel.select_kernels(torch.device('cpu')))"), FORWARD.format(select=""))
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    assert "path torch" in chosen.stdout and "loss" in chosen.stdout
    assert unchosen.returncode != 0 and "stand-in kernel" in unchosen.stderr


def test_one_path_per_process(kernel_packages):
    """Kernels bound first: a later CPU model is refused (it would crash in them). Reference path first: the
    packages stay hidden, so a later CUDA model takes the reference path too, and says so."""
    kernels_first, reference_first = run_python(kernel_packages, """
        import torch
        from common import cli
        from mamba_fl import model as mmodel
        print(mmodel.select_kernels(torch.device("cuda")))
        try:
            mmodel.select_kernels(torch.device("cpu"))
        except cli.UsageError as e:
            print("refused:", e)
    """, """
        import torch
        from mamba_fl import model as mmodel
        print(mmodel.select_kernels(torch.device("cpu")), mmodel.select_kernels(torch.device("cuda")))
    """)
    assert kernels_first.returncode == 0, kernels_first.stderr[-2000:]
    lines = kernels_first.stdout.splitlines()
    assert lines[0] == "mamba-ssm"
    assert lines[1].startswith("refused: this process already runs Mamba2 on the mamba-ssm path; the torch path")

    assert reference_first.returncode == 0, reference_first.stderr[-2000:]
    assert reference_first.stdout.split() == ["torch", "torch"]


def test_kernel_path_names_the_packages(kernel_packages, monkeypatch):
    monkeypatch.syspath_prepend(str(kernel_packages))
    assert mmodel.kernel_path(torch.device("cuda")) == "mamba-ssm"
    assert mmodel.kernel_path(torch.device("cuda"), "torch") == "torch"
    assert mmodel.kernel_path(torch.device("cpu")) == "torch"


def test_a_run_from_before_the_kernels_flag_resumes(tmp_path):
    """--kernels and the path it picks choose an implementation, like --device: a run directory written before
    the flag existed (or on the other path) extends instead of being refused."""
    from mamba_fl import fed_avg

    argv = ["--layers", "1", "--quick", "--quiet", "--out-dir", str(tmp_path), "--run-name", "r"]
    fed_avg.main([*argv, "--rounds", "2"])
    args_file = tmp_path / "r" / "args.json"
    saved = json.loads(args_file.read_text())
    held = saved["args"] if "args" in saved else saved
    assert held.pop("kernels") == "auto"
    held["kernel_path"] = "mamba-ssm"
    args_file.write_text(json.dumps(saved))
    fed_avg.main([*argv, "--rounds", "3", "--resume", "--extend", "--kernels", "torch"])
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["rounds_done"] == 3 and summary["kernel_path"] == "torch"
