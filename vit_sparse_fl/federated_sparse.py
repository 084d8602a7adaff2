"""What vit_sparse_fl/train_federated_sparse.py runs once its flags are parsed: the checks of its arguments, the
global mask calibrated from every client's scores (``build_masks``), and train_federated's rounds with SparseSGDM.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common import cli
from common import distributed as D
from common import params as P
from common import seed as seeding
from common.aggregate import WeightedMean
from common.checkpoint import atomic_write_json
from common.fisher import LABELS, diagonal_fisher
from vit_sparse_fl import data as cifar
from vit_sparse_fl import federated as fed
from vit_sparse_fl import sparse, talos

EMBEDDING_TABLES = ("embeddings.word_embeddings.", "embeddings.position_embeddings.",
                    "embeddings.token_type_embeddings.")


def frozen_tables(ctx) -> set[str]:
    """A text encoder's embedding tables, frozen and never scored unless --mask-embeddings."""
    return set() if ctx["args"].mask_embeddings else {n for n in ctx["names"] if any(t in n for t in EMBEDDING_TABLES)}


def backbone_split(ctx) -> tuple[list[str], list[torch.Tensor]]:
    """Names and parameters that get a mask: the trainable backbone but the frozen embedding tables."""
    frozen = frozen_tables(ctx)
    pairs = [(n, p) for n, p in zip(ctx["names"], ctx["params"]) if not n.startswith("head.") and n not in frozen]
    return [n for n, _ in pairs], [p for _, p in pairs]


def fisher_scores(ctx, global_params, round_idx: int, masks=None) -> list[torch.Tensor]:
    """Sample-weighted mean over all clients of each one's diagonal Fisher on its own data; --fisher-score talos:
    TaLoS's score (``talos.talos_scores`` with ``masks``) summed over every client's calibration images. Under
    torchrun each rank scores its share of the clients and the sums are all-reduced."""
    args, model, device = ctx["args"], ctx["model"], ctx["device"]
    _, targets = backbone_split(ctx)
    P.load_(ctx["params"], global_params)
    model.eval()                                            # no dropout noise in the scores
    model.set_fused_attention(False)                        # vmap cannot batch fused CPU attention
    agg = WeightedMean(targets)
    shards = ctx["shards"]
    for k in D.assign_clients(list(range(len(shards))), [len(s) for s in shards], D.world_size())[D.rank()]:
        idx = shards[k]
        gen = seeding.client_generator(args.seed, round_idx, k, device, purpose="calibration")
        stream = list(cifar.batches(ctx["train"], args.batch_size, args.calibration_batches, gen,
                                    args.image_size, augment_train=False, indices=idx))
        if args.fisher_score == "talos":   # a sum over images: every client weighs 1, the mean is sum / K
            agg.add(talos.talos_scores(model, stream, targets, masks, generator=gen), weight=1.0)
            continue
        agg.add(diagonal_fisher(model, stream, labels=LABELS[args.fisher_labels], params=targets, generator=gen),
                weight=float(len(idx)))
    D.reduce_aggregator_(agg)                               # no-op in one process
    model.set_fused_attention(True)
    return agg.result()


def build_masks(ctx, global_params) -> tuple[list[torch.Tensor | None], int]:
    """(one mask per trainable parameter: None for the head, all False for a frozen embedding table; the
    calibration's sample gradients: one per image scored, every client, every scoring round)."""
    args = ctx["args"]
    names, targets = backbone_split(ctx)
    gen = torch.Generator(device=ctx["device"]).manual_seed(seeding.stream_seed(args.seed, "random_mask"))
    masks = sparse.compute_masks(targets, args.mask_strategy, args.sparsity_ratio,
                                 fisher_fn=lambda r, m: fisher_scores(ctx, global_params, r, m),
                                 rounds=args.calibration_rounds, generator=gen,
                                 threshold="kthvalue" if args.fisher_score == "talos" else "exact")
    by_name = dict(zip(names, masks)) | {n: torch.zeros_like(p, dtype=torch.bool)
                                         for n, p in zip(ctx["names"], ctx["params"]) if n in frozen_tables(ctx)}
    scored = args.calibration_rounds if args.mask_strategy.endswith("_sensitive") else 0  # compute_masks' calls
    per_call = sum(args.calibration_batches * min(args.batch_size, len(s)) for s in ctx["shards"])
    return [by_name.get(n) for n in ctx["names"]], scored * per_call


def run_sparse(args) -> dict:
    ctx = fed.setup(args)
    params = ctx["params"]
    global_params = P.clone(params)
    fed.head_warmup(ctx, global_params)                     # head-only rounds, so the scores see a trained head
    masks, calibration = build_masks(ctx, global_params)
    P.load_(params, global_params)
    frozen = frozen_tables(ctx)
    masked = [(n, m) for n, m in zip(ctx["names"], masks) if m is not None]
    overall = sparse.density([m for n, m in masked if n not in frozen])      # 1 - s: over what the masks choose from
    args.run_name = args.run_name or fed.default_run_name(args, f"sparse_{args.mask_strategy}_s{args.sparsity_ratio:g}")
    extra = {"mask_strategy": args.mask_strategy, "sparsity_ratio": args.sparsity_ratio,
             "mask_density": overall, "calibration_rounds": args.calibration_rounds,
             "fisher_labels": args.fisher_labels, "fisher_score": args.fisher_score,
             "calibration_sample_gradients": calibration, "frozen_tables": sorted(frozen),
             "trainable_backbone_share": sparse.density([m for _, m in masked])}
    summary = fed.federate(args, ctx, masks, extra_summary=extra, prefix=f"sparse_{args.mask_strategy}",
                           kind="vit_sparse_fl/train_federated_sparse", warmed=True)
    if D.is_main():
        atomic_write_json(Path(summary["run_dir"], "mask_density.json"),
                          {"overall": overall, "per_tensor": {n: float(m.float().mean()) for n, m in masked},
                           "numel": {n: m.numel() for n, m in masked}})
    return summary


def run_one(args) -> dict:
    """One run, or one run per value of --heterogeneity-experiment / --local-steps-experiment."""
    if args.heterogeneity_experiment or args.local_steps_experiment:
        return fed.sweep(args, run_sparse, prefix=f"sparse_{args.mask_strategy}_s{args.sparsity_ratio:g}")
    return run_sparse(args)


def check_args(args) -> None:
    """Validation of everything that can be checked before loading data."""
    fed.finish_args(args)
    cli.check(not args.mask_embeddings or args.arch == "encoder",
              "--mask-embeddings: only a text encoder (--arch encoder) has embedding tables; a ViT has none")
    scored = args.compare_strategies or args.mask_strategy.endswith("_sensitive")
    cli.check(args.dp_clip is None or not scored, f"--dp-clip with --mask-strategy {args.mask_strategy}"
              f"{' (--compare-strategies)' if args.compare_strategies else ''}: the mask is chosen from every client's "
              "sensitivity scores on its own data, unclipped and unnoised; use a magnitude or random mask")


def run(args) -> dict:
    """The run of checked arguments (``check_args``): one run, a sweep, or one per mask strategy."""
    with D.process_group():                                  # under torchrun, left when the run ends
        if not args.compare_strategies:
            return run_one(args)
        return {"experiment": "strategies",
                "results": {s: run_one(fed.variant(args, mask_strategy=s, compare_strategies=False))
                            for s in sparse.STRATEGIES}}
