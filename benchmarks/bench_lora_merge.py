"""Time of one LoRA merge for roberta-base-sized adapters, and its share of a FedAvg round.

    python benchmarks/bench_lora_merge.py                       # 12 layers x (query, value), r=8, 10 clients
    python benchmarks/bench_lora_merge.py --clients 10 --rank 8 --device cuda

Adapters: 12 layers x {query, value}, 768 x 768, rank --rank, --clients clients with random factors (the
merge cost does not depend on the values). Methods: the SVD merge as lora_glue_fl runs it (common.aggregate:
QR of the stacked factors, SVD of the small (K r)^2 core), the dense reference (form dW_bar, full SVD of
each 768 x 768 matrix, as the source project did), naive A/B averaging and exact stacking.

Share of a round: one LoRA training step of a randomly initialised roberta-base (query/value adapters,
batch --step_batch x 128 tokens) is timed and scaled to a round of SST-2 (67,349 examples, 1 local epoch,
batch 32, all clients): merge / (steps x step time + merge).
"""
from __future__ import annotations

import json
import math

import benchlib
import torch

from common import aggregate, cli
from lora_glue_fl import adapters


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--clients", type=int, default=10, help="number of client adapters K")
    p.add_argument("--rank", type=int, default=8, help="client LoRA rank = fused SVD rank")
    p.add_argument("--layers", type=int, default=12, help="transformer layers (roberta-base: 12)")
    p.add_argument("--hidden", type=int, default=768, help="hidden size (roberta-base: 768)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--train_examples", type=int, default=67349, help="examples per round (SST-2 train)")
    p.add_argument("--step_batch", type=int, default=2, help="batch of the timed training step (scaled to 32)")
    p.add_argument("--skip_step", action="store_true", help="do not time the roberta-base training step")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    return p


def client_adapters(args, device) -> list[adapters.Adapter]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.clients):
        factors = {}
        for layer in range(args.layers):
            for m in ("query", "value"):
                A = torch.randn(args.rank, args.hidden, generator=g) / math.sqrt(args.hidden)
                B = torch.randn(args.hidden, args.rank, generator=g) * 0.01
                factors[f"base_model.model.roberta.encoder.layer.{layer}.attention.self.{m}"] = (A.to(device), B.to(device))
        head = {"base_model.model.classifier.dense.weight": torch.randn(args.hidden, args.hidden, generator=g).to(device)}
        out.append(adapters.Adapter(factors, head, args.rank, float(args.rank), ["query", "value"]))
    return out


def dense_svd_merge(clients, weights, rank):
    """The source's way: dW_bar per module, then a full SVD of the out x in matrix."""
    out = {}
    total = sum(weights)
    for m in clients[0].factors:
        dW = aggregate.lora_delta([c.factors[m][0] for c in clients], [c.factors[m][1] for c in clients],
                                  [w / total for w in weights], [c.scale for c in clients])
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        out[m] = (Vh[:rank], U[:, :rank] * S[:rank])
    return out


def time_training_step(args, device) -> float:
    """Seconds of one LoRA step (forward + backward + AdamW) of a random roberta-base, scaled to batch 32."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from lora_glue_fl import modeling
    cfg = RobertaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=12,
                        intermediate_size=4 * args.hidden, vocab_size=50265, max_position_embeddings=514,
                        num_labels=2)
    model = modeling.attach_lora(RobertaForSequenceClassification(cfg), args.rank, args.rank, 0.0,
                                 ["query", "value"]).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, 50000, (args.step_batch, 128), device=device)
    labels = torch.zeros(args.step_batch, dtype=torch.long, device=device)

    def step():
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = benchlib.timeit(step, warmup=1, repeats=2, device=device)
    return t.median_s * 32 / args.step_batch


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    device = cli.resolve_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    clients = client_adapters(args, device)
    weights = [float(1000 + 100 * k) for k in range(args.clients)]
    fns = {
        "svd (QR core, lora_glue_fl)": lambda: adapters.merge(clients, weights, "svd", rank=args.rank),
        "svd (dense dW + full SVD)": lambda: dense_svd_merge(clients, weights, args.rank),
        "naive A/B average": lambda: adapters.merge(clients, weights, "naive"),
        "exact (stacked)": lambda: adapters.merge(clients, weights, "exact"),
    }
    timings = benchlib.timeit_many(fns, warmup=1, repeats=args.repeats, device=device)
    fused = adapters.merge(clients, weights, "svd", rank=args.rank)
    dense = dense_svd_merge(clients, weights, args.rank)
    m0 = next(iter(dense))
    agree = float((fused.delta()[m0] - dense[m0][1] @ dense[m0][0]).norm()
                  / (dense[m0][1] @ dense[m0][0]).norm())

    step_s = None if args.skip_step else time_training_step(args, device)
    steps = args.clients * math.ceil(args.train_examples / args.clients / 32)
    rows = []
    for name, t in timings.items():
        share = "" if step_s is None else f"{100 * t.median_s / (steps * step_s + t.median_s):.2g} %"
        rows.append([name, f"{t.ms:.1f}", f"{1e3 * t.min_s:.1f}", share])
    print(f"{args.clients} clients x {args.layers} layers x (query, value), {args.hidden}x{args.hidden}, r={args.rank}, "
          f"device {device}; SVD merge vs dense reference: relative difference {agree:.1e}")
    if step_s is not None:
        print(f"one LoRA step of a random roberta-base at batch 32 x 128 tokens (timed at batch {args.step_batch}, "
              f"scaled): {step_s:.2f} s; a round = {steps} steps = {steps * step_s / 60:.1f} min")
    table = benchlib.markdown_table(["merge", "median ms", "min ms", "share of a round"], rows)
    print(table)
    summary = {"table": table, "step_s": step_s, "timings_ms": {k: v.ms for k, v in timings.items()}, "agree": agree,
               "round_steps": steps, "device": str(device), "clients": args.clients}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    cli.run(main)
