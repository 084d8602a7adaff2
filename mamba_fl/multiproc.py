"""What the mamba_fl round loop needs under ``torchrun`` beyond ``common.distributed``.

Each rank trains its share of a round's clients; these helpers move the small per-client pieces the
aggregate alone does not carry: the clients' logged metrics (and FedEntropy's entropies, which fix every
client's weight), persistent client optimizer states, and the client-delta snapshots rank 0 writes. All are
no-ops in a single process.
"""
from __future__ import annotations

import torch

from common import distributed


def gather_rows(rows: dict[int, dict]) -> dict[int, dict]:
    """Every rank's {client: metrics} merged, on every rank (one small all-gather of Python objects)."""
    merged: dict[int, dict] = {}
    for part in distributed.all_gather_object(rows):
        merged.update(part)
    return merged


@torch.no_grad()
def scale_accumulators_(agg, factor: float) -> None:
    """Multiply an aggregator's sums (the total weight included) by ``factor``: re-bases a rank's weights
    w_k = exp(-(H_k - H_rank) / T) onto the round's common reference before the sums are added up."""
    for t in agg.accumulators():
        t.mul_(factor)


def sync_client_states(states: dict[int, object], plan: list[list[int]], to_list, from_list) -> None:
    """Copy each trained client's optimizer state from the rank that trained it to every rank, so the
    next round may give that client to any rank and rank 0's checkpoint holds them all.

    ``to_list(state)`` makes a picklable CPU copy, ``from_list(copy)`` the live state. One broadcast per rank.
    """
    if not distributed.is_distributed():
        return
    me = distributed.rank()
    for src, clients in enumerate(plan):
        if not clients:
            continue
        payload = {k: to_list(states[k]) for k in clients} if src == me else None
        payload = distributed.broadcast_object(payload, src=src)
        if src != me:
            states.update({k: from_list(v) for k, v in payload.items()})


def gather_snapshot_arrays(snaps, prefix: str = "client") -> None:
    """Bring the ``<prefix>*`` arrays every rank recorded into rank 0's ``snaps`` (the only writer)."""
    if snaps is None or not distributed.is_distributed():
        return
    mine = {k: v for k, v in snaps.arrays.items() if k.startswith(prefix)}
    parts = distributed.all_gather_object(mine)
    if distributed.is_main():
        for part in parts:
            snaps.arrays.update(part)
    else:
        for k in mine:
            del snaps.arrays[k]
