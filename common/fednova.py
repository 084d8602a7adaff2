"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization"): normalized averaging for clients running different numbers of plain SGD steps.

Client k runs tau_k local SGD steps from x to theta_k (a_k = tau_k: plain SGD, no momentum). The server step

    x <- x - tau_eff sum_k p_k (x - theta_k) / tau_k,   tau_eff = sum_k p_k tau_k,   p_k = n_k / sum_S n_j,

averages each client's mean step per local iteration instead of its whole update, so a client taking more steps
does not pull the global model toward its own optimum (FedAvg's objective inconsistency). Through the
aggregator: with weights w_k = n_k / tau_k (``client_weight``) the mean is A = sum_k w_k theta_k / sum_k w_k and

    x <- x + s (A - x),   s = tau_eff (sum_k w_k) / (sum_k n_k) = (sum_S n_k tau_k)(sum_S n_k / tau_k) / (sum_S n_k)^2,

s >= 1 (Cauchy-Schwarz), = 1 when every client ran as many steps: then FedNova IS FedAvg.
``normalized_average`` is the first formula written out, for tests and readers.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from common import params as P
from common.algorithms import FedAvg, register
from common.params import Tensors
from common.server_opt import _as_dtype


def normalized_average(x: Sequence[torch.Tensor], thetas: Sequence[Sequence[torch.Tensor]],
                       sizes: Sequence[float], steps: Sequence[int]) -> Tensors:
    """FedNova's new global model from x and the clients' (theta_k, n_k, tau_k), the paper's formula directly
    (float64 sums; the result in x's dtypes)."""
    total = float(sum(sizes))
    p = [n / total for n in sizes]
    tau_eff = sum(pk * t for pk, t in zip(p, steps))
    out = []
    for i, xi in enumerate(x):
        step = sum(pk * (xi.double() - th[i].double()) / t for pk, th, t in zip(p, thetas, steps))
        out.append((xi.double() - tau_eff * step).to(xi.dtype))
    return out


@register
class FedNova(FedAvg):
    """FedNova's normalized averaging over the mean aggregator (``client_weight`` n_k / tau_k, then the server
    step's extrapolation factor s); per cluster the round's sums [sum n, sum n tau, sum n / tau] in one float64
    buffer (``accumulators``). Local steps must be plain SGD (``plain_sgd``): with momentum or Adam the
    normalizer a_k is no longer tau_k. The server optimizer then steps toward x + s (A - x) (fedavg, server lr 1:
    the paper's step)."""

    name, flags = "fednova", ()
    up, down = 1, 1        # theta_k (and the scalar tau_k) up, x down
    plain_sgd = True

    def __init__(self, cluster_models: Sequence[Sequence[torch.Tensor]], sizes: Sequence[float],
                 acc_dtype: torch.dtype = torch.float32):
        self.sizes, self.acc_dtype = [float(n) for n in sizes], acc_dtype
        self._sums = [torch.zeros(3, dtype=torch.float64, device=x[0].device) for x in cluster_models]
        self.cluster = 0

    @classmethod
    def from_args(cls, args, cluster_models, sizes, assign=None, shift: bool = False) -> FedNova:
        return cls(cluster_models, sizes)

    @classmethod
    def refuse(cls, args) -> str | None:
        agg = getattr(args, "aggregator", "mean")
        if agg != "mean":
            return (f"--algorithm fednova needs --aggregator mean (here {agg}): its normalized averaging is a mean "
                    "with weights n_k / tau_k and an extrapolation by tau_eff")
        return None

    def client_weight(self, k: int, size: float, steps: int) -> float:
        """n_k / tau_k (0 for a client that took no step: it moved nowhere)."""
        return float(size) / steps if steps >= 1 else 0.0

    def client_start(self, k: int, anchor, cluster: int = 0) -> None:
        self.anchor, self.cluster = anchor, cluster

    def client_end(self, k: int, params, steps: int, lr: float) -> None:
        if steps >= 1:  # three scalar adds: the sums may live on a GPU
            n, sums = self.sizes[k], self._sums[self.cluster]
            sums[0] += n
            sums[1] += n * steps
            sums[2] += n / steps

    def accumulators(self) -> Tensors:
        return list(self._sums)

    def factor(self, cluster: int = 0) -> float:
        """s = tau_eff (sum_k n_k / tau_k) / (sum_k n_k) of the round's clients so far."""
        n, n_tau, n_over_tau = self._sums[cluster].tolist()
        if not n > 0:
            raise ValueError("FedNova.server_step(): no client with a local step and data this round")
        return n_tau * n_over_tau / (n * n)

    @torch.no_grad()
    def server_step(self, x, aggregate, server, cluster: int = 0) -> None:
        """x <- server.step(x, x + s (A - x)); A the aggregator's result (or a function returning it). With equal
        steps s is 1 up to rounding and the target is A itself (FedAvg's step, bit for bit)."""
        mean = aggregate() if callable(aggregate) else aggregate
        s = self.factor(cluster)
        if abs(s - 1.0) <= 1e-12:
            target = mean
        else:
            xs = _as_dtype(list(x), self.acc_dtype)
            target = P.foreach(torch._foreach_sub, _as_dtype(mean, self.acc_dtype), xs)
            P.foreach(torch._foreach_mul_, target, scalar=s)
            P.foreach(torch._foreach_add_, target, xs)
        server.step(x, target)
        self._sums[cluster].zero_()

    def state_dict(self) -> dict:
        return {"name": self.name, "sums": [s.clone() for s in self._sums]}

    def load_state_dict(self, state) -> None:
        if not isinstance(state, dict) or state.get("name") != self.name or len(state["sums"]) != len(self._sums):
            raise ValueError("FedNova state is for a different algorithm or clustering")
        for dst, src in zip(self._sums, state["sums"]):
            dst.copy_(src)
