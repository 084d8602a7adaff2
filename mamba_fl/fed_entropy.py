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


def add_entropy_weighted(ctx: federated.Context, agg, client: federated.Client) -> dict:
    """Streaming softmax: weight exp(-(H_k - H_ref) / T), H_ref the round's first client's entropy, so the
    exponent stays moderate; the aggregator's normalisation by the weight sum completes the softmax."""
    held = client.holdout[: ctx.args.entropy_blocks] if ctx.args.entropy_blocks > 0 else client.holdout
    h = evaluate.mean_entropy(ctx.forward_model, ctx.batches(held, max(ctx.args.batch_size, 8)),
                              vocab_size=ctx.data.vocab_size, device=ctx.device)
    h_ref = ctx.scratch.setdefault("h_ref", h)
    agg.add(ctx.params, weight=math.exp(-(h - h_ref) / ctx.args.temperature))
    return {"entropy": h}


def rebase_weights(ctx: federated.Context, agg, rows: dict, chosen: list) -> None:
    """Under torchrun: re-base this rank's sums (weights relative to its own first client's entropy) to the
    round's first chosen client's H_ref, so the reduced sums are exactly the single-process run's."""
    if "h_ref" in ctx.scratch:  # a rank with no client this round has nothing to re-base
        factor = math.exp(-(ctx.scratch["h_ref"] - rows[chosen[0]]["entropy"]) / ctx.args.temperature)
        for t in agg.accumulators():  # the sums and the total weight
            t.mul_(factor)


def entropy_weights(ctx: federated.Context, agg, rows: dict) -> dict:
    """The round's normalised weights alpha_k = softmax(-H_k / T) and the ratio of the largest to the smallest."""
    keys = sorted(rows)
    alpha = aggregate.entropy_weights([rows[k]["entropy"] for k in keys], ctx.args.temperature)
    return {"entropy_weight": {str(k): a for k, a in zip(keys, alpha)}, "entropy_weight_ratio": max(alpha) / min(alpha)}


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


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(args.holdout_fraction > 0, "FedEntropy measures entropy on held-out data: --holdout-fraction must be > 0")
    return federated.run(args, METHOD)


if __name__ == "__main__":
    cli.run(main)
