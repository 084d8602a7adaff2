"""FedEntropy: clients weighted by the confidence of their model on their own held-out data.

    python mamba_fl/fed_entropy.py --layers 2 --quick
    python mamba_fl/fed_entropy.py --layers 1 --temperature 1.0 --holdout-fraction 0.1

After local training, client k measures H_k, the mean predictive entropy (nats per token) of its model on its
held-out 10%, and the server sets theta <- sum_k alpha_k theta_k, alpha_k = softmax(-H_k / T): lower T favours the
most confident clients, T -> infinity is the uniform mean.
"""
from __future__ import annotations

import math

from common import aggregate, cli, evaluate, flags
from mamba_fl import federated

MOVE_REF = 30.0  # a client more confident than H_ref by this many T becomes the reference: no weight exceeds e^30


def _next_ref(h_ref: float, h: float, temperature: float) -> float:
    return h if h < h_ref - MOVE_REF * temperature else h_ref


def add_entropy_weighted(ctx: federated.Context, agg, client: federated.Client) -> dict:
    """Streaming softmax: weight exp(-(H_k - H_ref) / T), H_ref the round's first client's entropy until a client
    is far more confident (``MOVE_REF``: its weight would overflow at a small T), which then becomes H_ref with the
    sums so far scaled to it; the aggregator's normalisation by the weight sum completes the softmax."""
    held = client.holdout[: ctx.args.entropy_blocks] if ctx.args.entropy_blocks > 0 else client.holdout
    h = evaluate.mean_entropy(ctx.forward_model, ctx.batches(held, max(ctx.args.batch_size, 8)),
                              vocab_size=ctx.data.vocab_size, device=ctx.device)
    temperature, h_ref = ctx.args.temperature, ctx.scratch.setdefault("h_ref", h)
    if _next_ref(h_ref, h, temperature) != h_ref:
        for t in agg.accumulators():  # the sums and the total weight, re-based to h
            t.mul_(math.exp(-(h_ref - h) / temperature))
        ctx.scratch["h_ref"] = h_ref = h
    agg.add(ctx.params, weight=math.exp(-(h - h_ref) / temperature))
    return {"entropy": h}


def rebase_weights(ctx: federated.Context, agg, rows: dict, chosen: list) -> None:
    """Under torchrun: re-base this rank's sums (weights relative to its own H_ref) to the H_ref a single process
    ends the round with (its clients in ``chosen``'s order), so the reduced sums are the single-process run's."""
    if "h_ref" in ctx.scratch:  # a rank with no client this round has nothing to re-base
        h_ref = rows[chosen[0]]["entropy"]
        for k in chosen[1:]:
            h_ref = _next_ref(h_ref, rows[k]["entropy"], ctx.args.temperature)
        factor = math.exp(-(ctx.scratch["h_ref"] - h_ref) / ctx.args.temperature)
        for t in agg.accumulators():  # the sums and the total weight
            t.mul_(factor)


def entropy_weights(ctx: federated.Context, agg, rows: dict) -> dict:
    """The round's normalised weights alpha_k = softmax(-H_k / T) and the ratio of the largest to the smallest."""
    keys = sorted(rows)
    alpha = aggregate.entropy_weights([rows[k]["entropy"] for k in keys], ctx.args.temperature)
    ratio = max(alpha) / min(alpha) if min(alpha) > 0 else math.inf  # inf: a weight below the smallest float
    return {"entropy_weight": {str(k): a for k, a in zip(keys, alpha)}, "entropy_weight_ratio": ratio}


METHOD = federated.Method(name="fedentropy", script="fed_entropy", add_client=add_entropy_weighted,
                          pre_reduce=rebase_weights, round_metrics=entropy_weights,
                          run_name_extra=lambda a: {"T": a.temperature})


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = federated.get_args_parser("FedEntropy", add_help, holdout=0.1, quick={"entropy_blocks": 16})
    g = p.add_argument_group("entropy weighting")
    g.add_argument("--temperature", type=flags.POSITIVE, default=1.0,
                   help="softmax temperature T of alpha_k = softmax(-H_k / T); lower favours confident clients")
    g.add_argument("--entropy-blocks", type=flags.COUNT, default=0,
                   help="measure H_k on the first N held-out blocks of each client (0: all; --quick: 16)")
    return p


def check_args(args) -> None:
    """The combinations this script refuses (one line, exit 2), before anything runs."""
    cli.check(args.holdout_fraction > 0, "FedEntropy measures entropy on held-out data: --holdout-fraction must be > 0")
    federated.finish_args(args)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    check_args(args)
    return federated.run(args, METHOD)


if __name__ == "__main__":
    cli.run(main)
