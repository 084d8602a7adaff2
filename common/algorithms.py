"""Client algorithms of the round engine (``common.engine``), one registry: ``--algorithm`` names a class here.

An algorithm is hooks the task's local training calls (``client_start``, ``adjust_grads``, ``after_step``,
``client_end``), what it sends (``up`` / ``down``: model-sized tensors per client per round, counted by the
engine), the weight the aggregator gives a client (``client_weight``) and the server step on the round's
aggregate (``server_step``). ``refuse(args)`` says in one line why a combination (aggregator, server
optimizer, clustering) cannot run; ``check_algorithm_args`` asks every algorithm before anything is written.

Adding one: subclass ``FedAvg`` in a module of its own, decorate it with ``@register``, import that module in
``common.engine`` (one line) so the registry holds it wherever the shared flags are parsed, and list its name,
one-line description and own flags in ``common.algorithm_flags`` (torch-free: --help builds without torch).
"""
from __future__ import annotations

import torch

from common import scaffold as SC

REGISTRY: dict[str, type[FedAvg]] = {}


def register(cls):
    """Class decorator: ``--algorithm cls.name`` builds ``cls`` (``make_algorithm``)."""
    REGISTRY[cls.name] = cls
    return cls


@register
class FedAvg:
    """Plain local training; the server moves the global model to the aggregate (through its optimizer)."""

    name, title = "fedavg", ""  # title: how refusals name it (default "--algorithm <name>")
    up, down = 1, 1        # model-sized tensors per client per round: sent up (the model) and down (the model)
    plain_sgd = False      # needs plain SGD local steps (its algebra assumes them), for the reason below
    plain_sgd_reason = "its update assumes them"
    flags: tuple[str, ...] = ()   # the destinations of its own flags (common.algorithm_flags): refused under another
    uses_aggregate = True  # the engine builds the aggregator and passes its result to ``server_step``

    @classmethod
    def refuse(cls, args) -> str | None:
        """Why this algorithm cannot run with the rest of ``args`` (aggregator, server optimizer, clustering), or
        None; checked at argument time."""
        return None

    @classmethod
    def from_args(cls, args, cluster_models, sizes, assign=None, shift: bool = False) -> FedAvg:
        """The algorithm for a run (``make_algorithm``'s arguments)."""
        return cls()

    def client_start(self, k: int, anchor: list[torch.Tensor], cluster: int = 0) -> None:
        """Client k starts its round from ``anchor`` (its cluster's global model, already loaded)."""
        self.anchor = anchor

    def adjust_grads(self, params: list[torch.Tensor]) -> None:
        """Between backward and the optimizer step: change the gradients in ``p.grad`` in place."""

    def after_step(self, params: list[torch.Tensor], lr: float) -> None:
        """After each optimizer step at rate ``lr``: change the parameters in place."""

    def client_end(self, k: int, params, steps: int, lr: float) -> None:
        """After local training: ``params`` hold the client's model, trained ``steps`` steps at ``lr``."""

    def client_weight(self, k: int, size: float, steps: int) -> float:
        """What the aggregator weighs client k by (its size n_k)."""
        return size

    def accumulators(self) -> list[torch.Tensor]:
        """Flat buffers summed across ranks in the engine's one all-reduce."""
        return []

    def after_reduce(self, plan: list[list[int]]) -> None:
        """Under torchrun after the all-reduce (``plan[r]``: the clients rank r trained)."""

    def use_store(self, store) -> None:
        """Keep per-client state in ``store``'s tables (``common.client_store``: the run's, on disk once the
        engine opens it); an algorithm without per-client state ignores it."""

    def server_step(self, x: list[torch.Tensor], aggregate, server, cluster: int = 0) -> None:
        """x <- the server optimizer's step toward ``aggregate`` (the aggregator's result, projected by the task)."""
        server.step(x, aggregate)

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


@register
class FedProx(FedAvg):
    """FedProx: the local loss gets + (mu/2) ||theta - theta_global||^2, i.e. mu (theta - theta_global) is
    added to the gradient (after any clipping); mu = 0 is exactly FedAvg."""

    name, title = "fedprox", "FedProx"
    flags = ("mu",)

    def __init__(self, mu: float):
        self.mu = mu

    @classmethod
    def from_args(cls, args, cluster_models, sizes, assign=None, shift=False) -> FedProx:
        return cls(args.mu)

    @torch.no_grad()
    def adjust_grads(self, params) -> None:
        if self.mu > 0:  # parameters without a gradient (frozen this step) stay without one
            pairs = [(p, a) for p, a in zip(params, self.anchor) if p.grad is not None]
            torch._foreach_add_([p.grad for p, _ in pairs], torch._foreach_sub([p.detach() for p, _ in pairs],
                                                                               [a for _, a in pairs]), alpha=self.mu)


@register
class Scaffold(FedAvg):
    """SCAFFOLD option II (``common.scaffold.Scaffold``, one per cluster): the gradient gets c - c_i.
    ``shift`` (an adaptive local optimizer, as federated LLM fine-tuning code does): theta -= lr (c - c_i)
    after each optimizer step instead; c_i's update stays option II, so c_i becomes the client's mean step
    direction. With plain SGD the two forms are the same algorithm.

    Server step: with ``--aggregator mean`` its own sums, x <- x + server_lr mean dy (the engine builds no
    aggregator); with any other aggregator x <- x + server_lr (aggregate - x) and only dc is summed. Either
    way c <- c + mean dc. A client sends y and dc (up 2) and receives x and c (down 2)."""

    name, title = "scaffold", "SCAFFOLD"
    up, down, plain_sgd, plain_sgd_reason = 2, 2, True, "its control variates assume them"
    flags = ("scaffold_weighting",)

    def __init__(self, controls: list[SC.Scaffold], shift: bool = False, own_mean: bool = True):
        self.controls, self.cluster, self.shift, self.uses_aggregate = controls, 0, shift, not own_mean
        for sc in controls:
            sc.sum_dy = own_mean

    @classmethod
    def refuse(cls, args) -> str | None:
        if args.scaffold_weighting not in ("uniform", "size"):
            return f"--scaffold-weighting {args.scaffold_weighting!r} is unknown; expected uniform or size"
        if args.server_opt != "fedavg":
            return (f"SCAFFOLD makes its own server step (x += server_lr (aggregate - x)): --server-opt "
                    f"{args.server_opt} does not apply")
        return None

    @classmethod
    def from_args(cls, args, cluster_models, sizes, assign=None, shift=False) -> Scaffold:
        """Control variates for every client, per cluster: inside a data cluster its means run over its members
        only, under IFCA (``assign`` None: membership changes every round) over all N clients."""
        controls = []
        for g, x in enumerate(cluster_models):
            w = [float(assign is None or assign[k] == g) * (sizes[k] if args.scaffold_weighting == "size" else 1.0)
                 for k in range(len(sizes))]
            controls.append(SC.Scaffold(x, len(sizes), server_lr=args.server_lr,
                                        client_weights=None if all(v == 1.0 for v in w) else w))
        return cls(controls, shift, own_mean=getattr(args, "aggregator", "mean") == "mean")

    def client_start(self, k, anchor, cluster: int = 0) -> None:
        self.anchor, self.cluster = anchor, cluster
        self.correction = self.controls[cluster].correction(k)

    @torch.no_grad()
    def adjust_grads(self, params) -> None:
        if not self.shift:
            pairs = [(p.grad, c) for p, c in zip(params, self.correction) if p.grad is not None]
            torch._foreach_add_([g for g, _ in pairs], [c for _, c in pairs])

    @torch.no_grad()
    def after_step(self, params, lr: float) -> None:
        if self.shift:
            torch._foreach_add_([p.detach() for p in params], self.correction, alpha=-lr)

    def client_end(self, k, params, steps, lr) -> None:
        self.controls[self.cluster].client_update(k, self.anchor, params, max(steps, 1), lr)

    def accumulators(self):
        return [t for sc in self.controls for t in sc.accumulators()]

    def use_store(self, store) -> None:
        """Cluster g's c_i in table scaffold_c<g> (under torchrun every rank reads and writes its own clients' rows
        there: nothing is broadcast)."""
        for g, sc in enumerate(self.controls):
            sc.use_table(store.table(f"scaffold_c{g}"))

    def server_step(self, x, aggregate, server, cluster: int = 0) -> None:
        if aggregate is not None:  # another aggregator's result: the server optimizer is plain FedAvg at server_lr
            server.step(x, aggregate)
        self.controls[cluster].server_update(x if aggregate is None else None)

    def state_dict(self):
        return [sc.state_dict() for sc in self.controls]

    def load_state_dict(self, state) -> None:
        for sc, s in zip(self.controls, state):
            sc.load_state_dict(s)


def make_algorithm(args, cluster_models: list[list[torch.Tensor]], sizes, assign=None,
                   shift: bool = False) -> FedAvg:
    """The client algorithm of ``--algorithm`` (``shift``: SCAFFOLD's correction after the step). A name outside
    the registry is a script's own name for FedAvg with a server optimizer (llm_noniid's fedavgm / fedadam,
    accepted by its ``check_algorithm_args``)."""
    return REGISTRY.get(args.algorithm, FedAvg).from_args(args, cluster_models, sizes, assign, shift)
