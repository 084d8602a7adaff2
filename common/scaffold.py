"""SCAFFOLD control variates (option II of Karimireddy et al. 2020): per-client and server controls (views of
one buffer each), the gradient correction c - c_i and the server step; the round's sums in one flat buffer,
so one all-reduce combines ranks (``common.distributed``)."""
from __future__ import annotations

import torch

from common import client_store as CS
from common import params as P
from common.params import Tensors
from common.server_opt import _as_dtype


class Scaffold:
    """SCAFFOLD option II bookkeeping, x the global parameters, N clients.

    Client i trains from y = x with y <- y - lr_l (g(y) + c - c_i) (``correction(i)``), then
    ``client_update(i, x, y, K, lr_l)``: dy = y - x; dc = -c + (x - y) / (K lr_l); c_i <- c_i + dc; dy and dc
    summed into ``accumulators()``. ``server_update(x)``: x <- x + lr_g mean_i dy_i; c <- c + (1/N) sum_i dc_i.
    ``sum_dy`` False (x moved by another aggregator): dy is not summed and ``server_update(None)`` updates c only.
    c_i persist across rounds (zero until seen) in a client-store table (``common.client_store``): its own in
    memory (its ``state_dict`` then holds them), or a run's on disk (``use_table``; its store checkpoints them).
    ``client_weights`` (e.g. sizes n_i, p_i = n_i / sum_j n_j over
    ALL clients) weight both means instead: x <- x + lr_g sum_S n_i dy_i / sum_S n_i, c <- c + sum_S p_i dc_i,
    which keeps c = sum_i p_i c_i as the uniform means keep c = mean_i c_i.
    """

    def __init__(self, like, num_clients: int, server_lr: float = 1.0, acc_dtype: torch.dtype = torch.float32,
                 client_weights=None):
        w = None if client_weights is None else [float(v) for v in client_weights]
        if w is not None and (len(w) != num_clients or min(w) < 0 or not sum(w) > 0):
            raise ValueError(f"client_weights must be {num_clients} non-negative numbers with a positive sum")
        self.num_clients, self.server_lr, self.client_weights = num_clients, server_lr, w
        self.sum_dy = True
        self.c = P.zeros_like(like, dtype=acc_dtype)
        self.c_i, self._owns_table = CS.ClientStore().table("c_i"), True
        # one flat buffer: [sum w dy | sum dc | sum w | clients], so a single all-reduce combines ranks
        n = P.numel(self.c)
        self._flat = torch.zeros(2 * n + 2, dtype=acc_dtype, device=self.c[0].device)
        self._sum_dy = P.unflatten(self._flat[:n], self.c)
        self._sum_dc = P.unflatten(self._flat[n:2 * n], self.c)

    def use_table(self, table: CS.Table) -> None:
        """Keep the c_i in ``table`` (a run's client store) from now on."""
        self.c_i, self._owns_table = table, False

    def control(self, client: int) -> Tensors:
        """A copy of c_i (zeros for a client never updated), on the controls' device."""
        row = self.c_i.get(client)
        if row is None:
            return P.zeros_like(self.c)  # one buffer: the list ops on it are single ops
        return P.clone([t.to(self.c[0].device) for t in row])

    @torch.no_grad()
    def correction(self, client: int) -> Tensors:
        """c - c_i: add it to the client's gradient before every local step."""
        return P.foreach(torch._foreach_sub, self.c, self.control(client))

    @torch.no_grad()
    def client_update(self, client: int, x, y, local_steps: int, local_lr: float) -> tuple[Tensors, Tensors]:
        """Record client ``client``'s round (x: the global params it started from, y: its final ones): updates
        c_i and adds dy, dc to the round's sums with the client's weight; returns (dy, dc)."""
        if local_steps < 1 or local_lr <= 0:
            raise ValueError(f"SCAFFOLD needs local_steps >= 1 and local_lr > 0, got {local_steps}, {local_lr}")
        dtype = self.c[0].dtype
        dy = P.foreach(torch._foreach_sub, _as_dtype(y, dtype), _as_dtype(x, dtype))
        dc = P.foreach(torch._foreach_mul, dy, scalar=-1.0 / (local_steps * local_lr))  # (x - y) / (K lr_l)
        P.foreach(torch._foreach_sub_, dc, self.c)
        c_i = self.control(client)
        P.foreach(torch._foreach_add_, c_i, dc)
        self.c_i.put(client, c_i)
        weight, dc_weight = 1.0, 1.0
        if self.client_weights is not None:  # n_i for dy's mean; N p_i for dc, as server_update divides by N
            weight = self.client_weights[client]
            dc_weight = self.num_clients * weight / sum(self.client_weights)
        if self.sum_dy:
            P.foreach(torch._foreach_add_, self._sum_dy, dy, alpha=weight)
        P.foreach(torch._foreach_add_, self._sum_dc, dc, alpha=dc_weight)
        self._flat[-2] += weight
        self._flat[-1] += 1
        return dy, dc

    def accumulators(self) -> Tensors:
        return [self._flat]

    @torch.no_grad()
    def server_update(self, x) -> None:
        """x <- x + lr_g mean dy (x None: x was moved elsewhere); c <- c + sum dc / N from the round's
        accumulators; then clears them."""
        total = float(self._flat[-2])
        if not total > 0:
            raise ValueError("Scaffold.server_update(): no client_update() this round")
        if x is not None:
            P.foreach(torch._foreach_add_, list(x), self._sum_dy, alpha=self.server_lr / total)
        P.foreach(torch._foreach_add_, self.c, self._sum_dc, alpha=1.0 / self.num_clients)
        self._flat.zero_()

    def state_dict(self) -> dict:
        """c, the round's sums, and the c_i only when they are its own (a run's store checkpoints its table)."""
        return {"num_clients": self.num_clients, "c": [t.clone() for t in self.c], "acc": self._flat.clone(),
                **({"c_i": self.c_i.state_dict()} if self._owns_table else {})}

    def load_state_dict(self, state: dict) -> None:
        if state["num_clients"] != self.num_clients or len(state["c"]) != len(self.c):
            raise ValueError("SCAFFOLD state is for a different federation or model")
        P.foreach(torch._foreach_copy_, self.c, list(state["c"]))
        self._flat.copy_(state["acc"])
        saved = state.get("c_i", {})
        if "schema" in saved:  # its own table's state
            self.c_i.load_state_dict(saved)
        else:  # a checkpoint from before the client store: {client: c_i}
            for k, v in saved.items():
                self.c_i.put(int(k), list(v))
