"""Optional ``torch.compile`` of a model's forward pass (``--compile``), for training and evaluation.

``maybe_compile(model, args)`` returns ``torch.compile(model)`` (a wrapper that SHARES the model's
parameters and buffers) when ``--compile`` is given, else the model itself. Scripts call the returned
module for forward passes -- training steps and evaluation -- and keep using the original ``model`` for
everything else: its parameters (loaded in place every round, so no recompilation), ``state_dict`` and
checkpoints (no ``_orig_mod.`` key prefix), ``torch.func`` per-example Fisher (vmap over a compiled
module is not supported) and ``generate``.

Where it pays: on CUDA, where inductor fuses the elementwise work around the matmuls (``--compile-mode
max-autotune`` also tunes the matmul kernels; ``reduce-overhead`` adds CUDA graphs, which need static
shapes). On a CPU the first step of the tiny models compiles for about a minute and the steps are not
faster, so it is off by default. ``--compile-backend aot_eager`` traces the same graphs without code
generation: it checks that a model compiles (and the tests use it), without the speed.

The result does not depend on the flag beyond float rounding, so ``--resume`` accepts a changed
``--compile`` (``common.runlog.DEFAULT_IGNORE_ON_RESUME`` lists the three flags).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKENDS = ("inductor", "aot_eager", "eager")
FLAGS = ("compile", "compile_mode", "compile_backend")  # argument names, for resume checks


def add_compile_args(group) -> None:
    """``--compile``, ``--compile-mode`` and ``--compile-backend`` on a parser or argument group."""
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model's forward for training and evaluation (worth it on CUDA)")
    group.add_argument("--compile-mode", choices=MODES, default="default", help="torch.compile mode")
    group.add_argument("--compile-backend", choices=BACKENDS, default="inductor",
                       help="torch.compile backend; aot_eager traces without code generation (a quick check)")


def maybe_compile(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """``torch.compile(model, ...)`` when ``args.compile`` is set, else ``model``.

    The wrapper shares every parameter and buffer with ``model``: in-place updates of ``model``'s
    parameters are seen by the compiled forward. ``dynamic=None`` lets a shape change (a shorter last
    batch) recompile once with dynamic shapes instead of once per new shape.
    """
    if not getattr(args, "compile", False):
        return model
    mode = None if args.compile_mode == "default" else args.compile_mode
    if args.compile_backend != "inductor":
        mode = None  # modes are inductor options
    return torch.compile(model, mode=mode, backend=args.compile_backend, dynamic=None)
