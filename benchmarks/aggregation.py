"""What ``bench_aggregate.py`` times (its docstring says how and against which targets): the parameter set (ViT-S/16
shapes) and a pool of client uploads (``Clients``), the anchors (Flower's ``aggregate`` and its FedAdam / FedAvgM
updates in numpy, or the per-key ``torch.stack`` reference without flwr), and ours: ``common.aggregate``'s streaming
aggregators, ``add_many`` (``ManyWeightedMean``, ``ManyFisherMean``: K uploads in memory, summed block by block of
coordinates) and the ``common.server_opt`` steps. Each ``*_fn`` returns one aggregation (or server step) to time.
"""
from __future__ import annotations

from functools import reduce

import numpy as np
import torch

from common import cli
from common import params as P
from common.aggregate import FisherMean, WeightedMean
from common.server_opt import FedAdam, FedAvgM

try:
    import flwr
    from flwr.server.strategy.aggregate import aggregate as flower_aggregate
except ImportError:  # the optional `bench` extra
    flwr = flower_aggregate = None

FEDADAM = {"lr": 1e-2, "betas": (0.9, 0.99), "tau": 1e-3}
FEDAVGM = {"lr": 1.0, "momentum": 0.9, "form": "heavy-ball"}
SERVER_STEPS = {"FedAdam step": lambda like: FedAdam(like, **FEDADAM),
                "FedAvgM step": lambda like: FedAvgM(like, **FEDAVGM)}


# ----------------------------------------------------------------------------- the parameter set
def vit_shapes(dim: int = 384, depth: int = 12, patch: int = 16, img: int = 224, classes: int = 100,
               mlp_ratio: int = 4) -> dict[str, tuple]:
    """Parameter names and shapes of a ViT (DINO naming); defaults: ViT-S/16 with a 100-class head."""
    tokens = (img // patch) ** 2 + 1
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes |= {b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                   b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                   b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                   b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                   b + "mlp.fc1.weight": (mlp_ratio * dim, dim), b + "mlp.fc1.bias": (mlp_ratio * dim,),
                   b + "mlp.fc2.weight": (dim, mlp_ratio * dim), b + "mlp.fc2.bias": (dim,)}
    return shapes | {"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (classes, dim), "head.bias": (classes,)}


class Clients:
    """The base parameters and a pool of distinct client uploads (each one flat fp32 buffer seen as
    parameter-shaped views), the same clients as separate tensors and as numpy arrays (Flower's input),
    a Fisher and a boolean mask per pool entry. K clients cycle through the pool, so every method reads
    the same memory and the time measured is the aggregation alone."""

    def __init__(self, args, device):
        shapes = vit_shapes(dim=64, depth=2, img=64) if args.quick else vit_shapes()
        g = torch.Generator().manual_seed(0)
        self.names = list(shapes)
        self.base = [(0.02 * torch.randn(s, generator=g)).to(device) for s in shapes.values()]
        self.flat, self.fisher = [], []
        n = P.numel(self.base)
        for _ in range(args.pool):  # uploads in buffers like the model's after flat_parameters_ (empty_flat)
            flat = P.empty_flat(n, torch.float32, device).copy_(P.flatten(self.base))
            flat += 1e-3 * torch.randn(flat.shape, generator=g).to(device)
            self.flat.append(P.unflatten(flat, self.base))
            self.fisher.append(P.unflatten(P.empty_flat(n, torch.float32, device).copy_(flat.abs() + 1e-4), self.base))
        self.separate = [[t.clone() for t in c] for c in self.flat]
        self.np = [[t.cpu().numpy() for t in c] for c in self.separate]
        self.np_fisher = [[t.cpu().numpy() for t in c] for c in self.fisher]
        self.numel = P.numel(self.base)
        self.many_uploads = []

    def pick(self, pool, k):
        return [pool[i % len(pool)] for i in range(k)]

    def distinct(self, k: int) -> list:
        """``k`` distinct flat uploads (add_many's input: K uploads in memory; copies of the pool with a
        different offset each, so no two share memory). Built once, grown as K grows."""
        n = self.numel
        while len(self.many_uploads) < k:
            i = len(self.many_uploads)
            src = P.as_flat(self.flat[i % len(self.flat)])
            self.many_uploads.append(P.empty_flat(n, torch.float32, src.device).copy_(src).add_(1e-6 * i))
        return self.many_uploads[:k]


def weights_for(k: int) -> list[int]:
    return [1 + (i % 7) for i in range(k)]  # sample counts; the weighting costs nothing extra


# ----------------------------------------------------------------------------- anchors
def anchor_name(args) -> str:
    if args.anchor == "reference" or (args.anchor == "auto" and flower_aggregate is None):
        return "per-key stack reference"
    cli.check(flower_aggregate is not None, "--anchor flower needs flwr (pip install -e .[bench])")
    return f"Flower {flwr.__version__} aggregate()"


def weighted_anchor_fn(args, c: Clients, k: int):
    w = weights_for(k)
    if anchor_name(args).startswith("Flower"):
        results = list(zip(c.pick(c.np, k), w))  # K (NDArrays, num_examples) pairs, as Flower receives them
        return lambda: flower_aggregate(results)
    dicts = [dict(zip(c.names, t)) for t in c.pick(c.separate, k)]  # K state dicts (aliasing the pool)
    return lambda: {key: torch.stack([sd[key] for sd in dicts]).mean(0) for key in c.names}


def np_weighted_mean(results: list[tuple[list, float]]) -> list:
    """Flower's ``aggregate()`` when installed, else the same computation written here: every client's
    layers times its weight, then one ``reduce(np.add, ...)`` per layer, divided by the total weight."""
    if flower_aggregate is not None:
        return flower_aggregate(results)
    total = sum(n for _, n in results)
    weighted = [[layer * n for layer in layers] for layers, n in results]
    return [reduce(np.add, layer) / total for layer in zip(*weighted)]


def fisher_anchor_fn(c: Clients, k: int, eps_rel: float = 1e-6):
    """FisherMean built on Flower's aggregate: the weighted means of F theta, F and theta (each the
    FisherMean sum over the total weight), then (F theta + e theta_bar) / (F + e) per layer, e scaled alike."""
    w, ts, fs = weights_for(k), c.pick(c.np, k), c.pick(c.np_fisher, k)

    def run():
        num = np_weighted_mean([([f * t for f, t in zip(fk, tk)], wk) for tk, fk, wk in zip(ts, fs, w)])
        den = np_weighted_mean(list(zip(fs, w)))
        mean = np_weighted_mean(list(zip(ts, w)))
        eps = eps_rel * sum(float(d.sum()) for d in den) / c.numel
        return [np.where(d > 0, (n + eps * m) / (d + eps), m) for n, d, m in zip(num, den, mean)]
    return run


def fedadam_anchor_fn(c: Clients):
    """Flower's FedAdam.aggregate_fit update, given the FedAvg aggregate: delta, m, v, then x."""
    lr, (b1, b2), tau = FEDADAM["lr"], FEDADAM["betas"], FEDADAM["tau"]
    state = {"x": [t.copy() for t in c.np[0]], "m": [np.zeros_like(t) for t in c.np[0]],
             "v": [np.zeros_like(t) for t in c.np[0]]}
    avg = c.np[1]

    def run():
        delta = [a - x for a, x in zip(avg, state["x"])]
        state["m"] = [np.multiply(b1, m) + (1 - b1) * d for m, d in zip(state["m"], delta)]
        state["v"] = [b2 * v + (1 - b2) * np.multiply(d, d) for v, d in zip(state["v"], delta)]
        state["x"] = [x + lr * m / (np.sqrt(v) + tau) for x, m, v in zip(state["x"], state["m"], state["v"])]
        return state["x"]
    return run


def fedavgm_anchor_fn(c: Clients):
    """Flower's FedAvgM.aggregate_fit update (server_round > 1), given the FedAvg aggregate: pseudo-gradient
    x - avg, momentum m <- beta m + pseudo-gradient, x <- x - lr m."""
    lr, beta = FEDAVGM["lr"], FEDAVGM["momentum"]
    state = {"x": [t.copy() for t in c.np[0]], "m": [np.zeros_like(t) for t in c.np[0]]}
    avg = c.np[1]

    def run():
        pseudo = [x - y for x, y in zip(state["x"], avg)]
        state["m"] = [beta * m + g for m, g in zip(state["m"], pseudo)]
        state["x"] = [x - lr * m for x, m in zip(state["x"], state["m"])]
        return state["x"]
    return run


ANCHOR_STEPS = {"FedAdam step": fedadam_anchor_fn, "FedAvgM step": fedavgm_anchor_fn}


# ----------------------------------------------------------------------------- ours
def stream_fn(c: Clients, pool, k: int, kind: str = "WeightedMean"):
    """One aggregation of K clients with the streaming aggregator; results written into existing tensors."""
    w = weights_for(k)
    out = P.zeros_like(c.base)  # views of one buffer, touched: no page faults timed
    clients = c.pick(pool, k)
    if kind == "WeightedMean":
        agg = WeightedMean(c.base)
        adds = [(x,) for x in clients]
    else:
        agg = FisherMean(c.base)
        fisher = c.pick(c.fisher if pool is c.flat else [[t.clone() for t in f] for f in c.fisher], k)
        adds = list(zip(clients, fisher))

    def aggregate():
        agg.reset()
        for a, wk in zip(adds, w):
            agg.add(*a, weight=wk)
        return agg.result(out=out)
    return aggregate


def _flat_clients(agg, *per_client: list) -> list[tuple[torch.Tensor, ...]] | None:
    """Each client's quantities as 1-D buffers of ``agg.numel`` (given so, or tiled by its tensors), else None."""
    out = []
    for quantities in zip(*per_client):
        flats = []
        for q in quantities:
            if isinstance(q, torch.Tensor):
                if q.dim() != 1 or q.numel() != agg.numel:
                    raise ValueError(f"add_many: an upload given as one tensor must be 1-D with {agg.numel} "
                                     f"values (common.params.flatten), got shape {tuple(q.shape)}")
                flat = q if q.is_contiguous() else None
            else:
                flat = P.as_flat(agg._check(q))  # None when some tensor is missing
            if flat is None or flat.numel() != agg.numel or flat.device != agg.device:
                return None
            flats.append(flat)
        out.append(tuple(flats))
    return out


def _weights(n_clients: int, weights) -> list[float]:
    weights = [1.0] * n_clients if weights is None else [float(w) for w in weights]
    if len(weights) != n_clients:
        raise ValueError(f"add_many: {n_clients} clients but {len(weights)} weights")
    return weights


def _add_blocked(agg, clients: list, weights: list[float], add_block) -> None:
    """For each block of coordinates (``agg._block()``), every client in order: ``add_block(k, accs, xs, w)`` on
    the sums' and the k-th client's buffers cut to the block; then the total weight, client by client as ``add``
    does."""
    agg._materialize()
    with agg._threads():
        for lo in range(0, agg.numel, agg._block()):
            hi = min(agg.numel, lo + agg._block())
            accs = [f[lo:hi] for f in agg._flats]
            for k, (xs, w) in enumerate(zip(clients, weights)):
                add_block(k, accs, [x[lo:hi] for x in xs], w)
    for w in weights:
        agg._flats[0][-1] += w


class ManyWeightedMean(WeightedMean):
    """``WeightedMean`` that also takes K uploads in memory (Flower's input), block by block of coordinates."""

    @torch.no_grad()
    def add_many(self, clients: list, weights: list[float] | None = None) -> None:
        """``add(clients[k], weights[k])`` for every k in order, bit for bit (each a tensor list or a 1-D buffer)."""
        weights = _weights(len(clients), weights)
        flats = _flat_clients(self, clients)
        if not flats:
            for c, w in zip(clients, weights):
                self.add_flat(c, w) if isinstance(c, torch.Tensor) else self.add(c, w)
            return
        write_first = self._zero_pending and flats[0][0].dtype == self.acc_dtype
        if not write_first:
            self._materialize()
        self._zero_pending = False

        def add_block(k, accs, xs, w):
            if k == 0 and write_first:
                torch.mul(xs[0], w, out=accs[0])  # = 0 + w theta, as add's first client
            else:
                accs[0].add_(xs[0], alpha=w)
        _add_blocked(self, flats, weights, add_block)


class ManyFisherMean(FisherMean):
    """``FisherMean`` that also takes K uploads and their Fishers in memory, block by block of coordinates."""

    @torch.no_grad()
    def add_many(self, clients: list, fishers: list, weights: list[float] | None = None) -> None:
        """``add(clients[k], fishers[k], weights[k])`` for every k in order, bit for bit."""
        if len(fishers) != len(clients):
            raise ValueError(f"add_many: {len(clients)} clients but {len(fishers)} Fisher lists")
        weights = _weights(len(clients), weights)
        flats = _flat_clients(self, clients, fishers)
        if flats:
            return _add_blocked(self, flats, weights, lambda k, accs, xs, w: self._add_block(accs, xs, w))
        for c, f, w in zip(clients, fishers, weights):
            self.add(*(P.unflatten(x, self._views[0]) if isinstance(x, torch.Tensor) else x for x in (c, f)), w)


def many_fn(c: Clients, k: int, kind: str = "WeightedMean"):
    """One aggregation of K distinct uploads held in memory (``add_many``); results written into existing
    tensors."""
    w = weights_for(k)
    out = P.zeros_like(c.base)
    uploads = c.distinct(k)
    agg = {"WeightedMean": ManyWeightedMean, "FisherMean": ManyFisherMean}[kind](c.base)
    extra = {"WeightedMean": [], "FisherMean": [uploads[1:] + uploads[:1]]}[kind]

    def aggregate():
        agg.reset()
        agg.add_many(uploads, *extra, w)
        return agg.result(out=out)
    return aggregate


def server_step_fn(c: Clients, name: str, flat: bool):
    """One server optimizer step (``SERVER_STEPS[name]``) on the global parameters, flat or separate tensors."""
    x = P.clone(c.base) if flat else [t.clone() for t in c.base]
    avg = P.clone(c.flat[1]) if flat else c.separate[1]
    opt = SERVER_STEPS[name](x)
    return lambda: opt.step(x, avg)
