"""One federated round, model-agnostic: local steps with the FedProx / SCAFFOLD hooks and the streaming
server side. ``train.py`` runs it on a causal LM; the tests run the very same functions on quadratics.

Algorithms:
* FedAvg: theta <- sum_k n_k theta_k / sum_k n_k (then the server optimizer, plain replacement at lr 1).
* FedProx: the local loss gets + (mu/2) ||theta - theta_global||^2, anchored at this round's global model;
  mu = 0 is exactly FedAvg (the hook adds mu (theta - theta_global) to the gradient).
* SCAFFOLD option II: plain SGD steps y <- y - lr (g(y) - c_i + c); c_i+ = c_i - c + (x - y) / (K lr);
  x <- x + server_lr * mean_k(dy_k); c <- c + sum_k(dc_k) / N with the paper's uniform means, or both
  means size-weighted (``Scaffold(client_weights=sizes)``). Client control variates persist across rounds
  (``common.scaffold.Scaffold``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from common import distributed as D
from common import params as P
from common.aggregate import WeightedMean
from common.cli import UsageError

LOCAL_OPTIMIZERS = ("sgd", "adamw")


@dataclass
class LocalStats:
    steps: int
    loss: float        # mean data loss over the local steps
    grad_norm: float   # mean L2 norm of the data-loss gradient over the local steps
    prox: float        # (mu/2) ||theta - theta_global||^2 at the end of local training


def check_local_optimizer(algorithm: str, optimizer: str) -> None:
    """SCAFFOLD's correction assumes plain SGD steps; an adaptive optimizer would rescale it."""
    if optimizer not in LOCAL_OPTIMIZERS:
        raise UsageError(f"--local-optimizer {optimizer!r} is unknown; expected one of {', '.join(LOCAL_OPTIMIZERS)}")
    if algorithm == "scaffold" and optimizer != "sgd":
        raise UsageError(f"SCAFFOLD needs plain SGD local steps (its control variates assume them); "
                         f"got --local-optimizer {optimizer}: use --local-optimizer sgd")


def local_train(params: list[torch.Tensor], loss_fn: Callable[[object], torch.Tensor], batches: Iterable,
                *, lr: float, optimizer: str = "sgd", weight_decay: float = 0.0, mu: float = 0.0,
                anchor: list[torch.Tensor] | None = None, correction: list[torch.Tensor] | None = None,
                max_grad_norm: float = 0.0) -> LocalStats:
    """Local steps on ``params`` (leaf tensors, trained in place) over ``batches``.

    Per step: g = grad of loss_fn(batch) (clipped to max_grad_norm when > 0), then g += mu (theta - anchor)
    (FedProx) and g += correction (SCAFFOLD's c - c_i), then one optimizer step.
    """
    opt = None if optimizer == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps, loss_sum, gnorm_sum = 0, 0.0, 0.0  # become device tensors: no host sync per step
    for batch in batches:
        for p in params:
            p.grad = None
        loss = loss_fn(batch)
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        if max_grad_norm > 0:
            torch._foreach_mul_(grads, (max_grad_norm / (gnorm + 1e-6)).clamp(max=1.0))
        with torch.no_grad():
            if mu > 0:
                torch._foreach_add_(grads, torch._foreach_sub([p.detach() for p in params], anchor), alpha=mu)
            if correction is not None:
                torch._foreach_add_(grads, correction)
            if opt is None:  # plain SGD: theta <- theta - lr (g + wd theta)
                if weight_decay:
                    torch._foreach_add_(grads, [p.detach() for p in params], alpha=weight_decay)
                torch._foreach_add_([p.detach() for p in params], grads, alpha=-lr)
        if opt is not None:
            opt.step()
        steps += 1
        loss_sum = loss_sum + loss.detach().float()
        gnorm_sum = gnorm_sum + gnorm.detach().float()
    prox = 0.0
    if mu > 0 and anchor is not None:
        prox = 0.5 * mu * P.norm(P.sub(params, anchor)) ** 2
    return LocalStats(steps, float(loss_sum) / max(steps, 1), float(gnorm_sum) / max(steps, 1), prox)


def client_round(params: list[torch.Tensor], global_params: list[torch.Tensor], loss_fn, batches, *,
                 algorithm: str, lr: float, optimizer: str = "sgd", mu: float = 0.0, weight_decay: float = 0.0,
                 max_grad_norm: float = 0.0, scaffold=None, client: int = 0) -> LocalStats:
    """Start the ONE model object from the global model (in place), train locally, and for SCAFFOLD update
    the client's control variate c_i and the round's sums (weighted as the Scaffold object says).
    Returns the LocalStats; afterwards ``params`` hold the client's model."""
    P.load_(params, global_params)
    correction = scaffold.correction(client) if algorithm == "scaffold" else None
    stats = local_train(params, loss_fn, batches, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                        mu=mu if algorithm == "fedprox" else 0.0, anchor=global_params,
                        correction=correction, max_grad_norm=max_grad_norm)
    if algorithm == "scaffold":
        scaffold.client_update(client, global_params, params, max(stats.steps, 1), lr)
    return stats


class RoundServer:
    """Streams client results of one round (O(parameters) memory) and applies the server update.

    Also measures client update divergence on the updates d_k = theta_k - x: the weighted RMS of
    ||theta_k - theta_bar|| = ||d_k - d_bar||, from sum_k w_k ||d_k||^2 and ||d_bar||^2 (float64), and the
    weight cosine drift 1 - cos(theta_k, x) averaged over clients.
    """

    def __init__(self, global_params: list[torch.Tensor]):
        self.x = global_params
        self.mean = WeightedMean(global_params)
        # float64 flat copies: ||d_k||^2 is later differenced with ||d_bar||^2, which float32 would not survive
        self._x64 = P.flatten(global_params, torch.float64)
        self._x_norm = torch.linalg.vector_norm(self._x64)
        # one scratch buffer, reused by every client of the round: theta_k, then d_k = theta_k - x in place
        # (so the metrics cost 16 bytes per parameter: this buffer and x64)
        self._client = torch.empty_like(self._x64)
        self._client_views = P.unflatten(self._client, global_params)
        # [sum_k w_k ||d_k||^2, sum_k (1 - cos(theta_k, x))] stay on the device: no host sync per client
        self._sums = torch.zeros(2, dtype=torch.float64, device=self._x64.device)
        self.w_sum, self.n = 0.0, 0

    @torch.no_grad()
    def add(self, client_params: list[torch.Tensor], weight: float) -> None:
        self.mean.add(client_params, weight)
        torch._foreach_copy_(self._client_views, [p.detach() for p in client_params])  # cast to float64
        cos = torch.dot(self._client, self._x64) / (torch.linalg.vector_norm(self._client) * self._x_norm
                                                     ).clamp_min(1e-12)
        d = self._client.sub_(self._x64)
        self._sums[0] += weight * torch.dot(d, d)
        self._sums[1] += 1.0 - cos
        self.w_sum += weight
        self.n += 1

    def all_reduce_(self, per_client: torch.Tensor | None = None, scaffold=None) -> None:
        """Under torchrun: sum this round's streams over ranks in place, so every rank then holds the round
        over ALL clients (each rank ``add()``-ed only its own share). Also sums ``per_client`` (a float64
        table a rank fills only in its own clients' rows) and SCAFFOLD's dy / dc sums. The tensors go
        through ``common.distributed.all_reduce_sum_``: one collective per dtype (float32 model-sized
        buffers, float64 scalars). A no-op in a single process."""
        if not D.is_distributed():
            return
        counts = torch.tensor([self.w_sum, self.n], dtype=torch.float64, device=self._sums.device)
        tensors = [*self.mean.accumulators(), self._sums, counts]
        if scaffold is not None:
            tensors += scaffold.accumulators()
        if per_client is not None:
            tensors.append(per_client)
        D.all_reduce_sum_(tensors)
        w_sum, n = counts.tolist()
        self.w_sum, self.n = w_sum, int(round(n))

    def finish(self, algorithm: str, server_opt=None, scaffold=None) -> dict:
        """Apply the update to ``x`` in place; return divergence metrics."""
        avg = self.mean.result()
        torch._foreach_copy_(self._client_views, avg)  # the mean, in the float64 scratch buffer
        avg_norm = torch.linalg.vector_norm(self._client)
        d_bar = self._client.sub_(self._x64)
        # the round's one read of the per-client sums and of the mean's norms
        w_sq_norm, cos_drift, d_bar_sq, avg_norm = torch.stack([*self._sums, torch.dot(d_bar, d_bar),
                                                                avg_norm]).tolist()
        mean_sq = w_sq_norm / max(self.w_sum, 1e-12) - d_bar_sq
        divergence = max(mean_sq, 0.0) ** 0.5
        if algorithm == "scaffold":
            scaffold.server_update(self.x)  # its own sums: x += lr_g sum w dy / sum w; c += sum dc / N
        else:
            server_opt.step(self.x, avg)
        return {"client_divergence": divergence, "client_divergence_rel": divergence / max(avg_norm, 1e-12),
                "cosine_drift": cos_drift / max(self.n, 1), "update_norm": d_bar_sq ** 0.5}
