"""Small tensor fixtures shared by the aggregation, server-optimizer and SCAFFOLD tests."""
from __future__ import annotations

import torch

SHAPES = [(4, 3), (5,), (2, 3, 2), (1,)]  # a "model": matrices, vectors, a 3-d tensor and a scalar-like one


def clients(k: int, seed: int = 0, dtype=torch.float32) -> list[list[torch.Tensor]]:
    """``k`` clients' parameter lists shaped like SHAPES, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g).to(dtype) for s in SHAPES] for _ in range(k)]


def close(a, b, tol: float = 1e-6) -> None:
    """Two tensor lists agree elementwise (compared in float64)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x.double(), y.double(), rtol=tol, atol=tol)


BIG = [(257, 129), (1000,), (3, 5, 7), (1,)]  # 34,259 values: many blocks at a small aggregation block size


def big_clients(k: int, seed: int, dtype=torch.float32, positive: bool = False) -> list[list[torch.Tensor]]:
    """``k`` clients' parameter lists shaped like BIG (``positive``: absolute values, e.g. Fisher diagonals)."""
    g = torch.Generator().manual_seed(seed)
    return [[(t.abs() if positive else t).to(dtype) for t in (torch.randn(s, generator=g) for s in BIG)]
            for _ in range(k)]
