"""Server-side math of a federated round: streaming aggregators, server optimizers, SCAFFOLD, LoRA merges.

Streaming aggregators (``WeightedMean``, ``FisherMean``, ``MaskedMean``) take one client at a time with
``add(...)``, so memory is O(parameters) whatever the number of clients K. Each keeps its running sums in
ONE flat buffer per quantity (the per-parameter tensors are views of it), which gives:

* ``add`` is one fused ``torch._foreach_*`` call over the parameter list (no per-key copies to float and
  back); a client given as one flat buffer (``add_flat``, or a list of views tiling one buffer, e.g. a
  client upload ``common.params.unflatten``-ed) is a single op;
* ``accumulators()`` returns those flat buffers: summing them across ranks (``common.distributed``) and
  then calling ``result()`` gives exactly the aggregate over every rank's clients. The last element of
  the first buffer holds the total weight, so it is reduced by the same all-reduce;
* ``state_dict()`` / ``load_state_dict()`` are a few tensors, checkpointable in the middle of a round.

Sums are kept in ``acc_dtype`` (float32, or float64 when asked), whatever the parameters' dtype; ``result``
returns tensors in the dtypes of ``like``. Shapes: ``like`` and every client list hold the same tensors
(e.g. ``common.params.trainable(model)``), in the same order.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from common import params as P

Tensors = list[torch.Tensor]


def as_flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D view the tensors tile, if they are consecutive contiguous pieces of one buffer (e.g. the
    views ``common.params.unflatten`` returns), else None. Lets one fused op replace one op per tensor,
    which matters on a CPU: each per-tensor op is its own parallel region, and on a loaded machine each
    waits for its slowest thread."""
    first = tensors[0]
    offset, ptr = first.storage_offset(), first.untyped_storage().data_ptr()
    for t in tensors:
        if (not t.is_contiguous() or t.dtype != first.dtype or t.storage_offset() != offset
                or t.untyped_storage().data_ptr() != ptr):
            return None
        offset += t.numel()
    return first.as_strided((offset - first.storage_offset(),), (1,), first.storage_offset())


class _Streaming:
    """Flat accumulator buffers shaped like ``like``; buffer 0 carries one extra slot for the total weight."""

    def __init__(self, like: Sequence[torch.Tensor], n_buffers: int, acc_dtype: torch.dtype):
        if not like:
            raise ValueError("an aggregator needs at least one tensor in `like`")
        like = [t.detach() for t in like]
        self.shapes = [t.shape for t in like]
        self.dtypes = [t.dtype for t in like]
        self.device = like[0].device
        self.numel = P.numel(like)
        self.acc_dtype = acc_dtype
        self._flats = [torch.zeros(self.numel + (i == 0), dtype=acc_dtype, device=self.device)
                       for i in range(n_buffers)]
        self._views = [P.unflatten(f[:self.numel], like) for f in self._flats]

    def _check(self, tensors: Sequence[torch.Tensor], what: str = "client tensors") -> list:
        if len(tensors) != len(self.shapes):
            raise ValueError(f"{what}: got {len(tensors)} tensors, the aggregator was built for {len(self.shapes)}")
        for i, (t, shape) in enumerate(zip(tensors, self.shapes)):
            if t is not None and t.shape != shape:  # the flat path would not notice a reordering
                raise ValueError(f"{what}: tensor {i} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return list(tensors)

    @property
    def total_weight(self) -> float:
        return float(self._flats[0][-1])

    def accumulators(self) -> Tensors:
        """The flat buffers to SUM across ranks (in place) before ``result()``."""
        return list(self._flats)

    def reset(self) -> None:
        for f in self._flats:
            f.zero_()

    def state_dict(self) -> dict:
        return {"kind": type(self).__name__, "numel": self.numel, "buffers": [f.clone() for f in self._flats]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != type(self).__name__ or state.get("numel") != self.numel:
            raise ValueError(f"aggregator state is for {state.get('kind')} over {state.get('numel')} values; "
                             f"this is {type(self).__name__} over {self.numel}")
        for f, s in zip(self._flats, state["buffers"]):
            f.copy_(s)

    def _out(self, out: Sequence[torch.Tensor] | None) -> Tensors:
        """``out`` checked, or new tensors: views of one flat buffer when all dtypes agree (one op fills them)."""
        if out is not None:
            return self._check(out, "out")
        if len(set(self.dtypes)) == 1:
            flat = torch.empty(self.numel, dtype=self.dtypes[0], device=self.device)
            return [flat[i:i + v.numel()].view(v.shape) for i, v in zip(self._offsets(), self._views[0])]
        return [torch.empty(s, dtype=d, device=self.device) for s, d in zip(self.shapes, self.dtypes)]

    def _offsets(self) -> list[int]:
        return [v.storage_offset() for v in self._views[0]]

    def _total(self) -> float:
        total = self.total_weight
        if not total > 0:
            raise ValueError(f"{type(self).__name__}.result(): no client added yet (total weight {total})")
        return total


class WeightedMean(_Streaming):
    """FedAvg: result = sum_k w_k theta_k / sum_k w_k (w_k usually the client's sample count)."""

    def __init__(self, like: Sequence[torch.Tensor], acc_dtype: torch.dtype = torch.float32):
        super().__init__(like, 1, acc_dtype)

    @torch.no_grad()
    def add(self, tensors: Sequence[torch.Tensor], weight: float = 1.0) -> None:
        tensors = self._check(tensors)
        flat = as_flat(tensors)
        if flat is not None:
            self._flats[0][:self.numel].add_(flat, alpha=weight)
        else:
            torch._foreach_add_(self._views[0], tensors, alpha=weight)
        self._flats[0][-1] += weight

    @torch.no_grad()
    def add_flat(self, flat: torch.Tensor, weight: float = 1.0) -> None:
        """Same as ``add`` for a client given as one 1-D buffer (``common.params.flatten``): one fused op."""
        self._flats[0][:self.numel].add_(flat, alpha=weight)
        self._flats[0][-1] += weight

    @torch.no_grad()
    def result(self, out: Sequence[torch.Tensor] | None = None) -> Tensors:
        """The weighted mean, written into ``out`` (e.g. the global parameters, no allocation) or new tensors."""
        scale = 1.0 / self._total()
        out = self._out(out)
        flat_out = as_flat(out)
        if flat_out is not None and flat_out.numel() == self.numel:
            torch.mul(self._flats[0][:self.numel], scale, out=flat_out)
        else:
            for o, s in zip(out, self._views[0]):
                torch.mul(s, scale, out=o)  # one pass, cast to o's dtype on the way
        return out


class FisherMean(_Streaming):
    """FedFisher: result = sum_k w_k F_k theta_k / (sum_k w_k F_k + eps), every coordinate.

    A coordinate where every client's Fisher is zero (a parameter no client's loss touched, e.g. the
    embedding row of a token none of them saw) comes out as ~0 with the plain formula. ``floor`` > 0 adds
    that constant to each client's Fisher (Matena & Raffel 2022 use 1e-6): such coordinates then get the
    weighted plain mean (times sum w floor / (sum w floor + eps), so keep floor >> eps) while informative
    ones barely move. The default 0 is the formula exactly.
    """

    def __init__(self, like, eps: float = 1e-8, acc_dtype: torch.dtype = torch.float32, floor: float = 0.0):
        super().__init__(like, 2, acc_dtype)  # buffer 0: sum w F theta (+ total weight), buffer 1: sum w F
        self.eps, self.floor = eps, floor

    @torch.no_grad()
    def add(self, tensors, fisher, weight: float = 1.0) -> None:
        tensors, fisher = self._check(tensors), self._check(fisher, "fisher")
        flat_t, flat_f = as_flat(tensors), as_flat(fisher)
        if flat_t is not None and flat_f is not None:  # one op per quantity instead of one per tensor
            num, den, tensors, fisher = [self._flats[0][:self.numel]], [self._flats[1]], [flat_t], [flat_f]
        else:
            num, den = self._views
        torch._foreach_addcmul_(num, fisher, tensors, value=weight)
        torch._foreach_add_(den, fisher, alpha=weight)
        if self.floor:
            torch._foreach_add_(num, tensors, alpha=weight * self.floor)
            self._flats[1].add_(weight * self.floor)
        self._flats[0][-1] += weight

    @torch.no_grad()
    def result(self, out: Sequence[torch.Tensor] | None = None) -> Tensors:
        self._total()
        out = self._out(out)
        for o, num, den in zip(out, *self._views):
            torch.div(num, den + self.eps, out=o)
        return out


class MaskedMean(_Streaming):
    """Each coordinate averaged over the clients whose mask is nonzero there (weights w_k * mask);
    coordinates no client updated keep ``fallback`` (typically the global parameters).

    result = sum_k w_k m_k theta_k / sum_k w_k m_k where that denominator is > 0, else fallback.
    A mask entry may be None: that tensor was updated everywhere by this client.
    """

    def __init__(self, like, acc_dtype: torch.dtype = torch.float32):
        super().__init__(like, 2, acc_dtype)  # buffer 0: sum w m theta (+ total weight), buffer 1: sum w m

    @torch.no_grad()
    def add(self, tensors, masks, weight: float = 1.0) -> None:
        tensors, masks = self._check(tensors), self._check(masks, "masks")
        dense = [i for i, m in enumerate(masks) if m is None]
        masked = [i for i, m in enumerate(masks) if m is not None]
        num, cnt = self._views
        if masked:
            torch._foreach_addcmul_([num[i] for i in masked], [masks[i] for i in masked],
                                    [tensors[i] for i in masked], value=weight)
            torch._foreach_add_([cnt[i] for i in masked], [masks[i] for i in masked], alpha=weight)
        if dense:
            torch._foreach_add_([num[i] for i in dense], [tensors[i] for i in dense], alpha=weight)
            torch._foreach_add_([cnt[i] for i in dense], weight)
        self._flats[0][-1] += weight

    @torch.no_grad()
    def result(self, fallback: Sequence[torch.Tensor], out: Sequence[torch.Tensor] | None = None) -> Tensors:
        self._total()
        fallback = self._check(fallback, "fallback")
        out = self._out(out)
        for o, num, cnt, fb in zip(out, *self._views, fallback):
            o.copy_(torch.where(cnt > 0, num / cnt.clamp_min(torch.finfo(cnt.dtype).tiny), fb))
        return out


def entropy_weights(entropies: Sequence[float], temperature: float = 1.0) -> list[float]:
    """FedEntropy weights alpha_k = softmax(-H_k / T): lower entropy (more confident client) weighs more.

    Computed as exp(z_k - max z) / sum, so large H/T neither overflows nor underflows to all zeros.
    """
    if not temperature > 0:
        raise ValueError(f"entropy temperature must be > 0, got {temperature}")
    z = [-float(h) / temperature for h in entropies]
    if not z or not all(math.isfinite(v) for v in z):
        raise ValueError(f"entropies must be a non-empty list of finite numbers, got {list(entropies)}")
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


# ----------------------------------------------------------------------------- server optimizers
class ServerOptimizer:
    """Moves the global parameters toward the round's average IN PLACE: ``step(global_params, average)``.

    Plain FedAvg server step: theta <- theta + lr (avg - theta) (lr = 1: theta <- avg). Subclasses keep
    their state in ``acc_dtype`` and expose it through ``state_dict()``.
    """

    name = "fedavg"

    def __init__(self, like: Sequence[torch.Tensor], lr: float = 1.0, acc_dtype: torch.dtype = torch.float32):
        self.lr, self.acc_dtype, self.steps = lr, acc_dtype, 0
        self.buffers: list[Tensors] = []

    def _delta(self, params, average) -> Tensors:
        """avg - theta in acc_dtype (the negative pseudo-gradient), shapes like the parameters."""
        return torch._foreach_sub([a.detach().to(self.acc_dtype) for a in average],
                                  [p.detach().to(self.acc_dtype) for p in params])

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], average: Sequence[torch.Tensor]) -> None:
        params = list(params)
        P._check(params, average)
        if self.lr == 1.0:
            torch._foreach_copy_(params, list(average))
        else:
            torch._foreach_add_(params, self._delta(params, average), alpha=self.lr)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps, "buffers": [[t.clone() for t in b] for b in self.buffers]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name or len(state["buffers"]) != len(self.buffers):
            raise ValueError(f"server optimizer state is for {state.get('name')!r}, this is {self.name!r}")
        self.steps = int(state["steps"])
        for dst, src in zip(self.buffers, state["buffers"]):
            torch._foreach_copy_(dst, list(src))


class FedAvgM(ServerOptimizer):
    """Server momentum. form='heavy-ball' (Hsu et al. 2019, Flower): m <- beta m + (theta - avg);
    theta <- theta - lr m. form='ema' (the source project): v <- beta v + (1 - beta)(avg - theta);
    theta <- theta + lr v. Both start from a zero buffer; with beta = 0 and lr = 1 both give theta <- avg.
    """

    name = "fedavgm"

    def __init__(self, like, lr: float = 1.0, momentum: float = 0.9, form: str = "ema", acc_dtype=torch.float32):
        super().__init__(like, lr, acc_dtype)
        form = form.replace("_", "-")
        if form not in ("heavy-ball", "ema"):
            raise ValueError(f"FedAvgM form must be 'heavy-ball' or 'ema', got {form!r}")
        self.momentum, self.form = momentum, form
        self.buffers = [P.zeros_like(like, dtype=acc_dtype)]

    @torch.no_grad()
    def step(self, params, average) -> None:
        params = list(params)
        P._check(params, average)
        buf, delta = self.buffers[0], self._delta(params, average)  # delta = avg - theta
        if self.form == "heavy-ball":
            torch._foreach_mul_(buf, self.momentum)
            torch._foreach_sub_(buf, delta)  # m <- beta m + (theta - avg)
            torch._foreach_add_(params, buf, alpha=-self.lr)
        else:
            torch._foreach_lerp_(buf, delta, 1.0 - self.momentum)  # v <- beta v + (1 - beta) delta
            torch._foreach_add_(params, buf, alpha=self.lr)
        self.steps += 1


class FedAdam(ServerOptimizer):
    """FedAdam (Reddi et al. 2021, Algorithm 2): delta = avg - theta; m <- b1 m + (1 - b1) delta;
    v <- b2 v + (1 - b2) delta^2; theta <- theta + lr m / (sqrt(v) + tau). No bias correction in the
    paper; ``bias_correction=True`` scales lr by sqrt(1 - b2^t) / (1 - b1^t) as Flower does.
    """

    name = "fedadam"

    def __init__(self, like, lr: float = 1e-2, betas=(0.9, 0.99), tau: float = 1e-3,
                 bias_correction: bool = False, acc_dtype=torch.float32):
        super().__init__(like, lr, acc_dtype)
        self.betas, self.tau, self.bias_correction = tuple(betas), tau, bias_correction
        self.buffers = [P.zeros_like(like, dtype=acc_dtype), P.zeros_like(like, dtype=acc_dtype)]

    @torch.no_grad()
    def step(self, params, average) -> None:
        params = list(params)
        P._check(params, average)
        (b1, b2), (m, v) = self.betas, self.buffers
        delta = self._delta(params, average)
        torch._foreach_lerp_(m, delta, 1.0 - b1)
        torch._foreach_lerp_(v, torch._foreach_mul(delta, delta), 1.0 - b2)
        self.steps += 1
        lr = self.lr
        if self.bias_correction:
            lr *= math.sqrt(1.0 - b2 ** self.steps) / (1.0 - b1 ** self.steps)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, self.tau)
        torch._foreach_addcdiv_(params, m, denom, value=lr)


def make_server_optimizer(name: str, like, lr: float = 1.0, momentum: float = 0.9, form: str = "ema",
                          betas=(0.9, 0.99), tau: float = 1e-3, bias_correction: bool = False,
                          acc_dtype: torch.dtype = torch.float32) -> ServerOptimizer:
    """name: fedavg | fedavgm | fedadam. form for fedavgm: 'heavy-ball' (Flower) or 'ema' (source)."""
    if name == "fedavg":
        return ServerOptimizer(like, lr, acc_dtype)
    if name == "fedavgm":
        return FedAvgM(like, lr, momentum, form, acc_dtype)
    if name == "fedadam":
        return FedAdam(like, lr, betas, tau, bias_correction, acc_dtype)
    raise ValueError(f"unknown server optimizer {name!r}; expected fedavg, fedavgm or fedadam")


# ----------------------------------------------------------------------------- SCAFFOLD
class Scaffold:
    """SCAFFOLD option II bookkeeping (Karimireddy et al. 2020), x the global parameters, N clients.

    Client i trains from y = x with y <- y - lr_l (g(y) + c - c_i)  (``correction(i)`` is c - c_i), then
    ``client_update(i, x, y, K, lr_l)``: dy = y - x; dc = -c + (x - y) / (K lr_l); c_i <- c_i + dc, and dy,
    dc are summed into a flat accumulator (reducible across ranks: ``accumulators()``). After the round,
    ``server_update(x)``: x <- x + lr_g * mean_i dy_i; c <- c + (1/N) sum_i dc_i. Every client's c_i
    persists across rounds (clients never seen hold zero) and is part of ``state_dict()``.
    """

    def __init__(self, like, num_clients: int, server_lr: float = 1.0, acc_dtype: torch.dtype = torch.float32,
                 control_device: str | torch.device | None = None):
        self.num_clients, self.server_lr = num_clients, server_lr
        self.c = P.zeros_like(like, dtype=acc_dtype)
        self.control_device = torch.device(control_device) if control_device is not None else self.c[0].device
        self.c_i: dict[int, Tensors] = {}
        # one flat buffer: [sum w dy | sum dc | sum w | clients], so a single all-reduce combines ranks
        n = P.numel(self.c)
        self._flat = torch.zeros(2 * n + 2, dtype=acc_dtype, device=self.c[0].device)
        self._sum_dy = P.unflatten(self._flat[:n], self.c)
        self._sum_dc = P.unflatten(self._flat[n:2 * n], self.c)

    def control(self, client: int) -> Tensors:
        """c_i (created as zeros on first use)."""
        if client not in self.c_i:
            self.c_i[client] = [torch.zeros_like(t, device=self.control_device) for t in self.c]
        return self.c_i[client]

    @torch.no_grad()
    def correction(self, client: int) -> Tensors:
        """c - c_i: add it to the client's gradient before every local step."""
        ci = [t.to(self.c[0].device, non_blocking=True) for t in self.control(client)]
        return torch._foreach_sub(self.c, ci)

    @torch.no_grad()
    def client_update(self, client: int, x, y, local_steps: int, local_lr: float,
                      weight: float = 1.0) -> tuple[Tensors, Tensors]:
        """Record client ``client``'s round (x: global params it started from, y: its final params).
        Returns (dy, dc) and updates c_i; ``weight`` weighs dy in the server's mean (1 = the paper)."""
        if local_steps < 1 or local_lr <= 0:
            raise ValueError(f"SCAFFOLD needs local_steps >= 1 and local_lr > 0, got {local_steps}, {local_lr}")
        dy = torch._foreach_sub([t.detach().to(self.c[0].dtype) for t in y],
                                [t.detach().to(self.c[0].dtype) for t in x])
        dc = torch._foreach_mul(dy, -1.0 / (local_steps * local_lr))  # (x - y) / (K lr_l)
        torch._foreach_sub_(dc, self.c)
        ci = self.control(client)
        torch._foreach_add_(ci, [t.to(self.control_device) for t in dc])
        torch._foreach_add_(self._sum_dy, dy, alpha=weight)
        torch._foreach_add_(self._sum_dc, dc)
        self._flat[-2] += weight
        self._flat[-1] += 1
        return dy, dc

    def accumulators(self) -> Tensors:
        return [self._flat]

    @torch.no_grad()
    def server_update(self, x, mean_delta_y=None, sum_delta_c=None) -> None:
        """x <- x + lr_g mean dy; c <- c + sum dc / N. Uses the round's accumulators unless both are given;
        then clears them."""
        x = list(x)
        if mean_delta_y is None or sum_delta_c is None:
            total = float(self._flat[-2])
            if not total > 0:
                raise ValueError("Scaffold.server_update(): no client_update() this round")
            torch._foreach_add_(x, self._sum_dy, alpha=self.server_lr / total)
            torch._foreach_add_(self.c, self._sum_dc, alpha=1.0 / self.num_clients)
        else:
            torch._foreach_add_(x, list(mean_delta_y), alpha=self.server_lr)
            torch._foreach_add_(self.c, list(sum_delta_c), alpha=1.0 / self.num_clients)
        self._flat.zero_()

    def state_dict(self) -> dict:
        return {"num_clients": self.num_clients, "c": [t.clone() for t in self.c], "acc": self._flat.clone(),
                "c_i": {k: [t.clone() for t in v] for k, v in self.c_i.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["num_clients"] != self.num_clients or len(state["c"]) != len(self.c):
            raise ValueError("SCAFFOLD state is for a different federation or model")
        torch._foreach_copy_(self.c, list(state["c"]))
        self._flat.copy_(state["acc"])
        self.c_i = {int(k): [t.to(self.control_device).clone() for t in v] for k, v in state["c_i"].items()}


# ----------------------------------------------------------------------------- LoRA merges
# Shapes follow peft: A_k [r_k, in], B_k [out, r_k]; client k's update of W [out, in] is s_k B_k A_k with
# s_k = alpha_k / r_k. Weights w_k are used as given (pass n_k / sum n for FedAvg).

def lora_exact_merge(As, Bs, weights, scales, out_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked factors A [sum r_k, in], B [out, sum r_k] with out_scale * B @ A = sum_k w_k s_k B_k A_k
    exactly (the rank grows with the number of clients)."""
    _check_lora(As, Bs, weights, scales, out_scale)
    A = torch.cat(list(As), 0)
    B = torch.cat([b * (w * s / out_scale) for b, w, s in zip(Bs, weights, scales)], 1)
    return A, B


def lora_naive_merge(As, Bs, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum w_k A_k, sum w_k B_k): what FedAvg of adapters does; its product is NOT the mean update."""
    _check_lora(As, Bs, weights, [1.0] * len(As), 1.0)
    return sum(w * a for w, a in zip(weights, As)), sum(w * b for w, b in zip(weights, Bs))


def lora_delta(As, Bs, weights, scales) -> torch.Tensor:
    """The dense merged update sum_k w_k s_k B_k A_k [out, in] (a reference; memory out x in)."""
    return sum(w * s * (b.float() @ a.float()) for a, b, w, s in zip(As, Bs, weights, scales))


@torch.no_grad()
def lora_svd_merge(As, Bs, weights, scales, rank: int, out_scale: float = 1.0,
                   compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-r truncated SVD of dW = sum_k w_k s_k B_k A_k (no transpose) as LoRA factors.

    Returns A [rank, in], B [out, rank] with out_scale * B @ A = U_r S_r V_r^T, the best rank-r
    approximation of dW (Eckart-Young); the singular values are split sqrt/sqrt between B and A (each also
    divided by sqrt(out_scale)), so both factors have the same scale and stay trainable. To store the result
    in a peft adapter whose forward adds (alpha / r) * B @ A, pass out_scale = alpha / r (= the adapter's
    ``scaling``). If dW has rank < r the extra rows/columns are zero.

    dW is never formed: with QR factorisations B_stack = Q_b R_b and A_stack^T = Q_a R_a of the exact stacked
    factors, dW = Q_b (R_b R_a^T) Q_a^T, so only the small (sum r_k)^2 core is decomposed.
    """
    if rank < 1 or not out_scale > 0:
        raise ValueError(f"rank must be >= 1 and out_scale > 0, got {rank}, {out_scale}")
    A_stack, B_stack = lora_exact_merge(As, Bs, weights, scales)
    out_dtype = As[0].dtype
    q_b, r_b = torch.linalg.qr(B_stack.to(compute_dtype))  # [out, m], [m, R]
    q_a, r_a = torch.linalg.qr(A_stack.to(compute_dtype).T)  # [in, n], [n, R]
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # core [m, n]
    k = min(rank, s.numel())
    root = s[:k].sqrt() / math.sqrt(out_scale)
    B = torch.zeros(B_stack.shape[0], rank, dtype=compute_dtype, device=B_stack.device)
    A = torch.zeros(rank, A_stack.shape[1], dtype=compute_dtype, device=A_stack.device)
    B[:, :k] = (q_b @ u[:, :k]) * root
    A[:k] = root[:, None] * (vh[:k] @ q_a.T)
    return A.to(out_dtype), B.to(out_dtype)


def _check_lora(As, Bs, weights, scales, out_scale) -> None:
    if not (len(As) == len(Bs) == len(weights) == len(scales)) or not As:
        raise ValueError(f"LoRA merge needs as many A, B, weights and scales (>= 1): got {len(As)}, {len(Bs)}, "
                         f"{len(weights)}, {len(scales)}")
    for a, b in zip(As, Bs):
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA factors must be A [r, in], B [out, r]; got A {tuple(a.shape)}, B {tuple(b.shape)}")
    if not out_scale > 0:
        raise ValueError(f"out_scale must be > 0, got {out_scale}")
