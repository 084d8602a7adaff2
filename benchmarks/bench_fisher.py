"""Cost of the per-example diagonal Fisher: torch.func vmap vs one batch backward vs the per-example loop.

    python benchmarks/bench_fisher.py                       # tiny ViT (32 px) and a tiny GPT-2, batch 16, CPU
    python benchmarks/bench_fisher.py --batch-size 32 --lm-layers 4 --lm-width 128 --device cuda
    python benchmarks/bench_fisher.py --quick               # smaller batch and fewer repeats: checks it runs

For each model, on one batch of --batch-size examples, three things are timed round-robin
(``benchlib.timeit_many``, median of --repeats):
  batch backward   forward of the batch, its mean loss, ONE backward to the parameters (what a training
                   step costs without the optimizer); the unit the other two are measured in
  per-example      ``common.fisher.diagonal_fisher(method="per_example")``: vmap(grad) over the batch in
                   one chunk, squared and summed
  loop             ``diagonal_fisher(method="loop")``: one forward + backward per example (the reference)
Models: the tiny ViT of vit_sparse_fl (``vit_tiny``, 100 classes, images [B, 3, 32, 32]) and a tiny
GPT-2 causal LM (transformers, random weights, tokens [B, T], targets = inputs shifted by one).
The two Fisher methods are also compared (max relative difference), and it is reported when vmap
could not run the model and ``diagonal_fisher`` fell back to the loop.
Target: per-example Fisher at most 3x the cost of a batch backward.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from benchlib import markdown_table, timeit_many

from common import cli, fisher, flags
from common import params as P

TARGET_RATIO = 3.0


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--models", nargs="+", default=["vit_tiny", "gpt2_tiny"], choices=["vit_tiny", "gpt2_tiny"],
                   help="models to time")
    p.add_argument("--batch-size", type=flags.POSITIVE_INT, default=16, help="examples in the batch (one vmap chunk)")
    p.add_argument("--sequence-length", type=int, default=64, help="tokens per LM example")
    p.add_argument("--lm-layers", type=int, default=2, help="GPT-2 layers")
    p.add_argument("--lm-width", type=int, default=64, help="GPT-2 hidden size (4 heads)")
    p.add_argument("--vocab-size", type=int, default=512, help="GPT-2 vocabulary size")
    p.add_argument("--repeats", type=flags.POSITIVE_INT, default=5, help="timed repetitions (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--quick", action="store_true", help="batch 8, 2 repeats: a smoke run")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def vit_case(args, device):
    """(model, inputs [B, 3, 32, 32], targets [B], forward) for the tiny ViT classifier."""
    from vit_sparse_fl import experiment as exp
    a = argparse.Namespace(arch="vit_tiny", weights="none", head_dropout=0.0, freeze_layers=0)
    model, _ = exp.build_model(a, 100, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 100, (args.batch_size,), generator=g).to(device)
    return model, x, y, None


def gpt2_case(args, device):
    """(model, input ids [B, T], aligned targets [B, T], forward) for a tiny random GPT-2."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=args.vocab_size, n_positions=args.sequence_length, n_embd=args.lm_width,
                     n_layer=args.lm_layers, n_head=4, bos_token_id=None, eos_token_id=None,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.sequence_length), generator=g).to(device)

    def forward(m, inputs):  # logits[:, t] predicts ids[:, t + 1]: the model must not shift again
        return m(input_ids=inputs, use_cache=False).logits
    return model, ids, fisher.lm_targets(ids), forward


def bench_model(name: str, args, device) -> dict:
    model, x, y, forward = (vit_case if name == "vit_tiny" else gpt2_case)(args, device)
    model.eval()  # diagonal_fisher runs in eval mode; the batch backward does the same work
    params = P.trainable(model)
    fwd = forward or (lambda m, inp: m(inp))

    def batch_backward():
        loss = torch.stack([fisher.example_loss(lg, t) for lg, t in zip(fwd(model, x), y)]).mean()
        return torch.autograd.grad(loss, params, allow_unused=True)

    def fisher_fn(method):
        return lambda: fisher.diagonal_fisher(model, [(x, y)], forward=forward, params=params, method=method,
                                              chunk_size=args.batch_size)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_example = fisher_fn("per_example")()
    fell_back = any("vmap over the model failed" in str(w.message) for w in caught)
    loop = fisher_fn("loop")()
    gap = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(per_example, loop))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = timeit_many({"batch": batch_backward, "per_example": fisher_fn("per_example"), "loop": fisher_fn("loop")},
                        warmup=1, repeats=args.repeats, device=device)
    base = t["batch"].median_s
    return {"model": name, "batch_size": args.batch_size, "params": P.numel(params),
            "batch_ms": t["batch"].ms, "per_example_ms": t["per_example"].ms, "loop_ms": t["loop"].ms,
            "per_example_ratio": t["per_example"].median_s / base, "loop_ratio": t["loop"].median_s / base,
            "rel_gap": gap, "vmap_fallback": fell_back,
            "target_met": t["per_example"].median_s / base <= TARGET_RATIO}


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    if args.quick:
        args.batch_size, args.repeats = 8, 2
    cli.check(args.lm_width % 4 == 0, f"--lm-width must be a multiple of 4 (4 heads), got {args.lm_width}")
    device = cli.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # vmap has no batching rule for CPU flash attention yet; the slower fallback is what is measured
    warnings.filterwarnings("ignore", message="There is a performance drop")
    results = [bench_model(name, args, device) for name in args.models]
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, median of {args.repeats}")
    print(markdown_table(
        ["model", "params", "batch fwd+bwd ms", "per-example (vmap) ms", "ratio", "loop ms", "ratio",
         "vmap vs loop rel. gap", f"<= {TARGET_RATIO:g}x"],
        [[r["model"], f"{r['params']:,}", f"{r['batch_ms']:.1f}", f"{r['per_example_ms']:.1f}",
          f"{r['per_example_ratio']:.2f}x", f"{r['loop_ms']:.1f}", f"{r['loop_ratio']:.2f}x", f"{r['rel_gap']:.1e}",
          ("met" if r["target_met"] else "NOT met") + (" (vmap fell back to loop)" if r["vmap_fallback"] else "")]
         for r in results]))
    summary = {"device": str(device), "threads": torch.get_num_threads(), "settings": vars(args), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    cli.run(main)
