"""Parameter views: a model's trainable parameters as a list of tensors, with in-place math helpers.

Every helper takes and returns plain lists of tensors in the order of ``trainable(model)``, so the
aggregators, Fisher and SCAFFOLD code never see module names. Tied weights (e.g. an LM's embedding
shared with its output head) appear once, because ``named_parameters`` de-duplicates shared tensors.

Flat lists and the thread count of an op (``foreach``, ``threads_for``). On a CPU every elementwise op over a
tensor large enough to be split is one OpenMP parallel region, which ends when its SLOWEST thread is done;
when other processes keep every core busy, each region waits for a descheduled thread (a scheduler time
slice, milliseconds), whatever the op's size. A model given as 150 separate tensors pays that wait 150
times per op, and a multi-threaded aggregation becomes slower than a single-threaded numpy one. Hence:

* lists that tile ONE buffer (``as_flat``: ``clone`` / ``zeros_like`` results, a client upload
  ``unflatten``-ed, a model after ``flat_parameters_``) are handled as ONE op on that buffer;
* an op on fewer than ``PARALLEL_MIN_NUMEL`` elements runs on one thread (no region, no wait), and so does
  every op while other threads wait for a core (``machine_busy``: the kernel's count of runnable threads,
  less this process's own, is at least one); otherwise an op gets every thread.

Elementwise results do not depend on the number of threads or on the grouping, so these choices change
timings only, never values (reductions are left alone: their summation order may depend on the threads).
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

Tensors = list[torch.Tensor]

# Ops on fewer elements run on one thread (see the module docstring): 256K float32 elements are 1 MiB, about
# 0.1 ms of memory traffic, where starting a parallel region on a quiet machine still pays off.
PARALLEL_MIN_NUMEL = 1 << 18
# False: ops of PARALLEL_MIN_NUMEL elements or more always get every thread, loaded machine or not.
LOAD_AWARE = True
_BUSY_MAX_AGE_S = 0.02  # machine_busy() reads /proc at most this often
_busy_state = {"at": -1.0, "busy": False}


def _own_running_threads() -> int:
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                n += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except OSError:  # the thread ended meanwhile
            pass
    return n


def machine_busy() -> bool:
    """True when threads of OTHER processes are runnable right now (Linux: the running count of
    /proc/loadavg less this process's running threads), i.e. a parallel region of ours would have to wait
    for a core. Cached for 20 ms; False where /proc is not available."""
    now = time.monotonic()
    if now - _busy_state["at"] > _BUSY_MAX_AGE_S:
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            _busy_state["busy"] = running - _own_running_threads() >= 1
        except (OSError, ValueError, IndexError):
            _busy_state["busy"] = False
        _busy_state["at"] = now
    return _busy_state["busy"]


def op_threads(numel: int) -> int:
    """Threads for one elementwise op on ``numel`` elements: 1 below ``PARALLEL_MIN_NUMEL`` or while the
    machine is busy (``machine_busy``, when ``LOAD_AWARE``), else ``torch.get_num_threads()``."""
    if numel < PARALLEL_MIN_NUMEL or (LOAD_AWARE and machine_busy()):
        return 1
    return torch.get_num_threads()


def threads_for(numel: int, device: torch.device | str | None = None):
    """Context manager running the ops inside with ``op_threads(numel)`` threads (CPU; a no-op on a GPU)."""
    if device is not None and torch.device(device).type != "cpu":
        return contextlib.nullcontext()
    return num_threads(op_threads(numel))


def as_flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D view the tensors tile, if they are consecutive contiguous pieces of one buffer (e.g. the
    views ``unflatten`` returns), else None. Lets one op on the buffer replace one op per tensor."""
    if not tensors:
        return None
    first = tensors[0]
    if not isinstance(first, torch.Tensor):
        return None
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
    """``fn(*lists, **kwargs)`` for a ``torch._foreach_*`` function ``fn`` (in place or not), with the
    thread count chosen per op size (``op_threads``): when every list tiles one buffer (``as_flat``), ONE
    call on those buffers (an out-of-place result comes back as views of one buffer, shaped like
    ``lists[0]``); else tensors below ``PARALLEL_MIN_NUMEL`` elements on one thread and the others with
    ``op_threads`` of their size. Non-tensor arguments (scalars, a list of scalars) go in ``kwargs``."""
    lists = [list(t) for t in lists]
    in_place = fn.__name__.endswith("_")
    if not lists[0]:
        return None if in_place else []
    flats = [as_flat(t) for t in lists]
    device = lists[0][0].device
    if all(f is not None for f in flats) and len({f.numel() for f in flats}) == 1:
        with threads_for(flats[0].numel(), device):
            out = fn(*[[f] for f in flats], **kwargs)
        return None if in_place else unflatten(out[0], lists[0])
    if device.type != "cpu":
        return fn(*lists, **kwargs)
    big = [i for i, t in enumerate(lists[0]) if t.numel() >= PARALLEL_MIN_NUMEL]
    if not big:
        with num_threads(1):
            return fn(*lists, **kwargs)
    small = [i for i in range(len(lists[0])) if i not in set(big)]
    results = [None] * len(lists[0])
    for idx, threads in ((small, 1), (big, op_threads(PARALLEL_MIN_NUMEL))):
        if not idx:
            continue
        with num_threads(threads):
            out = fn(*[[t[i] for i in idx] for t in lists], **kwargs)
        if out is not None:
            for i, o in zip(idx, out):
                results[i] = o
    return None if in_place else results


# Slices of this many elements (256 KiB of float32 per tensor) keep a multi-op step's operands and
# temporaries in the L2/L3 caches (``chunked_apply``); measured 3.3x faster than whole-buffer ops for a FedAdam
# step of 21.7M parameters on one core (and 1.4x for 16K, 2.3x for 256K slices).
CHUNK_NUMEL = 1 << 16


def _direct(fn: Callable, *lists, **kwargs):
    return fn(*lists, **kwargs)


def chunked_apply(body: Callable, *lists: Sequence[torch.Tensor], chunk: int = CHUNK_NUMEL) -> None:
    """Run ``body(fe, *lists)``, a sequence of elementwise ops each written ``fe(torch._foreach_op, ...)``.
    When every list tiles one buffer of the same length (CPU), ``body`` runs on consecutive ``chunk``-element
    slices of those buffers (one-element lists), on one thread and with ``fe`` calling the op directly, so
    the ops of a piece run while its operands are still in cache; else once on the whole lists with
    ``fe = foreach``. Values are the same either way (elementwise ops)."""
    flats = [as_flat(t) for t in lists]
    if any(f is None for f in flats) or len({f.numel() for f in flats}) != 1 or flats[0].device.type != "cpu":
        body(foreach, *[list(t) for t in lists])
        return
    with num_threads(1):
        for lo in range(0, flats[0].numel(), chunk):
            body(_direct, *[[f[lo:lo + chunk]] for f in flats])


# CPU buffers of at least this many bytes are 2 MiB aligned and marked for transparent huge pages (numpy
# does the same for its large arrays): one TLB entry per 2 MiB instead of per 4 KiB when a pass streams
# through tens of MiB; measured 9-25% faster per add of 21.7M float32 on this project's 2-core machine.
HUGE_PAGE_MIN_BYTES = 4 << 20
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14  # Linux
_libc = None


def _madvise_huge(addr: int, nbytes: int) -> None:
    global _libc
    try:
        if _libc is None:
            import ctypes
            import ctypes.util

            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        import ctypes

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
    slack = _HUGE_PAGE // size
    raw = torch.empty(n + slack, dtype=dtype)
    start = (-raw.data_ptr() % _HUGE_PAGE) // size
    flat = raw[start:start + n]
    _madvise_huge(flat.data_ptr(), (n * size) // _HUGE_PAGE * _HUGE_PAGE)
    return flat


def flat_empty_like(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> Tensors:
    """Uninitialised tensors shaped like ``tensors``, as views of ONE new buffer (``empty_flat``) when they
    share a device and (after ``dtype``) a dtype, so later list ops on them are single ops (``foreach``);
    else separate tensors."""
    tensors = list(tensors)
    dtypes = {dtype or t.dtype for t in tensors}
    if tensors and len(dtypes) == 1 and len({t.device for t in tensors}) == 1:
        flat = empty_flat(numel(tensors), dtypes.pop(), tensors[0].device)
        return unflatten(flat, tensors)
    return [torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device) for t in tensors]


@torch.no_grad()
def flat_parameters_(model_or_params: nn.Module | Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Make the trainable parameters views of ONE flat buffer, in place (values, Parameter objects, their
    ``requires_grad`` and any optimizer state keyed by them are kept); returns them in ``trainable`` order.

    Then loading the global model (``load_``), a client's ``add`` to an aggregator and the server step are
    each one op instead of one per tensor, which keeps them fast when other processes load every core.
    Call it after ``model.to(device)`` and before ``torch.compile``. Parameters of mixed dtypes or devices
    are left alone (a no-op). Gradients stay separate tensors."""
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
    """Detached copies (optionally cast), e.g. a snapshot of the global model; views of one new buffer when
    the tensors share a device and dtype (``flat_empty_like``), so list ops on the copies are single ops."""
    tensors = [t.detach() for t in tensors]
    out = flat_empty_like(tensors, dtype)
    if tensors:
        foreach(torch._foreach_copy_, out, tensors)
    return out


@torch.no_grad()
def zeros_like(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> Tensors:
    """Zeros shaped like ``tensors``; views of one buffer when they share a device and dtype."""
    out = flat_empty_like(tensors, dtype)
    flat = as_flat(out)
    if flat is not None:
        with threads_for(flat.numel(), flat.device):
            flat.zero_()
    else:
        for t in out:
            t.zero_()
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
    return list(foreach(torch._foreach_sub, [t.detach() for t in a], [t.detach() for t in b]))


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
    out, i = [], 0
    for t in like:
        out.append(flat[i:i + t.numel()].view_as(t))
        i += t.numel()
    if i != flat.numel():
        raise ValueError(f"flat buffer has {flat.numel()} elements, tensors need {i}")
    return out


def _check(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> None:
    if len(a) != len(b):
        raise ValueError(f"parameter lists differ in length: {len(a)} vs {len(b)}")
