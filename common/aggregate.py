"""Streaming aggregators of a federated round: weighted mean (FedAvg), Fisher-weighted mean, and FedEntropy's
softmax weights (server steps: ``common.server_opt``, ``common.scaffold``; LoRA: ``common.lora_merge``).

``add`` takes one client at a time (memory O(parameters) for any K); each running sum is ONE flat buffer, so a
client that is one buffer (``add_flat``, or views tiling one) is ONE op per quantity, separate tensors one
fused ``common.params.foreach`` call: fast even while other processes load every core. ``accumulators()`` are
those buffers (buffer 0's last element: the total weight): summed across ranks, ``result()`` is the aggregate
over every rank's clients. Sums are in ``acc_dtype``; ``result`` returns the dtypes of ``like``, whose tensors
every client list holds in the same order (``common.params.trainable(model)``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from common import params as P
from common.params import Tensors


class _Streaming:
    """Flat accumulator buffers shaped like ``like``; buffer 0 carries one extra slot for the total weight."""

    def __init__(self, like: Sequence[torch.Tensor], n_buffers: int, acc_dtype: torch.dtype):
        if not like:
            raise ValueError("an aggregator needs at least one tensor in `like`")
        like = [t.detach() for t in like]
        self.shapes, self.dtypes = [t.shape for t in like], [t.dtype for t in like]
        self.device, self.numel, self.acc_dtype = like[0].device, P.numel(like), acc_dtype
        # zeroed: the first touch after the huge-page advice (common.params.empty_flat)
        self._flats = [P.empty_flat(self.numel + (i == 0), acc_dtype, self.device).zero_() for i in range(n_buffers)]
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

    _zero_pending = False  # the sums are still to be zeroed (after reset: a first add may write them instead)

    def _materialize(self) -> None:
        if self._zero_pending:
            with self._threads():
                for f in self._flats:
                    f[:self.numel].zero_()
            self._zero_pending = False

    def accumulators(self) -> Tensors:
        """The flat buffers to SUM across ranks (in place) before ``result()``."""
        self._materialize()
        return list(self._flats)

    def reset(self) -> None:
        """Start a new round. The sums are zeroed lazily: a first client that can be written instead (0 + w
        theta: the same bits; ``WeightedMean`` given one buffer of the sums' dtype) saves a pass."""
        self._flats[0][-1] = 0.0
        self._zero_pending = True

    def _threads(self):
        return P.threads_for(self.numel, self.device)

    def state_dict(self) -> dict:
        self._materialize()
        return {"kind": type(self).__name__, "numel": self.numel, "buffers": [f.clone() for f in self._flats]}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("kind") != type(self).__name__ or state.get("numel") != self.numel
                or len(state.get("buffers", ())) != len(self._flats)):
            raise ValueError(f"aggregator state is for {state.get('kind')} over {state.get('numel')} values; "
                             f"this is {type(self).__name__} over {self.numel}")
        for f, s in zip(self._flats, state["buffers"]):
            f.copy_(s)
        self._zero_pending = False

    def _out(self, out: Sequence[torch.Tensor] | None) -> Tensors:
        """``out`` checked, or new tensors: views of one flat buffer when all dtypes agree (one op fills them)."""
        if out is not None:
            return self._check(out, "out")
        if len(set(self.dtypes)) == 1:
            return P.unflatten(P.empty_flat(self.numel, self.dtypes[0], self.device), self._views[0])
        return [torch.empty(s, dtype=d, device=self.device) for s, d in zip(self.shapes, self.dtypes)]

    # accumulator bytes per block of coordinates (all buffers together); on ViT-S/16 shapes, K = 50, 4 MiB was
    # 1.2x faster than 1 MiB and as fast as 8 or 16 (add_many of benchmarks/bench_aggregate.py).
    _BLOCK_BYTES = 4 << 20

    def _block(self) -> int:
        """Coordinates per block: a multiple of 64, so every block but the last is whole SIMD vectors."""
        return max(64, self._BLOCK_BYTES // sum(f.element_size() for f in self._flats) // 64 * 64)

    _CHUNK = 1 << 19  # scratch chunks: 2 MiB of float32, measured 10% faster per add than 1 << 18 (21.7M params)

    def _scratch_chunk(self, i: int = 0) -> torch.Tensor:
        """The i-th kept scratch chunk of ``_CHUNK`` values: cache-sized work space for chunked results."""
        scratch = self.__dict__.setdefault("_scratch", [])
        while len(scratch) <= i:
            scratch.append(torch.empty(min(self._CHUNK, self.numel), dtype=self.acc_dtype, device=self.device))
        return scratch[i]

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
        flat = P.as_flat(self._check(tensors))
        if flat is not None:
            return self.add_flat(flat, weight)
        self._materialize()
        P.foreach(torch._foreach_add_, self._views[0], tensors, alpha=weight)
        self._flats[0][-1] += weight

    @torch.no_grad()
    def add_flat(self, flat: torch.Tensor, weight: float = 1.0) -> None:
        """Same as ``add`` for a client given as one 1-D buffer (``common.params.flatten``): one fused op."""
        acc = self._flats[0][:self.numel]
        with self._threads():
            if self._zero_pending and flat.dtype == acc.dtype:
                torch.mul(flat, weight, out=acc)  # = 0 + w theta
                self._zero_pending = False
            else:
                self._materialize()
                acc.add_(flat, alpha=weight)
        self._flats[0][-1] += weight

    @torch.no_grad()
    def result(self, out: Sequence[torch.Tensor] | None = None) -> Tensors:
        """The weighted mean, written into ``out`` (e.g. the global parameters, no allocation) or new tensors."""
        self._materialize()
        scale = 1.0 / self._total()
        out = self._out(out)
        flat_out = P.as_flat(out)
        if flat_out is not None and flat_out.numel() == self.numel:
            with self._threads():
                torch.mul(self._flats[0][:self.numel], scale, out=flat_out)
        else:
            with P.threads_for(max(t.numel() for t in out), out[0].device):
                for o, s in zip(out, self._views[0]):
                    torch.mul(s, scale, out=o)  # one pass, cast to o's dtype on the way
        return out


class FisherMean(_Streaming):
    """FedFisher: coordinates averaged with weights w_k F_k (Matena & Raffel 2022), the plain mean without Fisher:

        theta = (sum_k w_k F_k theta_k + eps * theta_bar) / (sum_k w_k F_k + eps),
        theta_bar = sum_k w_k theta_k / sum_k w_k,   eps = eps_rel * mean_j(sum_k w_k F_kj)

    Matena & Raffel's floor (delta = eps / sum_k w_k added to every client's Fisher) scaled to the Fisher's
    magnitude: a coordinate no client's loss touched gets FedAvg's mean, never 0 (the bare sum F theta /
    (sum F + eps) pulls every low-Fisher coordinate toward zero). ``eps_share`` after ``result``: the fraction
    of coordinates where eps >= sum w F (the floor, not the Fisher, decides).
    """

    def __init__(self, like, eps: float = 1e-6, acc_dtype: torch.dtype = torch.float32):
        if not eps > 0:
            raise ValueError(f"FisherMean eps (relative to the mean Fisher) must be > 0, got {eps}")
        # buffer 0: sum w F theta (+ total weight), 1: sum w F, 2: sum w theta
        super().__init__(like, 3, acc_dtype)
        self.eps, self.eps_share = eps, float("nan")

    @torch.no_grad()
    def add(self, tensors, fisher, weight: float = 1.0) -> None:
        """theta and F each one buffer (or views of one): block by block, so they are read from memory once
        while the three sums' block is in cache; else one fused op per quantity."""
        flat_t, flat_f = P.as_flat(self._check(tensors)), P.as_flat(self._check(fisher, "fisher"))
        if flat_t is not None and flat_f is not None:
            self._materialize()
            with self._threads():
                for lo in range(0, self.numel, self._block()):
                    hi = min(self.numel, lo + self._block())
                    self._add_block([f[lo:hi] for f in self._flats], (flat_t[lo:hi], flat_f[lo:hi]), weight)
            self._flats[0][-1] += weight
            return
        self._materialize()
        num, den, tot = self._views
        P.foreach(torch._foreach_addcmul_, num, fisher, tensors, value=weight)
        P.foreach(torch._foreach_add_, den, fisher, alpha=weight)
        P.foreach(torch._foreach_add_, tot, tensors, alpha=weight)
        self._flats[0][-1] += weight

    @staticmethod
    def _add_block(accs, xs, w) -> None:
        (num, den, tot), (t, f) = accs, xs
        num.addcmul_(f, t, value=w)
        den.add_(f, alpha=w)
        tot.add_(t, alpha=w)

    @torch.no_grad()
    def result(self, out: Sequence[torch.Tensor] | None = None) -> Tensors:
        """The formula chunk by chunk in cached scratch (290 -> 40 ms for 21.7M parameters), bit for bit the
        whole-tensor ``where(den > 0, (num + eps mean) / (den + eps), mean)``."""
        total = self._total()
        self._materialize()
        num, den, tot = self._flats[0][:self.numel], self._flats[1], self._flats[2]
        eps = self.eps * float(den.mean())  # a reduction: left to torch's threads (its sum order may depend on them)
        out = self._out(out)
        flat_out = P.as_flat(out)
        direct = flat_out is not None and flat_out.numel() == self.numel and flat_out.dtype == self.acc_dtype
        flat = flat_out if direct else P.empty_flat(self.numel, self.acc_dtype, self.device)
        at_floor = 0
        with self._threads():
            for lo in range(0, self.numel, self._CHUNK):
                hi = min(self.numel, lo + self._CHUNK)
                mean, q, d = (self._scratch_chunk(i)[:hi - lo] for i in range(3))
                torch.div(tot[lo:hi], total, out=mean)
                if not eps > 0:  # no client carries any Fisher information: FedAvg everywhere
                    flat[lo:hi].copy_(mean)
                    continue
                torch.add(num[lo:hi], torch.mul(mean, eps, out=q), out=q)
                torch.div(q, torch.add(den[lo:hi], eps, out=d), out=q)
                _select_into(flat[lo:hi], den[lo:hi] > 0, q, mean)
                at_floor += int((den[lo:hi] <= eps).sum())  # an integer count: exact whatever the threads
        self.eps_share = at_floor / self.numel if eps > 0 else 1.0
        if not direct:  # one copy when ``out`` tiles one buffer (common.params.foreach)
            P.foreach(torch._foreach_copy_, out, P.unflatten(flat, self._views[0]))
        return out


def _select_into(out: torch.Tensor, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out = where(cond, a, b) as bit operations, b ^ ((b ^ a) & -cond): torch.where's CPU kernel is not vectorized
    (7x slower on 512K float32). 1-D tensors of one float dtype; ``a`` is overwritten; ``out`` may be ``b``."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[out.element_size()]
    o, x, y = out.view(ints), a.view(ints), b.view(ints)
    x.bitwise_xor_(y).bitwise_and_(cond.to(ints).neg_())
    torch.bitwise_xor(y, x, out=o)


def entropy_weights(entropies: Sequence[float], temperature: float = 1.0) -> list[float]:
    """FedEntropy weights alpha_k = softmax(-H_k / T): lower entropy (more confident client) weighs more.
    Computed as exp(z_k - max z) / sum, so large H/T neither overflows nor underflows to all zeros."""
    if not temperature > 0:
        raise ValueError(f"entropy temperature must be > 0, got {temperature}")
    z = [-float(h) / temperature for h in entropies]
    if not z or not all(math.isfinite(v) for v in z):
        raise ValueError(f"entropies must be a non-empty list of finite numbers, got {list(entropies)}")
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]
