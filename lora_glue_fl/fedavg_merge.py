"""One-shot FedAvg of K LoRA adapters: weighted mean of their updates, SVD back to rank r, heads averaged.

    python lora_glue_fl/fedavg_merge.py --adapters runs/A/adapter runs/B/adapter --weights 3 1 \
        --svd_rank 8 --save_adapter fused/sst2_r8
    python lora_glue_fl/fedavg_merge.py --adapters out/round_1/client_*/adapter \
        --shard_manifests shards/sst2_iid_k10/client_*.json --svd_rank 8 --save_adapter fused/sst2_r8

Weights: --weights, or the sample counts of --shard_manifests (in the order of --adapters), or equal.
The fused update is sum_k w_k s_k B_k A_k truncated to --svd_rank (lora_alpha = --alpha or the rank); the
classifier heads are averaged with the same weights (the source kept a freshly initialised random head).
--aggregation naive (or --skip_svd) averages A and B instead; exact stacks the factors (rank sum r_k).
Writes the fused adapter in peft format (PeftModel.from_pretrained loads it on the base model) and
fuse_manifest.json (the source's keys plus the aggregation, head averaging and the merge error).
Nothing needs a model: adapters are read and written as tensors.
"""
from __future__ import annotations

from pathlib import Path

from common import checkpoint, cli
from lora_glue_fl import adapters, glue_shards


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--adapters", nargs="+", required=True, help="adapter folders (peft format), K >= 1")
    p.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per adapter (normalised)")
    p.add_argument("--shard_manifests", nargs="+", default=None,
                   help="client_<i>.json per adapter: weights = their sample counts")
    p.add_argument("--svd_rank", type=int, default=8, help="rank of the fused adapter (svd)")
    p.add_argument("--alpha", type=float, default=None, help="lora_alpha of the fused adapter (default: its rank)")
    p.add_argument("--aggregation", choices=adapters.METHODS, default=None,
                   help="svd (default), naive (average A and B) or exact (stacked factors)")
    p.add_argument("--skip_svd", action="store_true", help="the source's flag for --aggregation naive")
    p.add_argument("--save_adapter", required=True, help="output folder of the fused adapter")
    p.add_argument("--task_name", default="glue", help="recorded in fuse_manifest.json")
    p.add_argument("--model_size", default=None, help="recorded in fuse_manifest.json (the adapters name their base)")
    return p


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    method = args.aggregation or ("naive" if args.skip_svd else "svd")
    cli.check(not (args.skip_svd and method != "naive"), f"--skip_svd contradicts --aggregation {method}")
    cli.check(args.svd_rank >= 1, f"--svd_rank must be at least 1, got {args.svd_rank}")
    cli.check(args.weights is None or args.shard_manifests is None, "give --weights or --shard_manifests, not both")
    k = len(args.adapters)
    if args.weights is not None:
        cli.check(len(args.weights) == k, f"{len(args.weights)} --weights for {k} --adapters; give one per adapter")
        weights = list(args.weights)
    elif args.shard_manifests is not None:
        cli.check(len(args.shard_manifests) == k,
                  f"{len(args.shard_manifests)} --shard_manifests for {k} --adapters; give one per adapter")
        weights = [float(len(glue_shards.read_manifest(m))) for m in args.shard_manifests]
    else:
        weights = [1.0] * k
    cli.check(all(w >= 0 for w in weights) and sum(weights) > 0,
              f"weights must be >= 0 with a positive sum, got {weights}")
    out = Path(args.save_adapter)
    cli.check(not out.exists() or out.is_dir(), f"--save_adapter {out} is a file; expected a folder")

    clients = [adapters.load(a) for a in args.adapters]   # every check before anything is written
    fused = adapters.merge(clients, weights, method, rank=args.svd_rank, alpha=args.alpha, names=list(args.adapters))
    base = clients[0].extra.get("base_model_name_or_path")
    adapters.save(fused, out, base)
    manifest = {"dataset": args.task_name, "model_id": base, "task": args.task_name, "k_adapters": k,
                "adapters": [str(a) for a in args.adapters], "weights": weights, "svd_rank": fused.r,
                "alpha": fused.alpha, "target_modules": fused.target_modules, "aggregation": method,
                "client_ranks": [c.r for c in clients], "heads_averaged": bool(fused.head),
                "merge_rel_error": adapters.merge_rel_error(clients, weights, fused), "model_size": args.model_size}
    checkpoint.atomic_write_json(out / "fuse_manifest.json", manifest)
    print(f"fused {k} adapters ({method}, rank {fused.r}, alpha {fused.alpha:g}, relative error "
          f"{manifest['merge_rel_error']:.3g}) -> {out}")
    return manifest


if __name__ == "__main__":
    cli.run(main)
