"""Aggregators of a federated round, one registry: ``--aggregator`` names a class here (default ``mean``).

The engine builds one per cluster (``make``) and each round: ``reset(x, chosen)`` -> for every trained client
``add(k, params, weight, stats)`` (``stats``: what the class names in ``stats``, from the task's
``client_stat``) -> under torchrun ``pre_reduce(rows, chosen)`` then ONE all-reduce SUM of ``accumulators()``
-> ``result()`` (the new global model before the task's projection and the server step) -> ``round_metrics()``
for the log. ``up``: model-sized tensors a client sends for it besides its model (counted by the engine).

- ``mean``: FedAvg's weighted mean (``common.aggregate.WeightedMean``).
- ``fisher``: FedFisher, coordinates weighted by each client's diagonal Fisher (``common.aggregate.FisherMean``).
- ``entropy``: FedEntropy, alpha_k = softmax(-H_k / T) over the cluster's clients (H_k: the client's mean
  predictive entropy on held-out data), streamed with a re-based reference entropy.

Adding one: subclass ``Aggregator`` in a module of its own, decorate it with ``@register``, import that module
in ``common.engine`` (one line), and list its name, one-line description and own flags in
``common.algorithm_flags`` (torch-free: every parser is built without loading torch).
"""
from __future__ import annotations

import math

import torch

from common import aggregate as A
from common.algorithm_flags import FISHER_EPS

REGISTRY: dict[str, type[Aggregator]] = {}


def register(cls):
    """Class decorator: ``--aggregator cls.name`` builds ``cls`` (``make``)."""
    REGISTRY[cls.name] = cls
    return cls


def make(name: str, like: list[torch.Tensor], args) -> Aggregator:
    return REGISTRY[name](like, args)


def acc_dtype(like) -> torch.dtype:
    """Sums in float32, or the parameters' dtype where it is wider (float64 problems stay float64)."""
    return torch.promote_types(torch.float32, like[0].dtype)


class Aggregator:
    """The interface, and ``mean``'s bookkeeping. ``like``: the cluster's global model x."""

    name = "mean"
    stats: tuple[str, ...] = ()   # per-client statistics asked of the task: "fisher" (tensors like params), "entropy"
    up = 0                        # model-sized tensors a client sends for it besides its model
    holds_clients = False         # keeps every client's upload (memory O(clients per round))
    flags: tuple[str, ...] = ()   # destinations of its own flags (common.algorithm_flags): refused under another one

    def __init__(self, like: list[torch.Tensor], args=None):
        self.args = args

    @classmethod
    def refuse(cls, args) -> str | None:
        """Why it cannot run with the rest of ``args`` (algorithm, clustering, server optimizer), or None."""
        return None

    @classmethod
    def run_name_tags(cls, args) -> dict:
        """Run-name settings of its flags off their defaults (``common.runlog.run_name``)."""
        return {}

    def reset(self, x: list[torch.Tensor], chosen: list[int]) -> None:
        """Round start: x the cluster's global model now, ``chosen`` the round's clients of the cluster, sorted."""

    def add(self, k: int, params: list[torch.Tensor], weight: float, stats: dict) -> dict:
        """Client k's trained model; returns the metrics row it logs for the client."""
        raise NotImplementedError

    def accumulators(self) -> list[torch.Tensor]:
        """Flat buffers SUMMED across ranks before ``result()``."""
        return []

    def pre_reduce(self, rows: dict, chosen: list[int]) -> None:
        """Under torchrun before the all-reduce: ``rows`` every chosen client's metrics row (all ranks)."""

    def result(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def round_metrics(self) -> dict:
        """Logged on evaluation rounds."""
        return {}

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


@register
class Mean(Aggregator):
    """FedAvg: sum_k w_k theta_k / sum_k w_k (w_k: the algorithm's client weight, usually n_k)."""

    name = "mean"

    def __init__(self, like, args=None):
        super().__init__(like, args)
        self.mean = A.WeightedMean(like, acc_dtype=acc_dtype(like))

    def reset(self, x, chosen) -> None:
        self.mean.reset()

    def add(self, k, params, weight, stats) -> dict:
        self.mean.add(params, weight=weight)
        return {}

    def accumulators(self):
        return self.mean.accumulators()

    def result(self):
        return self.mean.result()


@register
class Fisher(Aggregator):
    """FedFisher (``common.aggregate.FisherMean``): theta = (sum w F theta + eps theta_bar) / (sum w F + eps), eps
    --fisher-eps times the mean of sum w F. Each client sends its Fisher diagonal too (up 1). Logs the client's
    mean Fisher and ``fisher_eps_share`` (the fraction of coordinates where eps decides)."""

    name = "fisher"
    stats, up = ("fisher",), 1
    flags = ("fisher_eps",)
    EPS = FISHER_EPS

    def __init__(self, like, args=None):
        super().__init__(like, args)
        self.mean = A.FisherMean(like, eps=getattr(args, "fisher_eps", self.EPS), acc_dtype=acc_dtype(like))

    @classmethod
    def refuse(cls, args) -> str | None:
        if getattr(args, "fisher_method", None) == "local" and args.fisher_labels == "sampled":
            return ("--fisher-method local reuses the training gradients: its labels are the data's "
                    "(--fisher-labels empirical)")
        return None

    @classmethod
    def run_name_tags(cls, args) -> dict:
        return {"feps": args.fisher_eps if args.fisher_eps != cls.EPS else None}

    def reset(self, x, chosen) -> None:
        self.mean.reset()
        self.mean.eps_share = float("nan")

    def add(self, k, params, weight, stats) -> dict:
        f = stats["fisher"]
        self.mean.add(params, f, weight=weight)
        return {"fisher_mean": float(sum(t.double().sum() for t in f) / sum(t.numel() for t in f))}

    def accumulators(self):
        return self.mean.accumulators()

    def result(self):
        return self.mean.result()

    def round_metrics(self) -> dict:
        return {"fisher_eps_share": self.mean.eps_share}


MOVE_REF = 30.0  # a client more confident than H_ref by this many T becomes the reference: no weight exceeds e^30


def _next_ref(h_ref: float, h: float, temperature: float) -> float:
    return h if h < h_ref - MOVE_REF * temperature else h_ref


@register
class Entropy(Aggregator):
    """FedEntropy: theta = sum_k alpha_k theta_k, alpha_k = softmax(-H_k / T) over the cluster's clients (the
    client weights n_k are not used: the source's rule). Streamed: weight exp(-(H_k - H_ref) / T), H_ref this
    cluster's first client's entropy until a client is far more confident (``MOVE_REF``: its weight would
    overflow at a small T), which then becomes H_ref with the sums so far scaled to it; the mean's division by
    the weight sum completes the softmax. Under torchrun ``pre_reduce`` re-bases each rank's sums to the H_ref a
    single process ends the round with, so the reduced sums are the single-process run's."""

    name = "entropy"
    stats, flags = ("entropy",), ("temperature",)

    def __init__(self, like, args=None):
        super().__init__(like, args)
        self.temperature = getattr(args, "temperature", 1.0)
        self.mean = A.WeightedMean(like, acc_dtype=acc_dtype(like))
        self.h_ref, self.entropies = None, {}

    @classmethod
    def run_name_tags(cls, args) -> dict:
        return {"T": args.temperature}

    def reset(self, x, chosen) -> None:
        self.mean.reset()
        self.h_ref, self.entropies = None, {}

    def _scale(self, factor: float) -> None:
        for t in self.mean.accumulators():  # the sums and the total weight
            t.mul_(factor)

    def add(self, k, params, weight, stats) -> dict:
        h, temperature = stats["entropy"], self.temperature
        if self.h_ref is None:
            self.h_ref = h
        if _next_ref(self.h_ref, h, temperature) != self.h_ref:
            self._scale(math.exp(-(self.h_ref - h) / temperature))  # re-based to h
            self.h_ref = h
        self.mean.add(params, weight=math.exp(-(h - self.h_ref) / temperature))
        self.entropies[k] = h
        return {"entropy": h}

    def pre_reduce(self, rows, chosen) -> None:
        self.entropies = {k: rows[k]["entropy"] for k in chosen}
        if self.h_ref is not None and chosen:  # a rank with no client of this cluster has nothing to re-base
            h_ref = rows[chosen[0]]["entropy"]
            for k in chosen[1:]:
                h_ref = _next_ref(h_ref, rows[k]["entropy"], self.temperature)
            self._scale(math.exp(-(self.h_ref - h_ref) / self.temperature))
            self.h_ref = h_ref

    def accumulators(self):
        return self.mean.accumulators()

    def result(self):
        return self.mean.result()

    def round_metrics(self) -> dict:
        """The round's normalised weights alpha_k and the ratio of the largest to the smallest."""
        if not self.entropies:
            return {}
        keys = sorted(self.entropies)
        alpha = A.entropy_weights([self.entropies[k] for k in keys], self.temperature)
        ratio = max(alpha) / min(alpha) if min(alpha) > 0 else math.inf  # inf: a weight below the smallest float
        return {"entropy_weight": {str(k): a for k, a in zip(keys, alpha)}, "entropy_weight_ratio": ratio}
