"""CONTRACT STUB (to be implemented): client partitioners returning index arrays.

All return ``list[np.ndarray]`` (one sorted int64 index array per client), deterministic for a seed.
"""
from __future__ import annotations
import numpy as np

def iid(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Random permutation cut into sizes within one of each other."""
    raise NotImplementedError
def contiguous(n: int, num_clients: int) -> list[np.ndarray]:
    """Consecutive blocks in order (the source split of a token stream)."""
    raise NotImplementedError
def pathological(labels: np.ndarray, num_clients: int, nc: int, seed: int) -> list[np.ndarray]:
    """Exactly ``nc`` distinct classes per client, every sample used."""
    raise NotImplementedError
def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 1,
              max_tries: int = 1000) -> list[np.ndarray]:
    """Per-class proportions over clients ~ Dir(alpha); resample until each client has min_size."""
    raise NotImplementedError
def overlap(n: int, num_clients: int, overlap_ratio: float, seed: int) -> list[np.ndarray]:
    """Own disjoint part plus a shared fraction ``overlap_ratio`` of each client's data."""
    raise NotImplementedError
def category(categories: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Clients grouped by category; no empty client when clients outnumber categories."""
    raise NotImplementedError
def sorted_blocks(scores: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Sort by a per-example score, cut into contiguous blocks (style/length skew)."""
    raise NotImplementedError
def statistics(shards: list[np.ndarray], labels: np.ndarray | None = None, num_classes: int | None = None) -> dict:
    """Per-client sizes, label histograms, classes per client, and summary numbers."""
    raise NotImplementedError
def write_manifests(shards: list[np.ndarray], out_dir, summary_extra: dict | None = None,
                    labels: np.ndarray | None = None) -> None:
    """``client_<i>.json`` with ``indices`` and ``summary.json``, written atomically."""
    raise NotImplementedError
def read_manifests(shard_dir) -> tuple[list[np.ndarray], dict]:
    """(shards, summary); UsageError if the folder has no manifests."""
    raise NotImplementedError
