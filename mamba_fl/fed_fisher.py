"""FedFisher: parameters averaged coordinate-wise with weights from each client's diagonal Fisher.

    python mamba_fl/fed_fisher.py --layers 2 --quick
    python mamba_fl/fed_fisher.py --layers 4 --fisher-samples 64 --fisher-labels sampled

After local training, client k computes F_k, the diagonal Fisher at its final parameters from per-sequence
gradients of --fisher-samples of its training blocks, for every parameter (the tied embedding too, which the source
lost to a plain mean), and the server sets theta <- (sum_k n_k F_k theta_k + eps theta_bar) / (sum_k n_k F_k + eps),
theta_bar the FedAvg mean and eps --fisher-eps times the mean of sum_k n_k F_k (``common.aggregate.FisherMean``):
FedAvg where the clients carry no Fisher information, never a pull toward zero. Evaluation rows log
``fisher_eps_share`` (the fraction of coordinates where eps decides). Clients send their Fisher too (2x upload).
``--fisher-method local`` estimates it from the client's own local steps (``common.fisher.LocalStepFisher``).
"""
from __future__ import annotations

import weakref

import torch

from common import aggregate, cli, evaluate, fisher, flags, seed
from mamba_fl import federated

_LOCAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its LocalStepFisher (--fisher-method local)


def fisher_batches(ctx: federated.Context, client: federated.Client):
    """(input_ids, next-token targets) of the client's Fisher sample, drawn from its own stream."""
    g = seed.client_generator(ctx.args.seed, ctx.round, client.index, purpose="fisher")
    pick = torch.randperm(len(client.train), generator=g)[: ctx.args.fisher_samples].numpy()
    # the model's logits at t predict token t+1: shift here, since Fisher sees (logits, targets) pairs
    return ((b["input_ids"], b["labels"][:, 1:]) for b in ctx.batches(client.train[pick], ctx.args.fisher_batch))


def next_token_logits(model, input_ids):
    """[B, T-1, V]. use_cache=False: in eval mode the model would otherwise fill a recurrent-state cache
    in place, which torch.func.vmap cannot batch."""
    return model(input_ids=input_ids, use_cache=False).logits[:, :-1]


def local_step_fisher(ctx: federated.Context, client: federated.Client) -> list[torch.Tensor]:
    """--fisher-method local: the per-example Fisher from the batch gradients the client's consecutive local steps
    just computed, g_{s-1} g_s + (m / 2)(g_s - g_{s-1})^2 averaged over the pairs (m = --batch-size;
    ``common.fisher.LocalStepFisher`` hooks on the parameters). The hooks exist from the first call on, so the
    run's first client recomputes its steps' gradients at its final parameters once."""
    est = _LOCAL.get(ctx.model)
    if est is None:
        est = _LOCAL[ctx.model] = fisher.LocalStepFisher(ctx.params, ctx.args.batch_size)
        for idx in federated.client_batch_indices(client.train, ctx.args.seed, ctx.round, client.index,
                                                  ctx.args.local_updates, ctx.args.batch_size):
            with evaluate.autocast(ctx.device):
                loss = ctx.forward_model(**next(ctx.batches(idx))).loss  # the step's blocks are one batch
            loss.backward()
            for p in ctx.params:
                p.grad = None
    f = est.estimate()
    est.reset()  # the next client's steps start a new sum
    return f


def add_fisher_weighted(ctx: federated.Context, agg, client: federated.Client) -> dict:
    if ctx.args.fisher_method == "local":
        f = local_step_fisher(ctx, client)
    else:
        g = seed.client_generator(ctx.args.seed, ctx.round, client.index, purpose="fisher-labels")
        f = fisher.diagonal_fisher(ctx.model, fisher_batches(ctx, client), labels=ctx.args.fisher_labels,
                                   forward=next_token_logits, params=ctx.params, method=ctx.args.fisher_method,
                                   chunk_size=ctx.args.fisher_batch, generator=g)
    agg.add(ctx.params, f, weight=client.weight)
    return {"fisher_mean": float(sum(t.double().sum() for t in f) / sum(t.numel() for t in f))}


METHOD = federated.Method(name="fedfisher", script="fed_fisher", add_client=add_fisher_weighted, upload_factor=2,
                          make_aggregator=lambda args, like: aggregate.FisherMean(like, eps=args.fisher_eps),
                          round_metrics=lambda ctx, agg, rows: {"fisher_eps_share": agg.eps_share},
                          run_name_extra=lambda a: {"feps": a.fisher_eps if a.fisher_eps != 1e-6 else None})


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = federated.get_args_parser("FedFisher", add_help, quick={"fisher_samples": 4})
    g = p.add_argument_group("Fisher weighting")
    g.add_argument("--fisher-samples", type=flags.POSITIVE_INT, default=32,
                   help="training blocks per client for its Fisher (per-sequence gradients); more is smoother")
    g.add_argument("--fisher-batch", type=flags.POSITIVE_INT, default=8, help="sequences per vectorised gradient chunk")
    g.add_argument("--fisher-labels", choices=("empirical", "sampled"), default="empirical",
                   help="empirical: targets from the data (the source); sampled: y ~ model (true Fisher)")
    g.add_argument("--fisher-method", choices=("per_example", "loop", "batch", "local"), default="per_example",
                   help="per_example: torch.func vmap over --fisher-samples blocks; loop: reference; batch: squared "
                        "batch gradients of those blocks (biased); local: from the batch gradients of the "
                        "client's own consecutive local steps, reused from training (no extra pass; needs "
                        "--local-updates >= 2; empirical labels; the README gives its error)")
    g.add_argument("--fisher-eps", type=flags.POSITIVE, default=1e-6,
                   help="floor relative to the mean Fisher: coordinates whose summed Fisher is below this "
                        "fraction of the mean get (mostly) the FedAvg mean; raise to move toward FedAvg")
    return p


def check_args(args) -> None:
    """The combinations this script refuses (one line, exit 2), before anything runs."""
    cli.check(args.fisher_method != "local" or args.fisher_labels == "empirical",
              "--fisher-method local reuses the training gradients: its labels are the data's (--fisher-labels "
              "empirical)")
    cli.check(args.fisher_method != "local" or args.local_updates >= 2,
              f"--fisher-method local pairs consecutive local steps: needs --local-updates >= 2, "
              f"got {args.local_updates}")
    federated.finish_args(args)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    check_args(args)
    return federated.run(args, METHOD)


if __name__ == "__main__":
    cli.run(main)
