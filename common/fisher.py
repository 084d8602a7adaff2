"""Diagonal Fisher information F = mean over examples i of g_i * g_i, g_i the gradient of example i's loss: the
mean NLL over its non-ignored targets (none: not counted). Classifier: logits [B, C], targets [B]; causal LM:
logits [B, T, V] with targets ALREADY ALIGNED (``lm_targets``; the model must not shift again).

labels='empirical': the data's targets; 'sampled': y ~ softmax(logits) from ``generator`` (the true Fisher),
drawn in one batched forward before any gradient. method='per_example': vmap(grad) over chunks (tied weights
are one parameter), falling back with a warning to 'loop', one autograd pass per example (the reference);
'batch': m * g_b**2 of each batch's mean-loss gradient, weighted by m (one backward per batch; unbiased with
sampled labels, biased by (m - 1) times the squared mean gradient with empirical ones). The model runs in eval
mode. ``LocalStepFisher`` estimates it from local training's own gradients (FedFisher's ``--fisher-method
local``; its error: ``benchmarks/bench_mamba_round.py``).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from common import params as P
from common import seed as seeding
from common.evaluate import IGNORE_INDEX, eval_mode

# --fisher-labels' values: "true" is vit_sparse_fl's name for the data's labels (its masks' documented flag)
LABELS = {"empirical": "empirical", "true": "empirical", "sampled": "sampled"}


def lm_targets(input_ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[B, T] targets aligned with the logits: targets[:, t] = input_ids[:, t + 1], the last one ignored."""
    targets = torch.full_like(input_ids, ignore_index)
    targets[:, :-1] = input_ids[:, 1:]
    return targets


def _default_forward(model: nn.Module, inputs) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


def example_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean NLL over one example's non-ignored targets (logits [..., C], targets [...]); 0 if none.
    Written with gather and a mask (no data-dependent indexing) so that it vmaps."""
    valid = targets != ignore_index
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    return (nll * valid).sum() / valid.sum().clamp(min=1)


class _Wrapped(nn.Module):
    """Lets ``functional_call`` run a custom ``forward(model, inputs)``."""

    def __init__(self, model: nn.Module, forward: Callable):
        super().__init__()
        self.model, self.fn = model, forward

    def forward(self, inputs):
        return self.fn(self.model, inputs)


def _take(inputs, idx):
    return {k: v[idx] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[idx]


def _size(inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


@torch.no_grad()
def sample_labels(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One label per position of ``logits`` [..., C], drawn from their softmax (float32) with ``generator`` on its
    own device; returned on the logits' device."""
    probs = torch.softmax(logits.float(), -1).reshape(-1, logits.shape[-1])
    g_dev = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(g_dev), 1, generator=generator).to(probs.device).view(logits.shape[:-1])


def diagonal_fisher(model: nn.Module, batches: Iterable, *, labels: str = "empirical",
                    forward: Callable | None = None, params: Sequence[torch.Tensor] | None = None,
                    method: str = "per_example", chunk_size: int = 16, generator: torch.Generator | None = None,
                    max_examples: int | None = None, ignore_index: int = IGNORE_INDEX) -> list[torch.Tensor]:
    """Mean squared per-example gradients of ``params`` (default ``common.params.trainable(model)``), float32.

    batches: (inputs, targets): inputs [B, ...] (or a dict of them, passed as keyword arguments), targets
    [B, ...] (None with labels='sampled': every position counts). forward(model, inputs) -> logits [B, ..., C]
    (default ``model(inputs)``, its ``.logits`` if any). max_examples: stop there (the last batch is cut).
    """
    if labels not in ("empirical", "sampled"):
        raise ValueError(f"labels must be 'empirical' or 'sampled', got {labels!r}")
    if method not in ("per_example", "loop", "batch"):
        raise ValueError(f"method must be 'per_example', 'loop' or 'batch', got {method!r}")
    forward = forward or _default_forward
    params = list(params) if params is not None else P.trainable(model)
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in names_by_id]
    if missing:
        raise ValueError(f"params {missing} are not parameters of the model")
    names = [names_by_id[id(p)] for p in params]
    fisher = P.zeros_like(params, dtype=torch.float32)  # views of one buffer: an aggregator adds it in one op
    count = 0
    wrapped = _Wrapped(model, forward)

    def loss_one(p_dict, x, t):  # x, t: one example without its batch dim
        logits = functional_call(wrapped, p_dict, (_take(x, None) if isinstance(x, dict) else x.unsqueeze(0),))
        return example_loss(logits[0], t, ignore_index)

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    with eval_mode(model):
        for inputs, targets in batches:
            n = _size(inputs)
            if max_examples is not None:
                n = min(n, max_examples - count)
                if n <= 0:
                    break
                inputs, targets = _take(inputs, slice(0, n)), None if targets is None else targets[:n]
            if labels == "sampled":
                draws = sample_labels(forward(model, inputs), generator)
                targets = draws if targets is None else draws.masked_fill(targets == ignore_index, ignore_index)
            elif targets is None:
                raise ValueError("labels='empirical' needs targets in every batch")
            m = int((targets != ignore_index).reshape(n, -1).any(1).sum())  # examples with a target
            if method == "per_example":
                p_dict = {"model." + k: p.detach() for k, p in zip(names, params)}
                for lo in range(0, n, chunk_size):
                    sl = slice(lo, min(n, lo + chunk_size))
                    try:
                        g = per_example(p_dict, _take(inputs, sl), targets[sl])
                    except Exception as e:  # noqa: BLE001 - any vmap incompatibility; the loop is exact
                        warnings.warn(f"diagonal_fisher: vmap over the model failed ({type(e).__name__}: {e}); "
                                      "using the per-example loop instead", RuntimeWarning, stacklevel=2)
                        method = "loop"
                        _loop(model, forward, params, fisher, _take(inputs, slice(lo, n)), targets[lo:], ignore_index)
                        break
                    with torch.no_grad():  # a statistic: no graph (the caller may run with grad enabled)
                        torch._foreach_add_(fisher, [(gi.float() ** 2).sum(0) for gi in g.values()])
            elif method == "loop":
                _loop(model, forward, params, fisher, inputs, targets, ignore_index)
            elif m:  # batch
                losses = torch.stack([example_loss(lg, t, ignore_index)
                                      for lg, t in zip(forward(model, inputs), targets)])
                for f, gb in zip(fisher, torch.autograd.grad(losses.sum() / m, params, allow_unused=True)):
                    if gb is not None:
                        f.add_(gb.float() ** 2, alpha=m * m)  # m g_b^2 (estimates F), weighted by m
            count += m
            if max_examples is not None and count >= max_examples:
                break
    if count == 0:
        raise ValueError("diagonal_fisher: no example with a non-ignored target")
    torch._foreach_div_(fisher, float(count))
    return fisher


def client_fisher(model: nn.Module, examples: int, batches_of: Callable[[torch.Tensor], Iterable], args, round_idx: int,
                  client: int, *, forward: Callable | None = None,
                  params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """FedFisher's F_k (``--aggregator fisher``, a task's ``client_stat("fisher")``) at the model's parameters now:
    the diagonal Fisher of --fisher-samples of the client's ``examples`` training examples, drawn without
    replacement from the stream keyed (seed, round, client, "fisher"); ``batches_of(indices)``: their (inputs,
    targets) batches of --fisher-batch examples (targets aligned with the logits). --fisher-method and
    --fisher-labels as ``diagonal_fisher`` (sampled labels from the stream (seed, round, client, "fisher-labels")).
    Every task computes it here, so one flag means one thing in every script."""
    pick = torch.randperm(examples, generator=seeding.client_generator(args.seed, round_idx, client,
                                                                       purpose="fisher"))[: args.fisher_samples]
    labels = seeding.client_generator(args.seed, round_idx, client, purpose="fisher-labels")
    return diagonal_fisher(model, batches_of(pick), labels=LABELS[args.fisher_labels], forward=forward, params=params,
                           method=args.fisher_method, chunk_size=args.fisher_batch, generator=labels)


def _loop(model, forward, params, fisher, inputs, targets, ignore_index) -> None:
    """Reference: one autograd pass per example, squared gradients summed into ``fisher``."""
    for i in range(_size(inputs)):
        loss = example_loss(forward(model, _take(inputs, slice(i, i + 1)))[0], targets[i], ignore_index)
        if not loss.requires_grad:
            continue
        for f, g in zip(fisher, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                f.add_(g.float() ** 2)


class LocalStepFisher:
    """Diagonal (empirical) Fisher estimate from the gradients LOCAL TRAINING computes anyway, no extra pass:
    hooks see each step's gradient g_s of the mean loss over m examples (one backward per step, gradients
    cleared between steps). For consecutive steps on independent batches, per-example gradients of mean mu and
    variance sigma^2 (F = mu^2 + sigma^2):
    E[g_{s-1} g_s] = mu^2 and E[(g_s - g_{s-1})^2] = 2 sigma^2 / m, so F_hat = g_{s-1} g_s + (m / 2)
    (g_s - g_{s-1})^2 has expectation F (up to the parameter change between the steps). ``estimate()``
    averages it over the pairs since ``reset()`` (at least two steps), clamped at 0. One step's m g_s^2 is
    biased by (m - 1) mu^2: 2.7x the Fisher's norm in error on the mamba_fl benchmark model, against 0.8 for
    this over 4 steps. Memory: two float32 copies of the parameters. ``remove()`` drops the hooks.
    """

    def __init__(self, params: Sequence[torch.Tensor], examples_per_step: int):
        if examples_per_step < 1:
            raise ValueError(f"examples_per_step must be >= 1, got {examples_per_step}")
        self.params, self.examples_per_step = list(params), examples_per_step
        self.sums, self.prev = (P.zeros_like(self.params, dtype=torch.float32) for _ in range(2))
        self.passes = [0] * len(self.params)
        self._handles = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self.params)]

    def _hook(self, i: int):
        def hook(p: torch.Tensor) -> None:
            if p.grad is None:
                return
            g, prev, acc = p.grad.detach().float(), self.prev[i], self.sums[i]
            if self.passes[i] > 0:  # g_{s-1} g_s + (m / 2) (g_s - g_{s-1})^2
                acc.addcmul_(prev, g)
                diff = g - prev
                acc.addcmul_(diff, diff, value=0.5 * self.examples_per_step)
            prev.copy_(g)
            self.passes[i] += 1
        return hook

    @property
    def steps(self) -> int:
        """Backward passes recorded since ``reset()`` (the most any parameter saw)."""
        return max(self.passes, default=0)

    @torch.no_grad()
    def estimate(self) -> list[torch.Tensor]:
        """The mean pair estimate, clamped at 0 (new float32 tensors; zeros where fewer than two passes reached).
        Raises when fewer than two passes were recorded."""
        if self.steps < 2:
            raise ValueError(f"LocalStepFisher.estimate(): needs at least 2 backward passes since reset(), "
                             f"got {self.steps}")
        out = P.flat_empty_like(self.sums)  # views of one buffer: an aggregator adds it in one op
        for o, s, n in zip(out, self.sums, self.passes):
            torch.div(s, max(n - 1, 1), out=o).clamp_min_(0)
        return out

    def reset(self) -> None:
        P.foreach(torch._foreach_zero_, self.sums + self.prev)
        self.passes = [0] * len(self.params)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
