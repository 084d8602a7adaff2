"""What fed_avg.py, fed_momentum.py, fed_entropy.py and fed_fisher.py run once their flags (``mamba_fl.options``)
are parsed: the checks of their arguments and the task that ``common.engine`` runs. Each selected client loads its
(cluster's) global parameters in place into the one model, runs ``--local-updates`` steps on batches from its own
stream ``common.seed.client_generator(seed, round, client)`` and goes to ``--aggregator``'s aggregator
(``common.aggregators``: mean, fisher, entropy, ...; the Fisher and entropy it asks for: ``mamba_fl.client_stats``);
the server step is ``--server-opt``'s. The scripts differ only in their defaults (``--aggregator``, ``--server-opt``)
and run names. mamba_fl/README.md says how this differs from the source, and why the client optimizer keeps its
state by default.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import (
    algorithm_flags,
    algorithms,
    cli,
    compiled,
    distributed,
    engine,
    evaluate,
    export,
    flags,
    params,
    runlog,
    seed,
)
from common.clustering import token_distribution
from common.curves import perplexity_curve
from common.early_stop import EarlyStop
from mamba_fl import client_stats, deltas, lmdata, options
from mamba_fl import model as mmodel

# flags that may differ when a run is resumed: how it runs (device, compilation, kernels), not its results
IGNORE_ON_RESUME = ("resume", "quiet", "out_dir", "run_name", "device", "cache_dir", "report_to", "kernels",
                    "kernel_path", "checkpoint_every", *compiled.FLAGS)
def finish_args(args: argparse.Namespace) -> None:
    """Config aliases, the optimizer's default, and checks that need more than one flag (each flag's own range is
    its argparse type's, ``common.flags``)."""
    mmodel.resolve_model_args(args)
    if args.optimizer is None:  # SCAFFOLD's control variates and FedNova's normalizer assume plain SGD steps, and
        # FedDyn diverges with AdamW's moments kept across rounds (--client-opt-state persist, the default: its refuse)
        algorithm = getattr(args, "algorithm", None)
        plain = getattr(algorithms.REGISTRY.get(algorithm), "plain_sgd", False) or (
            algorithm == "feddyn" and getattr(args, "client_opt_state", "reset") == "persist")
        args.optimizer = "sgd" if plain else "adamw"
    if args.lr is None:  # AdamW's rates are far too small for plain SGD
        args.lr = options.SGD_LR if args.optimizer == "sgd" else 1e-2 if args.quick else 5e-4
    if args.test:  # checked now; the file is read only after training
        cli.check(bool(args.data_dir) and (Path(args.data_dir) / lmdata.TEST_FILE).is_file(),
                  f"--test needs --data-dir with a {lmdata.TEST_FILE} (split_wikitext.py --test-fraction writes one)")
    if hasattr(args, "num_clients"):
        flags.resolve_clients_per_round(args)
        engine.check_algorithm_args(args, plain_sgd=args.optimizer == "sgd", stats=MambaTask.supported_stats,
                                    optimizer_hint=f"--optimizer {args.optimizer}; use --optimizer sgd")
        entropy = args.aggregator == "entropy"
        if args.holdout_fraction is None:
            args.holdout_fraction = 0.1 if entropy else 0.0
        cli.check(not entropy or args.holdout_fraction > 0, "--aggregator entropy measures entropy on held-out "
                                                            "data: --holdout-fraction must be > 0")
        cli.check(args.aggregator != "fisher" or args.fisher_method != "local" or args.local_updates >= 2,
                  f"--fisher-method local pairs consecutive local steps: needs --local-updates >= 2, "
                  f"got {args.local_updates}")
        fisher = args.aggregator == "fisher"
        flags.refuse_unused(args, [
            ("entropy_blocks", entropy, f"without --aggregator entropy (here {args.aggregator})"),
            *((dest, fisher, f"without --aggregator fisher (here {args.aggregator})")
              for dest in algorithm_flags.FISHER_STAT_FLAGS)])


@dataclass
class Client:
    index: int
    train: np.ndarray        # training block indices
    holdout: np.ndarray      # held-out block indices (FedEntropy)
    weight: float            # FedAvg weight n_k: number of training blocks


@dataclass
class Context:
    """What the task and its client statistics use; ``model`` holds the client's final parameters."""
    args: argparse.Namespace
    model: torch.nn.Module
    params: list
    data: lmdata.LMData
    device: torch.device
    round: int = 0
    forward_model: torch.nn.Module | None = None  # what forward passes call: torch.compile(model) or model

    def __post_init__(self):
        if self.forward_model is None:
            self.forward_model = self.model

    def batches(self, idx: np.ndarray, batch_size: int | None = None):
        return lmdata.iterate(self.data.train[torch.as_tensor(idx)], batch_size or self.args.batch_size,
                              self.data.tokenizer.pad_token_id, self.device)


def epoch_rounds(args: argparse.Namespace, client_blocks: list[int]) -> int:
    """Rounds for --n-epochs passes of the mean client over its shard, in its --participation-rate share of rounds."""
    share = engine.clients_per_round(args.participation_rate, args.num_clients) / args.num_clients
    steps = args.n_epochs * float(np.mean(client_blocks)) / (args.local_updates * args.batch_size) / share
    return max(1, math.ceil(steps))


def client_batch_indices(train_idx: np.ndarray, seed_: int, round_idx: int, client: int,
                         local_updates: int, batch_size: int) -> list[np.ndarray]:
    """The blocks of each local step of ``client`` in ``round_idx``: a permutation of its shard from its
    own stream, continued with further permutations if the round needs more blocks than the shard has."""
    g = seed.client_generator(seed_, round_idx, client)
    need, n = local_updates * batch_size, len(train_idx)
    flat = np.concatenate([torch.randperm(n, generator=g).numpy() for _ in range(math.ceil(need / n))])[:need]
    return [train_idx[flat[u * batch_size:(u + 1) * batch_size]] for u in range(local_updates)]


def train_steps(model, opt, blocks: torch.Tensor, steps: list[np.ndarray], pad_id: int, device,
                adjust: Callable | None = None) -> torch.Tensor:
    """One optimizer step per entry of ``steps``; returns the summed loss as a device tensor (no host sync).
    ``adjust(params)`` changes the gradients before each step (the client algorithm's hook)."""
    total = torch.zeros((), device=device)
    for idx in steps:
        rows = torch.as_tensor(idx).to(blocks.device, non_blocking=True)
        batch = {k: v.to(device, non_blocking=True) for k, v in lmdata.text.lm_batch(blocks[rows], pad_id).items()}
        with evaluate.autocast(device):
            loss = model(**batch).loss
        loss.backward()
        if adjust is not None:
            adjust([p for g in opt.param_groups for p in g["params"]])
        opt.step()
        opt.zero_grad(set_to_none=True)
        total += loss.detach().float()
    return total


def evaluate_global(ctx: Context, valid: torch.Tensor) -> dict:
    """Token-weighted validation loss/perplexity, and perplexity per word (same total NLL over words).
    Under torchrun every rank calls it and scores its share of the batches; rank 0 adds the text sample."""
    batches = lmdata.iterate(valid, max(ctx.args.batch_size, 8), ctx.data.tokenizer.pad_token_id, ctx.device)
    out = evaluate.perplexity(ctx.forward_model, batches, device=ctx.device, shard=True)
    row = {"val_loss": out["loss"], "val_ppl": out["ppl"],
           "val_ppl_word": math.exp(out["loss"] / ctx.data.words_per_token)}
    if ctx.args.sample_tokens > 0 and distributed.is_main():
        row["sample"] = mmodel.greedy_sample(ctx.model, ctx.data.tokenizer, ctx.args.prompt,
                                             ctx.args.sample_tokens, ctx.device)
    return row


def run(args: argparse.Namespace, script: options.Script) -> dict:
    """The whole run of arguments a script's ``check_args`` has finished (``finish_args``); under ``torchrun``
    (WORLD_SIZE set) joins the process group for its duration."""
    with distributed.process_group():
        return _run(args, script)


class MambaTask(engine.Task):
    """The rounds' task for ``common.engine``: the one Mamba2 model, each client's own block stream, the Fisher and
    entropy the aggregators ask for (``client_stats``), evaluation of the global model (of each cluster's, weighted
    by the clients it serves)."""

    supported_stats = ("fisher", "entropy")

    def __init__(self, args, name: str, ctx: Context, clients: list[Client], opt, valid, rd, snaps):
        self.args, self.ctx, self.clients, self.rd, self.snaps = args, ctx, clients, rd, snaps
        self.params, self.device, self.optimizer, self.valid = ctx.params, ctx.device, opt, valid
        self.name, self.metric = name, "val_ppl"
        self.sizes = [c.weight for c in clients]
        self.rounds, self.eval_every, self.seed = args.rounds, args.eval_every, args.seed
        self.per_round = engine.clients_per_round(args.participation_rate, args.num_clients)
        self.acc = {"best_val_ppl": float("inf"), "train_tokens": 0}  # bytes sent: the engine's (fed.comm)
        self.train_loss, self.n_steps = torch.zeros((), device=self.device), 0  # summed since the last evaluation
        self.stopper = mmodel.make_stopper(args)

    def round_start(self, r: int) -> None:
        self.ctx.round = r
        self.eval_now = (r + 1) % self.eval_every == 0 or r + 1 == self.rounds

    def train_client(self, k, r, opt, algo) -> dict:
        a = self.args
        steps = client_batch_indices(self.clients[k].train, a.seed, r, k, a.local_updates, a.batch_size)
        loss = train_steps(self.ctx.forward_model, opt, self.ctx.data.train, steps,
                           self.ctx.data.tokenizer.pad_token_id, self.device, adjust=algo.adjust_grads)
        self.train_loss += loss
        return {"loss": loss, "steps": a.local_updates, "tokens": a.local_updates * a.batch_size * a.sequence_length}

    def client_loss(self, k: int) -> float:
        blocks = self.clients[k].train[: self.args.ifca_batches * self.args.batch_size]
        return evaluate.perplexity(self.ctx.forward_model, self.ctx.batches(blocks), device=self.device)["loss"]

    def client_features(self, k: int) -> np.ndarray:
        return token_distribution(self.ctx.data.train[torch.as_tensor(self.clients[k].train)], self.ctx.data.vocab_size)

    def client_stat(self, name: str, k: int, out: dict):
        if name == "fisher":
            a = self.args
            steps = client_batch_indices(self.clients[k].train, a.seed, self.ctx.round, k, a.local_updates,
                                         a.batch_size)
            return client_stats.client_fisher(self.ctx, self.clients[k], steps)
        if name == "entropy":
            return client_stats.client_entropy(self.ctx, self.clients[k])
        return super().client_stat(name, k, out)

    def client_metrics(self, k, out) -> dict:
        if self.snaps is not None and self.eval_now:
            self.snaps.add(f"client{k}_delta", self.params, base=self.fed.models[self.fed.assign[k]])
        return {}

    def round_end(self, rnd) -> None:
        # every client runs exactly local_updates steps of batch_size blocks, whichever rank trains it
        a, n = self.args, len(rnd["chosen"])
        self.n_steps += n * a.local_updates
        self.acc["train_tokens"] += n * a.local_updates * a.batch_size * a.sequence_length
        if self.eval_now and distributed.world_size() > 1:
            if self.snaps is not None:
                self.snaps.gather()
            distributed.all_reduce_sum_([self.train_loss])

    def evaluate(self, rnd) -> dict | None:
        fed, r = self.fed, rnd["round"]
        per_cluster = []
        for x in fed.models:  # every rank scores its share of the validation batches
            params.load_(self.params, x)
            per_cluster.append(evaluate_global(self.ctx, self.valid))
        scores = per_cluster[0]
        if len(per_cluster) > 1:  # the run's loss weighs each cluster's by the clients (by size) it serves
            w = np.array(self.sizes, dtype=np.float64)
            loss = float(np.dot(w, [per_cluster[g]["val_loss"] for g in fed.assign]) / w.sum())
            scores = scores | {"val_loss": loss, "val_ppl": math.exp(loss), "val_ppl_word": math.exp(
                loss / self.ctx.data.words_per_token), "val_loss_per_cluster": [s["val_loss"] for s in per_cluster],
                "clusters": fed.assign.tolist()}
        self.rd.check_finite(f"round {r + 1}", training_loss=self.train_loss, validation_loss=scores["val_loss"])
        row = None
        if distributed.is_main():  # rank 0 logs and checkpoints
            row = {"round": r + 1, "step": (r + 1) * self.args.local_updates, "tokens": self.acc["train_tokens"],
                   # None: no client trained since the last evaluation (DP's Poisson cohorts may be empty)
                   "train_loss": self.train_loss.item() / self.n_steps if self.n_steps else None} | scores
            row |= rnd["aggregator"]
            for k, cr in rnd["rows"].items():
                for key, v in cr.items():
                    row.setdefault(key, {})[str(k)] = v
            self.acc["best_val_ppl"] = min(self.acc["best_val_ppl"], row["val_ppl"])
            self.acc["last"] = {k: v for k, v in row.items() if k != "sample"}
            if self.snaps is not None:
                self.snaps.write_server(fed.models[0], f"round_{r + 1:05d}")
        if self.stopper is not None:  # every rank holds the same (reduced) scores, so all stop together
            self.stopper.update(scores["val_ppl"], r + 1, [t for x in fed.models for t in x])
        self.train_loss.zero_()
        self.n_steps = 0
        return row

    def check(self, rd, rnd) -> bool:
        super().check(rd, rnd)
        return self.stopper is not None and self.stopper.stopped_at == rnd["round"] + 1

    def state_dict(self) -> dict:
        return {"acc": self.acc, "snapshots": self.snaps.state_dict() if self.snaps is not None else None,
                **({"early_stop": self.stopper.state_dict()} if self.stopper is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.acc = state["acc"]
        if self.stopper is not None:
            self.stopper.load_state_dict(state["early_stop"])
        if self.snaps is not None:
            self.snaps.load_state_dict(state["snapshots"])


def build_run(args, data: lmdata.LMData, device, rd, flat: bool = False) -> tuple:
    """(Context, validation blocks, their reference perplexities, --save-deltas snapshots or None) of a new
    seeded model on ``device`` (``flat``: its trainable parameters made views of one buffer); claims ``rd``."""
    seed.seed_everything(args.seed)
    model = mmodel.build_model(args, data.vocab_size, data.tokenizer.pad_token_id, data.tokenizer.eos_token_id)
    model.to(device).train()
    if flat:
        params.flat_parameters_(model)
    fwd = compiled.maybe_compile(model, args)  # forward passes only; `model` for parameters and state
    ctx = Context(args, model, params.trainable(model), data, device, forward_model=fwd)
    valid = data.valid[: args.eval_blocks] if args.eval_blocks > 0 else data.valid
    refs = lmdata.reference_ppls(data, valid)
    snaps = deltas.Snapshots(rd.path / "deltas", deltas.select(params.named_trainable(model), args.delta_tensors)) \
        if args.save_deltas else None
    rd.claim()  # everything is validated (--delta-tensors included): from here on the run directory is this run's
    return ctx, valid, refs, snaps


def _run(args: argparse.Namespace, method: options.Script) -> dict:
    device = distributed.device_for_rank(cli.resolve_device(args.device))
    main = distributed.is_main()
    mmodel.quiet_kernel_warnings()
    data = distributed.main_first(lambda: lmdata.load_lm_data(args, device))
    shards = lmdata.client_shards(args, data)
    clients = []
    for k, idx in enumerate(shards):
        cli.check(len(idx) > 0, f"client {k} received no training blocks; use fewer clients or --shard contiguous")
        tr, ho = lmdata.split_holdout(idx, args.holdout_fraction)
        clients.append(Client(k, tr, ho, float(len(tr))))
    if args.rounds is None:
        args.rounds = epoch_rounds(args, [len(c.train) for c in clients])
    args.kernel_path = mmodel.select_kernels(device, args.kernels)
    name = args.run_name or runlog.run_name(
        method.name, args.model_config, args.shard, k=args.num_clients, lu=args.local_updates, r=args.rounds,
        lr=args.lr, sgd=args.optimizer == "sgd", reset=args.client_opt_state == "reset",
        **method.tags(args), **engine.run_name_tags(args, server_opt=method.server, aggregator=method.aggregator),
        data=lmdata.source_tag(args), quick=args.quick, s=args.seed)
    mmodel.check_memory(args, data.vocab_size, device, max(data.train.shape[0], data.valid.shape[0]))
    # checks only (arguments, data fingerprint, what the directory holds); claimed once the model is built
    rd = distributed.main_first(lambda: runlog.RunDir(
        args.out_dir, name, args, resume=args.resume, kind=f"mamba_fl/{method.script}", device=device,
        is_main=main, ignore_on_resume=IGNORE_ON_RESUME, data=data.fingerprint))

    # the trainable parameters as views of one buffer: loading the global model and a client's add to the
    # aggregator are one op each (fast on a busy machine, benchmarks/bench_aggregate.py); values unchanged
    ctx, valid, refs, snaps = build_run(args, data, device, rd, flat=True)
    model, fwd, plist = ctx.model, ctx.forward_model, ctx.params
    names = [n for n, _ in params.named_trainable(model)]
    task = MambaTask(args, method.name, ctx, clients, mmodel.make_optimizer(args, plist), valid, rd, snaps)
    fed = engine.Federation(task, args)
    start = fed.start(rd, names)
    if snaps is not None and start == 0 and main:
        snaps.write_server(fed.models[0], "round_00000")
    stopper = task.stopper
    if not (stopper and stopper.stopped_at):  # a run that stopped at its plateau resumes to its summary
        engine.run(task, fed, rd, names, start)
    acc = task.acc | fed.comm | {k: fed.timing[k] for k in ("client_seconds", "round_seconds")}
    acc["train_tokens"] += fed.info.get("init_tokens", 0)  # IFCA's starting models
    # the best-validation global model is the one reported, tested and published (<run>/model)
    acc |= lmdata.reported_model(args, stopper, [t for x in fed.models for t in x], data, fwd, device,
                                 load=lambda: params.load_(plist, fed.models[0]))
    if stopper is not None:
        acc["rounds_done"] = stopper.stopped_at or args.rounds
    summary = finish(rd, args, method, data, acc, refs, model) if main else rd.write_summary({"method": method.name})
    distributed.barrier()  # no rank leaves (and tears the group down) before rank 0 has written
    rd.release()
    return summary


def finish(rd, args, method, data, acc, refs, model) -> dict:
    """Rank 0's summary of the run, published with its model (``publish``)."""
    last, done = acc.get("last", {}), acc.get("rounds_done", args.rounds)
    return publish(rd, model, data, refs, {
        "method": method.name, "config": args.model_config, "layers": args.layers, "rounds_done": done,
        # client optimizer steps, all clients together (what a compute-matched central run takes)
        "optimizer_steps": done * args.local_updates * engine.clients_per_round(args.participation_rate,
                                                                                args.num_clients),
        "final_val_ppl": last.get("val_ppl"), "final_val_loss": last.get("val_loss"),
        "final_val_ppl_word": last.get("val_ppl_word"), "best_val_ppl": acc["best_val_ppl"],
        **refs, "words_per_token": data.words_per_token, "vocab_size": data.vocab_size, "kernel_path": args.kernel_path,
        "bytes_up": acc["bytes_up"], "bytes_down": acc["bytes_down"], "train_tokens": acc["train_tokens"],
        "client_seconds": round(acc["client_seconds"], 3), "round_seconds": round(acc["round_seconds"], 3),
        "overhead_fraction": (1 - acc["client_seconds"] / acc["round_seconds"]) if acc["round_seconds"] else None,
        **{k: v for k, v in acc.items() if k.startswith(("test_", "budget_test_")) or k in EarlyStop.SUMMARY_KEYS},
    })


def publish(rd, model, data, refs: dict, summary: dict) -> dict:
    """Writes summary.json, the run's model/ (the final model and its tokenizer: AutoModelForCausalLM.from_pretrained),
    its learning curve with the references (perplexity.png) and its last line; returns the summary as written."""
    summary = rd.write_summary(summary)
    export.save_model_dir(rd.path, model, data.tokenizer, info={
        k: summary.get(k) for k in ("method", "final_val_loss", "final_val_ppl", "unigram_ppl", "uniform_ppl")})
    perplexity_curve(rd.rows(), rd.path / "perplexity.png", title=rd.path.name, refs=refs)
    print(lmdata.final_line(rd.path, summary), flush=True)  # the run's one line, --quiet too
    return summary
