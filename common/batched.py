"""A round's clients trained together (``--client-batching stacked``): one forward and one backward per local step
for all of the round's clients, instead of one client after another.

How: the round's n clients' copies of the global model are stacked on a leading axis (each parameter [n, *shape]).
Each local step takes every client's next batch (``Task.client_batches``: the batches its ``train_client`` steps
through, in the same order, from the same random streams), pads them to one shape with zero-weight samples, and
computes every client's batch-mean loss through the task's stacked forward (``Task.stacked_losses``: per-sample
losses of n models at once; ``stacked_forward`` serves any module, ``common.stacked_lstm`` LSTMs). One backward of
the clients' summed losses gives each client its own gradient (their parameters are disjoint), and each client
takes ``torch.optim.SGD``'s step (after FedProx's proximal gradient, as its ``adjust_grads`` adds it). Clients run
out of batches at different steps: sorted longest first, the clients still training are a prefix of the stack, so
a finished client is neither updated nor computed any further.

The engine then gets the clients in its own order, each client's model loaded into ``task.params`` with the
{"loss", "steps"} its ``train_client`` would return: aggregation (DP clipping included), metrics, communication
counts and checkpoints are those of the sequential path, and the results equal it up to float summation order
(tests/common/test_batched.py, tests/llm_noniid/test_shakespeare_batched.py).

What it buys depends on where a client's step spends its time. On a CPU the LEAF-style character LSTM spends 85-90 %
in the fused LSTM kernels (oneDNN), which run per client either way: at batch 10 the recurrent matmuls have 10 rows
and are compute-bound, so stacking removes only the per-step work around them (the optimizer, autograd's
bookkeeping, the embedding and read-out): 10 clients of 20 steps measured 1.24x at 32 units, 1.15x at 64, 0.9x at
256 (LEAF's), the tiny GPT-2 0.97x (llm_noniid/README.md). Lockstep kernels for all clients
(``common.stacked_lstm``'s grouped LSTM, vmap) are the way to a large gain where small kernels are launch-bound
(GPUs); on this CPU they were slower.

Applies to FedAvg and FedProx with plain SGD local steps (no momentum or weight decay), the optimizer state reset
every round, one global model (no clustering) and aggregators that need only the clients' models; refused in one
line elsewhere (``check_args``, ``check_task``). The stacked forward must be deterministic: the clients' dropout
streams are not replayed.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import torch

from common import aggregators as AG
from common import algorithms as AL
from common import params as P
from common.errors import check

ALGORITHMS = ("fedavg", "fedprox")  # the client algorithms whose local steps are plain SGD with no per-client state


def enabled(args) -> bool:
    return getattr(args, "client_batching", "off") == "stacked"


def check_args(args) -> None:
    """One-line refusals, at argument time, of what stacked training cannot reproduce (called by
    ``common.engine.check_algorithm_args`` for scripts that have the flag)."""
    if not enabled(args):
        return
    check(args.algorithm in ALGORITHMS, f"--client-batching stacked trains plain local SGD steps (--algorithm "
                                        f"{' or '.join(ALGORITHMS)}); --algorithm {args.algorithm} changes each "
                                        "client's steps with state of its own: use --client-batching off")
    check(getattr(args, "client_opt_state", "reset") == "reset", "--client-batching stacked starts every client's "
          "optimizer afresh each round; --client-opt-state persist keeps per-client state: use --client-batching off")
    check(args.clustering == "none", f"--client-batching stacked starts every client from the one global model; "
                                     f"--clustering {args.clustering} does not: use --client-batching off")
    stats = AG.REGISTRY[args.aggregator].stats
    check(not stats, f"--aggregator {args.aggregator} asks each trained client for its {' and '.join(stats)}, which "
                     "stacked training does not compute: use --client-batching off")


def check_task(task) -> None:
    """At run start: the task's optimizer is plain SGD (the step ``train_round`` takes for it)."""
    opt = task.optimizer
    plain = isinstance(opt, torch.optim.SGD) and all(
        not g["momentum"] and not g["weight_decay"] and not g["nesterov"] and not g["maximize"]
        for g in opt.param_groups)
    check(plain, f"--client-batching stacked takes plain SGD steps; this task's local optimizer is "
                 f"{type(opt).__name__ if opt is not None else 'its own'} with state or decay: use --client-batching "
                 "off")


def stacked_forward(model: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                    vmap: bool | None = None) -> torch.Tensor:
    """n copies of ``model`` on their own inputs: ``params`` name -> [n, *shape], x [n, ...] -> [n, *output]
    (buffers: the model's own). ``vmap`` (default on a GPU): one ``torch.func.vmap`` over ``functional_call``, one
    kernel per op for all copies; else one copy after another through the model's own kernels, inside the one
    graph ``train_round`` differentiates once. On a CPU the copies' ops are compute-bound at the models here (the
    tiny GPT-2 over 10 x 80 characters: vmap 0.9x, one after another 0.97x the speed of sequential clients), and
    vmap runs ops without a batching rule (the CPU's fused attention) once per copy anyway."""
    call = torch.func.functional_call
    if vmap is None:
        vmap = x.device.type == "cuda"
    if vmap:
        with warnings.catch_warnings():  # an op without a batching rule runs once per copy: correct, said above
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            return torch.func.vmap(lambda p, xi: call(model, p, (xi,)))(params, x)
    cols = {k: v.unbind(0) for k, v in params.items()}
    return torch.stack([call(model, {k: c[i] for k, c in cols.items()}, (xi,)) for i, xi in enumerate(x)])


class Batches(Sequence):
    """A client's batches, made when taken: ``make(pick)`` for each of ``picks`` (what selects a batch's samples),
    so a long client's round holds one batch at a time (sequential) or one per client (stacked)."""

    def __init__(self, picks: list, make: Callable[..., tuple[torch.Tensor, torch.Tensor]]):
        self.picks, self.make = picks, make

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.make(self.picks[i])


def train_round(task, fed, ks: list[int], r: int, lr: float):
    """Local training of clients ``ks`` (round r, rate ``lr``) together. A generator, like the engine's sequential
    one: yields (k, out) in ``ks``' order, ``task.params`` holding client k's trained model."""
    t0 = time.perf_counter()
    start = fed.models[0]
    mu = fed.algo.mu if isinstance(fed.algo, AL.FedProx) else 0.0
    batches = [task.client_batches(k, r) for k in ks]
    order = sorted(range(len(ks)), key=lambda i: -len(batches[i]))  # longest first: the clients still training
    steps = [len(batches[i]) for i in order]                          # are a prefix of the stack
    stacked = [x.detach().unsqueeze(0).repeat(len(ks), *(1,) * x.dim()) for x in start]
    total = torch.zeros(len(ks), device=task.device)  # each client's summed batch losses (dtype: the losses')
    for s in range(steps[0] if ks else 0):
        n = sum(1 for m in steps if m > s)
        inputs, targets, weight = _stack([batches[i][s] for i in order[:n]], task.device)
        live = [p[:n].detach().requires_grad_() for p in stacked]
        per = task.stacked_losses(live, inputs, targets)              # [n, B] per-sample losses
        loss = (per * weight.to(per.dtype)).sum(1) / weight.sum(1)   # each client's batch mean
        grads = torch.autograd.grad(loss.sum(), live, allow_unused=True)
        with torch.no_grad():
            for p, a, g in zip(stacked, start, grads):
                if g is None:  # no gradient: SGD leaves the parameter alone
                    continue
                if mu > 0:     # FedProx: + mu (theta - theta_global), as its adjust_grads adds it
                    g.add_(p[:n] - a, alpha=mu)
                p[:n].add_(g, alpha=-lr)
            total = total.to(loss.dtype)
            total[:n] += loss.detach()
    if task.device.type == "cuda":
        torch.cuda.synchronize(task.device)
    fed.timing["client_seconds"] += time.perf_counter() - t0
    where = {i: j for j, i in enumerate(order)}
    for i, k in enumerate(ks):
        j = where[i]
        fed.algo.client_start(k, start, 0)
        P.load_(task.params, [p[j] for p in stacked])
        yield k, {"loss": total[j] / max(steps[j], 1), "steps": steps[j]}


def _stack(batches: list[tuple[torch.Tensor, torch.Tensor]], device) -> tuple[torch.Tensor, ...]:
    """The clients' batches (inputs [b_i, ...], targets [b_i, ...]) as inputs [n, B, ...], targets [n, B, ...] and
    sample weights [n, B] (0 for padding: copies of the client's first sample, so the forward sees real data)."""
    width = max(len(y) for _, y in batches)
    pad = lambda t, k: torch.cat([t, t[:1].expand(k, *t.shape[1:])]) if k else t  # noqa: E731
    xs = torch.stack([pad(x, width - len(y)) for x, y in batches])
    ys = torch.stack([pad(y, width - len(y)) for _, y in batches])
    ws = torch.tensor([[1.0] * len(y) + [0.0] * (width - len(y)) for _, y in batches])
    return xs.to(device), ys.to(device), ws.to(device)
