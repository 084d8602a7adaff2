"""Parameter views: a model's trainable parameters as a list of tensors (``trainable(model)`` order; tied
weights once), with in-place math helpers, so aggregators, Fisher and SCAFFOLD code never see module names.

Thread counts (``foreach``, ``threads_for``): on a CPU each elementwise op over a large tensor is an OpenMP
parallel region that ends when its SLOWEST thread does; while other processes keep every core busy, each
region waits for a descheduled thread (milliseconds), so a model of 150 separate tensors pays that 150 times
per op. Hence lists that tile ONE buffer (``as_flat``: ``clone`` / ``zeros_like`` results, ``unflatten``
views, a model after ``flat_parameters_``) are ONE op, and an op below ``PARALLEL_MIN_NUMEL`` elements, or
any op while other threads wait for a core (``machine_busy``), runs on one thread. Elementwise results do not
depend on the threads or the grouping: these choices change timings only (reductions are left alone).
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

Tensors = list[torch.Tensor]

# Ops on fewer elements run on one thread: 256K float32 (1 MiB, about 0.1 ms of memory traffic) is where a
# parallel region on a quiet machine starts to pay off.
PARALLEL_MIN_NUMEL = 1 << 18
_BUSY_MAX_AGE_S = 0.02  # machine_busy() reads /proc at most this often
_busy_state = {"at": -1.0, "busy": False}


def _own_running_threads() -> int:
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            n += Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
        except OSError:  # the thread ended meanwhile
            pass
    return n


def machine_busy() -> bool:
    """True when threads of OTHER processes are runnable now (/proc/loadavg's running count less this process's
    running threads): a parallel region of ours would wait for a core. Cached 20 ms; False without /proc."""
    now = time.monotonic()
    if now - _busy_state["at"] > _BUSY_MAX_AGE_S:
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            _busy_state["busy"] = running - _own_running_threads() >= 1
        except (OSError, ValueError, IndexError):
            _busy_state["busy"] = False
        _busy_state["at"] = now
    return _busy_state["busy"]


def op_threads(numel: int) -> int:
    """Threads for one elementwise op on ``numel`` elements (the module docstring's rule)."""
    return 1 if numel < PARALLEL_MIN_NUMEL or machine_busy() else torch.get_num_threads()


def threads_for(numel: int, device: torch.device | str | None = None):
    """Context manager running the ops inside with ``op_threads(numel)`` threads (CPU; a no-op on a GPU)."""
    if device is not None and torch.device(device).type != "cpu":
        return contextlib.nullcontext()
    return num_threads(op_threads(numel))


def as_flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D view the tensors tile if they are consecutive contiguous pieces of one buffer, else None."""
    if not tensors or not isinstance(tensors[0], torch.Tensor):
        return None
    first = tensors[0]
    offset, ptr = first.storage_offset(), first.untyped_storage().data_ptr()
    for t in tensors:
        if (not isinstance(t, torch.Tensor) or not t.is_contiguous() or t.dtype != first.dtype
                or t.device != first.device or t.storage_offset() != offset
                or t.untyped_storage().data_ptr() != ptr):
            return None
        offset += t.numel()
    return first.as_strided((offset - first.storage_offset(),), (1,), first.storage_offset())


@contextlib.contextmanager
def num_threads(n: int):
    """``torch.set_num_threads(n)`` inside the block (restored after); a no-op when n is already the count."""
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def foreach(fn: Callable, *lists: Sequence[torch.Tensor], **kwargs):
    """``fn(*lists, **kwargs)`` for a ``torch._foreach_*`` function (in place or not; scalars in ``kwargs``):
    ONE call when every list tiles one buffer (an out-of-place result is views of one buffer shaped like
    ``lists[0]``), else small tensors on one thread and the others with ``op_threads``."""
    lists = [list(t) for t in lists]
    in_place = fn.__name__.endswith("_")
    if not lists[0]:
        return None if in_place else []
    flats = [as_flat(t) for t in lists]
    device = lists[0][0].device
    shapes = [t.shape for t in lists[0]]  # other shapes over one size: the per-tensor call below refuses them
    if all(f is not None for f in flats) and all([t.shape for t in other] == shapes for other in lists[1:]):
        with threads_for(flats[0].numel(), device):
            out = fn(*[[f] for f in flats], **kwargs)
        return None if in_place else unflatten(out[0], lists[0])
    if device.type != "cpu":
        return fn(*lists, **kwargs)
    results = [None] * len(lists[0])
    for is_big in (False, True):
        idx = [i for i, t in enumerate(lists[0]) if (t.numel() >= PARALLEL_MIN_NUMEL) == is_big]
        if idx:   # the machine's load is read only when there is a big tensor
            with num_threads(op_threads(PARALLEL_MIN_NUMEL) if is_big else 1):
                out = fn(*[[t[i] for i in idx] for t in lists], **kwargs)
            for i, o in zip(idx, out or ()):
                results[i] = o
    return None if in_place else results


# ``chunked_apply`` slices (256 KiB of float32) keep a multi-op step's operands in cache: a FedAdam step of 21.7M
# parameters on one core was 3.3x faster than whole-buffer ops (1.4x with 16K, 2.3x with 256K slices).
CHUNK_NUMEL = 1 << 16


def chunked_apply(body: Callable, *lists: Sequence[torch.Tensor], chunk: int = CHUNK_NUMEL) -> None:
    """Run ``body(fe, *lists)``, elementwise ops each written ``fe(torch._foreach_op, ...)``: when every list
    tiles one CPU buffer of one length, on consecutive ``chunk``-element slices (one-element lists, one
    thread, ``fe`` calling the op directly: a piece's ops run while it is in cache); else once, ``fe = foreach``."""
    flats = [as_flat(t) for t in lists]
    if any(f is None for f in flats) or len({f.numel() for f in flats}) != 1 or flats[0].device.type != "cpu":
        body(foreach, *[list(t) for t in lists])
        return
    with num_threads(1):
        for lo in range(0, flats[0].numel(), chunk):
            body(lambda fn, *pieces, **kwargs: fn(*pieces, **kwargs), *[[f[lo:lo + chunk]] for f in flats])


# CPU buffers of at least this many bytes are 2 MiB aligned and marked for transparent huge pages (as numpy
# does): one TLB entry per 2 MiB; measured 9-25% faster per add of 21.7M float32 on a 2-core machine.
HUGE_PAGE_MIN_BYTES = 4 << 20
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14  # Linux
_libc = None


def _madvise_huge(addr: int, nbytes: int) -> None:
    global _libc
    try:
        import ctypes
        import ctypes.util

        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(nbytes), _MADV_HUGEPAGE)
    except (OSError, AttributeError, TypeError):  # not Linux / no libc: the hint is only a hint
        _libc = False


def empty_flat(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty(n)``; on a CPU and from ``HUGE_PAGE_MIN_BYTES`` on, 2 MiB aligned and advised to use
    transparent huge pages before its memory is first touched (Linux ``madvise``; elsewhere a plain buffer)."""
    device = torch.device(device)
    size = torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or n * size < HUGE_PAGE_MIN_BYTES or _libc is False or os.name != "posix":
        return torch.empty(n, dtype=dtype, device=device)
    raw = torch.empty(n + _HUGE_PAGE // size, dtype=dtype)
    start = (-raw.data_ptr() % _HUGE_PAGE) // size
    flat = raw[start:start + n]
    _madvise_huge(flat.data_ptr(), (n * size) // _HUGE_PAGE * _HUGE_PAGE)
    return flat


def flat_empty_like(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> Tensors:
    """Uninitialised tensors shaped like ``tensors``: views of ONE new buffer (``empty_flat``) when they share a
    device and (after ``dtype``) a dtype, so list ops on them are single ops; else separate tensors."""
    tensors = list(tensors)
    dtypes = {dtype or t.dtype for t in tensors}
    if tensors and len(dtypes) == 1 and len({t.device for t in tensors}) == 1:
        return unflatten(empty_flat(numel(tensors), dtypes.pop(), tensors[0].device), tensors)
    return [torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device) for t in tensors]


@torch.no_grad()
def flat_parameters_(model_or_params: nn.Module | Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Make the trainable parameters views of ONE flat buffer, in place (values, Parameter objects,
    ``requires_grad`` and optimizer state keyed by them kept), so ``load_``, an aggregator's ``add`` and the
    server step are one op each; returns them in ``trainable`` order. Call after ``model.to(device)``, before
    ``torch.compile``; mixed dtypes or devices: a no-op. Gradients stay separate tensors."""
    ps = trainable(model_or_params) if isinstance(model_or_params, nn.Module) else list(model_or_params)
    if not ps or as_flat(ps) is not None or len({(p.dtype, p.device) for p in ps}) != 1:
        return ps
    views = flat_empty_like(ps)
    foreach(torch._foreach_copy_, views, [p.data for p in ps])
    for p, v in zip(ps, views):
        p.data = v
    return ps


def named_trainable(model: nn.Module, trainable_only: bool = True) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs, tied parameters once, frozen ones skipped unless asked for."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]


def trainable(model: nn.Module, trainable_only: bool = True) -> list[nn.Parameter]:
    """The parameter objects themselves (loading into them changes the model)."""
    return [p for _, p in named_trainable(model, trainable_only)]


@torch.no_grad()
def clone(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> Tensors:
    """Detached copies (optionally cast), e.g. a snapshot of the global model (``flat_empty_like``'s layout)."""
    tensors = [t.detach() for t in tensors]
    out = flat_empty_like(tensors, dtype)
    foreach(torch._foreach_copy_, out, tensors)
    return out


@torch.no_grad()
def zeros_like(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> Tensors:
    """Zeros shaped like ``tensors``; views of one buffer when they share a device and dtype."""
    out = flat_empty_like(tensors, dtype)
    foreach(torch._foreach_zero_, out)
    return out


@torch.no_grad()
def load_(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> None:
    """Copy ``src`` into ``dst`` in place (e.g. global weights into the one model object)."""
    _check(dst, src)
    foreach(torch._foreach_copy_, [t.detach() for t in dst], [t.detach() for t in src])


@torch.no_grad()
def sub(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Tensors:
    """a - b, new tensors."""
    _check(a, b)
    return foreach(torch._foreach_sub, [t.detach() for t in a], [t.detach() for t in b])


@torch.no_grad()
def add_(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor], alpha: float = 1.0) -> None:
    """dst += alpha * src, in place."""
    _check(dst, src)
    foreach(torch._foreach_add_, list(dst), list(src), alpha=alpha)


@torch.no_grad()
def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Sum of elementwise products over all tensors, accumulated in float64."""
    _check(a, b)
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


@torch.no_grad()
def norm(tensors: Sequence[torch.Tensor]) -> float:
    """Global L2 norm over all tensors."""
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().float().norm() for t in tensors])))


def numel(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def flatten(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """One contiguous 1-D buffer holding all tensors (for a single all-reduce or bulk math)."""
    return torch.cat([t.detach().reshape(-1).to(dtype or t.dtype) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> Tensors:
    """Views of ``flat`` shaped like ``like``."""
    sizes = [t.numel() for t in like]
    if sum(sizes) != flat.numel():
        raise ValueError(f"flat buffer has {flat.numel()} elements, tensors need {sum(sizes)}")
    return [piece.view_as(t) for piece, t in zip(flat.split(sizes), like)]


def _check(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> None:
    if len(a) != len(b):
        raise ValueError(f"parameter lists differ in length: {len(a)} vs {len(b)}")
