"""Multi-round FedAvg of LoRA adapters for an encoder (RoBERTa, BERT, ...) on a GLUE task: broadcast -> train -> merge.

    python lora_glue_fl/fedavg_rounds.py --quick                       # tiny RoBERTa, embedded SST-2-like task
    python lora_glue_fl/make_shards.py --task_name sst2 --k 10 --mode iid --out_dir shards/sst2_iid_k10
    python lora_glue_fl/fedavg_rounds.py --model_size base --task_name sst2 --shard_dir shards/sst2_iid_k10 \
        --rounds 5 --svd_rank 8 --eval_each_round

Every round every client starts from the fused adapter AND classifier head of the previous round, with the
adapter trainable (the source loaded it frozen, so rounds after the first trained only the head). The
server merges the clients' updates dW_k = s_k B_k A_k weighted by shard sizes (lora_glue_fl/adapters.py):
``--aggregation svd`` (default; truncated SVD to ``--svd_rank``, fused lora_alpha = ``--alpha`` or the rank),
``naive`` (= ``--skip_svd``: average A and B separately) or ``exact`` (stacked factors, no loss), and
averages the heads with the same weights.

Outputs in <out_dir>/<run_name>/ (the source's layout inside the run directory):
    round_<k>/client_<i>/adapter/       each client's adapter + head (peft format)
    round_<k>/fused_r<r>/adapter/       the fused adapter (fused_r<r>_nosvd / fused_exact_r<r> for the others)
    base_model/                         the tiny base model (tiny runs), so PeftModel.from_pretrained finds it
    metrics.jsonl, summary.json, checkpoint.pt, args.json

Under ``torchrun --nproc_per_node N`` each rank trains its share of the clients (balanced by shard size) and
one all-gather per round hands every rank all clients' small LoRA factors and heads, so every rank merges the
same adapters and holds the same fused adapter; rank 0 evaluates, logs, saves adapters and checkpoints.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from common import cli, compiled, engine, export, flags, report, runlog
from common import distributed as D
from common import seed as seeding
from common.config import parse_with_config
from lora_glue_fl import adapters, checks, glue_shards, glue_tasks, modeling

# what the round engine's flags cannot do here, and why (said in --help, refused in one line)
NO_SCAFFOLD = ("its control variates live in the clients' parameter space, which the merge re-factorises "
               "(svd / naive / exact change the LoRA factors)")
NO_CLUSTERING = "every client takes part in every round and the run keeps one fused adapter"
QUICK_TRAIN = 240  # training examples used by --quick (without --shard_dir)
# --quick: tiny model, short sequences, few rounds, a smoke run in seconds (defaults < --quick < YAML < command line)
QUICK = dict(model_size="tiny", max_seq_length=48, max_eval_samples=64, rounds=2, tokenizer_vocab_size=1000,
             lora_r=4, lora_alpha=4, svd_rank=4)


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--task_name", default="sst2", help=f"GLUE task: {', '.join(glue_tasks.TASKS)}")
    p.add_argument("--shard_dir", default=None, help="folder of client_<i>.json manifests from make_shards.py "
                                                     "(--quick without it: 3 iid clients)")
    p.add_argument("--partition", choices=glue_shards.MODES, default=None,
                   help="split the training split here instead of reading --shard_dir: make_shards.py's --mode "
                        "(with --num-clients clients, default 3; --quick alone: iid)")
    p.add_argument("--num-clients", type=flags.POSITIVE_INT, default=3,
                   help="clients of --partition (--shard_dir: its manifests)")
    p.add_argument("--max_train_samples", type=flags.POSITIVE_INT, default=None,
                   help="use the first N training examples (with --partition or --quick; default --quick: 240)")
    p.add_argument("--data", choices=["hf", "dir", "synthetic"], default=None,
                   help="hf: datasets.load_dataset('glue', task); dir: --data_dir; synthetic: embedded "
                        "(default: dir when --data_dir is given, synthetic with --quick, else hf)")
    p.add_argument("--data_dir", default=None, help="folder with the original GLUE TSV files of the task")
    modeling.add_model_args(p)
    g = p.add_argument_group("federation")
    g.add_argument("--rounds", type=flags.POSITIVE_INT, default=5, help="communication rounds")
    g.add_argument("--local_epochs", type=float, default=1.0, help="epochs over its shard per client per round")
    g.add_argument("--local-steps", type=flags.POSITIVE_INT, default=None,
                   help="exactly this many optimizer steps per client per round instead of --local_epochs")
    g.add_argument("--participation-rate", type=flags.FRACTION, default=1.0,
                   help="fraction of clients per round: every client takes part in every round here (1 only)")
    flags.add_clients_per_round(g)
    g.add_argument("--batch_size", type=flags.POSITIVE_INT, default=32, help="local batch size")
    g.add_argument("--learning_rate", type=float, default=2e-4, help="local AdamW learning rate (linear decay)")
    g.add_argument("--aggregation", choices=adapters.METHODS, default=None,
                   help="svd: truncated SVD of the weighted mean dW; naive: average A and B; exact: stacked "
                        "factors (rank grows to the sum of client ranks). Default svd (naive with --skip_svd)")
    g.add_argument("--skip_svd", action="store_true", help="the source's flag for --aggregation naive")
    g.add_argument("--svd_rank", type=flags.POSITIVE_INT, default=8, help="rank of the fused adapter (svd)")
    g.add_argument("--alpha", type=float, default=None, help="lora_alpha of the fused adapter (default: its rank)")
    g.add_argument("--init_adapter", default=None, help="adapter folder to broadcast in round 1 (default: fresh LoRA)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora_r", type=flags.POSITIVE_INT, default=8, help="rank of the clients' adapters in round 1")
    g.add_argument("--lora_alpha", type=float, default=8, help="lora_alpha of the round-1 adapters")
    g.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the LoRA input")
    g.add_argument("--target_modules", nargs="+", default=None,
                   help="linear layers to adapt (default: the architecture's query and value projections, e.g. "
                        "query value for BERT / RoBERTa, q_lin v_lin for DistilBERT)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_each_round", action="store_true", help="evaluate the fused model after every round "
                                                                   "(the last round is always evaluated)")
    g.add_argument("--eval_clients", action="store_true", help="also evaluate every client's model")
    g.add_argument("--eval_batch_size", type=flags.POSITIVE_INT, default=32, help="evaluation batch size")
    g.add_argument("--max_eval_samples", type=flags.POSITIVE_INT, default=None,
                   help="evaluate on the first N validation examples")
    g.add_argument("--save_client_adapters", choices=["all", "last", "none"], default="all",
                   help="which rounds keep round_<k>/client_<i>/adapter (fused adapters are always kept)")
    engine.add_algorithm_args(p, client_opt_state=None, scaffold=NO_SCAFFOLD, clustering=NO_CLUSTERING)
    cli.add_run_args(p, seed=42)
    p.add_argument("--output_root", dest="out_dir", default=argparse.SUPPRESS, help="the source's name for --out-dir")
    return p


def resolve_args(args):
    """Fill defaults that depend on other flags, then validate (one line per problem)."""
    checks.common_args(args)
    if args.aggregation is None:
        args.aggregation = "naive" if args.skip_svd else "svd"
    cli.check(not (args.skip_svd and args.aggregation != "naive"), "--skip_svd contradicts --aggregation "
                                                                   f"{args.aggregation}")
    if args.data is None:
        args.data = "dir" if args.data_dir else ("synthetic" if args.quick else "hf")
    glue_tasks.get_task(args.task_name)
    args.task_name = args.task_name.lower()
    cli.check(args.local_steps is None or args.local_steps >= 1,
              f"--local-steps must be at least 1, got {args.local_steps}")
    cli.check(args.num_clients >= 1, f"--num-clients must be at least 1, got {args.num_clients}")
    cli.check(args.max_train_samples is None or args.max_train_samples >= 1,
              f"--max_train_samples must be at least 1, got {args.max_train_samples}")
    cli.check(args.shard_dir is None or args.partition is None,
              "--partition splits the data here, --shard_dir reads a split: give one of them")
    if args.clients_per_round is not None and args.shard_dir is None:
        flags.resolve_clients_per_round(args)
    cli.check(args.participation_rate == 1.0 or args.clients_per_round is not None and args.shard_dir is not None,
              f"every client takes part in every round of fedavg_rounds.py; --participation-rate "
              f"{args.participation_rate} / --clients-per-round {args.clients_per_round} is not supported")
    cli.check(args.svd_rank >= 1, f"--svd_rank must be at least 1, got {args.svd_rank}")
    cli.check(args.lora_r >= 1, f"--lora_r must be at least 1, got {args.lora_r}")
    cli.check(args.rounds >= 1, f"--rounds must be at least 1, got {args.rounds}")
    cli.check(args.local_epochs > 0, f"--local_epochs must be positive, got {args.local_epochs}")
    cli.check(args.batch_size >= 1, f"--batch_size must be at least 1, got {args.batch_size}")
    cli.check(0.0 <= args.lora_dropout < 1.0, f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    cli.check(args.shard_dir is not None or args.quick or args.partition is not None,
              "--shard_dir (make it with make_shards.py) or --partition is required")
    engine.check_algorithm_args(args, plain_sgd=False, optimizer_hint="", scaffold=NO_SCAFFOLD)
    cli.check(args.server_opt == "fedavg" and args.server_lr == 1.0, "--server-opt / --server-lr: the server "
              "sets the fused adapter to the merge (a server step on re-factorised adapters has no meaning)")
    return args


def fused_dir_name(method: str, fused: adapters.Adapter) -> str:
    return {"svd": f"fused_r{fused.r}", "naive": f"fused_r{fused.r}_nosvd", "exact": f"fused_exact_r{fused.r}"}[method]


def on_device(adapter: adapters.Adapter, device) -> adapters.Adapter:
    """The adapter with its factors and head moved to ``device`` (CPU before pickling for a gather)."""
    factors = {m: (A.to(device), B.to(device)) for m, (A, B) in adapter.factors.items()}
    return dataclasses.replace(adapter, factors=factors, head={k: t.to(device) for k, t in adapter.head.items()})


def gather_clients(mine: dict, num_clients: int, device) -> tuple[list[adapters.Adapter], list[dict]]:
    """All clients' adapters and metric rows, in client order, on every rank.

    ``mine``: client index -> (Adapter, row) for this rank's clients. Under torchrun one ``all_gather_object``
    of the (small) factors and heads; single-process it only reorders.
    """
    if D.is_distributed():
        shares = [None] * D.world_size()
        dist.all_gather_object(shares, {i: (on_device(a, "cpu"), row) for i, (a, row) in mine.items()})
        mine = {i: (on_device(a, device), row) for share in shares for i, (a, row) in share.items()}
    assert sorted(mine) == list(range(num_clients)), f"clients {sorted(mine)} of {num_clients} came back"
    return [mine[i][0] for i in range(num_clients)], [mine[i][1] for i in range(num_clients)]


def build_tokenizer(args, train, rd: runlog.RunDir):
    """The run's tokenizer; its training corpus goes to a temporary folder, not the run directory (the
    tokenizer itself is cached by content, so every rank gets the same one)."""
    with tempfile.TemporaryDirectory() as tmp:
        return modeling.build_tokenizer(args, train, Path(tmp))


def parse_args(argv=None):
    """defaults < --quick < YAML (--config) < command line, then the checks."""
    return resolve_args(parse_with_config(get_args_parser(), argv, presets={"quick": QUICK}))


def main(argv=None) -> dict:
    args = parse_args(argv)
    owns_group = not D.is_distributed()  # tests may start the process group themselves
    D.init()
    device = D.device_for_rank(cli.resolve_device(args.device))
    splits = glue_tasks.load_glue(args.task_name, args.data, args.data_dir, args.cache_dir)
    train = splits["train"]
    if args.shard_dir is not None:
        shards, shard_info = glue_shards.read_shard_manifests(args.shard_dir)
    else:  # --partition, or --quick: --num-clients (3) clients over the first QUICK_TRAIN examples
        n_train = args.max_train_samples or (QUICK_TRAIN if args.quick else len(train))
        train = splits["train"] = train.subset(range(min(n_train, len(train))))
        info = glue_shards.make_client_splits(train, args.task_name, args.num_clients, args.partition or "iid",
                                              seed=args.seed)
        shards, shard_info = [np.asarray(c, dtype=np.int64) for c in info["client_indices"]], info
    if args.clients_per_round is not None:
        cli.check(args.clients_per_round == len(shards), f"--clients-per-round {args.clients_per_round}: every "
                                                         f"one of the {len(shards)} clients takes part in every round")
    top = max(int(s.max()) for s in shards)
    cli.check(top < len(train), f"--shard_dir {args.shard_dir}: index {top} outside the {len(train)} training "
                                f"examples of {args.task_name}; the manifests belong to another dataset")
    if shard_info.get("task"):
        cli.check(shard_info["task"] == args.task_name, f"--shard_dir was made for task {shard_info['task']!r}, "
                                                        f"not {args.task_name!r}")
    sizes = [len(s) for s in shards]
    task = glue_tasks.get_task(args.task_name)
    name = args.run_name or runlog.run_name(
        "fedavg", args.task_name, args.aggregation, shard_info.get("mode", "shards"), checks.source_tag(args),
        **engine.run_name_tags(args),
        k=len(shards), r=args.svd_rank if args.aggregation == "svd" else None, R=args.rounds, lr=args.learning_rate,
        s=args.seed)
    rd = runlog.RunDir(args.out_dir, name, args, kind="lora_glue_fl/fedavg_rounds", resume=args.resume,
                       is_main=D.is_main(), device=device,
                       data=checks.fingerprint(args.task_name, args.data, args.data_dir, splits,
                                               shard_dir=args.shard_dir))

    # ---- data and model (built once; the base stays frozen, only LoRA + head train) -----------------------
    seeding.seed_everything(args.seed)
    if args.quiet:
        modeling.quiet_hf()
    tokenizer = build_tokenizer(args, train, rd)
    base = modeling.build_model(args, tokenizer, task.num_labels, args.seed, train)
    checks.rank_fits(base, args.lora_r, "--lora_r")
    if args.aggregation == "svd":
        checks.rank_fits(base, args.svd_rank, "--svd_rank")
    init = adapters.load(args.init_adapter) if args.init_adapter else None  # checked before anything is written
    args.target_modules = args.target_modules or modeling.default_target_modules(base)
    types = modeling.uses_token_types(base)
    train_enc = modeling.encode(tokenizer, train, args.max_seq_length, types)
    evals = {s: splits[s] if args.max_eval_samples is None
             else splits[s].subset(range(min(args.max_eval_samples, len(splits[s]))))
             for s in task.eval_splits}
    eval_enc = {s: modeling.encode(tokenizer, e, args.max_seq_length, types) for s, e in evals.items()}
    base_path = modeling.model_id(args)
    rd.claim()  # every input is validated: from here on the run directory is this run's
    if base_path == "tiny":  # adapters name their base model: save the tiny one next to them
        base_path = str(rd.artifact("base_model"))
        if rd.is_main:
            base.save_pretrained(base_path)
            tokenizer.save_pretrained(base_path)
    state = {"model": None, "forward": None, "rank": None}

    def model_for(adapter: adapters.Adapter):
        """The one PeftModel, rebuilt only when the adapter's rank/alpha changes; adapter loaded in place.
        ``state["forward"]`` is what forward passes call: ``torch.compile`` of it with ``--compile``."""
        if state["rank"] != (adapter.r, adapter.alpha):
            with torch.random.fork_rng(devices=[]):  # peft's init draws are overwritten by the load below
                state["model"] = modeling.attach_lora(copy.deepcopy(base), adapter.r, adapter.alpha,
                                                      args.lora_dropout, args.target_modules).to(device)
            state["forward"] = compiled.maybe_compile(state["model"], args)
            state["rank"] = (adapter.r, adapter.alpha)
        adapters.load_into(state["model"], adapter)
        return state["model"]

    # seconds of the clients' local training and of whole rounds (evaluation, logging, checkpoints excluded);
    # under torchrun each rank times its own clients and the summary is rank 0's
    timing = {"client_seconds": 0.0, "round_seconds": 0.0}
    ckpt = rd.load_checkpoint()
    if ckpt is not None:
        fused = adapters.from_state_dict(ckpt["fused"], **ckpt["fused_meta"])
        start, bytes_up, bytes_down = ckpt["round"] + 1, ckpt["bytes_up"], ckpt["bytes_down"]
        timing = ckpt.get("timing", timing)
        seeding.set_rng_state(ckpt["rng"])
    elif args.init_adapter:
        fused = init
        cli.check(fused.target_modules == sorted(args.target_modules), f"--init_adapter adapts {fused.target_modules},"
                                                                       f" --target_modules is {args.target_modules}")
        start, bytes_up, bytes_down = 1, 0, 0
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.stream_seed(args.seed, "lora-init"))
            m = modeling.attach_lora(copy.deepcopy(base), args.lora_r, args.lora_alpha, args.lora_dropout,
                                     args.target_modules)
        fused = adapters.from_model(m)
        del m
        start, bytes_up, bytes_down = 1, 0, 0
    fused.dropout = args.lora_dropout
    fused = on_device(fused, device)  # where the clients train: each round measures their change from it

    # ---- rounds -------------------------------------------------------------------------------------------
    algo = engine.FedProx(args.mu) if args.algorithm == "fedprox" else engine.FedAvg()  # the clients' hook
    main_metric = task.main_metric
    rows_so_far = rd.rows() if rd.is_main else []  # only rank 0 keeps metrics
    last_metrics = {r["round"]: r for r in rows_so_far if r.get("client") is None and main_metric in r}
    bar = tqdm(range(start, args.rounds + 1), initial=start - 1, total=args.rounds, desc="rounds",
               disable=args.quiet or not rd.is_main)
    # this rank's clients: the same every round (all clients take part), largest shards spread first
    my_clients = D.assign_clients(list(range(len(shards))), sizes, D.world_size())[D.rank()]
    for rnd in bar:
        t_round = time.perf_counter()
        round_dir = rd.artifact(f"round_{rnd}")
        keep_clients = (args.save_client_adapters == "all"
                        or (args.save_client_adapters == "last" and rnd == args.rounds))
        mine = {}
        for i in my_clients:
            idx = shards[i]
            model = model_for(fused)  # every client starts from the fused adapter and head
            algo.client_start(i, [p.detach().clone() for p in model.parameters() if p.requires_grad])
            t_client = time.perf_counter()
            stats = modeling.train_local(model, train_enc, idx, epochs=args.local_epochs, batch_size=args.batch_size,
                                         lr=args.learning_rate, seed=args.seed, round_idx=rnd, client=i, device=device,
                                         forward=state["forward"], steps=args.local_steps, adjust=algo.adjust_grads)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timing["client_seconds"] += time.perf_counter() - t_client
            client = adapters.from_model(model)
            client.dropout = args.lora_dropout
            moved = math.sqrt(float(sum((client.factors[m][j].float() - fused.factors[m][j].float()).pow(2).sum()
                                        for m in fused.factors for j in (0, 1))))  # one read per client
            row = {"round": rnd, "client": i + 1, "n": sizes[i], "train_loss": stats["loss"],
                   "steps": stats["steps"], "adapter_change": moved}
            if args.eval_clients:
                row.update(modeling.evaluate(args.task_name, state["forward"], eval_enc, device, args.eval_batch_size))
            mine[i] = (client, row)

        clients, rows = gather_clients(mine, len(shards), device)
        # every rank holds every client's loss and adapter: every rank stops (exit 3, last checkpoint kept)
        rd.check_finite(f"round {rnd}", training_loss=[row["train_loss"] for row in rows],
                        client_adapters=[t for c in clients for t in c.state_dict().values()])
        client_params = sum(t.numel() for t in fused.state_dict().values())  # what every client trained
        round_bytes = bytes_up + bytes_down
        for i, (client, row) in enumerate(zip(clients, rows)):
            rd.log(row)
            if keep_clients and rd.is_main:
                adapters.save(client, round_dir / f"client_{i + 1}" / "adapter", base_path)
            bytes_down += 4 * sum(t.numel() for t in fused.state_dict().values())
            bytes_up += 4 * sum(t.numel() for t in client.state_dict().values())
        losses = [row["train_loss"] for row in rows]

        fused = adapters.merge(clients, sizes, args.aggregation, rank=args.svd_rank, alpha=args.alpha)
        fused.dropout = args.lora_dropout
        rd.check_finite(f"round {rnd}", aggregated_adapter=list(fused.state_dict().values()))
        if rd.is_main:
            adapters.save(fused, round_dir / fused_dir_name(args.aggregation, fused) / "adapter", base_path)
        row = {"round": rnd, "client": None, "fused_rank": fused.r, "client_trainable_params": client_params,
               "round_bytes": bytes_up + bytes_down - round_bytes,  # float32 factors + head, down and up
               "merge_rel_error": adapters.merge_rel_error(clients, sizes, fused) if rd.is_main else None,
               "train_loss": sum(l * n for l, n in zip(losses, sizes)) / sum(sizes)}
        timing["round_seconds"] += time.perf_counter() - t_round  # adapter files and the merge error included
        if args.eval_each_round or rnd == args.rounds:  # every rank scores its share of the batches
            model_for(fused)
            row.update(modeling.evaluate(args.task_name, state["forward"], eval_enc, device, args.eval_batch_size,
                                         shard=True))
            last_metrics[rnd] = row
            bar.set_postfix({main_metric: f"{row[main_metric]:.4f}"})
        rd.log(row)
        del clients
        rd.save_checkpoint({"round": rnd, "fused": fused.state_dict(), "bytes_up": bytes_up, "bytes_down": bytes_down,
                            "timing": timing,
                            "fused_meta": {"r": fused.r, "alpha": fused.alpha, "target_modules": fused.target_modules,
                                           "head_modules": fused.head_modules,
                                           "dropout": fused.dropout}})

    final = last_metrics.get(args.rounds, {})
    evaluated = [r for r in last_metrics.values() if main_metric in r]
    best = max(evaluated, key=lambda r: r[main_metric]) if evaluated else {}
    summary = {"task": args.task_name, "aggregation": args.aggregation, "num_clients": len(shards),
               "shard_mode": shard_info.get("mode"), "client_sizes": sizes, "rounds_done": args.rounds,
               "main_metric": main_metric, "fused_rank": fused.r, "fused_alpha": fused.alpha,
               "majority": glue_tasks.majority_metrics(args.task_name, train.label, evals),
               # what plots/plot_lora_glue.py draws beside the metric (plots read run directories only)
               "majority_label": glue_tasks.majority_label(args.task_name, train.label),
               "num_labels": glue_tasks.get_task(args.task_name).num_labels,
               "svd_error_by_rank": svd_error_by_rank(rd.path / f"round_{args.rounds}", sizes)
               if args.aggregation == "svd" and rd.is_main else None,
               "final": {k: v for k, v in final.items() if k not in ("round", "client")},
               "best": {"round": best.get("round"), main_metric: best.get(main_metric)},
               "final_adapter": str(rd.path / f"round_{args.rounds}" / fused_dir_name(args.aggregation, fused)
                                    / "adapter"),
               "bytes_up": bytes_up, "bytes_down": bytes_down, "model": modeling.model_id(args),
               "client_seconds": round(timing["client_seconds"], 3), "round_seconds": round(timing["round_seconds"], 3),
               "overhead_fraction": (1 - timing["client_seconds"] / timing["round_seconds"]) if timing["round_seconds"]
               else None}
    summary = rd.write_summary(summary)
    if rd.is_main:  # <run>/model: the final fused adapter merged into the base, plus the tokenizer
        export.save_model_dir(rd.path, adapters.merged_copy(model_for(fused)), tokenizer,
                              info={"method": "fedavg_" + args.aggregation, "task": args.task_name,
                                    "final": summary["final"]})
        report.print_ending(rd.path, f"final validation {main_metric}", summary["final"].get(main_metric),
                            {"majority baseline": summary["majority"].get(main_metric)}, quiet=args.quiet,
                            figures=f"python plots/plot_lora_glue.py --runs {args.out_dir}",
                            loader="AutoModelForSequenceClassification.from_pretrained")
    summary = D.broadcast_object(summary)  # every rank returns rank 0's summary
    rd.release()
    if owns_group:
        D.cleanup()
    return summary


def svd_error_by_rank(last_round: Path, sizes: list[int]) -> list[float] | None:
    """The SVD merge error of the last round's client adapters at every rank (``adapters.error_by_rank``), from
    the adapters saved there; None when they were not kept (--save_client_adapters none)."""
    dirs = sorted(Path(last_round).glob("client_*/adapter"), key=lambda p: int(p.parent.name.split("_")[1]))
    if len(dirs) != len(sizes):
        return None
    return adapters.error_by_rank([adapters.load(d) for d in dirs], sizes)


if __name__ == "__main__":
    cli.run(main)
