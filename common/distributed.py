"""Splitting a round's clients across ``torchrun`` ranks and combining them with one all-reduce.

Under ``torchrun --nproc-per-node N script.py ...`` every rank builds the same global model, trains its
share of the round's clients (``assign_clients``) into its own streaming aggregator, and
``reduce_aggregator_`` sums the aggregators' flat accumulators across ranks in place; every rank then
holds the aggregate over all clients and applies the same server step. Rank 0 logs and checkpoints
(``is_main()``). Evaluation of the global model is sharded: every rank scores ``my_share`` of the batches
and one all-reduce adds up the metric sums (``common.evaluate``, ``shard=True``). Without torchrun (no
WORLD_SIZE in the environment) everything is a no-op for one process.
Because client randomness comes from ``common.seed`` streams keyed by (seed, round, client), the result
does not depend on how clients are spread over ranks (up to float summation order).
"""
from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist


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
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    Backend: nccl when CUDA is available (and each rank takes GPU ``LOCAL_RANK``), gloo otherwise.
    Returns (rank, world_size); (0, 1) without torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return rank(), world_size()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return rank(), world_size()


def device_for_rank(requested: torch.device) -> torch.device:
    """The rank's own GPU when running distributed on CUDA, else ``requested``."""
    if requested.type == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return requested


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def assign_clients(clients: Sequence[int], sizes: Sequence[float], world_size: int) -> list[list[int]]:
    """Split ``clients`` over ranks so each rank's total ``size`` (a proxy for its training time) is balanced.

    Greedy LPT: clients by decreasing size (ties: order in ``clients``) each go to the least-loaded rank
    (ties: lowest rank). Deterministic; each rank's list keeps the order of ``clients``.
    """
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
    """Sum ``tensors`` across ranks in place: one flat all-reduce per (device, dtype) group.

    A single contiguous tensor is reduced directly; several are packed into one buffer and unpacked.
    """
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
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(device or tensors[0].device)
    op(flat)
    i = 0
    for t in tensors:
        t.copy_(flat[i:i + t.numel()].view_as(t))
        i += t.numel()


def reduce_aggregator_(agg) -> None:
    """All-reduce an aggregator's accumulators (``WeightedMean``, ``FisherMean``,
    ``Scaffold``...) in place, so ``result()`` / ``server_update()`` then covers every rank's clients."""
    all_reduce_sum_(agg.accumulators())


@torch.no_grad()
def sync_controls_(scaffold, assignment: Sequence[Sequence[int]]) -> None:
    """After a SCAFFOLD round, copy each trained client's updated c_i from the rank that trained it
    (``assignment[r]`` = rank r's clients) to every rank, so every rank (and rank 0's checkpoint) holds
    all control variates. One broadcast per client, memory O(parameters)."""
    if not is_distributed():
        return
    for src, clients in enumerate(assignment):
        for client in clients:
            _through_flat(scaffold.control(client), functools.partial(dist.broadcast, src=src), scaffold.c[0].device)


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
    """This rank's part of ``items`` for sharded evaluation: items rank, rank + N, rank + 2N, ... for N
    ranks (round-robin, so batches of unequal cost spread evenly); every item in a single process.
    The skipped items are still produced by ``items``: where batches are cut from an indexable split,
    ``my_batch_starts`` avoids building them."""
    if not is_distributed() or world_size() == 1:
        return iter(items)
    return itertools.islice(items, rank(), None, world_size())


def my_batch_starts(n: int, batch_size: int, shard: bool = True) -> range:
    """Start offsets of this rank's batches of ``batch_size`` over ``n`` items, in the same round-robin
    order as ``my_share`` (every batch when ``shard`` is False or in a single process)."""
    r, w = (rank(), world_size()) if shard else (0, 1)
    return range(r * batch_size, n, w * batch_size)
