"""Optional ``torch.compile`` of a model's forward pass (``--compile``), for training and evaluation.

Scripts call the compiled wrapper for forward passes and keep the original ``model`` for everything else:
parameters (loaded in place, so no recompilation), ``state_dict`` and checkpoints (no ``_orig_mod.`` prefix),
``torch.func`` Fisher (no vmap over a compiled module) and ``generate``. It pays on CUDA; on a CPU the tiny
models compile for about a minute without faster steps, so it is off by default (``aot_eager`` checks that a
model compiles). Results differ only by float rounding, so ``--resume`` accepts a changed ``--compile``.
Torch is imported by ``maybe_compile`` only: the flags are part of every parser, built before torch loads.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


def maybe_compile(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """``torch.compile(model)`` (sharing its parameters and buffers) when ``args.compile``, else ``model``."""
    if not getattr(args, "compile", False):
        return model
    import torch

    mode = None if args.compile_mode == "default" or args.compile_backend != "inductor" else args.compile_mode
    # dynamic=None: a new shape (a shorter last batch) recompiles once with dynamic shapes, not once per shape
    return torch.compile(model, mode=mode, backend=args.compile_backend, dynamic=None)
