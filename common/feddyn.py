"""FedDyn (Acar et al. 2021, "Federated Learning Based on Dynamic Regularization", Algorithm 1) as a client
algorithm: one client hook (the dynamic regularizer's gradient), per-client state, and a server step.

Client k, starting from the global model x, minimizes L_k(theta) - <g_k, theta> + alpha/2 ||theta - x||^2, i.e.
its gradient gets - g_k + alpha (theta - x); after training g_k <- g_k - alpha (theta_k - x) (g_k = grad
L_k(theta_k) at the client's last local optimum; zero until the client is first chosen). The server keeps h:
h <- h - alpha (1/m) sum_{k in S} (theta_k - x) over the round's clients S, m ALL the clients (of the cluster,
under --clustering data), and x <- mean_S theta_k - h / alpha. At a fixed point h = (1/m) sum_k grad L_k(x)
= 0: x is a stationary point of the clients' MEAN loss, whatever the local steps (FedAvg's is not).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from common import client_store as CS
from common import params as P
from common.algorithm_flags import FEDDYN_ALPHA
from common.algorithms import FedAvg, register
from common.params import Tensors
from common.server_opt import _as_dtype

DEFAULT_ALPHA = FEDDYN_ALPHA  # --feddyn-alpha's default


@register
class FedDyn(FedAvg):
    """FedDyn, one h per cluster model; g_k per client (one model per client ever chosen, in float32: in a
    client-store table, its own in memory or a run's on disk, ``use_store``).

    The server step goes through the aggregate: x <- server.step(x, aggregate - h / alpha), the aggregate the
    round's UNWEIGHTED mean of theta_k (``client_weight`` 1, as the paper's mean over S). With --server-opt fedavg
    and server lr 1 that is Algorithm 1; another server optimizer takes mean - h / alpha as its target (the
    fixed point stays the same). Only the mean aggregator: h is a mean of every client's drift, so a robust or
    Fisher aggregate beside it would be neither FedDyn nor robust (``refuse``)."""

    name, flags = "feddyn", ("feddyn_alpha",)
    up, down = 1, 1        # theta_k up, x down: g_k stays with its client
    plain_sgd = False      # the regularizer is a gradient term: any local optimizer applies it

    def __init__(self, cluster_models: Sequence[Sequence[torch.Tensor]], num_clients: int,
                 alpha: float = DEFAULT_ALPHA, members: Sequence[int] | None = None,
                 acc_dtype: torch.dtype = torch.float32):
        if not alpha > 0:
            raise ValueError(f"FedDyn alpha must be > 0, got {alpha}")
        self.alpha, self.num_clients, self.acc_dtype = float(alpha), int(num_clients), acc_dtype
        self.members = [int(m) for m in (members or [num_clients] * len(cluster_models))]
        self.h = [P.zeros_like(x, dtype=acc_dtype) for x in cluster_models]
        self.grads, self._owns_table = CS.ClientStore().table("g"), True  # g_k, zeros until first written
        # per cluster one flat buffer [sum_S (theta_k - x) | clients]: one all-reduce combines ranks
        self._sums = [torch.zeros(P.numel(x) + 1, dtype=acc_dtype, device=x[0].device) for x in cluster_models]
        self.cluster = 0

    # -- construction and refusals ------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args, cluster_models, sizes, assign=None, shift: bool = False) -> FedDyn:
        """Per cluster m = its member count under data clustering (``assign``), else every client."""
        members = None if assign is None else [sum(1 for a in assign if a == g) for g in range(len(cluster_models))]
        return cls(cluster_models, len(sizes), getattr(args, "feddyn_alpha", DEFAULT_ALPHA), members)

    @classmethod
    def refuse(cls, args) -> str | None:
        agg = getattr(args, "aggregator", "mean")
        if agg != "mean":
            return (f"--algorithm feddyn needs --aggregator mean (here {agg}): its correction h is a mean of every "
                    "client's drift, which a robust or weighted aggregate beside it would not make robust")
        # the local optimizer's flag: mamba_fl's --optimizer, llm_noniid's --local-optimizer
        adamw = "adamw" in (getattr(args, "optimizer", None), getattr(args, "local_optimizer", None))
        if adamw and getattr(args, "client_opt_state", "reset") == "persist":
            return ("--algorithm feddyn with AdamW and --client-opt-state persist diverges (mamba_fl --quick: "
                    "validation perplexity 3.5e12, 74 with plain SGD): its g_k update takes the client's drift for its "
                    "gradient, true of plain gradient steps, and the server adds every past drift back (h / alpha); "
                    "AdamW's normalized steps, their moments kept across rounds, keep that sum growing at every "
                    "alpha; use plain SGD local steps or --client-opt-state reset")
        return None

    def client_weight(self, k: int, size: float, steps: int) -> float:
        """The paper's unweighted mean over the round's clients."""
        return 1.0

    # -- client hooks ---------------------------------------------------------------------------------------
    def use_store(self, store) -> None:
        """The g_k in the run's client store, table feddyn_g (under torchrun each rank reads and writes its own
        clients' rows: nothing is broadcast)."""
        self.grads, self._owns_table = store.table("feddyn_g"), False

    def state(self, k: int) -> Tensors:
        """A copy of g_k (zeros until client k is first chosen), on the parameters' device."""
        row = self.grads.get(k)
        if row is None:
            return P.zeros_like(self.h[0])
        return P.clone([t.to(self.h[0][0].device) for t in row])

    def client_start(self, k: int, anchor, cluster: int = 0) -> None:
        self.anchor, self.cluster = anchor, cluster
        self._g = g = self.state(k)  # the per-step update's in the parameters' dtypes (the same when they agree)
        self._g_local = g if all(a.dtype == t.dtype for a, t in zip(anchor, g)) else \
            [t.to(a.dtype) for a, t in zip(anchor, g)]

    @torch.no_grad()
    def adjust_grads(self, params) -> None:
        """grad <- grad - g_k + alpha (theta - x) on the parameters that have a gradient."""
        idx = [i for i, p in enumerate(params) if p.grad is not None]
        if not idx:
            return
        grads = [params[i].grad for i in idx]
        torch._foreach_add_(grads, torch._foreach_sub([params[i].detach() for i in idx],
                                                      [self.anchor[i] for i in idx]), alpha=self.alpha)
        torch._foreach_sub_(grads, [self._g_local[i] for i in idx])

    @torch.no_grad()
    def client_end(self, k: int, params, steps: int, lr: float) -> None:
        """g_k <- g_k - alpha (theta_k - x); theta_k - x into the cluster's round sums."""
        drift = P.foreach(torch._foreach_sub, _as_dtype(list(params), self.acc_dtype),
                          _as_dtype(self.anchor, self.acc_dtype))
        P.foreach(torch._foreach_add_, self._g, drift, alpha=-self.alpha)
        self.grads.put(k, self._g)
        sums = self._sums[self.cluster]
        P.foreach(torch._foreach_add_, P.unflatten(sums[:-1], drift), drift)
        sums[-1] += 1

    def accumulators(self) -> Tensors:
        return list(self._sums)

    # -- server ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def server_step(self, x, aggregate, server, cluster: int = 0) -> None:
        """h <- h - alpha / m sum_S (theta_k - x); x <- server.step(x, aggregate - h / alpha). ``aggregate``: the
        aggregator's result (or a function returning it)."""
        mean = aggregate() if callable(aggregate) else aggregate
        sums, h = self._sums[cluster], self.h[cluster]
        if not float(sums[-1]) > 0:
            raise ValueError("FedDyn.server_step(): no client_end() this round")
        P.foreach(torch._foreach_add_, h, P.unflatten(sums[:-1], h), alpha=-self.alpha / self.members[cluster])
        target = P.foreach(torch._foreach_add, _as_dtype(mean, self.acc_dtype), h, alpha=-1.0 / self.alpha)
        server.step(x, target)
        sums.zero_()

    def state_dict(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "num_clients": self.num_clients, "members": self.members,
                "h": [[t.clone() for t in h] for h in self.h], "sums": [s.clone() for s in self._sums],
                **({"grads": self.grads.state_dict()} if self._owns_table else {})}

    def load_state_dict(self, state) -> None:
        if (not isinstance(state, dict) or state.get("name") != self.name or state["num_clients"] != self.num_clients
                or len(state["h"]) != len(self.h)):
            raise ValueError("FedDyn state is for a different algorithm, federation or clustering")
        self.alpha, self.members = float(state["alpha"]), [int(m) for m in state["members"]]
        for dst, src in zip(self.h, state["h"]):
            P.foreach(torch._foreach_copy_, dst, list(src))
        for dst, src in zip(self._sums, state["sums"]):
            dst.copy_(src)
        saved = state.get("grads", {})
        if "schema" in saved:  # its own table's state
            self.grads.load_state_dict(saved)
        else:  # a checkpoint from before the client store: {client: g_k}
            for k, g in saved.items():
                self.grads.put(int(k), list(g))
