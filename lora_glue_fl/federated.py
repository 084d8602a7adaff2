"""What lora_glue_fl/fedavg_rounds.py runs once its flags are parsed: the checks of its arguments, the server's
merge (``Merge``) and the LoRA task that ``common.engine`` runs (``LoraTask``, also under ``torchrun``).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from common import aggregators, cli, compiled, engine, export, flags, report, runlog
from common import distributed as D
from common import params as P
from common import seed as seeding
from lora_glue_fl import adapters, checks, glue_shards, glue_tasks, modeling
from lora_glue_fl.options import NO_DP, NO_SCAFFOLD, NO_SERVER_OPT, ONLY_MERGE, REFUSED

# Measured (README): LoRA on query / value of the random tiny RoBERTa stays at chance on the embedded SST-2; with LoRA
# on the word embeddings too the adapters learn a bag-of-words direction (--quick: 0.65-0.70, majority 0.49).
SMOKE = ("LoRA on a random tiny encoder checks the mechanics, it is not expected to learn (--model_size minilm: a "
         "pretrained encoder)")


def smoke_test(args) -> bool:
    """A random tiny encoder whose word embeddings the adapters leave alone: measured not to learn."""
    return modeling.model_id(args) == "tiny" and "word_embeddings" not in args.target_modules


def resolve_args(args):
    """Fill defaults that depend on other flags, then validate (one line per problem)."""
    checks.common_args(args)
    args.aggregation = args.aggregation or ("naive" if args.skip_svd else "svd")
    cli.check(not (args.skip_svd and args.aggregation != "naive"), "--skip_svd contradicts --aggregation "
                                                                   f"{args.aggregation}")
    glue_tasks.resolve_task(args)
    cli.check(args.shard_dir is None or args.partition is None,
              "--partition splits the data here, --shard_dir reads a split: give one of them")
    flags.refuse_unused(args, [("num_clients", args.shard_dir is None, "with --shard_dir (its manifests are the "
                                                                       "clients)")])
    if args.shard_dir is None:  # with --shard_dir the clients are known once its manifests are read (per_round)
        args.num_clients = 3 if args.num_clients is None else args.num_clients
        flags.resolve_clients_per_round(args)
    cli.check(args.shard_dir is not None or args.quick or args.partition is not None,
              "--shard_dir (make it with make_shards.py) or --partition is required")
    engine.check_algorithm_args(args, plain_sgd=False, optimizer_hint="", scaffold=NO_SCAFFOLD, aggregator=ONLY_MERGE,
                                refused=REFUSED, server_opt=NO_SERVER_OPT, dp=NO_DP)
    flags.refuse_unused(args, [("svd_rank", args.aggregation == "svd", f"without --aggregation svd (here "
                                                                        f"{args.aggregation})")])
    return args


def fused_dir_name(method: str, fused: adapters.Adapter) -> str:
    return {"svd": f"fused_r{fused.r}", "naive": f"fused_r{fused.r}_nosvd", "exact": f"fused_exact_r{fused.r}"}[method]


def on_device(adapter: adapters.Adapter, device) -> adapters.Adapter:
    """The adapter with its factors and head moved to ``device`` (CPU before pickling for a gather)."""
    factors = {m: (A.to(device), B.to(device)) for m, (A, B) in adapter.factors.items()}
    return dataclasses.replace(adapter, factors=factors, head={k: t.to(device) for k, t in adapter.head.items()})


class Merge(aggregators.Aggregator):
    """The round's aggregator (``--aggregator mean`` here): the round's clients' adapters and training losses,
    merged by --aggregation (``adapters.merge``, weights: shard sizes) and loaded into the task's model. The merges
    need every such client's factors, so ``pre_reduce`` all-gathers them and the engine's all-reduce sums nothing;
    nothing of a client outlives the round (``reset``)."""

    name, holds_clients = "merge", True

    def __init__(self, task: LoraTask):
        super().__init__([], task.args)
        self.task, self.uploads = task, {}

    def reset(self, x, chosen) -> None:
        self.x, self.uploads = x, {}

    def add(self, k, params, weight, stats) -> dict:
        task, fused = self.task, self.task.fused
        client = adapters.from_model(task.model)
        moved = math.sqrt(float(sum((client.factors[m][j].float() - fused.factors[m][j].float()).pow(2).sum()
                                    for m in fused.factors for j in (0, 1))))  # one read per client
        row = {"round": task.r + 1, "client": k + 1, "n": task.sizes[k], "train_loss": task.last_loss,
               "steps": task.last_steps, "adapter_change": moved}
        self.uploads[k] = (client, row["train_loss"])
        return row

    def pre_reduce(self, rows, chosen) -> None:
        parts = D.all_gather_object({k: (on_device(c, "cpu"), loss) for k, (c, loss) in self.uploads.items()})
        dev = self.task.device
        self.uploads.update({k: (on_device(c, dev), loss) for part in parts for k, (c, loss) in part.items()})

    def result(self) -> list[torch.Tensor]:
        """The merge, loaded into the model; the cluster's model takes its shapes (exact grows the rank)."""
        task, x = self.task, self.x
        a, where, ks = task.args, f"round {task.r + 1}", sorted(self.uploads)  # the round's clients, in order
        task.round_clients, task.clients = ks, [self.uploads[k][0] for k in ks]
        task.rd.check_finite(where, training_loss=[self.uploads[k][1] for k in ks],  # every rank holds them all
                             client_adapters=[t for c in task.clients for t in c.state_dict().values()])
        fused = task.fused = adapters.merge(task.clients, task.round_sizes(), a.aggregation, rank=a.svd_rank,
                                            alpha=a.alpha)
        task.rd.check_finite(where, aggregated_adapter=list(fused.state_dict().values()))
        if (fused.r, fused.alpha) != task.rank:
            task.build(fused.r, fused.alpha)
        adapters.load_into(task.model, fused)
        if [t.shape for t in x] != [p.shape for p in task.params]:
            x[:] = P.clone(task.params)
        return task.params


class LoraTask(engine.Task):
    """The rounds for ``common.engine``: one PeftModel (``params``: LoRA factors and head), each sampled client's
    AdamW steps on its shard, the merge of the round's adapters as the aggregate, the adapter files; every round the
    fused model is scored on the selection split (if any), on validation with --eval_each_round and at the end."""

    def __init__(self, args, base, train_enc, eval_enc, shards, rd, base_path: str, device, per_round: int,
                 rank=None, start=None, select_enc=None):
        self.args, self.base, self.train_enc, self.eval_enc, self.shards = args, base, train_enc, eval_enc, shards
        self.select_enc = select_enc  # the selection split ({"selection": Encoded}), scored every round; or None
        self.rd, self.base_path, self.device, self.params = rd, base_path, device, []
        self.sizes, self.rounds, self.eval_every, self.seed = [len(s) for s in shards], args.rounds, 1, args.seed
        self.per_round = per_round  # clients sampled a round (engine.Task.sample: all of them at rate 1)
        self.error_curve = None  # the last round's svd_error_by_rank (rank 0), kept in the checkpoint
        self.metric = glue_tasks.get_task(args.task_name).main_metric
        if rank is not None:  # resuming: load_state_dict loads the checkpoint's global adapter
            self.build(*rank)
        elif start is not None:  # --init_adapter
            self.build(start.r, start.alpha)
            adapters.load_into(self.model, start)
        else:  # a fresh LoRA from the run's own stream
            self.build(args.lora_r, args.lora_alpha, seeding.stream_seed(args.seed, "lora-init"))
            start = adapters.from_model(self.model)
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.fused = start  # the global adapter (its LoRA dropout: the model's, --lora_dropout)

    def build(self, r: int, alpha: float, seed: int | None = None) -> None:
        """The PeftModel at rank r (rebuilt when the merge changes rank or alpha), its trainable parameters put
        into ``params`` in place (the engine holds that list)."""
        self.model = modeling.attach_lora(copy.deepcopy(self.base), r, alpha, self.args.lora_dropout,
                                          self.args.target_modules, self.args.train_pooler, seed).to(self.device)
        self.forward, self.rank = compiled.maybe_compile(self.model, self.args), (r, alpha)  # forward: --compile
        self.params[:] = [p for p in self.model.parameters() if p.requires_grad]

    def lr(self, r: int) -> float:
        return self.args.learning_rate

    def round_sizes(self) -> list[int]:
        """The merge weights of the round's clients (``round_clients``, in order): their shard sizes."""
        return [self.sizes[k] for k in self.round_clients]

    def round_start(self, r: int) -> None:
        self.r, self.start_bytes = r, sum(self.fed.comm.values())  # before the engine counts this round
        self.start_numel = sum(t.numel() for t in self.fused.state_dict().values())  # what every client trains

    def message_numel(self) -> int:
        """The fused adapter's factors and head: what every client receives and sends back (float32)."""
        return self.start_numel

    def train_client(self, k, r, opt, algo) -> dict:
        a = self.args
        stats = modeling.train_local(self.model, self.train_enc, self.shards[k], epochs=a.local_epochs,
                                     batch_size=a.batch_size, lr=a.learning_rate, seed=a.seed, round_idx=r + 1,
                                     client=k, device=self.device, forward=self.forward, steps=a.local_steps,
                                     adjust=algo.adjust_grads)
        self.last_loss, self.last_steps = float(stats["loss"]), stats["steps"]  # for the merge's client row
        return stats | {"loss": torch.tensor(stats["loss"], dtype=torch.float64)}  # float64: the float it logs

    def aggregator(self, like, args) -> Merge:
        return Merge(self)

    def client_metrics(self, k, out) -> dict:
        if not self.args.eval_clients:
            return {}
        return modeling.evaluate(self.args.task_name, self.forward, self.eval_enc, self.device,
                                 self.args.eval_batch_size)

    def round_end(self, rnd) -> None:
        """The global adapter is the engine's model after the server step (the merge itself under FedAvg's step, an
        algorithm's own step otherwise); rank 0 writes the round's adapters (--save_client_adapters), measures the
        merge error and, after the last round of an SVD merge, its error at every rank (``adapters.error_by_rank``:
        one SVD per module of the round's stacked adapters), all inside the round's time."""
        a, n, self.merge_error = self.args, rnd["round"] + 1, None
        x = self.fed.models[0]
        if not all(torch.equal(t, p) for t, p in zip(x, self.params)):
            P.load_(self.params, x)
            self.fused = adapters.from_model(self.model)
        if self.rd.is_main:
            folder = self.rd.artifact(f"round_{n}")
            if a.save_client_adapters == "all" or (a.save_client_adapters == "last" and n == a.rounds):
                for k, c in zip(self.round_clients, self.clients):
                    adapters.save(c, folder / f"client_{k + 1}" / "adapter", self.base_path)
            adapters.save(self.fused, folder / fused_dir_name(a.aggregation, self.fused) / "adapter", self.base_path)
            self.merge_error = adapters.merge_rel_error(self.clients, self.round_sizes(), self.fused)
            if a.aggregation == "svd" and n == a.rounds:
                self.error_curve = adapters.error_by_rank(self.clients, self.round_sizes())

    def evaluate(self, rnd) -> dict:
        """Logs the client rows and returns the fused row (the model holds the fused adapter)."""
        a, n = self.args, rnd["round"] + 1
        for k in rnd["chosen"]:
            self.rd.log(rnd["rows"][k])
        row = {"round": n, "client": None, "fused_rank": self.fused.r, "client_trainable_params": self.start_numel,
               "round_bytes": sum(self.fed.comm.values()) - self.start_bytes,
               "merge_rel_error": self.merge_error,
               "train_loss": sum(rnd["rows"][k]["train_loss"] * self.sizes[k] for k in rnd["chosen"])
               / sum(self.sizes[k] for k in rnd["chosen"])}
        if self.select_enc is not None:
            row.update(modeling.evaluate(a.task_name, self.forward, self.select_enc, self.device, a.eval_batch_size,
                                         shard=True, prefix=modeling.SELECTION_PREFIX))
        if (a.eval_each_round or n == a.rounds) and not a.no_validation:  # every rank scores its share
            row.update(modeling.evaluate(a.task_name, self.forward, self.eval_enc, self.device, a.eval_batch_size,
                                         shard=True))
        return row

    def state_dict(self) -> dict:
        return {"rank": [self.fused.r, self.fused.alpha], "svd_error_by_rank": self.error_curve}

    def load_state_dict(self, state: dict) -> None:
        P.load_(self.params, self.fed.models[0])
        self.fused = adapters.from_model(self.model)
        self.error_curve = state.get("svd_error_by_rank")


def run(args) -> dict:
    """The federated run (under torchrun, every rank's share of it)."""
    device = D.device_for_rank(cli.resolve_device(args.device))
    splits = glue_tasks.load_glue(args.task_name, args.data, args.data_dir, args.cache_dir)
    train = splits["train"]
    if args.shard_dir is not None:
        shards, shard_info = glue_shards.read_shard_manifests(args.shard_dir)
    else:  # --partition, or --quick: --num-clients (3) clients over the first --max_train_samples examples
        train = splits["train"] = train.head(args.max_train_samples)
        info = glue_shards.make_client_splits(train, args.task_name, args.num_clients, args.partition or "iid",
                                              seed=args.seed)
        shards, shard_info = [np.asarray(c, dtype=np.int64) for c in info["client_indices"]], info
    per_round = per_round_of(args, len(shards))
    top = max(int(s.max()) for s in shards)
    cli.check(top < len(train), f"--shard_dir {args.shard_dir}: index {top} outside the {len(train)} training "
                                f"examples of {args.task_name}; the manifests belong to another dataset")
    cli.check(not shard_info.get("task") or shard_info["task"] == args.task_name, f"--shard_dir was made for task "
              f"{shard_info.get('task')!r}, not {args.task_name!r}")
    task = glue_tasks.get_task(args.task_name)
    name = args.run_name or runlog.run_name(
        "fedavg", args.task_name, args.aggregation, shard_info.get("mode", "shards"), checks.source_tag(args),
        **engine.run_name_tags(args), k=len(shards), m=per_round if per_round < len(shards) else None,
        r=args.svd_rank if args.aggregation == "svd" else None,
        R=args.rounds, lr=args.learning_rate, quick=args.quick, s=args.seed)
    # which adapter files a round writes changes no result; with --shard_dir the manifests (fingerprinted) are the
    # clients, --num-clients is None (older runs recorded its unused default)
    ignore = runlog.DEFAULT_IGNORE_ON_RESUME + ("save_client_adapters",) + (("num_clients",) if args.shard_dir else ())
    rd = runlog.RunDir(args.out_dir, name, args, kind="lora_glue_fl/fedavg_rounds", resume=args.resume,
                       ignore_on_resume=ignore, is_main=D.is_main(), device=device, data=checks.fingerprint(
                           args.task_name, args.data, args.data_dir, splits, shard_dir=args.shard_dir))

    # ---- data and model (built once; the base stays frozen, only LoRA + head train) -----------------------
    seeding.seed_everything(args.seed)
    if args.quiet:
        modeling.quiet_hf()
    tokenizer = modeling.build_tokenizer(args, train)
    base = modeling.build_model(args, tokenizer, task.num_labels, args.seed, train)
    checks.rank_fits(base, args.lora_r, "--lora_r")
    if args.aggregation == "svd":
        checks.rank_fits(base, args.svd_rank, "--svd_rank")
    init = adapters.load(args.init_adapter) if args.init_adapter else None  # checked before anything is written
    args.target_modules = args.target_modules or modeling.default_target_modules(base)
    if init is not None:
        cli.check(init.target_modules == sorted(args.target_modules), f"--init_adapter adapts {init.target_modules},"
                                                                      f" --target_modules is {args.target_modules}")
        cli.check(not init.use_rslora, "--init_adapter is an rsLoRA adapter (use_rslora); the rounds train plain "
                                       "LoRA (scaling alpha / r)")
    types = modeling.uses_token_types(base)
    train_enc = modeling.encode(tokenizer, train, args.max_seq_length, types)
    # the selection split is scored every round, the validation split then only at the end
    evals, eval_enc, select, select_enc = modeling.encode_evals(tokenizer, splits, task, args, types)
    cli.check(select is not None or not args.no_validation, f"--no_validation scores the selection split only, and "
              f"{args.data_dir or args.data} holds none ({glue_tasks.TSV_FILES[glue_tasks.SELECTION]})")
    rd.claim()  # every input is validated: from here on the run directory is this run's
    base_path = modeling.adapter_base(args, rd, base, tokenizer)

    # ---- rounds: common.engine --------------------------------------------------------------------------
    ckpt = rd.load_checkpoint()
    lora = LoraTask(args, base, train_enc, eval_enc, shards, rd, base_path, device, per_round,
                    rank=ckpt["task"]["rank"] if ckpt is not None else None, start=init, select_enc=select_enc)
    fed = engine.Federation(lora, args)  # FedAvg, or FedProx's proximal gradient in the clients' steps
    start = fed.load_state_dict(ckpt, lora.names) if ckpt is not None else 0
    engine.run(lora, fed, rd, lora.names, start)

    main_metric, fused, timing = task.main_metric, lora.fused, fed.timing
    chooser = modeling.SELECTION_PREFIX + main_metric if select is not None else main_metric
    rows = [r for r in (rd.rows() if rd.is_main else []) if r.get("client") is None]
    final = next((r for r in rows if r["round"] == args.rounds), {})
    best = max((r for r in rows if chooser in r), key=lambda r: r[chooser], default={})
    summary = {"task": args.task_name, "aggregation": args.aggregation, "num_clients": len(shards),
               "clients_per_round": per_round,
               "shard_mode": shard_info.get("mode"), "client_sizes": lora.sizes, "rounds_done": args.rounds,
               "main_metric": main_metric, "fused_rank": fused.r, "fused_alpha": fused.alpha,
               **glue_tasks.baselines(args.task_name, train.label, evals, select),
               "svd_error_by_rank": (lora.error_curve or svd_error_by_rank(rd.path / f"round_{args.rounds}",
                                                                           lora.sizes))
               if args.aggregation == "svd" and rd.is_main else None,
               "final": {k: v for k, v in final.items() if k not in ("round", "client")},
               "best": {"round": best.get("round"), chooser: best.get(chooser)},
               "final_adapter": str(rd.path / f"round_{args.rounds}" / fused_dir_name(args.aggregation, fused)
                                    / "adapter"),
               **fed.comm, "model": modeling.model_id(args),  # bytes_up, bytes_down: the engine's count
               "client_seconds": round(timing["client_seconds"], 3), "round_seconds": round(timing["round_seconds"], 3),
               "overhead_fraction": (1 - timing["client_seconds"] / timing["round_seconds"]) if timing["round_seconds"]
               else None}
    if smoke_test(args):
        summary["smoke_test"] = SMOKE
    summary = rd.write_summary(summary)
    if rd.is_main:  # <run>/model: the fused adapter merged into the base; <run>/adapter: it in peft format
        export.save_model_dir(rd.path, export.merged(lora.model), tokenizer,
                              info={"method": "fedavg_" + args.aggregation, "task": args.task_name,
                                    "final": summary["final"]})
        adapters.save(fused, rd.artifact("adapter"), base_path)
        report.print_ending(rd.path, f"final validation {main_metric}", summary["final"].get(main_metric),
                            {"majority baseline": summary["majority"].get(main_metric)},
                            scored=modeling.scored(splits, evals, task),
                            figures=f"python plots/plot_lora_glue.py --runs {args.out_dir}",
                            loader="AutoModelForSequenceClassification.from_pretrained; "
                                   "adapter/: PeftModel.from_pretrained",
                            extra=f"smoke test: {SMOKE}" if smoke_test(args) else None)
    summary = D.broadcast_object(summary)  # every rank returns rank 0's summary
    rd.release()
    return summary


def per_round_of(args, num_clients: int) -> int:
    """The clients a round samples: --clients-per-round, else max(1, round(C K)) of --participation-rate C."""
    m = args.clients_per_round
    cli.check(m is None or m <= num_clients, f"--clients-per-round {m} exceeds the {num_clients} clients")
    if m is None:
        engine.check_participation(args.participation_rate, num_clients)
        m = engine.clients_per_round(args.participation_rate, num_clients)
    return m


def svd_error_by_rank(last_round: Path, sizes: list[int]) -> list[float] | None:
    """A checkpoint from before the curve was kept in it: the curve from the last round's client adapters saved
    there (``adapters.error_by_rank``); None when they were not all kept."""
    dirs = sorted(Path(last_round).glob("client_*/adapter"), key=lambda p: int(p.parent.name.split("_")[1]))
    return adapters.error_by_rank([adapters.load(d) for d in dirs], sizes) if len(dirs) == len(sizes) else None

