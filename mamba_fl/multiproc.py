"""What the mamba_fl rounds need under ``torchrun`` beyond ``common.engine`` (which gathers the clients'
metrics, all-reduces the aggregators and syncs the client optimizer states): re-basing FedEntropy's
weights and the client-delta snapshots rank 0 writes. No-ops in a single process.
"""
from __future__ import annotations

import torch

from common import distributed


@torch.no_grad()
def scale_accumulators_(agg, factor: float) -> None:
    """Multiply an aggregator's sums (the total weight included) by ``factor``: re-bases a rank's weights
    w_k = exp(-(H_k - H_rank) / T) onto the round's common reference before the sums are added up."""
    for t in agg.accumulators():
        t.mul_(factor)


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
