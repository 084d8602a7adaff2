"""One-shot FedAvg of K LoRA adapters: weighted mean of their updates, SVD back to rank r, heads averaged.

    python lora_glue_fl/fedavg_merge.py --adapters runs/A/adapter runs/B/adapter --weights 3 1 \\
        --svd_rank 8 --save_adapter fused/sst2_r8
    python lora_glue_fl/fedavg_merge.py --adapters out/round_1/client_*/adapter \\
        --shard_manifests shards/sst2_iid_k10/client_*.json --svd_rank 8 --save_adapter fused/sst2_r8

Weights: --weights, or the sample counts of --shard_manifests (in the order of --adapters), or equal. Writes the
fused adapter (peft format, heads averaged alike) and fuse_manifest.json; the merge needs no model. --do_eval
loads the fused adapter on its base model (the adapters' base_model_name_or_path, or --base_model) and records
the validation metrics ("final"; with the selection split's, ``selection_*``, when --data_dir holds
selection.tsv):

    python lora_glue_fl/fedavg_merge.py --adapters run/round_1/client_*/adapter --shard_manifests \\
        shards/sst2_iid_k4/client_*.json --aggregation naive --save_adapter fused/sst2_naive \\
        --do_eval --task_name sst2 --data_dir ../shared/data/glue_sst2 --max_seq_length 64
"""
from __future__ import annotations

from pathlib import Path

from common import checkpoint, cli, flags, pretrained
from lora_glue_fl import options


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--adapters", nargs="+", required=True, help="adapter folders (peft format), K >= 1")
    p.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per adapter (normalised)")
    p.add_argument("--shard_manifests", nargs="+", default=None,
                   help="client_<i>.json per adapter: weights = their sample counts")
    p.add_argument("--svd_rank", type=flags.POSITIVE_INT, default=8, help="rank of the fused adapter (svd)")
    p.add_argument("--alpha", type=flags.POSITIVE, default=None,
                   help="lora_alpha of the fused adapter (default: its rank)")
    p.add_argument("--aggregation", choices=options.MERGES, default=None,
                   help="svd (default), naive (average A and B) or exact (stacked factors)")
    p.add_argument("--skip_svd", action="store_true", help="the source's flag for --aggregation naive")
    p.add_argument("--save_adapter", type=flags.FOLDER, required=True, help="output folder of the fused adapter")
    p.add_argument("--overwrite", "--overwrite_output_dir", action="store_true",
                   help="replace an adapter already in --save_adapter (refused without it)")
    p.add_argument("--task_name", default="glue", help="recorded in fuse_manifest.json; the task --do_eval scores")
    p.add_argument("--model_size", default=None, help="recorded in fuse_manifest.json (the adapters name their base)")
    g = p.add_argument_group("evaluation of the fused adapter (optional)")
    g.add_argument("--do_eval", action="store_true", help="score the fused adapter on --task_name's validation split")
    g.add_argument("--base_model", default=None, help="base model folder or name (default: the adapters' "
                                                     "base_model_name_or_path)")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder or name (default: the base model's own)")
    options.add_data_args(g, quick=False)
    g.add_argument("--max_seq_length", type=flags.POSITIVE_INT, default=128, help="tokens per example (as in training)")
    g.add_argument("--max_eval_samples", type=flags.POSITIVE_INT, default=None,
                   help="evaluate on the first N examples only")
    g.add_argument("--eval_batch_size", type=flags.POSITIVE_INT, default=32, help="evaluation batch size")
    g.add_argument("--cache_dir", type=flags.FOLDER, default=None, help="Hugging Face cache for models and datasets")
    return p


def evaluate_adapter(args, adapter_dir: Path, base: str) -> dict:
    """The task's validation metrics of ``PeftModel.from_pretrained(base, adapter_dir)`` on the CPU, and its
    selection split's (``selection_*``) when --data_dir holds selection.tsv (``glue_tasks.read_glue_dir``)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lora_glue_fl import glue_tasks, modeling

    task = glue_tasks.get_task(args.task_name)
    splits = glue_tasks.load_glue(args.task_name, args.data, args.data_dir, args.cache_dir)
    tokenizer = modeling.load_tokenizer(args.tokenizer or base, args.cache_dir)
    problem = "regression" if task.num_labels == 1 else "single_label_classification"
    model = pretrained.load(AutoModelForSequenceClassification, base, num_labels=task.num_labels,
                            problem_type=problem, cache_dir=args.cache_dir)
    modeling.check_tokenizer(tokenizer, model)
    types = modeling.uses_token_types(model)
    pretrained.check_folder(adapter_dir)
    with pretrained.loading(adapter_dir):  # peft picks its config class from a fixed table; remote code refused too
        model = PeftModel.from_pretrained(model, str(adapter_dir), trust_remote_code=False).eval()
    _, enc, _, select_enc = modeling.encode_evals(tokenizer, splits, task, args, types)
    scores = modeling.evaluate(args.task_name, model, enc, "cpu", args.eval_batch_size)
    if select_enc is not None:  # the selection split (selection.tsv in --data_dir): what a plateau check reads
        scores.update(modeling.evaluate(args.task_name, model, select_enc, "cpu", args.eval_batch_size,
                                        prefix=modeling.SELECTION_PREFIX))
    return scores


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    from lora_glue_fl import adapters, glue_shards, glue_tasks  # torch loads here, after parsing

    method = args.aggregation or ("naive" if args.skip_svd else "svd")
    cli.check(not (args.skip_svd and method != "naive"), f"--skip_svd contradicts --aggregation {method}")
    cli.check(args.weights is None or args.shard_manifests is None, "give --weights or --shard_manifests, not both")
    k = len(args.adapters)
    if args.weights is not None:
        cli.check(len(args.weights) == k, f"{len(args.weights)} --weights for {k} --adapters; give one per adapter")
        weights = list(args.weights)
    elif args.shard_manifests is not None:
        cli.check(len(args.shard_manifests) == k,
                  f"{len(args.shard_manifests)} --shard_manifests for {k} --adapters; give one per adapter")
        task = args.task_name.lower() if args.task_name.lower() in glue_tasks.TASKS else None  # "glue": any
        weights = [float(len(glue_shards.read_manifest(m, task))) for m in args.shard_manifests]
    else:
        weights = [1.0] * k
    cli.check(all(w >= 0 for w in weights) and sum(weights) > 0,
              f"weights must be >= 0 with a positive sum, got {weights}")
    task = glue_tasks.resolve_task(args) if args.do_eval else None
    out = cli.check_out_dir(args.save_adapter, "--save_adapter")
    held = [n for n in ("adapter_config.json", "adapter_model.safetensors", "fuse_manifest.json") if (out / n).exists()]
    cli.check(not held or args.overwrite, f"--save_adapter {out} already holds a fused adapter ({', '.join(held)}); "
                                          "pass --overwrite to replace it, or choose another folder")

    clients = [adapters.load(a) for a in args.adapters]   # every check before anything is written
    if method == "svd":
        sizes = [min(A.shape[1], B.shape[0]) for A, B in clients[0].factors.values()]
        cli.check(args.svd_rank <= min(sizes), f"--svd_rank {args.svd_rank} exceeds the size "
                  f"{min(sizes)} of the adapted layers; use at most {min(sizes)}")
    fused = adapters.merge(clients, weights, method, rank=args.svd_rank, alpha=args.alpha, names=list(args.adapters))
    base = args.base_model or clients[0].extra.get("base_model_name_or_path")
    cli.check(not args.do_eval or bool(base), "--do_eval: the adapters name no base model; pass --base_model")
    if args.do_eval and Path(base).is_dir():
        pretrained.check_folder(base)  # before the fused adapter is written
    adapters.save(fused, out, base)
    manifest = {"dataset": args.task_name, "model_id": base, "task": args.task_name, "k_adapters": k,
                "adapters": [str(a) for a in args.adapters], "weights": weights, "svd_rank": fused.r,
                "alpha": fused.alpha, "target_modules": fused.target_modules, "aggregation": method,
                "client_ranks": [c.r for c in clients], "heads_averaged": bool(fused.head),
                "merge_rel_error": adapters.merge_rel_error(clients, weights, fused), "model_size": args.model_size}
    if args.do_eval:  # num_labels, trainable_params: for the plots
        numel = sum(t.numel() for t in fused.state_dict().values())
        manifest.update(final=evaluate_adapter(args, out, base), main_metric=task.main_metric,
                        num_labels=task.num_labels, trainable_params=numel)
    checkpoint.atomic_write_json(out / "fuse_manifest.json", manifest)
    scored = f", {manifest['main_metric']} {manifest['final'][manifest['main_metric']]:.4f}" if args.do_eval else ""
    print(f"fused {k} adapters ({method}, rank {fused.r}, alpha {fused.alpha:g}, relative error "
          f"{manifest['merge_rel_error']:.3g}{scored}) -> {out}")
    return manifest


if __name__ == "__main__":
    cli.run(main)
