"""Quadratic clients for the round engine's tests (tests/common/test_engine.py, test_aggregators.py): client k's
loss 0.5 ||A_k theta - b_k||^2, trained by the engine's hooks, so every rule can be written out by hand."""
from __future__ import annotations

import torch

from common import engine

DIM, K = 3, 4


def problem(seed: int = 0):
    """Client k's loss 0.5 ||A_k theta - b_k||^2 (A_k, b_k drawn per client), sizes n_k."""
    g = torch.Generator().manual_seed(seed)
    A = [torch.randn(5, DIM, generator=g, dtype=torch.float64) for _ in range(K)]
    b = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(K)]
    return A, b, [3.0, 1.0, 2.0, 4.0]


class Quadratic(engine.Task):
    """Every client takes ``steps`` optimizer steps on its quadratic; the engine's hook adjusts the gradient."""

    def __init__(self, A, b, sizes, rounds=3, per_round=K, lr=0.05, steps=3, momentum=0.0):
        self.A, self.b, self.sizes, self.steps = A, b, sizes, steps
        self.theta = torch.nn.Parameter(torch.ones(DIM, dtype=torch.float64))
        self.params, self.device, self.seed = [self.theta], torch.device("cpu"), 0
        self.rounds, self.eval_every, self.per_round, self._lr = rounds, 1, per_round, lr
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)

    def lr(self, r):
        return self._lr

    def client_loss(self, k):
        with torch.no_grad():
            return float(0.5 * ((self.A[k] @ self.theta - self.b[k]) ** 2).sum())

    def train_client(self, k, r, opt, algo):
        total = torch.zeros((), dtype=torch.float64)
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * ((self.A[k] @ self.theta - self.b[k]) ** 2).sum()
            loss.backward()
            algo.adjust_grads(self.params)
            opt.step()
            total += loss.detach()
        return {"loss": total, "steps": self.steps}


def grad(A, b, theta):
    return A.T @ (A @ theta - b)
