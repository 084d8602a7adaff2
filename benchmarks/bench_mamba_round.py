"""Speed of the mamba_fl round loop: centralized training vs the federated rounds at the same batch size.

    python benchmarks/bench_mamba_round.py                     # d_model 64, 1 and 2 layers, CPU
    python benchmarks/bench_mamba_round.py --layers 4 --d-model 512 --d-state 128 --head-dim 64 --device cuda

For each depth it runs the real scripts (central.py, fed_avg.py, fed_fisher.py) on the embedded data with
evaluation pushed to the end, and reads their summaries:
  tokens/s        training tokens over the time of the training steps (central) or of the rounds (federated)
  overhead        fraction of round time spent outside the clients' local steps (forward, backward, AdamW):
                  loading the global model into the one model object, drawing batch indices, aggregating,
                  the server update, and for FedFisher its per-example Fisher. Target for FedAvg: < 5%.
Every client step uses --batch-size blocks, as every centralized step does.
A second table times FedFisher's per-example Fisher: torch.func vmap through the Mamba2 PyTorch path
(it works with use_cache=False) against the per-example loop, and checks that both give the same Fisher.

    python benchmarks/bench_mamba_round.py --nproc 1 2 --layers 2 --d-model 128 --rounds 6

With --nproc it instead times FedAvg rounds under torchrun with each given number of processes (gloo on
CPU, one thread per process, each process trains its share of the round's clients) and prints the wall
time per round and the speed-up over one process; the final validation perplexity of every run is printed
too, since the result must not depend on the number of processes.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import markdown_table

from common import cli


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description="mamba_fl round-loop speed", add_help=add_help)
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="depths to measure")
    p.add_argument("--d-model", type=int, default=64, help="hidden size")
    p.add_argument("--d-state", type=int, default=16, help="SSM state size")
    p.add_argument("--head-dim", type=int, default=16, help="SSM head dimension")
    p.add_argument("--sequence-length", type=int, default=64, help="tokens per block")
    p.add_argument("--batch-size", type=int, default=8, help="blocks per step, central and per client")
    p.add_argument("--num-clients", type=int, default=4, help="clients per round")
    p.add_argument("--rounds", type=int, default=20, help="federated rounds (central runs rounds x clients steps)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--cache-dir", default=None, help="data/tokenizer cache (default ~/.cache/fedlab)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--nproc", type=int, nargs="+", default=None,
                   help="time FedAvg rounds under torchrun with each of these process counts (e.g. 1 2) instead")
    p.add_argument("--repeats", type=int, default=1,
                   help="with --nproc: runs per process count, alternating; the median run is reported")
    return p


def nproc_timing(args) -> list[dict]:
    """Seconds per FedAvg round under ``torchrun --nproc-per-node N`` for each N of --nproc (one thread per
    process, so N processes use N cores), from the script's own round timer (evaluation excluded).

    With --repeats R the process counts alternate (1, 2, 1, 2, ...) R times and each N reports the median
    run, so a burst of load from elsewhere on a shared machine hits both alike and one bad run does not
    decide the ratio."""
    script = Path(__file__).resolve().parents[1] / "mamba_fl" / "fed_avg.py"
    cli.check(all(n >= 1 for n in args.nproc), f"--nproc values must be at least 1, got {args.nproc}")
    cli.check(args.repeats >= 1, f"--repeats must be at least 1, got {args.repeats}")
    runs: dict[int, list[dict]] = {n: [] for n in args.nproc}
    with tempfile.TemporaryDirectory() as out:
        for rep, n in [(rep, n) for rep in range(args.repeats) for n in args.nproc]:
            L = args.layers[0]
            argv = ["--layers", str(L), "--d-model", str(args.d_model), "--d-state", str(args.d_state),
                    "--head-dim", str(args.head_dim), "--sequence-length", str(args.sequence_length),
                    "--batch-size", str(args.batch_size), "--num-clients", str(args.num_clients),
                    "--rounds", str(args.rounds), "--val-freq", str(args.rounds), "--device", args.device,
                    "--out-dir", out, "--run-name", f"n{n}_r{rep}", "--quiet", "--sample-tokens", "0",
                    "--eval-blocks", "8"]
            if args.cache_dir:
                argv += ["--cache-dir", args.cache_dir]
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                   "--master-addr", "127.0.0.1", "--master-port", str(port), str(script), *argv]
            subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            summary = json.loads((Path(out) / f"n{n}_r{rep}" / "summary.json").read_text())
            runs[n].append({"nproc": n, "layers": L, "round_s": summary["round_seconds"] / args.rounds,
                            "final_val_ppl": summary["final_val_ppl"]})
    rows = []
    for rs in runs.values():
        median = sorted(rs, key=lambda r: r["round_s"])[len(rs) // 2]
        rows.append({**median, "runs_s": [r["round_s"] for r in rs]})
    base = rows[0]["round_s"]
    for r in rows:
        r["speedup"] = base / r["round_s"]
    print(markdown_table(["processes", "layers", "s / round (median)", "every run", f"speed-up vs {rows[0]['nproc']}",
                          "final val ppl"],
                         [[r["nproc"], r["layers"], f"{r['round_s']:.3f}", " ".join(f"{s:.3f}" for s in r["runs_s"]),
                           f"{r['speedup']:.2f}x", f"{r['final_val_ppl']:.4f}"] for r in rows]))
    print(f"cores: {os.cpu_count()}, device: {args.device}")
    return rows


def fisher_timing(args, L: int) -> dict:
    """Seconds of diagonal_fisher over --batch-size sequences: vmap vs loop, and their max relative gap."""
    import time

    from common import fisher, seed
    from mamba_fl import fed_fisher, federated, lmdata
    from mamba_fl import model as mmodel

    parser = fed_fisher.get_args_parser()
    argv = ["--layers", str(L), "--d-model", str(args.d_model), "--d-state", str(args.d_state),
            "--head-dim", str(args.head_dim), "--sequence-length", str(args.sequence_length)]
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    a = parser.parse_args(argv)
    federated.finish_args(a, federated.explicit_dests(parser, argv))
    data = lmdata.load_lm_data(a)
    seed.seed_everything(0)
    model = mmodel.build_model(a, data.vocab_size, data.tokenizer.pad_token_id, data.tokenizer.eos_token_id)
    batch = lmdata.text.lm_batch(data.train[: args.batch_size], data.tokenizer.pad_token_id)
    batches = [(batch["input_ids"], batch["labels"][:, 1:])]
    out = {}
    for method in ("per_example", "loop"):
        t = time.perf_counter()
        out[method] = fisher.diagonal_fisher(model, batches, forward=fed_fisher.next_token_logits, method=method,
                                             chunk_size=args.batch_size)
        out[method + "_s"] = time.perf_counter() - t
    gap = max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))
              for x, y in zip(out["per_example"], out["loop"]))
    return {"layers": L, "vmap_s": out["per_example_s"], "loop_s": out["loop_s"], "rel_gap": gap}


def main(argv=None) -> list[dict]:
    args = cli.parse(get_args_parser(), argv)
    if args.nproc:
        rows = nproc_timing(args)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return rows
    from mamba_fl import central, fed_avg, fed_fisher

    rows = []
    with tempfile.TemporaryDirectory() as out:
        for L in args.layers:
            common = ["--layers", str(L), "--d-model", str(args.d_model), "--d-state", str(args.d_state),
                      "--head-dim", str(args.head_dim), "--sequence-length", str(args.sequence_length),
                      "--batch-size", str(args.batch_size), "--device", args.device, "--out-dir", out,
                      "--quiet", "--sample-tokens", "0", "--eval-blocks", "8"]
            if args.cache_dir:
                common += ["--cache-dir", args.cache_dir]
            steps = args.rounds * args.num_clients
            c = central.main(common + ["--max-steps", str(steps), "--val-freq", str(steps), "--run-name", f"c{L}"])
            fed = ["--num-clients", str(args.num_clients), "--rounds", str(args.rounds), "--val-freq", str(args.rounds)]
            f = fed_avg.main(common + fed + ["--run-name", f"a{L}"])
            fi = fed_fisher.main(common + fed + ["--fisher-samples", str(args.batch_size), "--run-name", f"f{L}"])
            rows.append({
                "layers": L, "central_tok_s": c["train_tokens"] / c["train_seconds"],
                "fedavg_tok_s": f["train_tokens"] / f["round_seconds"], "fedavg_overhead": f["overhead_fraction"],
                "fedfisher_tok_s": fi["train_tokens"] / fi["round_seconds"],
                "fedfisher_overhead": fi["overhead_fraction"], "kernel_path": f["kernel_path"]})
    print(markdown_table(
        ["layers", "central tok/s", "FedAvg tok/s", "FedAvg overhead", "FedFisher tok/s", "FedFisher overhead", "path"],
        [[r["layers"], f"{r['central_tok_s']:.0f}", f"{r['fedavg_tok_s']:.0f}", f"{100 * r['fedavg_overhead']:.1f}%",
          f"{r['fedfisher_tok_s']:.0f}", f"{100 * r['fedfisher_overhead']:.1f}%", r["kernel_path"]] for r in rows]))
    frows = [fisher_timing(args, L) for L in args.layers]
    print()
    print(markdown_table(["layers", f"Fisher of {args.batch_size} seqs: vmap s", "loop s", "speed-up", "max rel. gap"],
                         [[r["layers"], f"{r['vmap_s']:.2f}", f"{r['loop_s']:.2f}", f"{r['loop_s'] / r['vmap_s']:.1f}x",
                           f"{r['rel_gap']:.1e}"] for r in frows]))
    rows += frows
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    cli.run(main)
