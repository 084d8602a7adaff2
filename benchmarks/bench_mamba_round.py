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
FedFisher runs twice: with its per-example Fisher of --batch-size blocks per client (``--fisher-method
per_example``) and with ``--fisher-method local`` (the squared batch gradients of the client's own local
steps, reused from training: ``common.fisher.LocalStepFisher``).
A second table times FedFisher's per-example Fisher: torch.func vmap through the Mamba2 PyTorch path
(it works with use_cache=False) against the per-example loop, and checks that both give the same Fisher.
A third breaks a FedFisher client down (one local step, its Fisher by each estimator) and reports each
estimator's relative error ||F_hat - F|| / ||F|| against the per-example Fisher F of --fisher-reference blocks
of the client's shard at the client's final parameters, averaged over --fisher-draws clients/draws:
per_example with --batch-size and with 32 blocks (the flag's default), 'batch' with --batch-size blocks,
and local (pairs of consecutive steps) over 4 local steps (LOCAL_STEPS); FedFisher rounds run again with
4 local steps, with per_example and with local.

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
from functools import partial
from pathlib import Path

from benchlib import markdown_table, timeit_many

from common import cli, flags


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description="mamba_fl round-loop speed", add_help=add_help, epilog=cli.examples(__doc__))
    g = p.add_argument_group("model")
    g.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="depths to measure")
    g.add_argument("--d-model", type=int, default=64, help="hidden size")
    g.add_argument("--d-state", type=int, default=16, help="SSM state size")
    g.add_argument("--head-dim", type=int, default=16, help="SSM head dimension")
    g.add_argument("--sequence-length", type=int, default=64, help="tokens per block")
    g = p.add_argument_group("rounds")
    g.add_argument("--batch-size", type=int, default=8, help="blocks per step, central and per client")
    g.add_argument("--num-clients", type=int, default=4, help="clients per round")
    g.add_argument("--rounds", type=int, default=20, help="federated rounds (central runs rounds x clients steps)")
    g.add_argument("--nproc", type=int, nargs="+", default=None,
                   help="time FedAvg rounds under torchrun with each of these process counts (e.g. 1 2) instead")
    g.add_argument("--repeats", type=flags.POSITIVE_INT, default=1,
                   help="with --nproc: runs per process count, alternating; the median run is reported")
    g = p.add_argument_group("Fisher estimators")
    g.add_argument("--fisher-reference", type=int, default=256,
                   help="blocks of the per-example Fisher the estimators are compared with")
    g.add_argument("--fisher-draws", type=int, default=3, help="clients (with their own draws) averaged over")
    g.add_argument("--no-estimators", action="store_true", help="skip the Fisher estimator table")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", help="cpu | cuda")
    g.add_argument("--cache-dir", default=None, help="data/tokenizer cache (default ~/.cache/fedlab)")
    g.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p


def nproc_timing(args) -> list[dict]:
    """Seconds per FedAvg round under ``torchrun --nproc-per-node N`` for each N of --nproc (one thread per
    process, so N processes use N cores), from the script's own round timer (evaluation excluded).

    With --repeats R the process counts alternate (1, 2, 1, 2, ...) R times and each N reports the median
    run, so a burst of load from elsewhere on a shared machine hits both alike and one bad run does not
    decide the ratio."""
    script = Path(__file__).resolve().parents[1] / "mamba_fl" / "fed_avg.py"
    cli.check(all(n >= 1 for n in args.nproc), f"--nproc values must be at least 1, got {args.nproc}")
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


def _fisher_setup(args, L: int):
    """FedFisher's arguments for an L-layer model at the benchmark's sizes, and its data."""
    from mamba_fl import fed_fisher, federated, lmdata

    parser = fed_fisher.get_args_parser()
    argv = ["--layers", str(L), "--d-model", str(args.d_model), "--d-state", str(args.d_state),
            "--head-dim", str(args.head_dim), "--sequence-length", str(args.sequence_length)]
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    federated.finish_args(a := parser.parse_args(argv))
    return a, lmdata.load_lm_data(a)


def fisher_timing(args, L: int) -> dict:
    """Seconds of diagonal_fisher over --batch-size sequences: vmap vs loop, and their max relative gap."""
    from common import fisher, seed
    from mamba_fl import client_stats, lmdata
    from mamba_fl import model as mmodel

    a, data = _fisher_setup(args, L)
    seed.seed_everything(0)
    model = mmodel.build_model(a, data.vocab_size, data.tokenizer.pad_token_id, data.tokenizer.eos_token_id)
    batch = lmdata.text.lm_batch(data.train[: args.batch_size], data.tokenizer.pad_token_id)
    batches = [(batch["input_ids"], batch["labels"][:, 1:])]
    out = {}

    def run(method):
        out[method] = fisher.diagonal_fisher(model, batches, forward=client_stats.next_token_logits, method=method,
                                             chunk_size=args.batch_size)

    # one warm-up call of each (vmap's first call traces), then the two round-robin
    t = timeit_many({m: partial(run, m) for m in ("per_example", "loop")}, warmup=1, repeats=3)
    gap = max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))
              for x, y in zip(out["per_example"], out["loop"]))
    return {"layers": L, "vmap_s": t["per_example"].median_s, "loop_s": t["loop"].median_s, "rel_gap": gap}


LOCAL_STEPS = 4  # local steps per client for --fisher-method local (it pairs consecutive steps: >= 2)


def fisher_estimators(args, L: int) -> dict:
    """Per client: the time of one local step and of each Fisher estimator, and each estimator's relative
    error against the per-example Fisher of --fisher-reference blocks at the client's final parameters."""
    import statistics
    import time

    import torch

    from common import fisher, seed
    from common import params as P
    from mamba_fl import client_stats, lmdata
    from mamba_fl import model as mmodel

    a, data = _fisher_setup(args, L)
    pad, B = data.tokenizer.pad_token_id, args.batch_size
    seed.seed_everything(0)
    model = mmodel.build_model(a, data.vocab_size, pad, data.tokenizer.eos_token_id)
    ps = P.trainable(model)
    n = len(data.train)

    def batch(idx):
        return lmdata.text.lm_batch(data.train[torch.as_tensor(idx)], pad)

    def step(opt, idx):
        model(**batch(idx)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def per_example(idx, method="per_example"):
        blocks = [(b["input_ids"], b["labels"][:, 1:]) for b in (batch(idx[i:i + B]) for i in range(0, len(idx), B))]
        return fisher.diagonal_fisher(model, blocks, forward=client_stats.next_token_logits, params=ps, method=method,
                                      chunk_size=B)

    warm = torch.optim.AdamW(ps, lr=1e-2)
    for i in range(20):  # away from the initialisation, as in a run's later rounds
        step(warm, torch.arange(i * B, (i + 1) * B) % n)
    start = P.clone(ps)
    U = LOCAL_STEPS
    names = ["per_example", "per_example (32 blocks)", "batch", "local"]
    errors, times = {k: [] for k in names}, {k: [] for k in names}
    for d in range(args.fisher_draws):
        g = torch.Generator().manual_seed(1000 + d)
        ref_idx = torch.randperm(n, generator=g)[: args.fisher_reference]
        P.load_(ps, start)
        opt = torch.optim.AdamW(ps, lr=1e-3)  # a fresh client AdamW, as --client-opt-state reset
        est = fisher.LocalStepFisher(ps, B)
        for _ in range(U):
            step(opt, torch.randint(0, n, (B,), generator=g))
        t = time.perf_counter()
        local = est.estimate()
        times["local"].append(time.perf_counter() - t)
        est.remove()
        full = P.flatten(per_example(ref_idx))  # at this client's final parameters
        errors["local"].append(float((P.flatten(local) - full).norm() / full.norm()))
        for other, idx, method in (("per_example", ref_idx[:B], "per_example"),
                                   ("per_example (32 blocks)", ref_idx[-32:], "per_example"),
                                   ("batch", ref_idx[B:2 * B], "batch")):
            t = time.perf_counter()
            f = per_example(idx, method)
            times[other].append(time.perf_counter() - t)
            errors[other].append(float((P.flatten(f) - full).norm() / full.norm()))
    # the hooks' cost is inside the training steps: time their work directly on one step's gradients
    # (the difference of steps with and without hooks drowns in the noise of a shared machine)
    P.load_(ps, start)
    opt = torch.optim.AdamW(ps, lr=1e-3)
    plain = []
    for i in range(5):
        t = time.perf_counter()
        step(opt, torch.arange(i * B, (i + 1) * B) % n)
        plain.append(time.perf_counter() - t)
    step_s = statistics.median(plain)
    model(**batch(torch.arange(B))).loss.backward()
    probe = fisher.LocalStepFisher(ps, B)
    probe.remove()
    hooks = [probe._hook(i) for i in range(len(ps))]
    hook_times = []
    for _ in range(7):
        t = time.perf_counter()
        for h, p in zip(hooks, ps):
            h(p)
        hook_times.append(time.perf_counter() - t)
    hook_s = statistics.median(hook_times[1:])  # the first call of a hook has no pair yet
    for p in ps:
        p.grad = None
    est = []
    for k in names:
        seconds = statistics.median(times[k]) + (U * hook_s if k == "local" else 0.0)
        est.append({"name": k, "seconds": seconds, "rel_error": statistics.mean(errors[k]), "rel_errors": errors[k],
                    "share_1_step": seconds / (step_s + seconds), "share_u_steps": seconds / (U * step_s + seconds)})
    return {"layers": L, "step_s": step_s, "hook_s": hook_s, "local_steps": U, "params": P.numel(ps),
            "reference_blocks": args.fisher_reference, "batch_size": B, "estimators": est}


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
            # --fisher-method local pairs consecutive local steps: both FedFisher variants again at 4 local steps
            fed4 = ["--local-updates", str(LOCAL_STEPS)]
            fp4 = fed_fisher.main(common + fed + fed4 + ["--fisher-samples", str(args.batch_size),
                                                          "--run-name", f"fp4{L}"])
            fl4 = fed_fisher.main(common + fed + fed4 + ["--fisher-method", "local", "--run-name", f"fl4{L}"])
            rows.append({
                "local_steps": LOCAL_STEPS,
                "fedfisher_u_overhead": fp4["overhead_fraction"],
                "fedfisher_local_tok_s": fl4["train_tokens"] / fl4["round_seconds"],
                "fedfisher_local_overhead": fl4["overhead_fraction"],
                "layers": L, "central_tok_s": c["train_tokens"] / c["train_seconds"],
                "fedavg_tok_s": f["train_tokens"] / f["round_seconds"], "fedavg_overhead": f["overhead_fraction"],
                "fedfisher_tok_s": fi["train_tokens"] / fi["round_seconds"],
                "fedfisher_overhead": fi["overhead_fraction"], "kernel_path": f["kernel_path"]})
    print(markdown_table(
        ["layers", "central tok/s", "FedAvg tok/s", "FedAvg overhead", "FedFisher tok/s", "FedFisher overhead",
         f"FedFisher overhead, {LOCAL_STEPS} local steps: per_example / local", "path"],
        [[r["layers"], f"{r['central_tok_s']:.0f}", f"{r['fedavg_tok_s']:.0f}", f"{100 * r['fedavg_overhead']:.1f}%",
          f"{r['fedfisher_tok_s']:.0f}", f"{100 * r['fedfisher_overhead']:.1f}%",
          f"{100 * r['fedfisher_u_overhead']:.1f}% / {100 * r['fedfisher_local_overhead']:.1f}%", r["kernel_path"]]
         for r in rows]))
    frows = [fisher_timing(args, L) for L in args.layers]
    print()
    print("Fisher tables: on the CPU whatever --device (the model is built there), 1 warm-up call each")
    print(markdown_table(["layers", f"Fisher of {args.batch_size} seqs: vmap s", "loop s", "speed-up", "max rel. gap"],
                         [[r["layers"], f"{r['vmap_s']:.2f}", f"{r['loop_s']:.2f}", f"{r['loop_s'] / r['vmap_s']:.1f}x",
                           f"{r['rel_gap']:.1e}"] for r in frows]))
    rows += frows
    if not args.no_estimators:
        erows = [fisher_estimators(args, L) for L in args.layers]
        print()
        print(markdown_table(
            ["layers", "local step ms", "estimator", "Fisher ms / client", "share of a client, 1 step",
             f"share, {LOCAL_STEPS} steps", "rel. error vs F"],
            [[r["layers"], f"{1e3 * r['step_s']:.1f}", e["name"], f"{1e3 * e['seconds']:.1f}",
              "-" if e["name"] == "local" else f"{100 * e['share_1_step']:.1f}%", f"{100 * e['share_u_steps']:.1f}%",
              f"{e['rel_error']:.2f}"] for r in erows for e in r["estimators"]]))
        print(f"F: per-example Fisher of --fisher-reference {args.fisher_reference} blocks at the client's final "
              f"parameters after {LOCAL_STEPS} local steps; mean over {args.fisher_draws} clients/draws")
        rows += erows
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    cli.run(main)
