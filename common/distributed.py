"""Splitting a round's clients across ``torchrun`` ranks and combining them with one all-reduce.

Every rank trains its share of the round's clients (``assign_clients``) into its own aggregator;
``reduce_aggregator_`` sums the accumulators across ranks, so every rank applies the same server step. Rank 0
logs and checkpoints (``is_main()``); evaluation is sharded (``my_share``). Without torchrun everything is a
no-op. Client randomness is keyed by (seed, round, client), so results do not depend on the spread over ranks
(up to float summation order).
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist

from common import params as P


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> tuple[int, int]:
    """Join torchrun's process group (nccl on GPU ``LOCAL_RANK``, else gloo); (rank, world_size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank(), world_size()


def device_for_rank(requested: torch.device) -> torch.device:
    """The rank's own GPU when running distributed on CUDA, else ``requested``."""
    return torch.device("cuda", local_rank()) if requested.type == "cuda" and is_distributed() else requested


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group():
    """``init`` for the block, yielding (rank, world_size); left after it unless the caller (a test) had set it up."""
    owned = not is_distributed()
    try:
        yield init()
    finally:
        if owned:
            cleanup()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def main_first(fn: Callable):
    """``fn()`` on rank 0 first, then on the others: rank 0 alone downloads data, builds caches and the run
    directory, which the other ranks then read."""
    if not is_main():
        barrier()
    out = fn()
    if is_main():
        barrier()
    return out


def assign_clients(clients: Sequence[int], sizes: Sequence[float], world_size: int) -> list[list[int]]:
    """Split ``clients`` over ranks balancing their total ``size`` (a proxy for training time): greedy LPT, by
    decreasing size (ties: order in ``clients``) to the least-loaded rank (ties: lowest). Order kept per rank."""
    if len(clients) != len(sizes):
        raise ValueError(f"{len(clients)} clients but {len(sizes)} sizes")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0.0] * world_size
    owner = {}
    for pos in sorted(range(len(clients)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda j: (loads[j], j))
        loads[r] += sizes[pos]
        owner[pos] = r
    return [[clients[i] for i in range(len(clients)) if owner[i] == r] for r in range(world_size)]


@torch.no_grad()
def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` across ranks in place: one flat all-reduce per (device, dtype) group."""
    if not is_distributed() or not tensors:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        if len(group) == 1 and group[0].is_contiguous():
            dist.all_reduce(group[0])
        else:
            _through_flat(group, dist.all_reduce)


def _through_flat(tensors: Sequence[torch.Tensor], op, device=None) -> None:
    """``op`` on one flat copy of ``tensors`` (on ``device``), written back into them."""
    flat = P.flatten(tensors).to(device or tensors[0].device)
    op(flat)
    for t, part in zip(tensors, P.unflatten(flat, tensors)):
        t.copy_(part)


def reduce_aggregator_(agg) -> None:
    """All-reduce an aggregator's accumulators in place, so its result covers every rank's clients."""
    all_reduce_sum_(agg.accumulators())


def broadcast_object(obj=None, src: int = 0):
    """``obj`` from rank ``src`` on every rank (any picklable object); returns it unchanged when single."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (any picklable object), in rank order, on every rank; ``[obj]`` when single."""
    if not is_distributed():
        return [obj]
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def my_share(items: Iterable):
    """This rank's items rank, rank + N, ... of ``items`` (the others are produced too: see ``my_batch_starts``)."""
    return itertools.islice(items, rank(), None, world_size())


def my_batch_starts(n: int, batch_size: int, shard: bool = True) -> range:
    """Start offsets of this rank's batches of ``batch_size`` over ``n`` items, round-robin as ``my_share``."""
    r, w = (rank(), world_size()) if shard else (0, 1)
    return range(r * batch_size, n, w * batch_size)
