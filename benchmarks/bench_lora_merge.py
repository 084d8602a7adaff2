"""Time of one LoRA merge for roberta-base-sized adapters, its share of a FedAvg round, and the measured
overhead of real fedavg_rounds.py rounds on the tiny RoBERTa.

    python benchmarks/bench_lora_merge.py                       # 12 layers x (query, value), r=8, 10 clients
    python benchmarks/bench_lora_merge.py --clients 10 --rank 8 --device cuda
    python benchmarks/bench_lora_merge.py --skip_step --round_rounds 6      # merge timing + measured tiny rounds
    python benchmarks/bench_lora_merge.py --quick                           # smoke run: small shapes, 2 short rounds

Adapters: 12 layers x {query, value}, 768 x 768, rank --rank, --clients clients with random factors (the
merge cost does not depend on the values). Methods: the SVD merge as lora_glue_fl runs it (common.lora_merge:
QR of the stacked factors, SVD of the small (K r)^2 core), the dense reference (form dW_bar, full SVD of
each 768 x 768 matrix, as the source project did), naive A/B averaging and exact stacking.

Share of a round: one LoRA training step of a randomly initialised roberta-base (query/value adapters,
batch --step_batch x 128 tokens) is timed and scaled to a round of SST-2 (67,349 examples, 1 local epoch,
batch 32, all clients): merge / (steps x step time + merge). --skip_step leaves this extrapolation out.

Measured round (unless --skip_round): lora_glue_fl/fedavg_rounds.py itself, in this process, on the tiny
RoBERTa (2 layers, hidden 64, LoRA r=4 on query/value + head, the --quick model) with the embedded SST-2 data
(2,000 training examples) split iid over --round_clients clients by make_shards.py, --round_rounds rounds of
--round_epochs local epochs, SVD merge to rank 4, evaluation only after the last round. Its summary.json gives
the round time and the clients' share (forward, backward, AdamW step); the rest is the round's overhead:
loading the fused adapter into the one PeftModel, reading the clients' adapters back, the SVD merge and its
error, and writing every client's and the fused adapter's files (--save_client_adapters all).
Target: < 5% of the round.
"""
from __future__ import annotations

import json
import math
import tempfile
from typing import TYPE_CHECKING

import benchlib

from common import cli, flags

if TYPE_CHECKING:
    from lora_glue_fl import adapters


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    g = p.add_argument_group("merge")
    g.add_argument("--clients", type=int, default=10, help="number of client adapters K")
    g.add_argument("--rank", type=int, default=8, help="client LoRA rank = fused SVD rank")
    g.add_argument("--layers", type=int, default=12, help="transformer layers (roberta-base: 12)")
    g.add_argument("--hidden", type=int, default=768, help="hidden size (roberta-base: 768)")
    g.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    g = p.add_argument_group("share of a round (a roberta-base training step)")
    g.add_argument("--train_examples", type=int, default=67349, help="examples per round (SST-2 train)")
    g.add_argument("--step_batch", type=int, default=2, help="batch of the timed training step (scaled to 32)")
    g.add_argument("--skip_step", action="store_true", help="do not time the roberta-base training step")
    g = p.add_argument_group("measured round (fedavg_rounds.py, tiny RoBERTa)")
    g.add_argument("--round_clients", type=flags.POSITIVE_INT, default=4,
                   help="clients of the measured tiny-RoBERTa rounds")
    g.add_argument("--round_rounds", type=flags.POSITIVE_INT, default=4,
                   help="rounds of the measured run (more: steadier)")
    g.add_argument("--round_epochs", type=flags.POSITIVE, default=1.0,
                   help="local epochs per client per measured round")
    g.add_argument("--skip_round", action="store_true", help="do not run the measured fedavg_rounds.py rounds")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", help="cpu | cuda")
    g.add_argument("--quick", action="store_true", help="smoke run: 2 layers of 64 x 64, 2 clients, no training "
                                                        "step, 2 measured rounds of a quarter epoch")
    g.add_argument("--json", default=None, help="also write the summary to this JSON file")
    return p


def client_adapters(args, device) -> list[adapters.Adapter]:
    import torch

    from lora_glue_fl import adapters

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.clients):
        factors = {}
        for layer in range(args.layers):
            for m in ("query", "value"):
                A = torch.randn(args.rank, args.hidden, generator=g) / math.sqrt(args.hidden)
                B = torch.randn(args.hidden, args.rank, generator=g) * 0.01
                name = f"base_model.model.roberta.encoder.layer.{layer}.attention.self.{m}"
                factors[name] = (A.to(device), B.to(device))
        head_weight = torch.randn(args.hidden, args.hidden, generator=g).to(device)
        head = {"base_model.model.classifier.dense.weight": head_weight}
        out.append(adapters.Adapter(factors, head, args.rank, float(args.rank), ["query", "value"]))
    return out


def dense_svd_merge(clients, weights, rank):
    """The source's way: dW_bar per module, then a full SVD of the out x in matrix."""
    import torch

    from common import lora_merge

    out = {}
    total = sum(weights)
    for m in clients[0].factors:
        dW = lora_merge.lora_delta([c.factors[m][0] for c in clients], [c.factors[m][1] for c in clients],
                                  [w / total for w in weights], [c.scale for c in clients])
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        out[m] = (Vh[:rank], U[:, :rank] * S[:rank])
    return out


def time_training_step(args, device) -> float:
    """Seconds of one LoRA step (forward + backward + AdamW) of a random roberta-base, scaled to batch 32."""
    import torch
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


def measured_round(args, device) -> dict:
    """Round and client seconds of a real fedavg_rounds.py run on the tiny RoBERTa and embedded SST-2."""
    from lora_glue_fl import fedavg_rounds, make_shards

    with tempfile.TemporaryDirectory() as out:
        shards = make_shards.main(["--quick", "--task_name", "sst2", "--k", str(args.round_clients), "--mode", "iid",
                                   "--out_dir", f"{out}/shards", "--no_plot"])
        # the --quick model and data, without --quick's cap of 2 rounds
        s = fedavg_rounds.main([
            "--task_name", "sst2", "--data", "synthetic", "--shard_dir", f"{out}/shards", "--model_size", "tiny",
            "--max_seq_length", "48", "--tokenizer_vocab_size", "1000", "--max_eval_samples", "64",
            "--lora_r", "4", "--lora_alpha", "4", "--svd_rank", "4", "--rounds", str(args.round_rounds),
            "--local_epochs", str(args.round_epochs), "--device", str(device), "--out-dir", out,
            "--run-name", "round", "--save_client_adapters", "all", "--quiet"])
    return {"clients": args.round_clients, "rounds": args.round_rounds, "local_epochs": args.round_epochs,
            "examples_per_client": shards["size_per_client"], "round_s": s["round_seconds"] / args.round_rounds,
            "client_s": s["client_seconds"] / args.round_rounds, "overhead": s["overhead_fraction"],
            "final_accuracy": s["final"].get("accuracy")}


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    import torch  # after parsing: --help and a usage error answer before it loads

    from lora_glue_fl import adapters

    if args.quick:
        args.layers, args.hidden, args.clients, args.repeats, args.skip_step = 2, 64, 2, 1, True
        args.round_clients, args.round_rounds, args.round_epochs = 2, 2, 0.25
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
    print(f"{args.clients} clients x {args.layers} layers x (query, value), {args.hidden}x{args.hidden}, "
          f"r={args.rank}, device {device}; SVD merge vs dense reference: relative difference {agree:.1e}")
    if step_s is not None:
        print(f"one LoRA step of a random roberta-base at batch 32 x 128 tokens (timed at batch {args.step_batch}, "
              f"scaled): {step_s:.2f} s; a round = {steps} steps = {steps * step_s / 60:.1f} min")
    table = benchlib.markdown_table(["merge", "median ms", "min ms", "share of a round"], rows)
    print(table)
    measured = None if args.skip_round else measured_round(args, device)
    if measured is not None:
        print()
        print(benchlib.markdown_table(
            ["fedavg_rounds.py, tiny RoBERTa, embedded SST-2", "round s", "client s", "overhead"],
            [[f"{measured['clients']} clients x {measured['examples_per_client'][0]} examples, "
              f"{measured['rounds']} rounds x {measured['local_epochs']:g} epoch(s), SVD rank 4",
              f"{measured['round_s']:.3f}", f"{measured['client_s']:.3f}", f"{100 * measured['overhead']:.1f}%"]]))
    summary = {"table": table, "step_s": step_s, "timings_ms": {k: v.ms for k, v in timings.items()}, "agree": agree,
               "round_steps": steps, "device": str(device), "clients": args.clients, "round": measured}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    cli.run(main)
