"""Federated LoRA fine-tuning of a causal LM under extreme non-IID splits: FedAvg / FedProx / SCAFFOLD
(and FedAvgM / FedAdam), per-round drift metrics and failure-mode detection.

    python llm_noniid/train.py --quick
    python llm_noniid/train.py --algorithm scaffold --local-optimizer sgd --learning-rate 0.05 \
        --partition topic_skew --alpha 0.1 --num-rounds 50 --num-clients 10 --config llm_noniid/configs/default.yaml

Writes <out-dir>/<run-name>/ with args.json, metrics.jsonl (one row per round), summary.json (final and best
perplexity, detected failure modes and the round they appeared), checkpoint.pt, partition.json.
"""
from __future__ import annotations

import hashlib
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from common import cli, compiled
from common import distributed as dist
from common import params as P
from common.checkpoint import atomic_write_json
from common.evaluate import autocast, perplexity
from common.runlog import DEFAULT_IGNORE_ON_RESUME, RunDir, run_name
from common.scaffold import Scaffold
from common.seed import client_generator, client_rng, numpy_rng, seed_everything, set_rng_state
from common.server_opt import make_server_optimizer
from common.text import default_cache_dir, load_tokenizer
from llm_noniid import data as D
from llm_noniid import failure, fedround
from llm_noniid.config import parse_with_config
from llm_noniid.model import add_lora, hub_name, lm_loss, load_base
from llm_noniid.partition import PARTITIONS, TOKEN_SKEWS, partition, statistics

ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadam")
QUICK = dict(model="tiny-gpt2", data="synthetic", num_rounds=3, num_clients=4, max_train_examples=240,
             max_eval_examples=48, seq_len=32, batch_size=8, max_local_steps=3, bpe_vocab_size=512,
             learning_rate=0.5, local_optimizer="sgd", lora_r=0)  # the random tiny model trains from scratch


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--config", default=None, help="YAML file of flag: value lines (command-line flags override it)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic",
                   help="ag_news | wikitext | synthetic (embedded topic-structured AG News)")
    g.add_argument("--data-dir", default=None, help="folder with the original files (AG News train.csv/test.csv, "
                   "WikiText wiki.train.raw/wiki.valid.raw); default: the Hugging Face hub")
    g.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for models and datasets")
    g.add_argument("--max-train-examples", type=int, default=0, help="random subset of the training texts (0: all)")
    g.add_argument("--max-eval-examples", type=int, default=1000, help="random subset of validation texts (0: all)")
    g.add_argument("--seq-len", type=int, default=128, help="max tokens per example (eos appended, padding masked)")
    g.add_argument("--tokenizer", default="auto", help="auto (the model's own; bpe for tiny-gpt2) | bpe | a "
                   "folder with vocab.json + merges.txt | a hub name")
    g.add_argument("--bpe-vocab-size", type=int, default=4096, help="vocabulary of the offline BPE (--tokenizer bpe)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="distilgpt2", help="distilgpt2 | gpt2 | tinyllama | qwen-0.5b | hub name | "
                   "local folder | tiny-gpt2 (random 2-layer GPT-2, from scratch)")
    g.add_argument("--lora-r", type=int, default=8, help="LoRA rank (0: train every parameter)")
    g.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scaling numerator (scale alpha/r)")
    g.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA input")
    g = p.add_argument_group("partition")
    g.add_argument("--partition", default="iid", help="iid | topic_skew | style_skew | token_skew")
    g.add_argument("--alpha", type=float, default=0.5,
                   help="Dirichlet concentration for topic_skew (lower = more skew)")
    g.add_argument("--min-size", type=int, default=2, help="minimum examples per client for topic_skew")
    g.add_argument("--style-criterion", default="length", help="style_skew score: length | formality | complexity")
    g.add_argument("--token-skew", default="frequency", help="token_skew kind: frequency | truncation | vocabulary")
    g = p.add_argument_group("algorithm")
    g.add_argument("--algorithm", default="fedavg", help="fedavg | fedprox | scaffold | fedavgm | fedadam")
    g.add_argument("--mu", type=float, default=0.01, help="FedProx proximal weight (loss + mu/2 ||w - w_global||^2)")
    g.add_argument("--server-lr", type=float, default=1.0,
                   help="server step size: SCAFFOLD eta_g, FedAvg / FedAvgM (1 = plain); FedAdam wants ~1e-2")
    g.add_argument("--server-momentum", type=float, default=0.9, help="FedAvgM momentum / FedAdam beta1")
    g = p.add_argument_group("local training")
    g.add_argument("--local-epochs", type=int, default=1, help="passes over the client's data per round")
    g.add_argument("--max-local-steps", type=int, default=0, help="cap on local steps per round (0: no cap)")
    g.add_argument("--batch-size", type=int, default=8, help="local batch size (examples)")
    g.add_argument("--learning-rate", type=float, default=5e-5, help="local learning rate")
    g.add_argument("--local-optimizer", default="adamw", help="adamw | sgd (SCAFFOLD requires sgd)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="local weight decay")
    g.add_argument("--max-grad-norm", type=float, default=0.0, help="clip local gradients to this norm (0: off)")
    g = p.add_argument_group("federation")
    g.add_argument("--num-rounds", "--rounds", type=int, default=50, help="communication rounds")
    g.add_argument("--num-clients", type=int, default=10, help="number of clients K")
    g.add_argument("--participation-rate", type=float, default=1.0, help="fraction of clients per round, in (0, 1]")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate the global model every N rounds")
    cli.add_run_args(p, out_dir="runs/llm_noniid")
    return p


def validate(args) -> None:
    c = cli.check
    c(args.algorithm in ALGORITHMS,
      f"--algorithm {args.algorithm!r} is unknown; expected one of {', '.join(ALGORITHMS)}")
    c(args.partition in PARTITIONS,
      f"--partition {args.partition!r} is unknown; expected one of {', '.join(PARTITIONS)}")
    c(args.token_skew in TOKEN_SKEWS,
      f"--token-skew {args.token_skew!r} is unknown; expected one of {', '.join(TOKEN_SKEWS)}")
    c(args.style_criterion in ("length", "formality", "complexity"),
      f"--style-criterion {args.style_criterion!r} is unknown; expected length, formality or complexity")
    c(args.alpha > 0, f"--alpha must be > 0 (Dirichlet concentration), got {args.alpha}")
    c(0.0 < args.participation_rate <= 1.0, f"--participation-rate must be in (0, 1], got {args.participation_rate}")
    c(args.num_clients >= 1 and args.num_rounds >= 1, "--num-clients and --num-rounds must be at least 1")
    c(args.eval_every >= 1 and args.local_epochs >= 1 and args.batch_size >= 1,
      "--eval-every, --local-epochs and --batch-size must be at least 1")
    c(args.learning_rate > 0 and args.mu >= 0 and args.server_lr > 0,
      "--learning-rate and --server-lr must be > 0, --mu >= 0")
    c(args.lora_r >= 0 and args.seq_len >= 4, "--lora-r must be >= 0 and --seq-len >= 4")
    fedround.check_local_optimizer(args.algorithm, args.local_optimizer)


def default_run_name(a) -> str:
    part = {"topic_skew": f"topic_a{a.alpha:g}", "style_skew": f"style_{a.style_criterion}",
            "token_skew": f"token_{a.token_skew}"}.get(a.partition, a.partition)
    return run_name(a.algorithm, part, k=a.num_clients, p=a.participation_rate, lr=a.learning_rate,
                    e=a.local_epochs, mu=a.mu if a.algorithm == "fedprox" else None, s=a.seed)


def build_tokenizer(args, train_texts: list[str]):
    spec = args.tokenizer
    if spec == "auto":
        spec = "bpe" if args.model == "tiny-gpt2" else hub_name(args.model)
    if spec != "bpe":
        return load_tokenizer(spec, cache_dir=args.cache_dir)
    # the BPE trains on the training texts; one file per text set, cached by content hash
    text = "\n".join(train_texts) + "\n"
    path = default_cache_dir() / "llm_noniid" / f"train-{hashlib.sha256(text.encode()).hexdigest()[:16]}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # torchrun ranks may write it at the same time
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return load_tokenizer("bpe", train_files=[path], vocab_size=args.bpe_vocab_size)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, max_steps: int,
            gen: torch.Generator, device: torch.device):
    """Shuffled local batches (input_ids [B, T], labels [B, T]) from the client's own random stream."""
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch_size):
            if max_steps and steps >= max_steps:
                return
            idx = order[i:i + batch_size].to(x.device, non_blocking=True)
            yield x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            steps += 1


def timed(local_batches, acc: dict, device: torch.device):
    """Pass the batches through, adding to ``acc`` the wall time from the first batch requested to the end
    of the last local step ("client_seconds": forward, backward, optimizer, batch copies) and the token
    positions fed through the model ("train_tokens", padding included). The clock starts when local training
    asks for its first batch (after the global model is loaded) and stops when it asks past the last one
    (before SCAFFOLD's control update); CUDA is synchronized first so queued kernels are counted."""
    start = time.perf_counter()
    for x, y in local_batches:
        acc["train_tokens"] += x.numel()
        yield x, y
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    acc["client_seconds"] += time.perf_counter() - start


def main(argv=None) -> dict:
    parser = get_args_parser()
    args = parse_with_config(parser, argv, presets={"quick": QUICK})
    validate(args)
    owned = not dist.is_distributed()  # a process group set up by the caller stays the caller's
    rank, world = dist.init()  # (0, 1) without torchrun
    try:
        return run(args, rank, world)
    finally:
        if owned:
            dist.cleanup()


def run(args, rank: int, world: int) -> dict:
    """The federated run. Under torchrun every rank builds the same model and data, trains its share of each
    round's clients, and the round's sums are all-reduced, so every rank applies the same server update;
    every rank scores its share of the validation batches; rank 0 logs and checkpoints."""
    device = dist.device_for_rank(cli.resolve_device(args.device))
    seed_everything(args.seed)

    # ------------------------------------------------------------------ data and tokenizer
    train_data, valid_data = D.load_splits(args.data, args.data_dir, args.cache_dir)
    train_data = D.subsample(train_data, args.max_train_examples, args.seed)
    valid_data = D.subsample(valid_data, args.max_eval_examples, args.seed + 1)
    tok = build_tokenizer(args, train_data.texts)
    vocab_size = len(tok)
    x_all, y_all = D.encode(tok, train_data.texts, args.seq_len)
    x_val, y_val = D.encode(tok, valid_data.texts, args.seq_len)

    # ------------------------------------------------------------------ partition
    style = D.style_scores(train_data.texts, args.style_criterion) if args.partition == "style_skew" else None
    clients = partition(args.partition, labels_lm=y_all, topics=train_data.labels, num_clients=args.num_clients,
                        seed=args.seed, vocab_size=vocab_size, alpha=args.alpha, min_size=args.min_size,
                        style=style, token_skew=args.token_skew)
    # every client's tokens stay on the device for the whole run (a local step copies nothing to it)
    client_data = [tuple(t.to(device) for t in clients.client_tensors(c, x_all, y_all))
                   for c in range(args.num_clients)]
    sizes = [int(cx.shape[0]) for cx, _ in client_data]

    # ------------------------------------------------------------------ model, run directory, state
    base = load_base(args.model, vocab_size=vocab_size, seq_len=args.seq_len, eos_id=tok.eos_token_id,
                     cache_dir=args.cache_dir)
    model = add_lora(base, args.lora_r, args.lora_alpha, args.lora_dropout).to(device)
    fwd = compiled.maybe_compile(model, args)  # forward passes only; `model` for parameters and state
    params = P.trainable(model)
    global_params = P.clone(params)
    n_trainable = P.numel(params)
    rd = RunDir(args.out_dir, args.run_name or default_run_name(args), args, resume=args.resume, device=device,
                ignore_on_resume=DEFAULT_IGNORE_ON_RESUME + ("num_rounds",), is_main=rank == 0)
    stats = statistics(clients, x_all, y_all, train_data.labels, train_data.num_classes, vocab_size)
    if rd.is_main:
        atomic_write_json(rd.artifact("partition.json"), {"partition": args.partition, **stats})

    opt_name = {"fedavgm": "fedavgm", "fedadam": "fedadam"}.get(args.algorithm, "fedavg")
    server_opt = make_server_optimizer(opt_name, global_params, lr=args.server_lr, momentum=args.server_momentum,
                                       form="heavy-ball", betas=(args.server_momentum, 0.99))
    scaffold = None
    if args.algorithm == "scaffold":  # control variates for every client, kept across rounds
        scaffold = Scaffold(global_params, args.num_clients, server_lr=args.server_lr)
    start, detected, status, bytes_up, bytes_down = 1, {}, "complete", 0, 0
    # seconds of the clients' local steps and of whole rounds (evaluation, logging, checkpoints excluded);
    # under torchrun each rank times its own clients and the summary is rank 0's
    timing = {"client_seconds": 0.0, "round_seconds": 0.0, "train_tokens": 0}
    state = rd.load_checkpoint()
    if state is not None:
        P.load_(global_params, [t.to(device) for t in state["global"]])
        server_opt.load_state_dict(state["server_opt"])
        if scaffold is not None:
            scaffold.load_state_dict(state["scaffold"])
        set_rng_state(state["rng"])
        start, detected = state["round"] + 1, state["detected"]
        bytes_up, bytes_down = state["bytes_up"], state["bytes_down"]
        timing = state.get("timing", timing)
    dist.barrier()  # every rank has read the checkpoint before rank 0 writes the next one

    def loss_fn(batch):
        with autocast(device):  # bf16 on CUDA, nothing on CPU; the cross-entropy itself runs in float32
            return lm_loss(fwd, batch[0], batch[1])

    eval_batches = [{"input_ids": x_val[i:i + 32].to(device), "labels": y_val[i:i + 32].to(device)}
                    for i in range(0, x_val.shape[0], 32)]
    per_client_bytes = 4 * n_trainable * (2 if scaffold is not None else 1)  # params (+ control variate)
    m = max(1, round(args.participation_rate * args.num_clients))

    # ------------------------------------------------------------------ rounds
    bar = tqdm(range(start, args.num_rounds + 1), disable=args.quiet or rank != 0, desc="rounds")
    for r in bar:
        t_round = time.perf_counter()
        chosen = np.sort(numpy_rng(args.seed, "participants", r).choice(args.num_clients, m, replace=False))
        server = fedround.RoundServer(global_params)
        # this rank's share of the round's non-empty clients, balanced by size (all of them in one process)
        active = [k for k in chosen.tolist() if sizes[k] > 0]
        plan = dist.assign_clients(active, [float(sizes[k]) for k in active], world)
        # per-client stats [len(active), 4] = (loss, grad norm, prox, steps): each rank fills its own rows
        table = torch.zeros(len(active), 4, dtype=torch.float64, device=device)
        for k in plan[rank]:
            cx, cy = client_data[k]
            gen = client_generator(args.seed, r, k)
            with client_rng(args.seed, r, k):
                st = fedround.client_round(
                    params, global_params, loss_fn,
                    timed(batches(cx, cy, args.batch_size, args.local_epochs, args.max_local_steps, gen, device),
                          timing, device),
                    algorithm=args.algorithm, lr=args.learning_rate, optimizer=args.local_optimizer, mu=args.mu,
                    weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, scaffold=scaffold, client=k,
                    weight=float(sizes[k]))
            server.add(params, weight=float(sizes[k]))
            table[active.index(k)] = torch.tensor([st.loss, st.grad_norm, st.prox, st.steps], dtype=torch.float64)
        server.all_reduce_(table, scaffold)  # the round's ONE reduction (nothing in a single process)
        if scaffold is not None:
            dist.sync_controls_(scaffold, plan)  # every rank (and rank 0's checkpoint) holds every c_i
        stats_rows = table.tolist()
        losses = {k: v[0] for k, v in zip(active, stats_rows)}
        gnorms, proxes = [v[1] for v in stats_rows], [v[2] for v in stats_rows]
        steps = int(sum(v[3] for v in stats_rows))
        row = {"round": r, "step": steps, "participants": chosen.tolist(), **server.finish(
            args.algorithm, server_opt=server_opt, scaffold=scaffold)}
        bytes_down += per_client_bytes * len(losses)
        bytes_up += per_client_bytes * len(losses)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timing["round_seconds"] += time.perf_counter() - t_round  # the rest is metrics, evaluation, logging
        w = np.array([sizes[k] for k in losses], dtype=np.float64)
        row.update(train_loss=float(np.dot(w, list(losses.values())) / w.sum()),
                   client_train_loss={str(k): v for k, v in losses.items()},
                   grad_norm_mean=float(np.mean(gnorms)), grad_norm_var=float(np.var(gnorms)),
                   prox_term=float(np.mean(proxes)))
        if scaffold is not None:
            row.update(cv_norm=P.norm(scaffold.c),
                       cv_client_norm=float(np.mean([P.norm(scaffold.control(k)) for k in losses])))
        if r % args.eval_every == 0 or r == args.num_rounds:
            P.load_(params, global_params)  # the same global model on every rank: each scores its share
            ev = perplexity(fwd, eval_batches, shard=True)
            row.update(val_loss=ev["loss"], val_ppl=ev["ppl"])
            bar.set_postfix(ppl=f"{ev['ppl']:.2f}")
        if rd.is_main:
            rd.log(row)
            for mode, at in failure.detect(rd.rows()).items():
                detected.setdefault(mode, at)
        detected = dist.broadcast_object(detected)  # every rank stops at the same round
        if "divergence" in detected:
            status = "diverged"  # stop cleanly; the checkpoint stays at the last round before this one
            break
        rd.save_checkpoint({"global": P.state_to_cpu(global_params), "server_opt": server_opt.state_dict(),
                            "scaffold": scaffold.state_dict() if scaffold is not None else None, "round": r,
                            "detected": detected, "bytes_up": bytes_up, "bytes_down": bytes_down,
                            "timing": timing})

    # ------------------------------------------------------------------ summary
    dist.barrier()  # rank 0 has written every row before the other ranks read them
    rows = rd.rows()
    evals = [x for x in rows if "val_loss" in x]
    finite = [x for x in evals if math.isfinite(x["val_loss"])]
    best = min(finite, key=lambda x: x["val_loss"]) if finite else None
    return rd.write_summary({
        "status": status,
        "rounds_done": rows[-1]["round"] if rows else 0, "num_rounds": args.num_rounds,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "final_val_ppl": evals[-1]["val_ppl"] if evals else None,
        "best_val_ppl": best["val_ppl"] if best else None, "best_round": best["round"] if best else None,
        "final_client_divergence_rel": rows[-1]["client_divergence_rel"] if rows else None,
        "failure_modes": detected, "thresholds": failure.Thresholds().as_dict(),
        "trainable_params": n_trainable, "bytes_up": bytes_up, "bytes_down": bytes_down,
        "client_sizes": sizes, "vocab_size": vocab_size, "partition_stats": {
            k: v for k, v in stats.items() if k != "clients"},
        "client_seconds": round(timing["client_seconds"], 3), "round_seconds": round(timing["round_seconds"], 3),
        "overhead_fraction": (1 - timing["client_seconds"] / timing["round_seconds"]) if timing["round_seconds"]
        else None,
        "train_tokens": timing["train_tokens"]})


if __name__ == "__main__":
    cli.run(main)
