"""Fused CPU kernels for the aggregators (``common/kernels.c``), compiled with the system C compiler on first
use and loaded with ctypes; without them the aggregators use torch ops, with the same values bit for bit.

Why: ``FisherMean`` and ``MaskedMean`` update two or three sums per client. As torch ops that is one op per
sum, each a pass over the block of coordinates in cache; on ViT-S/16 shapes that made ``add_many`` 1.4-2.4x
the time of copying the uploads' bytes, while a single loop updating every sum at once reads each upload
from memory once and does the arithmetic in one pass (``benchmarks/bench_aggregate.py`` measures both:
``FEDLAB_NATIVE=0`` gives the torch path).

Same values: each kernel does the arithmetic of the torch ops it replaces (``kernels.c`` lists them),
including torch's fused multiply-add, which is what its float kernels use on CPUs with AVX2 or AVX-512.
So the kernels are used only there (x86-64, ``torch.backends.cpu.get_cpu_capability()`` AVX2 / AVX512);
``tests/common/test_native.py`` checks the two paths are bit-equal. Elementwise, so the result does not
depend on the number of threads either.

Build: ``$CC`` (else ``cc``) with ``-O3 -mavx2 -mfma -ffp-contract=off``, once per source and flags, into
``$FEDLAB_CACHE_DIR`` (default ``~/.cache/fedlab``), written to a temporary file and renamed, so concurrent
processes (torchrun ranks, process pools) can build at once. ``FEDLAB_NATIVE=0`` turns the kernels off; no
compiler, a failed build or another CPU also leave them off (``status()`` says why).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from common.checkpoint import atomic_path

SOURCE = Path(__file__).with_name("kernels.c")
# -ffp-contract=off: no fused multiply-add but those written (fmaf); -fno-trapping-math lets the results'
# selects vectorize (no value changes: IEEE arithmetic, round to nearest).
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
# Coordinates per block: the sums' block (12 bytes per coordinate for FisherMean's three, 8 for MaskedMean's
# two: 3 and 2 MiB) stays in cache while the clients stream through it. Measured on ViT-S/16 shapes (21.7M),
# FisherMean, two clients per pass, 2 threads: K = 10: 64 / 42 / 43 ms at 1 << 14 / 1 << 16 / 1 << 18;
# K = 50: 302 / 270 / 187 ms.
BLOCK = 1 << 18
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
KERNELS = {  # name: (argument types, return type), as in kernels.c
    "fisher_add": ([_P] * 6 + [_I] * 5, None),
    "masked_add_u8": ([_P] * 5 + [_I] * 5, None),
    "masked_add_f32": ([_P] * 5 + [_I] * 5, None),
    "fisher_result": ([_P] * 4 + [_F, _F, _I, _I], _I),
    "masked_result": ([_P] * 4 + [_F, _I, _I], None),
}

_state: dict = {}
_lock = threading.Lock()


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedlab"
    return Path(os.environ.get("FEDLAB_CACHE_DIR") or default)


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc")


def _why_not() -> str | None:
    """Why the kernels cannot be used here, or None."""
    if os.environ.get("FEDLAB_NATIVE", "1") == "0":
        return "FEDLAB_NATIVE=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not x86-64 ({platform.machine()})"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"torch's CPU kernels are {capability}, not AVX2 / AVX-512"
    if _compiler() is None:
        return f"no C compiler ({os.environ.get('CC') or 'cc'} not found)"
    return None


def _build(cc: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((cc,) + FLAGS).encode()).hexdigest()[:16]
    out = _cache_dir() / f"kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, executable=True) as tmp:
        subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp)], check=True, capture_output=True, text=True)
    return out


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on the first call; None where they cannot be used (``status()``)."""
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["why"] = None, _why_not()
            if _state["why"] is None:
                try:
                    lib = ctypes.CDLL(str(_build(_compiler())))
                    for name, (argtypes, restype) in KERNELS.items():
                        getattr(lib, name).argtypes = argtypes
                        getattr(lib, name).restype = restype
                    _state["lib"] = lib
                except (OSError, subprocess.CalledProcessError) as e:
                    detail = getattr(e, "stderr", "") or str(e)
                    _state["why"] = f"build failed: {detail.strip().splitlines()[-1] if detail.strip() else e}"
        return _state["lib"]


def status() -> str:
    """One line for logs and benchmarks: which path the aggregators take."""
    return "fused C kernels" if library() is not None else f"torch ops ({_state['why']})"


def reset() -> None:
    """Forget the loaded library and the reason (tests; after changing FEDLAB_NATIVE or CC)."""
    with _lock:
        _state.clear()


def _pointers(tensors: Sequence[torch.Tensor]):
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _kernel(name: str):
    lib = library()
    if lib is None:
        raise RuntimeError(f"fused kernels unavailable: {status()}")
    return getattr(lib, name)


def _over_ranges(call, numel: int, threads: int) -> list:
    """``call(lo, hi)`` over [0, numel) split into ``threads`` ranges of whole 64-coordinate groups, one
    Python thread each (ctypes releases the GIL); the return values in range order. Every kernel is
    elementwise, so the result does not depend on the split."""
    step = -(-numel // max(1, threads) // 64) * 64
    starts = list(range(0, numel, max(step, 64)))
    results = [None] * len(starts)

    def run(i: int) -> None:
        results[i] = call(starts[i], min(numel, starts[i] + step))
    workers = [threading.Thread(target=run, args=(i,)) for i in range(1, len(starts))]
    for t in workers:
        t.start()
    if starts:
        run(0)
    for t in workers:
        t.join()
    return results


def add(kernel: str, sums: Sequence[torch.Tensor], per_client: Sequence[Sequence[torch.Tensor]],
        weights: Sequence[float], numel: int, threads: int, fresh: bool = False) -> None:
    """``kernel`` over coordinates [0, numel): ``sums`` (contiguous float32 CPU buffers) updated with the
    clients in order; ``per_client`` holds one list per client quantity (e.g. [thetas, fishers]), each with
    one contiguous 1-D CPU tensor per client of at least ``numel`` values and the dtype the kernel takes.
    ``fresh``: the sums hold garbage to be taken as zeros (the first client writes them)."""
    fn = _kernel(kernel)
    sums_p = [s.data_ptr() for s in sums]
    quantities = [_pointers(q) for q in per_client]
    w = (ctypes.c_float * len(weights))(*weights)
    _over_ranges(lambda lo, hi: fn(*sums_p, *quantities, w, len(weights), int(fresh), lo, hi, BLOCK), numel, threads)


def fisher_result(num, den, tot, out, total: float, eps: float, numel: int, threads: int) -> int:
    """``FisherMean.result``'s formula into ``out`` (float32 buffers); the count of coordinates at the floor."""
    fn = _kernel("fisher_result")
    ptrs = [x.data_ptr() for x in (num, den, tot, out)]
    return sum(_over_ranges(lambda lo, hi: fn(*ptrs, total, eps, lo, hi), numel, threads))


def masked_result(num, cnt, fallback, out, tiny: float, numel: int, threads: int) -> None:
    """``MaskedMean.result``'s formula into ``out`` (float32 buffers)."""
    fn = _kernel("masked_result")
    ptrs = [x.data_ptr() for x in (num, cnt, fallback, out)]
    _over_ranges(lambda lo, hi: fn(*ptrs, tiny, lo, hi), numel, threads)
