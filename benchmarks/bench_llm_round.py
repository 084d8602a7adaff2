"""Round overhead of llm_noniid: FedAvg / FedProx / SCAFFOLD rounds of the real train.py on the embedded data.

    python benchmarks/bench_llm_round.py                       # tiny GPT-2, full training and LoRA r=8, CPU
    python benchmarks/bench_llm_round.py --quick               # smoke run: 2 rounds each
    python benchmarks/bench_llm_round.py --lora-r 8 --rounds 20 --device cuda --json /tmp/llm_round.json

Each (algorithm, --lora-r) pair runs llm_noniid/train.py in this process with its --quick preset (tiny random
GPT-2, embedded topic-structured AG News, BPE 512, plain SGD so SCAFFOLD runs too), evaluation only after the
last round, and one full local epoch per client (--max-local-steps 0; the preset's cap of 3 steps would time
mostly the per-client fixed costs). It reads the script's own timers from summary.json:
  tokens/s    token positions through forward/backward (padding included) over the time of the rounds
  round s     wall time of one round: loading the global model, local steps, aggregation, server update
  overhead    fraction of the round outside the clients' local steps (forward, backward, optimizer step):
              the in-place loads, per-client RNG streams, the streaming aggregation with its drift metrics,
              the FedProx term, SCAFFOLD's control variates, the server update. Target: < 5%.
--lora-r 0 trains every parameter (the from-scratch setting of the README's results); --lora-r 8 trains only
peft LoRA adapters on the attention and MLP projections (the paper's setting), so the clients' compute is
still the whole forward/backward while aggregation handles only the adapters.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchlib import markdown_table

from common import cli, flags

ALGORITHMS = ("fedavg", "fedprox", "scaffold")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description="llm_noniid round overhead", add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS, help="algorithms to time")
    p.add_argument("--lora-r", type=int, nargs="+", default=[0, 8],
                   help="LoRA ranks to time (0: train every parameter)")
    p.add_argument("--rounds", type=flags.POSITIVE_INT, default=10,
                   help="federated rounds per run (more: a steadier number)")
    p.add_argument("--num-clients", type=flags.POSITIVE_INT, default=4, help="clients, all taking part every round")
    p.add_argument("--max-train-examples", type=int, default=240, help="training texts shared out over the clients")
    p.add_argument("--max-local-steps", type=int, default=0, help="cap on local steps (0: one full local epoch)")
    p.add_argument("--batch-size", type=int, default=8, help="local batch size (texts)")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per text")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 96 training texts")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p


def run_one(args, algorithm: str, lora_r: int, out_dir: str) -> dict:
    """One train.py run; its summary reduced to the benchmark's row."""
    from llm_noniid import train

    argv = ["--quick", "--quiet", "--algorithm", algorithm, "--lora-r", str(lora_r),
            "--num-rounds", str(args.rounds), "--eval-every", str(args.rounds),
            "--num-clients", str(args.num_clients), "--max-train-examples", str(args.max_train_examples),
            "--max-local-steps", str(args.max_local_steps), "--batch-size", str(args.batch_size),
            "--seq-len", str(args.seq_len), "--device", args.device,
            "--out-dir", out_dir, "--run-name", f"{algorithm}_r{lora_r}"]
    s = train.main(argv)
    rounds = s["rounds_done"]
    cli.check(s["status"] == "complete" and rounds == args.rounds,
              f"{algorithm} with --lora-r {lora_r} stopped at round {rounds} ({s['status']}); "
              f"a benchmark needs every round")
    return {"algorithm": algorithm, "lora_r": lora_r, "trainable_params": s["trainable_params"],
            "rounds": rounds, "clients": args.num_clients, "train_tokens": s["train_tokens"],
            "tokens_per_s": s["train_tokens"] / s["round_seconds"], "round_s": s["round_seconds"] / rounds,
            "client_s": s["client_seconds"] / rounds, "overhead": s["overhead_fraction"],
            "final_val_ppl": s["final_val_ppl"]}


def main(argv=None) -> list[dict]:
    args = cli.parse(get_args_parser(), argv)
    if args.quick:
        args.rounds, args.max_train_examples = min(args.rounds, 2), min(args.max_train_examples, 96)
    cli.check(all(r >= 0 for r in args.lora_r), "--lora-r values must be >= 0")
    with tempfile.TemporaryDirectory() as out:
        rows = [run_one(args, a, r, out) for r in args.lora_r for a in args.algorithms]
    print(markdown_table(
        ["algorithm", "trained", "tokens/s", "round s", "client s", "overhead"],
        [[r["algorithm"], "all parameters" if r["lora_r"] == 0 else f"LoRA r={r['lora_r']}",
          f"{r['tokens_per_s']:.0f}", f"{r['round_s']:.3f}", f"{r['client_s']:.3f}", f"{100 * r['overhead']:.1f}%"]
         for r in rows]))
    print(f"{args.rounds} rounds x {args.num_clients} clients, {args.max_train_examples} texts x {args.seq_len} "
          f"tokens, batch {args.batch_size}, device {args.device}, "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')} thread(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    cli.run(main)
