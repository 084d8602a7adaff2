"""What vit_sparse_fl/train_federated.py (and train_federated_sparse.py) run once their flags are parsed: the
checks of their arguments, the ViT task that ``common.engine`` runs, the head warm-up and the sweeps.

Every random draw is keyed by (seed, round, client), so --resume reproduces the uninterrupted run exactly; under
``torchrun`` each rank trains its share of the clients.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch

from common import algorithm_flags, cli, compiled, engine, evaluate, fisher, flags, shard
from common import distributed as D
from common import params as P
from common import seed as seeding
from common.checkpoint import atomic_write_json
from common.runlog import RunDir
from vit_sparse_fl import data as cifar
from vit_sparse_fl import experiment as exp
from vit_sparse_fl.sparse import SparseSGDM


def finish_args(args) -> None:
    """Validation of everything that can be checked before loading data."""
    flags.resolve_clients_per_round(args)
    exp.validate_model_args(args)
    cli.check(not (args.heterogeneity_experiment and args.local_steps_experiment),
              "choose one of --heterogeneity-experiment and --local-steps-experiment")
    engine.check_algorithm_args(args, plain_sgd=args.momentum == 0, stats=VitTask.supported_stats,
                                optimizer_hint=f"--momentum {args.momentum}; use --momentum 0",
                                dp=None if not args.head_warmup else "--head-warmup's rounds are plain FedAvg on the "
                                "clients' data, unclipped and unnoised; leave --head-warmup at 0")
    entropy, fisher = args.aggregator == "entropy", args.aggregator == "fisher"
    if args.holdout_fraction is None:
        args.holdout_fraction = 0.1 if entropy else 0.0
    cli.check(not entropy or args.holdout_fraction > 0, "--aggregator entropy measures entropy on held-out images: "
                                                        "--holdout-fraction must be > 0")
    masks = hasattr(args, "fisher_score")  # train_federated_sparse.py: its masks read --fisher-labels
    flags.refuse_unused(args, [(dest, fisher or masks and dest == "fisher_labels",
                                f"without --aggregator fisher (here {args.aggregator})")
                               for dest in algorithm_flags.FISHER_STAT_FLAGS])
    flags.refuse_unused(args, [("nc", args.sharding == "non_iid" and not args.heterogeneity_experiment,
                                f"without --sharding non_iid (here {args.sharding}; --heterogeneity-experiment "
                                "takes --nc-values)")])


check_args = finish_args  # the checks of its arguments alone (common.jobs: a grid checks its runs)


def default_run_name(args, prefix: str = "fedavg", *, shard: str | None = None, steps: str | None = None,
                     seed: bool = True) -> str:
    """<prefix>[_<data>]_<shard>_J<steps>_R<rounds>_lr<lr>[_quick]_s<seed>, the seed last as in every subproject;
    ``shard`` / ``steps`` replace the run's own tags, ``seed=False`` leaves the seed out."""
    shard = shard or ("iid" if args.sharding == "iid" else f"noniid_nc{args.nc}")
    data = "" if args.data == "synthetic" else f"_{args.data}"  # the embedded data keeps the short name
    name = (f"{prefix}{data}_{shard}_J{steps or args.local_steps}_R{args.rounds}_lr{args.lr:g}"
            + engine.name_suffix(args))  # the client algorithm, when not plain FedAvg
    return f"{name}{'_quick' if args.quick else ''}_s{args.seed}" if seed else name


def sweep_file_name(args, prefix: str, kind: str) -> str:
    """The sweep's index file: named like its runs with the swept values in place of the one value."""
    swept = ({"shard": f"noniid_nc{'-'.join(map(str, args.nc_values))}"} if kind == "heterogeneity"
             else {"steps": "-".join(map(str, args.j_values))})
    return f"{default_run_name(args, prefix, seed=False, **swept)}_{kind}_experiment_s{args.seed}.json"


def setup(args) -> dict:
    """Data, shards, model and run directory: the context every round needs."""
    D.init()                                                 # no-op without torchrun or when main joined
    seeding.seed_everything(args.seed)
    device = D.device_for_rank(cli.resolve_device(args.device))
    train, val, test, num_classes = D.main_first(lambda: cifar.load_cifar100(args, device))  # rank 0 downloads first
    if args.sharding == "non_iid":
        cli.check(args.nc <= num_classes, f"--nc {args.nc} exceeds the {num_classes} classes of the data")
    cli.check(args.num_clients <= len(train),
              f"--num-clients {args.num_clients} exceeds the {len(train)} training images")
    labels = train.labels.cpu().numpy()
    shards = (shard.iid(len(labels), args.num_clients, args.seed) if args.sharding == "iid"
              else shard.pathological(labels, args.num_clients, args.nc, args.seed))
    held = [s[:0] for s in shards]
    if args.holdout_fraction > 0:  # a seeded share of each shard, out of training (0: the shards unchanged)
        shards, held = zip(*(holdout(s, args.holdout_fraction, seeding.numpy_rng(args.seed, "holdout", k))
                             for k, s in enumerate(shards)))
    if args.arch != "encoder":
        exp.check_memory(args, num_classes, device, max(len(s) for s in shards))
    model, source = exp.build_model(args, num_classes, device)
    test_labels = test.labels.cpu().numpy()
    cap = args.interference_images or len(test_labels)
    own_test = [torch.as_tensor(np.flatnonzero(np.isin(test_labels, np.unique(labels[s])))[:cap], device=device)
                for s in shards]                             # test images of each client's own classes
    return dict(args=args, device=device, train=train, val=val, test=test, num_classes=num_classes,
                shards=[torch.as_tensor(s, device=device) for s in shards], own_test=own_test,
                held=[torch.as_tensor(h, device=device) for h in held],
                model=model, weights=source, data_fingerprint=cifar.fingerprint(args, train, val, test),
                names=[n for n, _ in P.named_trainable(model)], params=P.trainable(model),
                forward=compiled.maybe_compile(model, args))  # what forward passes call (--compile)


def holdout(idx: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) of a client's shard: a random ``fraction`` of it (at least one image) held out."""
    n = max(1, int(round(len(idx) * fraction)))
    cli.check(len(idx) > n, f"a client with {len(idx)} images cannot hold out {fraction:g} of them and still train; "
                            "use fewer clients or a smaller --holdout-fraction")
    order = rng.permutation(len(idx))
    return idx[np.sort(order[n:])], idx[np.sort(order[:n])]


def untrained(params: list[torch.Tensor], masks: list[torch.Tensor | None] | None) -> list[torch.Tensor]:
    """The parameters whose mask is all False (the backbone in the head warm-up)."""
    some = [(p, m) for p, m in zip(params, masks or []) if m is not None and p.requires_grad]
    if not some:
        return []
    trains = torch.stack([m.any() for _, m in some]).tolist()  # one read of all the flags
    frozen = [p for (p, _), t in zip(some, trains) if not t]
    # something must still train, or the loss would have no gradient at all
    return frozen if len(frozen) < sum(p.requires_grad for p in params) else []


@contextlib.contextmanager
def no_grad_for(frozen: list[torch.Tensor]):
    """``frozen`` take no gradient inside the block, so backward skips them; SparseSGDM leaves a parameter
    without a gradient exactly as one whose mask is all False, so the results do not change."""
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class VitTask(engine.Task):
    """Federated fine-tuning for ``common.engine``: client k takes J SGD-momentum steps (SparseSGDM on ``masks``)
    from streams keyed (seed, round, k, ``purpose``); the aggregate is written back only on the mask. With ``rd``
    (the main rounds): cosine learning rate, evaluation, interference and best-accuracy tracking. The statistics
    the aggregators ask for: the Fisher diagonal on the client's training images, the predictive entropy on its
    held-out ones (--holdout-fraction)."""

    supported_stats = ("fisher", "entropy")

    def __init__(self, ctx: dict, masks=None, purpose: str = "round", rounds: int | None = None, rd=None):
        args = self.args = ctx["args"]
        self.ctx, self.masks, self.rd, self.purpose_ = ctx, masks, rd, purpose
        self.params, self.device, self.seed = ctx["params"], ctx["device"], args.seed
        self.sizes = [float(len(s)) for s in ctx["shards"]]
        self.purpose, self.name, self.metric = purpose + "_clients", purpose, "val_accuracy"
        self.rounds = args.rounds if rounds is None else rounds
        self.eval_every = args.eval_every
        self.per_round = engine.clients_per_round(args.participation_rate, args.num_clients)
        self.frozen = untrained(self.params, masks)
        self.up = P.numel(self.params) if masks is None else sum(
            p.numel() if m is None else int(m.sum()) for m, p in zip(masks, self.params))
        self.window_start = args.rounds - int(round(args.interference_window * args.rounds))
        self.best = {"val_accuracy": -1.0, "round": 0}

    def lr(self, r: int) -> float:
        return self.args.lr if self.rd is None else engine.cosine_lr(r, self.args.rounds, self.args.lr)

    def round_start(self, r: int) -> None:
        self.r = r
        self.interference = (self.rd is not None and self.args.interference_window > 0 and r >= self.window_start
                             and ((r + 1) % self.eval_every == 0 or r + 1 == self.rounds))

    def make_optimizer(self, lr: float):
        a = self.args
        if self.masks is None:
            return torch.optim.SGD(self.params, lr=lr, momentum=a.momentum, weight_decay=a.weight_decay,
                                   foreach=True)              # same arithmetic, one call per op
        return SparseSGDM(self.params, self.masks, lr=lr, momentum=a.momentum, weight_decay=a.weight_decay)

    def train_client(self, k, r, opt, algo) -> dict:
        a = self.args
        gen = seeding.client_generator(a.seed, r, k, self.device, purpose=self.purpose_)
        stream = cifar.batches(self.ctx["train"], a.batch_size, a.local_steps, gen, a.image_size,
                               augment_train=not a.no_augment, indices=self.ctx["shards"][k])
        with seeding.client_rng(a.seed, r, k, purpose=self.purpose_ + "_dropout"), no_grad_for(self.frozen):
            loss = exp.train_steps(self.ctx["forward"], opt, stream, label_smoothing=a.label_smoothing,
                                      device=self.device, adjust=algo.adjust_grads)
        return {"loss": loss, "steps": a.local_steps}

    def client_stat(self, name: str, k: int, out: dict):
        a, ctx = self.args, self.ctx
        if name == "fisher":  # unaugmented images of the client's shard; vmap cannot batch fused CPU attention
            shard, model = ctx["shards"][k], ctx["model"]

            def batches(pick):
                return cifar.eval_batches(ctx["train"].subset(shard[pick.to(shard.device)]), a.fisher_batch,
                                          a.image_size)
            model.set_fused_attention(False)
            try:
                return fisher.client_fisher(model, len(shard), batches, a, self.r, k, params=self.params)
            finally:
                model.set_fused_attention(True)
        if name == "entropy":
            held = cifar.eval_batches(ctx["train"].subset(ctx["held"][k]), a.eval_batch_size, a.image_size)
            return evaluate.mean_class_entropy(ctx["forward"], held, device=self.device)
        return super().client_stat(name, k, out)

    def client_metrics(self, k, out) -> dict:
        if not self.interference:
            return {}
        return {"local_own_accuracy": float(exp.correct(self.ctx["forward"], self.ctx["test"], self.ctx["own_test"][k],
                                                        self.args, self.device).float().mean())}

    def project(self, new, x):
        if self.masks is not None:  # frozen coordinates keep the global model's bits
            new = [n if m is None else torch.where(m, n.to(g.dtype), g) for n, m, g in zip(new, self.masks, x)]
        return [n.to(g.dtype) for n, g in zip(new, x)]

    def message_numel(self) -> int:
        """The coordinates a client trains and sends (the mask's); the frozen ones never change, so the clients
        hold them from the start."""
        return self.up

    def evaluate(self, rnd) -> dict | None:
        a, ctx, fed, r = self.args, self.ctx, self.fed, rnd["round"]
        P.load_(self.params, fed.models[0])
        row = {"round": r + 1, "step": (r + 1) * a.local_steps, "lr": rnd["lr"],  # no client (DP's Poisson
               "train_loss": float(np.mean(list(rnd["losses"].values()))) if rnd["losses"] else None}  # cohort)
        val = exp.evaluate(ctx["forward"], ctx["val"], a, self.device, shard=True)  # every rank: its share
        row |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        if self.interference and rnd["chosen"]:  # the clients' own-class accuracy: local models against the aggregate
            chosen = rnd["chosen"]
            local = [rnd["rows"][k]["local_own_accuracy"] for k in chosen]
            union = torch.unique(torch.cat([ctx["own_test"][k] for k in chosen]))      # sorted
            right = exp.correct(ctx["forward"], ctx["test"], union, a, self.device)    # one pass
            glob = [float(right[torch.searchsorted(union, ctx["own_test"][k])].float().mean()) for k in chosen]
            row |= {"interference": float(np.mean(np.subtract(local, glob))),
                    "local_own_accuracy": float(np.mean(local)), "global_own_accuracy": float(np.mean(glob))}
        row |= rnd["aggregator"]  # the aggregator's own round metrics (fisher_eps_share, entropy weights)
        if val["accuracy"] > self.best["val_accuracy"]:
            self.best = {"val_accuracy": val["accuracy"], "round": r + 1}
        return row

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


def plain_rounds(ctx: dict, global_params: list[torch.Tensor], masks=None, rounds: int = 1, purpose: str = "round",
                 start: int = 0) -> dict:
    """Rounds ``start``..``rounds - 1`` of plain FedAvg on ``global_params`` (in place) at the peak lr, without a
    run directory; the engine's timing."""
    P.load_(ctx["params"], global_params)
    task = VitTask(ctx, masks, purpose=purpose, rounds=rounds)
    plain = engine.namespace_defaults(client_opt_state="reset")  # the shared algorithm flags at plain FedAvg
    fed = engine.Federation(task, argparse.Namespace(**{**vars(ctx["args"]), **vars(plain)}))
    engine.run(task, fed, start=start)
    P.load_(global_params, fed.models[0])
    return fed.timing


def head_warmup(ctx: dict, global_params: list[torch.Tensor]) -> None:
    """--head-warmup rounds in which only the head moves, with their own client and batch streams."""
    if ctx["args"].head_warmup:
        head_only = [None if n.startswith("head.") else torch.zeros_like(p, dtype=torch.bool)
                     for n, p in zip(ctx["names"], ctx["params"])]
        plain_rounds(ctx, global_params, head_only, ctx["args"].head_warmup, "head_warmup")


def federate(args, ctx: dict | None = None, masks=None, extra_summary: dict | None = None,
             prefix: str = "fedavg", kind: str = "vit_sparse_fl/train_federated", warmed: bool = False) -> dict:
    """Run the rounds into the run directory; the summary. ``warmed``: the caller already ran --head-warmup."""
    ctx = ctx or setup(args)
    params, device = ctx["params"], ctx["device"]
    main_rank = D.is_main()
    run = RunDir(args.out_dir, args.run_name or default_run_name(args, prefix), vars(args),
                 resume=args.resume, kind=kind, is_main=main_rank, data=ctx["data_fingerprint"],
                 spans_length="the cosine learning rate over --rounds")
    task = VitTask(ctx, masks, rd=run)
    task.name = prefix
    fed = engine.Federation(task, args)
    start = fed.start(run, ctx["names"], fresh=None if warmed else lambda: head_warmup(ctx, fed.models[0]))
    engine.run(task, fed, run, ctx["names"], start)
    P.load_(params, fed.models[0])
    test = exp.evaluate(ctx["forward"], ctx["test"], args, device, shard=True)
    if not main_rank:                                        # rank 0 writes the summary
        return D.broadcast_object(None)
    rows, best = run.rows(), task.best
    m = task.per_round
    summary = {"method": prefix, "sharding": args.sharding, "nc": args.nc if args.sharding == "non_iid" else None,
               "local_steps": args.local_steps, "rounds": args.rounds, "seed": args.seed, "weights": ctx["weights"],
               "num_classes": ctx["num_classes"], "chance_accuracy": 1.0 / ctx["num_classes"], "test_images": test["n"],
               # one sample gradient per image of every local step, head warm-up rounds included
               "sample_gradients": (args.rounds + args.head_warmup) * m * args.local_steps * args.batch_size,
               "final_val_accuracy": rows[-1]["val_accuracy"] if rows else None,
               "best_val_accuracy": best["val_accuracy"], "best_round": best["round"],
               **exp.plateau(rows, "round", args.rounds), **interference_summary(rows),
               "test_accuracy": test["accuracy"], "test_loss": test["loss"], "rounds_done": args.rounds,
               **fed.comm,  # the engine's count: bytes_up, bytes_down
               "client_seconds": fed.timing["client_seconds"], "loop_seconds": fed.timing["round_seconds"],
               **(extra_summary or {})}
    summary = run.write_summary(summary)
    exp.save_model(ctx["model"], run.path, args,  # the final global model
                   info={"method": prefix, "final_val_accuracy": summary["final_val_accuracy"],
                         "test_accuracy": summary["test_accuracy"]})
    return D.broadcast_object(exp.end_run(run, args, summary, "test accuracy",
                                          f"final validation accuracy {summary['final_val_accuracy']:.4g}"))


def interference_summary(rows: list[dict]) -> dict:
    """Means over the evaluation rounds that measured interference (--interference-window)."""
    measured = [r for r in rows if "interference" in r]
    if not measured:
        return {}
    return {k: float(np.mean([r[k] for r in measured]))
            for k in ("interference", "local_own_accuracy", "global_own_accuracy")} | {
        "interference_rounds": len(measured)}


def variant(args, **changes):
    """A copy of ``args`` with ``changes`` and its own default run name (one run of a sweep)."""
    return argparse.Namespace(**{**vars(args), "run_name": None, **changes})


def sweep(args, runner, prefix: str = "fedavg") -> dict:
    """--heterogeneity-experiment / --local-steps-experiment: one run per value, all summaries kept."""
    if args.heterogeneity_experiment:
        kind = "heterogeneity"
        results = {f"nc={nc}": runner(variant(args, sharding="non_iid", nc=nc, heterogeneity_experiment=False))
                   for nc in args.nc_values}
    else:  # the same total local steps: rounds x J fixed
        kind = "local_steps"
        results = {f"J={j}": runner(variant(args, local_steps=j, local_steps_experiment=False,
                                            rounds=max(1, int(round(args.rounds * args.local_steps / j)))))
                   for j in args.j_values}
    out = {"experiment": kind, "results": results}
    if D.is_main():                                          # atomic_write_json makes --out-dir
        atomic_write_json(Path(args.out_dir) / sweep_file_name(args, prefix, kind), out)
    return out


def run(args) -> dict:
    """The run of checked arguments (``finish_args``): one federated run, or a sweep of them."""
    with D.process_group():                                  # under torchrun, left when the run ends
        if args.heterogeneity_experiment or args.local_steps_experiment:
            return sweep(args, federate)
        return federate(args)
