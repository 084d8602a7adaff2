"""The per-client statistics the aggregators ask a Mamba client for (``MambaTask.client_stat``).

- "fisher" (``--aggregator fisher``): F_k, the diagonal Fisher at the client's final parameters from per-sequence
  gradients of --fisher-samples of its training blocks, for every parameter (the tied embedding too, which the
  source lost to a plain mean); ``--fisher-method local`` estimates it from the client's own local steps
  (``common.fisher.LocalStepFisher``).
- "entropy" (``--aggregator entropy``): H_k, the mean predictive entropy (nats per token) of the client's model on
  its held-out blocks (--holdout-fraction; the first --entropy-blocks of them).

``ctx`` / ``client``: ``mamba_fl.federated``'s Context and Client (which imports this module).
"""
from __future__ import annotations

import weakref

import torch

from common import evaluate, fisher

_LOCAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its LocalStepFisher (--fisher-method local)


def fisher_batches(ctx, client, pick):
    """(input_ids, next-token targets) batches of the client's training blocks ``pick`` (positions in its shard)."""
    # the model's logits at t predict token t+1: shift here, since Fisher sees (logits, targets) pairs
    return ((b["input_ids"], b["labels"][:, 1:])
            for b in ctx.batches(client.train[pick.numpy()], ctx.args.fisher_batch))


def next_token_logits(model, input_ids):
    """[B, T-1, V]. use_cache=False: in eval mode the model would otherwise fill a recurrent-state cache
    in place, which torch.func.vmap cannot batch."""
    return model(input_ids=input_ids, use_cache=False).logits[:, :-1]


def local_step_fisher(ctx, client, steps) -> list[torch.Tensor]:
    """--fisher-method local: the per-example Fisher from the batch gradients the client's consecutive local steps
    just computed, g_{s-1} g_s + (m / 2)(g_s - g_{s-1})^2 averaged over the pairs (m = --batch-size;
    ``common.fisher.LocalStepFisher`` hooks on the parameters). The hooks exist from the first call on, so the
    run's first client recomputes its steps' gradients (``steps``: its blocks of each local step) at its final
    parameters once."""
    est = _LOCAL.get(ctx.model)
    if est is None:
        est = _LOCAL[ctx.model] = fisher.LocalStepFisher(ctx.params, ctx.args.batch_size)
        for idx in steps:
            with evaluate.autocast(ctx.device):
                loss = ctx.forward_model(**next(ctx.batches(idx))).loss  # the step's blocks are one batch
            loss.backward()
            for p in ctx.params:
                p.grad = None
    f = est.estimate()
    est.reset()  # the next client's steps start a new sum
    return f


def client_fisher(ctx, client, steps) -> list[torch.Tensor]:
    """F_k at the client's final parameters (in ``ctx.params``), by --fisher-method (``steps``: the blocks of its
    local steps, which --fisher-method local reuses)."""
    if ctx.args.fisher_method == "local":
        return local_step_fisher(ctx, client, steps)
    return fisher.client_fisher(ctx.model, len(client.train), lambda pick: fisher_batches(ctx, client, pick), ctx.args,
                                ctx.round, client.index, forward=next_token_logits, params=ctx.params)


def client_entropy(ctx, client) -> float:
    """H_k on the client's held-out blocks (the first --entropy-blocks; 0: all)."""
    held = client.holdout[: ctx.args.entropy_blocks] if ctx.args.entropy_blocks > 0 else client.holdout
    return evaluate.mean_entropy(ctx.forward_model, ctx.batches(held, max(ctx.args.batch_size, 8)),
                                 vocab_size=ctx.data.vocab_size, device=ctx.device)
