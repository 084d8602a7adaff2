"""Federated LoRA fine-tuning of a causal LM under extreme non-IID splits: FedAvg / FedProx / SCAFFOLD
(and FedAvgM / FedAdam), per-round drift metrics and failure-mode detection.

    python llm_noniid/train.py --quick
    python llm_noniid/train.py --algorithm scaffold --local-optimizer sgd --learning-rate 0.05 \
        --partition topic_skew --alpha 0.1 --num-rounds 50 --num-clients 10 --config llm_noniid/configs/default.yaml

Writes <out-dir>/<run-name>/ with args.json, metrics.jsonl (one row per round), summary.json (final and best
perplexity, detected failure modes and the round they appeared), checkpoint.pt, partition.json.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from common import cli, compiled, engine, export, flags, report
from common import clustering as C
from common import distributed as dist
from common import params as P
from common.checkpoint import atomic_write_json
from common.config import parse_with_config
from common.evaluate import autocast, perplexity, unigram_perplexity
from common.runlog import RunDir, data_fingerprint, run_name
from common.scaffold import Scaffold
from common.seed import client_generator, client_rng, numpy_rng, seed_everything, set_rng_state
from common.text import derived_cache_dir, load_tokenizer
from llm_noniid import data as D
from llm_noniid import failure, fedround
from llm_noniid.model import add_lora, hub_name, lm_loss, load_base
from llm_noniid.partition import PARTITIONS, TOKEN_SKEWS, TOPIC_SPLITS, partition, statistics

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
    g.add_argument("--max-train-examples", type=flags.COUNT, default=0,
                   help="random subset of the training texts (0: all)")
    g.add_argument("--max-eval-examples", type=flags.COUNT, default=1000,
                   help="random subset of validation texts (0: all)")
    g.add_argument("--seq-len", type=flags.POSITIVE_INT, default=128,
                   help="max tokens per example (eos appended, padding masked)")
    g.add_argument("--tokenizer", default="auto", help="auto (the model's own; bpe for tiny-gpt2) | bpe | a "
                   "folder with vocab.json + merges.txt | a hub name")
    g.add_argument("--bpe-vocab-size", type=flags.POSITIVE_INT, default=4096,
                   help="vocabulary of the offline BPE (--tokenizer bpe)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="distilgpt2", help="distilgpt2 | gpt2 | tinyllama | qwen-0.5b | hub name | "
                   "local folder | tiny-gpt2 (random 2-layer GPT-2, from scratch)")
    g.add_argument("--lora-r", type=flags.COUNT, default=8, help="LoRA rank (0: train every parameter)")
    g.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scaling numerator (scale alpha/r)")
    g.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA input")
    g = p.add_argument_group("partition")
    g.add_argument("--partition", default="iid", help="iid | topic_skew | style_skew | token_skew")
    g.add_argument("--alpha", type=float, default=0.5,
                   help="Dirichlet concentration for topic_skew (lower = more skew)")
    g.add_argument("--topic-split", default="mix", help="topic_skew kind: mix (equal client sizes, each client's "
                   "topic mix ~ Dir(alpha); valid for every seed) | labels (each topic split over clients ~ "
                   "Dir(alpha), redrawn until every client has --min-size; Flower's DirichletPartitioner)")
    g.add_argument("--min-size", type=flags.COUNT, default=2,
                   help="minimum examples per client for --topic-split labels")
    g.add_argument("--style-criterion", default="length", help="style_skew score: length | formality | complexity")
    g.add_argument("--token-skew", default="frequency", help="token_skew kind: frequency | truncation | vocabulary")
    g = engine.add_algorithm_args(p, momentum_form="heavy-ball", client_opt_state=None, algorithm_help="; fedavgm "
                                  "| fedadam: the source's names for fedavg with --server-opt fedavgm / fedadam")
    g.add_argument("--cluster-features", default="tokens", help="data clustering statistic: tokens (unigram "
                   "distribution of the client's training tokens) | topics (its topic histogram)")
    g = p.add_argument_group("local training")
    g.add_argument("--local-epochs", type=flags.POSITIVE_INT, default=1, help="passes over the client's data per round")
    g.add_argument("--max-local-steps", type=flags.COUNT, default=0, help="cap on local steps per round (0: no cap)")
    g.add_argument("--local-steps", type=flags.COUNT, default=0,
                   help="exactly this many local steps per client per round "
                   "(cycling over the client's data as needed; overrides --local-epochs and --max-local-steps), so "
                   "clients of every size and every split do the same work (0: epochs)")
    g.add_argument("--batch-size", type=flags.POSITIVE_INT, default=8, help="local batch size (examples)")
    g.add_argument("--learning-rate", type=float, default=5e-5, help="local learning rate")
    g.add_argument("--local-optimizer", default="adamw", help="adamw | sgd (SCAFFOLD requires sgd)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="local weight decay")
    g.add_argument("--max-grad-norm", type=float, default=0.0, help="clip local gradients to this norm (0: off)")
    g = p.add_argument_group("federation")
    g.add_argument("--num-rounds", "--rounds", type=flags.POSITIVE_INT, default=50, help="communication rounds")
    g.add_argument("--num-clients", type=flags.POSITIVE_INT, default=10, help="number of clients K")
    g.add_argument("--participation-rate", type=flags.FRACTION, default=1.0,
                   help="fraction of clients per round, in (0, 1]")
    flags.add_clients_per_round(g)
    g.add_argument("--eval-every", type=flags.POSITIVE_INT, default=1, help="evaluate the global model every N rounds")
    g.add_argument("--client-holdout", type=float, default=0.0, help="fraction of every client's examples held "
                   "out for its personalised perplexity (scored by its own cluster's model; 0: none)")
    cli.add_run_args(p, out_dir="runs/llm_noniid")
    return p


def validate(args) -> None:
    c = cli.check
    flags.resolve_clients_per_round(args)
    if args.algorithm in ("fedavgm", "fedadam"):  # the source's algorithm names for the server optimizers
        c(args.server_opt in ("fedavg", args.algorithm), f"--algorithm {args.algorithm} contradicts --server-opt "
                                                         f"{args.server_opt}")
        args.server_opt = args.algorithm
    fedround.check_local_optimizer(args.algorithm, args.local_optimizer)
    engine.check_algorithm_args(args, plain_sgd=args.local_optimizer == "sgd", algorithms=ALGORITHMS,
                                optimizer_hint="use --local-optimizer sgd")
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
    c(args.learning_rate > 0, f"--learning-rate must be > 0, got {args.learning_rate}")
    c(args.lora_r >= 0 and args.seq_len >= 4, "--lora-r must be >= 0 and --seq-len >= 4")
    c(args.topic_split in TOPIC_SPLITS, f"--topic-split {args.topic_split!r} is unknown; expected mix or labels")
    c(args.local_steps >= 0 and args.max_local_steps >= 0, "--local-steps and --max-local-steps must be >= 0")
    c(0.0 <= args.client_holdout < 1.0, f"--client-holdout must be in [0, 1), got {args.client_holdout}")
    c(args.max_train_examples >= 0 and args.max_eval_examples >= 0,
      "--max-train-examples and --max-eval-examples must be >= 0 (0: all)")
    c(args.max_grad_norm >= 0 and args.weight_decay >= 0, "--max-grad-norm and --weight-decay must be >= 0")
    c(args.lora_alpha > 0 and 0 <= args.lora_dropout < 1, "--lora-alpha must be > 0 and --lora-dropout in [0, 1)")
    c(args.min_size >= 0, f"--min-size must be >= 0, got {args.min_size}")
    c(args.cluster_features in C.FEATURES,
      f"--cluster-features {args.cluster_features!r} is unknown; expected tokens or topics")
    c(0 <= args.num_clusters <= args.num_clients,
      f"--num-clusters must be in 0..--num-clients ({args.num_clients}), got {args.num_clusters}")


def default_run_name(a) -> str:
    part = {"topic_skew": f"topic_a{a.alpha:g}", "style_skew": f"style_{a.style_criterion}",
            "token_skew": f"token_{a.token_skew}"}.get(a.partition, a.partition)
    if a.partition == "topic_skew" and a.topic_split != "mix":
        part += f"_{a.topic_split}"
    cluster = None if a.clustering == "none" else f"{a.clustering}{a.num_clusters or ''}"
    return run_name(a.algorithm, part, cluster, k=a.num_clients, p=a.participation_rate, lr=a.learning_rate,
                    e=None if a.local_steps else a.local_epochs, j=a.local_steps or None,
                    mu=a.mu if a.algorithm == "fedprox" else None,
                    w="size" if a.algorithm == "scaffold" and a.scaffold_weighting == "size" else None,
                    so=a.server_opt if a.server_opt not in ("fedavg", a.algorithm) else None, s=a.seed)


def build_tokenizer(args, train_texts: list[str]):
    spec = args.tokenizer
    if spec == "auto":
        spec = "bpe" if args.model == "tiny-gpt2" else hub_name(args.model)
    if spec != "bpe":
        return load_tokenizer(spec, cache_dir=args.cache_dir)
    # the BPE trains on the training texts; one file per text set, cached by content hash
    text = "\n".join(train_texts) + "\n"
    cache = derived_cache_dir(args.cache_dir, args.out_dir)  # --cache-dir, else beside the runs, never ~/.cache
    path = cache / "llm_noniid" / f"train-{hashlib.sha256(text.encode()).hexdigest()[:16]}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # torchrun ranks may write it at the same time
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return load_tokenizer("bpe", train_files=[path], vocab_size=args.bpe_vocab_size, cache_dir=cache)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, max_steps: int,
            gen: torch.Generator, device: torch.device, exact_steps: int = 0):
    """Shuffled local batches (input_ids [B, T], labels [B, T]) from the client's own random stream:
    ``epochs`` passes capped at ``max_steps``, or exactly ``exact_steps`` batches (passes repeat as needed)."""
    if exact_steps:
        epochs, max_steps = -(-exact_steps * batch_size // max(x.shape[0], 1)) + 1, exact_steps
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
    fingerprint = data_fingerprint(args.data, args.data_dir, texts={"train": "\n".join(train_data.texts),
                                                                    "valid": "\n".join(valid_data.texts)},
                                   splits={"train": len(train_data.texts), "valid": len(valid_data.texts)})

    # ------------------------------------------------------------------ partition, held-out split, clusters
    style = D.style_scores(train_data.texts, args.style_criterion) if args.partition == "style_skew" else None
    clients = partition(args.partition, labels_lm=y_all, topics=train_data.labels, num_clients=args.num_clients,
                        seed=args.seed, vocab_size=vocab_size, alpha=args.alpha, min_size=args.min_size,
                        style=style, token_skew=args.token_skew, topic_split=args.topic_split)
    # every client's tokens stay on the device for the whole run (a local step copies nothing to it); with
    # --client-holdout a seeded share of each client's examples is kept for its personalised perplexity
    client_data, client_held = [], []
    for k in range(args.num_clients):
        cx, cy = clients.client_tensors(k, x_all, y_all)
        n_held = int(round(args.client_holdout * cx.shape[0])) if cx.shape[0] >= 2 else 0
        order = torch.as_tensor(numpy_rng(args.seed, "holdout", k).permutation(cx.shape[0]))
        held, kept = order[:n_held], order[n_held:]
        client_data.append((cx[kept].to(device), cy[kept].to(device)))
        client_held.append((cx[held].to(device), cy[held].to(device)))
    sizes = [int(cx.shape[0]) for cx, _ in client_data]
    dominant_topic = [int(np.bincount(train_data.labels[s], minlength=train_data.num_classes).argmax())
                      if len(s) else -1 for s in clients.shards]
    refs = unigram_perplexity(torch.cat([cy for _, cy in client_data]), y_val, vocab_size)
    personal_refs = _personal_unigram(client_data, client_held, vocab_size)

    # ------------------------------------------------------------------ model, run directory, state
    base = load_base(args.model, vocab_size=vocab_size, seq_len=args.seq_len, eos_id=tok.eos_token_id,
                     cache_dir=args.cache_dir)
    model = add_lora(base, args.lora_r, args.lora_alpha, args.lora_dropout).to(device)
    fwd = compiled.maybe_compile(model, args)  # forward passes only; `model` for parameters and state
    params = P.trainable(model)
    names = [n for n, _ in P.named_trainable(model)]
    n_trainable = P.numel(params)
    rd = RunDir(args.out_dir, args.run_name or default_run_name(args), args, kind="llm_noniid/train",
                resume=args.resume, device=device,
                is_main=rank == 0, data=fingerprint)  # a longer --num-rounds on resume needs --extend
    stats = statistics(clients, x_all, y_all, train_data.labels, train_data.num_classes, vocab_size)

    def loss_fn(batch):
        with autocast(device):  # bf16 on CUDA, nothing on CPU; the cross-entropy itself runs in float32
            return lm_loss(fwd, batch[0], batch[1])

    # one model per cluster (--clustering none: one cluster holding every client)
    assign, cluster_info = np.zeros(args.num_clients, dtype=np.int64), {}
    if args.clustering == "data":  # one-shot: each client's own distribution, sent once before round 1
        feats = np.stack([C.token_distribution(cy, vocab_size) for _, cy in client_data]
                         if args.cluster_features == "tokens" else
                         [C.topic_distribution(train_data.labels[s], train_data.num_classes) for s in clients.shards])
        assign, cluster_info = C.data_clusters(feats, args.num_clusters)
    num_clusters = args.num_clusters if args.clustering == "ifca" else int(assign.max()) + 1
    cluster_params = [P.clone(params) for _ in range(num_clusters)]
    server_opts = [engine.make_server(args, cp) for cp in cluster_params]
    scaffolds = [None] * num_clusters
    if args.algorithm == "scaffold":  # control variates for every client, kept across rounds, per cluster
        for g in range(num_clusters):  # inside a data cluster the means run over its members only
            member = [1.0 if args.clustering != "data" or assign[k] == g else 0.0 for k in range(args.num_clients)]
            w = [m * (sizes[k] if args.scaffold_weighting == "size" else 1.0) for k, m in enumerate(member)]
            scaffolds[g] = Scaffold(cluster_params[g], args.num_clients, server_lr=args.server_lr,
                                    client_weights=None if all(v == 1.0 for v in w) else w)

    def train_client(g: int, k: int, r: int, algorithm: str, repeat: int = 1):
        """Client k's local steps of round r from cluster g's model, in ``params`` (streams keyed (seed, r, k));
        ``repeat`` times the usual local work (IFCA's starting points)."""
        cx, cy = client_data[k]
        gen = client_generator(args.seed, r, k)
        with client_rng(args.seed, r, k):
            return fedround.client_round(
                params, cluster_params[g], loss_fn,
                timed(batches(cx, cy, args.batch_size, args.local_epochs * repeat, args.max_local_steps * repeat,
                              gen, device, exact_steps=args.local_steps * repeat), timing, device),
                algorithm=algorithm, lr=args.learning_rate, optimizer=args.local_optimizer, mu=args.mu,
                weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                scaffold=scaffolds[g] if algorithm == "scaffold" else None, client=k)

    def ifca_init_() -> None:
        """IFCA's starting points, farthest first (clustering.py): each is --ifca-init-rounds rounds' worth of
        plain local steps (round 0 streams) of a seed client from the initial model; then every client takes
        its best cluster."""
        seeds = [int(numpy_rng(args.seed, "ifca-init").choice([k for k in range(args.num_clients) if sizes[k]]))]
        for g in range(num_clusters):
            if g:
                loss = np.array([[client_loss(h, k) if sizes[k] else -np.inf for h in range(g)]
                                 for k in range(args.num_clients)])
                seeds.append(C.farthest_first(loss, seeds))
            train_client(g, seeds[g], 0, "fedavg", repeat=args.ifca_init_rounds)
            P.load_(cluster_params[g], P.clone(params))
        cluster_info["seed_clients"] = seeds
        ifca_assign_(range(args.num_clients))

    def client_loss(g: int, k: int) -> float:  # IFCA's choice: cluster g's loss on client k's first batches
        cx, cy = client_data[k]
        b = [(cx[i:i + args.batch_size], cy[i:i + args.batch_size])
             for i in range(0, min(cx.shape[0], args.ifca_batches * args.batch_size), args.batch_size)]
        P.load_(params, cluster_params[g])
        return perplexity(fwd, b)["loss"]

    def ifca_assign_(ks) -> None:
        for k in ks:
            if sizes[k]:
                losses = [client_loss(g, k) for g in range(num_clusters)]
                assign[k] = int(np.argmin(losses))

    start, detected, status, bytes_up, bytes_down = 1, {}, "complete", 0, 0
    # seconds of the clients' local steps and of whole rounds (evaluation, logging, checkpoints excluded);
    # under torchrun each rank times its own clients and the summary is rank 0's
    timing = {"client_seconds": 0.0, "round_seconds": 0.0, "train_tokens": 0}
    state = rd.load_checkpoint()
    if state is not None:
        for g, saved in enumerate(state["clusters"]):
            P.load_(cluster_params[g], [t.to(device) for t in export.tensors_from_state(saved, names)])
            server_opts[g].load_state_dict(state["server_opt"][g])
            if scaffolds[g] is not None:
                scaffolds[g].load_state_dict(state["scaffold"][g])
        assign[:] = state["assign"]
        cluster_info = state.get("cluster_info", cluster_info)
        set_rng_state(state["rng"])
        start, detected = state["round"] + 1, state["detected"]
        bytes_up, bytes_down = state["bytes_up"], state["bytes_down"]
        timing = state.get("timing", timing)
    elif args.clustering == "ifca":
        ifca_init_()
    if rd.is_main:
        atomic_write_json(rd.artifact("partition.json"), {"partition": args.partition, **stats,
                                                          "clusters": assign.tolist(), "clustering": cluster_info})
    dist.barrier()  # every rank has read the checkpoint before rank 0 writes the next one

    eval_batches = [{"input_ids": x_val[i:i + 32].to(device), "labels": y_val[i:i + 32].to(device)}
                    for i in range(0, x_val.shape[0], 32)]
    per_client_bytes = 4 * n_trainable * (2 if args.algorithm == "scaffold" else 1)  # params (+ control variate)
    m = max(1, round(args.participation_rate * args.num_clients))

    def evaluate() -> dict:
        """Global validation loss of each cluster's model; the run's val_loss weighs them by the clients
        (by size) each serves; personalised: every client's held-out examples under its own cluster's model."""
        per_cluster = []
        for g in range(num_clusters):
            P.load_(params, cluster_params[g])  # the same model on every rank: each scores its share
            per_cluster.append(perplexity(fwd, eval_batches, shard=True)["loss"])
        w = np.array(sizes, dtype=np.float64)
        loss = float(np.dot(w, [per_cluster[g] for g in assign]) / w.sum())
        out = {"val_loss": loss, "val_ppl": _ppl(loss)}
        if num_clusters > 1:
            out["val_loss_per_cluster"] = per_cluster
        if args.client_holdout > 0:
            nll, tokens = 0.0, 0
            for k, (hx, hy) in enumerate(client_held):
                if hx.shape[0]:
                    P.load_(params, cluster_params[assign[k]])
                    ev = perplexity(fwd, [(hx[i:i + 32], hy[i:i + 32]) for i in range(0, hx.shape[0], 32)],
                                    shard=True)
                    nll, tokens = nll + ev["loss"] * ev["tokens"], tokens + ev["tokens"]
            ploss = nll / max(tokens, 1)
            out.update(personal_val_loss=ploss, personal_val_ppl=_ppl(ploss))
        return out

    # ------------------------------------------------------------------ rounds
    bar = tqdm(range(start, args.num_rounds + 1), disable=args.quiet or rank != 0, desc="rounds")
    for r in bar:
        t_round = time.perf_counter()
        chosen = np.sort(numpy_rng(args.seed, "participants", r).choice(args.num_clients, m, replace=False))
        active = [k for k in chosen.tolist() if sizes[k] > 0]
        if args.clustering == "ifca":
            ifca_assign_(active)  # every participant takes the cluster model that fits its data best
        # per-client stats [len(active), 4] = (loss, grad norm, prox, steps): each rank fills its own rows
        table = torch.zeros(len(active), 4, dtype=torch.float64, device=device)
        finished = []  # (cluster, its clients' total size, its metrics)
        for g in range(num_clusters):
            members = [k for k in active if assign[k] == g]
            if not members:
                continue
            server = fedround.RoundServer(cluster_params[g])
            # this rank's share of the cluster's clients, balanced by size (all of them in one process)
            plan = dist.assign_clients(members, [float(sizes[k]) for k in members], world)
            for k in plan[rank]:
                st = train_client(g, k, r, args.algorithm)
                server.add(params, weight=float(sizes[k]))
                table[active.index(k)] = torch.tensor([st.loss, st.grad_norm, st.prox, st.steps],
                                                      dtype=torch.float64)
            server.all_reduce_(None, scaffolds[g])  # the cluster's ONE reduction (nothing in a single process)
            if scaffolds[g] is not None:
                dist.sync_controls_(scaffolds[g], plan)  # every rank (and rank 0's checkpoint) holds every c_i
            finished.append((g, sum(sizes[k] for k in members),
                             server.finish(args.algorithm, server_opt=server_opts[g], scaffold=scaffolds[g])))
        if dist.is_distributed():
            dist.all_reduce_sum_([table])
        stats_rows = table.tolist()
        losses = {k: v[0] for k, v in zip(active, stats_rows)}
        gnorms, proxes = [v[1] for v in stats_rows], [v[2] for v in stats_rows]
        steps = int(sum(v[3] for v in stats_rows))
        cw = np.array([n for _, n, _ in finished], dtype=np.float64)
        row = {"round": r, "step": steps, "participants": chosen.tolist(),  # cluster metrics weighted by size
               **{key: float(np.dot(cw, [met[key] for _, _, met in finished]) / cw.sum())
                  for key in finished[0][2]}}
        if num_clusters > 1:
            row.update(clusters=assign.tolist(), client_divergence_rel_per_cluster={
                str(g): met["client_divergence_rel"] for g, _, met in finished})
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
        if args.algorithm == "scaffold":
            row.update(cv_norm=float(np.mean([P.norm(sc.c) for sc in scaffolds])),
                       cv_client_norm=float(np.mean([P.norm(scaffolds[assign[k]].control(k)) for k in losses])))
        if r % args.eval_every == 0 or r == args.num_rounds:
            row.update(evaluate())
            bar.set_postfix(ppl=f"{row['val_ppl']:.2f}")
        elif not all(bool(torch.isfinite(t).all()) for cp in cluster_params for t in cp):
            # a non-finite model between evaluations scores NaN: the divergence rule stops the run this round
            row.update(val_loss=math.nan, val_ppl=math.inf)
        if rd.is_main:
            rd.log(row)
            for mode, at in failure.detect(rd.rows()).items():
                detected.setdefault(mode, at)
        detected = dist.broadcast_object(detected)  # every rank stops at the same round
        if "divergence" in detected:
            status = "diverged"  # stop cleanly: full summary; the checkpoint stays at the last round before this one
            break
        rd.save_checkpoint({"clusters": [export.named_state(names, cp) for cp in cluster_params],
                            "server_opt": [o.state_dict() for o in server_opts],
                            "scaffold": [sc.state_dict() if sc is not None else None for sc in scaffolds],
                            "assign": assign.tolist(), "cluster_info": cluster_info, "round": r,
                            "detected": detected, "bytes_up": bytes_up, "bytes_down": bytes_down, "timing": timing})

    # ------------------------------------------------------------------ summary
    dist.barrier()  # rank 0 has written every row before the other ranks read them
    rows = rd.rows()
    evals = [x for x in rows if "val_loss" in x]
    finite = [x for x in evals if math.isfinite(x["val_loss"])]
    best = min(finite, key=lambda x: x["val_loss"]) if finite else None
    last = evals[-1] if evals else {}
    summary = rd.write_summary({
        "status": status,
        "rounds_done": rows[-1]["round"] if rows else 0, "num_rounds": args.num_rounds,
        "final_val_loss": last.get("val_loss"), "final_val_ppl": last.get("val_ppl"),
        "best_val_ppl": best["val_ppl"] if best else None, "best_round": best["round"] if best else None,
        "final_personal_val_ppl": last.get("personal_val_ppl"),
        # reference points: a model not well below the unigram has learned token frequencies only
        "uniform_ppl": refs["uniform_ppl"], "unigram_val_ppl": refs["unigram_ppl"],
        "personal_unigram_ppl": personal_refs,
        "final_client_divergence_rel": rows[-1]["client_divergence_rel"] if rows else None,
        "failure_modes": detected, "thresholds": failure.Thresholds().as_dict(),
        "num_clusters": num_clusters, "clusters": assign.tolist(), "clustering": cluster_info,
        "cluster_purity": C.purity(assign, np.array(dominant_topic)) if num_clusters > 1 else None,
        "dominant_topic": dominant_topic,
        "local_steps_per_round": rows[-1]["step"] if rows else 0,  # rows, not this session's rounds: a
        # finished run resumed runs none
        "trainable_params": n_trainable, "bytes_up": bytes_up, "bytes_down": bytes_down,
        "client_sizes": sizes, "vocab_size": vocab_size, "partition_stats": {
            k: v for k, v in stats.items() if k != "clients"},
        "client_seconds": round(timing["client_seconds"], 3), "round_seconds": round(timing["round_seconds"], 3),
        "overhead_fraction": (1 - timing["client_seconds"] / timing["round_seconds"]) if timing["round_seconds"]
        else None,
        "train_tokens": timing["train_tokens"]})
    if rd.is_main and status == "complete":  # a diverged model is not exported (checkpoint.pt keeps the last good)
        save_models(args, rd, model, params, cluster_params, tok, summary)
        report.print_ending(rd.path, "final validation perplexity", summary["final_val_ppl"],
                            {"unigram": refs["unigram_ppl"], "uniform": refs["uniform_ppl"]}, quiet=args.quiet,
                            figures=f"python plots/plot_llm_noniid.py --runs {args.out_dir}",
                            loader="AutoModelForCausalLM.from_pretrained"
                            + ("; LoRA adapter in adapter/: PeftModel.from_pretrained" if args.lora_r else ""))
    rd.release()
    if status == "diverged":  # one line, exit status 3 on every rank (summary.json says status: diverged)
        at = detected["divergence"]  # the checkpoint is saved after every round that did not diverge
        kept = f"checkpoint.pt keeps round {at - 1}" if at > 1 else "no checkpoint was saved (round 1 diverged)"
        raise cli.Diverged(f"the run diverged at round {at} (status 'diverged' in {rd.path / 'summary.json'}); "
                           f"{kept}; lower --learning-rate and rerun with --overwrite")
    return summary


def save_models(args, rd, model, params, cluster_params, tok, summary: dict) -> None:
    """<run>/model: the global model (with clusters, cluster 0's; the others in model_cluster<g>), LoRA merged
    in, with its tokenizer (AutoModelForCausalLM.from_pretrained); LoRA runs also <run>/adapter (peft format,
    PeftModel.from_pretrained), naming the hub base or, for the tiny model built in code, <run>/base_model."""
    info = {k: summary.get(k) for k in ("status", "final_val_loss", "final_val_ppl", "unigram_val_ppl")}
    for g, cp in enumerate(cluster_params):
        P.load_(params, cp)
        suffix = f"_cluster{g}" if g else ""
        export.save_model_dir(rd.path, export.merged(model), tok, info=info | {"cluster": g},
                              name="model" + suffix)
        if args.lora_r:  # the tiny base exists only in code: saved once, to <run>/base_model
            built = args.model == "tiny-gpt2"
            base_model = copy.deepcopy(model).unload() if built and g == 0 else None  # the base without adapters
            base = str(rd.path / "base_model") if built else hub_name(args.model)
            export.save_adapter_dir(rd.path, model, tok, base=base, base_model=base_model,
                                    info=info | {"cluster": g}, name="adapter" + suffix)


def _ppl(loss: float) -> float:
    """exp(loss), inf for a non-finite or overflowing loss (a diverged model)."""
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf


def _personal_unigram(client_data, client_held, vocab_size: int) -> float | None:
    """Reference for the personalised perplexity: each client's own unigram (fitted on its training tokens)
    scored on its held-out examples, token-weighted over clients. None without held-out data."""
    nll, tokens = 0.0, 0
    for (_, cy), (_, hy) in zip(client_data, client_held):
        if hy.shape[0]:
            ref = unigram_perplexity(cy, hy, vocab_size)
            nll, tokens = nll + ref["unigram_loss"] * ref["tokens"], tokens + ref["tokens"]
    return math.exp(nll / tokens) if tokens else None


if __name__ == "__main__":
    cli.run(main)
