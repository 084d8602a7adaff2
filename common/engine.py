"""The federated round engine: every subproject's federated script runs its rounds through ``run``.

One round: sample the clients (``sample_clients``) -> each starts from its cluster's global model, loaded in
place into the task's one model, its optimizer state kept or reset (``--client-opt-state``) -> the task's
local training, calling the client algorithm's hooks (FedProx's proximal gradient, SCAFFOLD's correction)
-> the client's model and the statistics its aggregator asks the task for (``Task.client_stat``) go to its
cluster's aggregator (``common.aggregators``) -> under torchrun ONE all-reduce of every aggregator's and the
algorithm's sums -> every cluster's server step on the task's projection of the aggregate (``Task.project``,
``common.algorithms``) -> on evaluation rounds the task's evaluation and log row -> the task's stop check (by
default non-finite values: exit 3) -> on evaluation rounds the checkpoint. Communication is counted here,
once: per round and chosen client, ``algorithm.down`` messages down and ``algorithm.up + aggregator.up`` up
(``Federation.comm``, in bytes, checkpointed; every script writes it into summary.json). The round's clients train
one after another (``one_at_a_time``) or, with ``--client-batching stacked`` where a script offers it, together
(``common.batched``); either way the aggregators get the same clients in the same order.

A subproject supplies a ``Task``; client algorithms and aggregators are registries (``--algorithm``,
``--aggregator``). Clustering is which global model a client starts from (``Federation.assign``; IFCA
re-assigns the round's clients every round, ``data`` once). Shared flags: ``common.algorithm_flags``, checked by
``check_algorithm_args``: every combination of algorithm, aggregator, server optimizer and clustering either
runs or is refused there in one line.
"""
from __future__ import annotations

import argparse
import math
import time
import weakref
from collections import defaultdict

import numpy as np
import torch
from tqdm.auto import tqdm

from common import aggregators as AG
from common import algorithm_flags, batched, export, flags, privacy
from common import algorithms as AL
from common import client_store as CS
from common import clustering as C
from common import distributed as D
from common import feddyn as _feddyn  # noqa: F401  (registers --algorithm feddyn: modules that register, one line each)
from common import fednova as _fednova  # noqa: F401  (registers --algorithm fednova)
from common import params as P
from common import robust as _robust  # noqa: F401  (registers --aggregator median, trimmed_mean, krum, multikrum)
from common import seed as seeding
from common import server_opt as SO
from common.algorithm_flags import SERVER_LR
from common.errors import UsageError, check
from common.runlog import run_name


def check_algorithm_args(args, *, plain_sgd: bool, optimizer_hint: str, scaffold: str | None = None,
                         algorithms=None, shifted_scaffold: bool = False, stats: tuple[str, ...] = (),
                         aggregator: str | None = None, refused: dict[str, str] | None = None,
                         server_opt: str | None = None, dp: str | None = None) -> None:
    """One-line refusals (exit 2) of combinations that cannot run, before anything is written: the algorithm's
    and the aggregator's own (``refuse``), an aggregator asking for statistics the script's task does not
    compute (``stats``: its ``Task.supported_stats``). What the script declares it cannot serve, each with its
    reason: ``refused`` {algorithm: why} (``scaffold``: SCAFFOLD's), ``aggregator`` why only mean runs,
    ``server_opt`` why only --server-opt fedavg at --server-lr 1 runs, ``dp`` why it refuses --dp-clip
    (``common.privacy.check_dp_args``). ``shifted_scaffold``: SCAFFOLD is allowed with an adaptive local optimizer,
    the task calling ``algo.after_step``; ``algorithms``: the names this script accepts (default: the registry's)."""
    resolve_server_lr(args)
    algorithms = tuple(AL.REGISTRY) if algorithms is None else algorithms
    check(args.algorithm in algorithms,
          f"--algorithm {args.algorithm!r} is unknown; expected one of {', '.join(algorithms)}")
    algo = AL.REGISTRY.get(args.algorithm, AL.FedAvg)
    refused = {**({"scaffold": scaffold} if scaffold else {}), **(refused or {})}
    check(args.algorithm not in refused, f"--algorithm {args.algorithm} is refused here: {refused.get(args.algorithm)}")
    check(server_opt is None or args.server_opt == "fedavg", f"--server-opt {args.server_opt} is refused here: "
                                                            f"{server_opt}")
    check(server_opt is None or args.server_lr == 1.0, f"--server-lr {args.server_lr:g} is refused here (only 1): "
                                                       f"{server_opt}")
    if algo.plain_sgd:
        check(plain_sgd or (shifted_scaffold and args.algorithm == "scaffold"),
              f"{algo.title or '--algorithm ' + args.algorithm} needs plain SGD local steps "
              f"({algo.plain_sgd_reason}): {optimizer_hint}")
    why = algo.refuse(args)
    check(why is None, why)
    agg = AG.REGISTRY[args.aggregator]
    check(aggregator is None or args.aggregator == "mean", f"--aggregator {args.aggregator} is refused here: "
                                                          f"{aggregator}")
    missing = [s for s in agg.stats if s not in stats]
    check(not missing, f"--aggregator {args.aggregator} needs each client's {' and '.join(missing)}, which this "
                       f"script does not compute; expected one of: "
                       f"{', '.join(n for n, c in AG.REGISTRY.items() if set(c.stats) <= set(stats))}")
    why = agg.refuse(args)
    check(why is None, why)
    check(args.clustering != "ifca" or args.num_clusters >= 2, "--clustering ifca needs --num-clusters >= 2")
    check(args.clustering != "none" or args.num_clusters == 0, "--num-clusters needs --clustering data or ifca")
    k = getattr(args, "num_clients", None)
    check(k is None or args.num_clusters <= k, f"--num-clusters {args.num_clusters} exceeds the {k} clients "
                                               "(each cluster starts from a client of its own); expected at most "
                                               f"{k}")
    if "participation_rate" in (flags.given(args) or ()):  # a rate chosen, not a default or --quick's
        check_participation(args.participation_rate, k)
    refuse_unused_algorithm_args(args)
    privacy.check_dp_args(args, dp)
    batched.check_args(args)  # --client-batching, where the script has it


def check_participation(rate: float, num_clients: int | None) -> None:
    """A rate asking for less than a tenth of a client per round: ``clients_per_round`` (max(1, round(C K))) would
    quietly sample one, ten times (or, for 1e-300, infinitely many times) what was asked. A rate under one client
    (0.1 of 4 clients, an arm's "one client per round") keeps the engine's rule."""
    if num_clients is None:
        return
    check(rate * num_clients >= 0.1, f"--participation-rate {rate:g} asks for {rate * num_clients:.3g} of the "
                                     f"{num_clients} clients per round, less than a tenth of one (the engine would "
                                     f"sample one); give at least {0.1 / num_clients:.3g}, or --clients-per-round 1")


def refuse_unused_algorithm_args(args) -> None:
    """The shared flags that only some settings read, given with none of them (``common.flags.refuse_unused``)."""
    alg, agg, sopt, cl = args.algorithm, args.aggregator, args.server_opt, args.clustering
    flags.refuse_unused(args, [
        *_own_flags(AL.REGISTRY, alg, "--algorithm"), *_own_flags(AG.REGISTRY, agg, "--aggregator"),
        ("server_momentum", sopt != "fedavg", f"without --server-opt fedavgm or fedadam or fedyogi or fedadagrad "
                                              f"(here {sopt})"),
        ("server_beta2", sopt in ("fedadam", "fedyogi"), f"without --server-opt fedadam or fedyogi (here {sopt})"),
        ("server_tau", sopt in ("fedadam", "fedyogi", "fedadagrad"),
         f"without --server-opt fedadam, fedyogi or fedadagrad (here {sopt})"),
        ("momentum_form", sopt == "fedavgm", f"without --server-opt fedavgm (here {sopt})"),
        ("ifca_init_rounds", cl == "ifca", f"without --clustering ifca (here {cl})"),
        ("ifca_batches", cl == "ifca", f"without --clustering ifca (here {cl})")])


def _own_flags(registry: dict, chosen: str, flag: str) -> list:
    """``refuse_unused`` rules of the registered classes' own flags: each read only by the classes naming it."""
    readers: dict[str, list[str]] = {}
    for name, cls in registry.items():
        for dest in cls.flags:
            readers.setdefault(dest, []).append(name)
    return [(dest, chosen in names, f"without {flag} {' or '.join(names)} (here {chosen})")
            for dest, names in readers.items()]


def resolve_server_lr(args) -> None:
    """--server-lr's default follows --server-opt."""
    if args.server_lr is None:
        args.server_lr = SERVER_LR.get(args.server_opt, 1.0)


def run_name_tags(args, server_opt: str = "fedavg", aggregator: str = "mean") -> dict:
    """Run-name settings (``common.runlog.run_name``) of the shared flags off the script's defaults (none for FedAvg):
    the aggregator and its own settings first, then the algorithm's, the server optimizer's, the clustering."""
    agg = AG.REGISTRY[args.aggregator]
    return {args.aggregator: args.aggregator != aggregator, **agg.run_name_tags(args),
            args.algorithm: args.algorithm != "fedavg", "mu": args.mu if args.algorithm == "fedprox" else None,
            "wsize": args.algorithm == "scaffold" and args.scaffold_weighting == "size",
            "so": args.server_opt if args.server_opt != server_opt else None,
            "slr": args.server_lr if args.server_lr != SERVER_LR.get(args.server_opt, 1.0) else None,
            "cl": None if args.clustering == "none" else f"{args.clustering}{args.num_clusters or ''}"}


def name_suffix(args, server_opt: str = "fedavg", aggregator: str = "mean") -> str:
    """``run_name_tags`` as a run-name suffix ("" for plain FedAvg, e.g. "_fedprox_mu0.01")."""
    return run_name("", **run_name_tags(args, server_opt, aggregator))


def sample_clients(seed: int, round_idx: int, num_clients: int, m: int, purpose: str = "clients") -> list[int]:
    """The round's m distinct clients, sorted, from the stream keyed by (seed, purpose, round)."""
    return sorted(seeding.numpy_rng(seed, purpose, round_idx).choice(num_clients, m, replace=False).tolist())


def clients_per_round(rate: float, num_clients: int) -> int:
    """m = max(1, round(C K))."""
    return max(1, int(round(rate * num_clients)))


def cosine_lr(step: int, total: int, peak: float, warmup: int = 0, final: float = 0.0) -> float:
    """A round's (or step's) learning rate: linear warmup for ``warmup`` steps, then cosine ``peak`` -> ``final``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))


# what a subproject supplies
class Task:
    """A subproject's federated task. Set ``params`` (the one model's trainable parameters, trained in place
    by every client in turn), ``sizes`` (client k's weight n_k), ``rounds``, ``eval_every``, ``per_round``
    (clients per round) and ``seed``; override ``train_client`` and ``evaluate``."""

    name = "rounds"         # the progress bar's label
    metric = "val_loss"     # the log row's value the progress bar shows
    purpose = "clients"     # the client-sampling stream's key
    optimizer = None        # the clients' optimizer object (its state is swapped per client), or None
    adaptive_local = False  # an adaptive local optimizer whose steps call algo.after_step (SCAFFOLD's shift)

    def lr(self, r: int) -> float:
        return self.args.lr

    def make_optimizer(self, lr: float):
        """The optimizer the next client trains with, its state fresh (``self.optimizer`` reused by default;
        ``--client-opt-state persist`` then puts the client's own state in)."""
        if self.optimizer is not None:
            self.optimizer.state = defaultdict(dict)
        return self.optimizer

    def train_client(self, k: int, r: int, opt, algo: AL.FedAvg) -> dict:
        """Local training of client k in round r on ``self.params`` (which hold its start), calling
        ``algo.adjust_grads(self.params)`` between every backward and optimizer step. Returns at least
        {"loss": a 0-d tensor, "steps": optimizer steps}."""
        raise NotImplementedError

    # -- --client-batching stacked (common.batched): the round's clients trained together --------------------
    def client_batches(self, k: int, r: int):
        """Client k's local batches in round r, a sequence (``common.batched.Batches``) of (inputs [b, ...],
        targets [b, ...]) in the order its ``train_client`` steps through them (the same random streams), one
        optimizer step each."""
        raise UsageError("--client-batching stacked is not available for this script")

    def stacked_losses(self, params: list[torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample training losses [n, B] of n models, each on its own batch: ``params`` the tensors of
        ``self.params`` stacked ([n, *shape]), inputs [n, B, ...], targets [n, B, ...]; differentiable in ``params``."""
        raise UsageError("--client-batching stacked is not available for this script")

    # -- aggregation: what the task supplies to the aggregators (common.aggregators) ------------------------
    supported_stats: tuple[str, ...] = ()  # the statistics ``client_stat`` computes ("fisher", "entropy")

    def client_stat(self, name: str, k: int, out: dict):
        """Statistic ``name`` of client k, trained (its model in ``self.params``; ``out``: ``train_client``'s):
        "fisher" the diagonal Fisher (tensors shaped like ``params``), "entropy" the mean predictive entropy on
        its held-out data (a float)."""
        raise UsageError(f"--aggregator needs each client's {name}, which this script does not compute")

    def aggregator(self, like: list[torch.Tensor], args) -> AG.Aggregator:
        """A cluster's aggregator: ``--aggregator``'s from the registry. Override only where the task's
        parametrisation has no mean of its own (lora_glue_fl's adapter merge)."""
        return AG.make(args.aggregator, like, args)

    def project(self, new: list[torch.Tensor], x: list[torch.Tensor]) -> list[torch.Tensor]:
        """The aggregate ``new`` as a global model of the task's parametrisation, x the cluster's model now (a
        sparse mask: off-mask coordinates keep x's bits). Default: ``new`` (the server step casts to x's dtypes)."""
        return new

    def message_numel(self) -> int:
        """Values in one model-sized message (the engine's communication count); default: all of ``params``."""
        return P.numel(self.params)

    def client_metrics(self, k: int, out: dict) -> dict:
        """Client k's log metrics (after its aggregator's add, whose row it extends)."""
        return {}

    def accumulators(self) -> list[torch.Tensor]:
        """The task's own flat sums, joining the engine's one all-reduce (llm_noniid's drift)."""
        return []

    def sample(self, r: int) -> list[int]:
        """Round r's clients, sorted: ``per_round`` of them from the stream keyed by (seed, purpose, r)."""
        return sample_clients(self.seed, r, len(self.sizes), self.per_round, self.purpose)

    def admit(self, r: int, cohort: list[int]) -> list[int]:
        """Which of round r's sampled clients (sorted; DP's Poisson cohort, maybe empty) train: default all."""
        return cohort

    def client_loss(self, k: int) -> float:
        """IFCA's choice: the loss of the model in ``self.params`` on client k's first batches."""
        raise UsageError("--clustering ifca is not available for this script")

    def client_features(self, k: int) -> np.ndarray:
        """--clustering data: client k's data distribution (a probability vector), computed on its own data."""
        raise UsageError("--clustering data is not available for this script")

    def round_start(self, r: int) -> None:
        """Before round r's first client (every rank)."""

    def round_end(self, rnd: dict) -> None:
        """After the server step (every rank). ``rnd``: {"round", "chosen", "rows" (every chosen client's metrics:
        its aggregator's and ``client_metrics``), "losses" (its "loss" as a float), "lr", "aggregator" (the
        aggregators' ``round_metrics``, ``Federation.round_metrics``)}."""

    def evaluate(self, rnd: dict) -> dict | None:
        """On every rank on evaluation rounds: the log row (rank 0 writes it and the checkpoint)."""
        raise NotImplementedError

    def check(self, rd, rnd: dict) -> bool | None:
        """After the log row, before the checkpoint (every rank): ``rd.diverge`` (exit 3) if the run went wrong, by
        default on non-finite losses or models. True ends the rounds after this round's checkpoint (a plateau
        rule; every rank must say so in the same round)."""
        rd.check_finite(f"round {rnd['round'] + 1}", training_loss=list(rnd["losses"].values()),
                        aggregated_parameters=[t for x in self.fed.models for t in x])

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Federation:
    """The server's state: per-cluster global models, algorithm, server optimizers, client optimizer states."""

    def __init__(self, task: Task, args):
        self.task, self.args = task, args
        resolve_server_lr(args)  # also for arguments parsed without check_algorithm_args
        self.assign, num_clusters, self.info = np.zeros(len(task.sizes), dtype=np.int64), 1, {}
        if args.clustering == "data":
            self.assign, self.info = C.data_clusters(
                np.stack([task.client_features(k) for k in range(len(task.sizes))]), args.num_clusters)
            num_clusters = int(self.assign.max()) + 1
        elif args.clustering == "ifca":
            num_clusters = args.num_clusters
            holding = sum(1 for n in task.sizes if n)
            check(num_clusters <= holding, f"--num-clusters {num_clusters}: IFCA starts each cluster from a client of "
                                           f"its own, and only {holding} clients hold data; expected at most {holding}")
        self.models = [P.clone(task.params) for _ in range(num_clusters)]
        self.algo = AL.make_algorithm(args, self.models, task.sizes,
                                      self.assign if args.clustering == "data" else None, shift=task.adaptive_local)
        tau = getattr(args, "server_tau", None)
        tau = {} if tau is None else {"tau": tau}  # the optimizer's own default otherwise
        if tau == {} and args.server_opt == "fedadagrad":
            tau = {"tau": 1e-9}
        self.servers = [SO.make_server_optimizer(args.server_opt, x, lr=args.server_lr, momentum=args.server_momentum,
                                                 form=args.momentum_form, betas=(args.server_momentum,
                                                                                 getattr(args, "server_beta2", 0.99)),
                                                 **tau)
                        for x in self.models]
        # one aggregator per cluster; none where the algorithm keeps its own sums (SCAFFOLD with the mean)
        agg = getattr(args, "aggregator", "mean")
        missing = [s for s in AG.REGISTRY[agg].stats if s not in task.supported_stats]
        check(not missing, f"--aggregator {agg} needs each client's {' and '.join(missing)}, which this script "
                           "does not compute")
        self.aggs = [task.aggregator(x, args) if self.algo.uses_aggregate else None for x in self.models]
        # --dp-clip: every cluster's aggregator is DP-FedAvg's clipped, noised mean (common.privacy)
        self.dp = (privacy.PrivateRounds(args, len(task.sizes), task.per_round, task.rounds, task.seed)
                   if privacy.enabled(args) else None)
        if self.dp is not None:
            self.aggs = self.dp.aggregators(self.models)
        # bytes sent per round and chosen client: algorithm.down messages down, algorithm.up + aggregator.up up
        self.comm = {"bytes_up": 0, "bytes_down": 0}
        self.messages = (self.algo.up + (AG.REGISTRY[agg].up if self.algo.uses_aggregate else 0), self.algo.down)
        # per-client state (optimizer state under persist, the algorithm's): on disk in the run directory
        # (``common.client_store``) once ``start`` opens it, in memory before (a warm-up run has no directory)
        self.store = CS.ClientStore()
        self.client_opt = self.store.table("client_opt") if args.client_opt_state == "persist" else None
        self.algo.use_store(self.store)
        # --client-batching stacked: the round's clients trained together (common.batched)
        self.stacked = batched.enabled(args)
        if self.stacked:
            batched.check_task(task)
        # wall-clock seconds of local training and of whole rounds (no evaluation, logging, checkpoints); per rank
        self.timing = {"client_seconds": 0.0, "round_seconds": 0.0}
        # no reference cycle: an interrupted run's objects (its run directory's lock) go with the last reference
        task.fed = weakref.proxy(self)

    # -- clustering: which global model a client starts from ---------------------------------------------
    def ifca_assign_(self, ks) -> None:
        for k in ks:
            if self.task.sizes[k]:
                self.assign[k] = int(np.argmin([self._loss(g, k) for g in range(len(self.models))]))

    def _loss(self, g: int, k: int) -> float:
        P.load_(self.task.params, self.models[g])
        return self.task.client_loss(k)

    def ifca_init_(self) -> None:
        """IFCA's starting points, farthest first (``common.clustering``): each is --ifca-init-rounds rounds of its
        seed client training alone, on batches of their own (streams of rounds -1, -2, ..., which no round uses),
        its optimizer state kept between them or reset as --client-opt-state says."""
        task, sizes = self.task, self.task.sizes
        start, tokens = P.clone(task.params), 0
        seeds = [int(seeding.numpy_rng(task.seed, "ifca-init").choice([k for k in range(len(sizes)) if sizes[k]]))]
        for g in range(len(self.models)):
            if g:
                loss = np.array([[self._loss(h, k) if sizes[k] else -np.inf for h in range(g)]
                                 for k in range(len(sizes))])
                seeds.append(C.farthest_first(loss, seeds))
            P.load_(task.params, start)
            for i in range(self.args.ifca_init_rounds):
                if i == 0 or self.args.client_opt_state != "persist":
                    opt = task.make_optimizer(task.lr(0))
                tokens += int(task.train_client(seeds[g], -1 - i, opt, AL.FedAvg()).get("tokens", 0))
            P.load_(self.models[g], task.params)
        # the starts' training tokens (where a task's train_client counts them), for its compute accounting
        self.info |= {"seed_clients": seeds, "init_tokens": tokens}
        self.ifca_assign_(range(len(sizes)))

    # -- per-client optimizer state (--client-opt-state persist) -------------------------------------------
    def opt_state(self, k: int) -> dict:
        """Client k's optimizer state ({} for a client never trained), read from the store."""
        row = self.client_opt.get(k)
        return {} if row is None else _opt_state_from_row(self.client_opt.names, row, self.task.params)

    def put_opt_state(self, k: int, state: dict) -> None:
        """Client k's optimizer state into the store (an empty state, an optimizer without any, is a fresh one)."""
        names, values = _opt_row(state, self.task.params)
        if values:
            self.client_opt.put(k, values, names)

    # -- aggregation and communication ---------------------------------------------------------------------
    def count_comm(self, clients: int) -> None:
        """A round's traffic of ``clients`` chosen clients (bytes: the task's message size x the values' width)."""
        size = self.task.message_numel() * self.task.params[0].element_size()
        up, down = self.messages
        self.comm["bytes_up"] += clients * up * size
        self.comm["bytes_down"] += clients * down * size

    def add(self, k: int, g: int, out: dict) -> dict:
        """Client k (trained, its model in the task's params) into cluster g's aggregator, with the statistics the
        aggregator asks of the task; the client's log metrics."""
        task, agg, row = self.task, self.aggs[g], {}
        if agg is not None:
            stats = {name: task.client_stat(name, k, out) for name in agg.stats}
            row = agg.add(k, task.params, self.algo.client_weight(k, task.sizes[k], out["steps"]), stats)
        return row | task.client_metrics(k, out)

    def round_metrics(self, members: list[list[int]]) -> dict:
        """The aggregators' round metrics: one cluster's as they are; with several, each key a list over the
        clusters (None where a cluster had no client this round)."""
        per = [agg.round_metrics() if agg is not None and ks else {} for agg, ks in zip(self.aggs, members)]
        if len(per) == 1:
            return per[0]
        return {key: [m.get(key) for m in per] for key in dict.fromkeys(k for m in per for k in m)}

    # -- checkpoints ---------------------------------------------------------------------------------------
    def start(self, rd, names: list[str], fresh=None) -> int:
        """The first round: the checkpoint's (state restored), else 0 after ``fresh()`` and IFCA's starts."""
        if self.dp is not None:  # every summary.json of the run holds epsilon at delta so far
            rd.summary_sources.append(self.dp.summary)
        state = rd.load_checkpoint()
        if self.store.tables:  # the rows live in the run directory, claimed first (a fresh run clears it)
            if rd.is_main:
                rd.claim()
            self.store.open(rd.path / STORE_DIR, None if state is None else state.get("client_store"),
                            clean=rd.is_main)
            D.barrier()  # no rank writes a row before rank 0 has cleared a fresh run's folder
        if state is not None:
            return self.load_state_dict(state, names)
        if fresh is not None:
            fresh()
            for x in self.models[1:]:
                P.load_(x, self.models[0])
        if self.args.clustering == "ifca":
            self.ifca_init_()
        return 0

    def state_dict(self, round_done: int, names: list[str]) -> dict:
        return {"round": round_done, "global": export.named_state(names, self.models[0]),  # cluster 0's
                "clusters": [export.named_state(names, x) for x in self.models[1:]],  # the other clusters
                "server": [s.state_dict() for s in self.servers], "algorithm": self.algo.state_dict(),
                "client_store": self.store.state_dict(),
                "assign": self.assign.tolist(), "cluster_info": self.info, "timing": self.timing,
                "comm": self.comm, "aggregators": [a.state_dict() if a is not None else None for a in self.aggs],
                "task": self.task.state_dict(), **({"dp": self.dp.state_dict()} if self.dp is not None else {})}

    def load_state_dict(self, state: dict, names: list[str]) -> int:
        dev = self.models[0][0].device
        for x, saved in zip(self.models, [state["global"], *state["clusters"]]):
            P.load_(x, [t.to(dev) for t in export.tensors_from_state(saved, names)])
        for s, saved in zip(self.servers, state["server"]):
            s.load_state_dict(saved)
        self.algo.load_state_dict(state["algorithm"])
        for k, v in state.get("client_opt", {}).items():  # a checkpoint from before the store: the states inline
            self.put_opt_state(int(k), _opt_state_from_list(v, self.task.params, dev))
        self.assign[:] = state["assign"]
        self.info, self.timing = state["cluster_info"], state["timing"]
        self.comm = dict(state.get("comm", self.comm))
        for a, saved in zip(self.aggs, state.get("aggregators", ())):
            if a is not None:
                a.load_state_dict(saved)
        self.task.load_state_dict(state["task"])
        if self.dp is not None:
            check("dp" in state, "the checkpoint is of a run without --dp-clip: resume with its flags")
            self.dp.load_state_dict(state["dp"])
        seeding.set_rng_state(state["rng"])
        return state["round"]


STORE_DIR = "client_state"  # the client store's folder in the run directory


def run(task: Task, fed: Federation, rd=None, names: list[str] | None = None, start: int = 0) -> None:
    """Rounds ``start``..``task.rounds - 1`` (logged 1-based); without ``rd`` (a warm-up) no log, checks, saves."""
    args, params, timing = fed.args, task.params, fed.timing
    world, rank = D.world_size(), D.rank()
    if world > 1 and fed.store.tables and fed.store.folder is None:
        raise ValueError("per-client state under torchrun needs the run directory (Federation.start) to share it")
    bar = tqdm(range(start, task.rounds), desc=task.name, initial=start, total=task.rounds,
               disable=rd is None or rank != 0 or args.quiet)
    for r in bar:
        t_round = time.perf_counter()
        chosen = task.sample(r) if fed.dp is None else fed.dp.sample(task, r)
        if args.clustering == "ifca":
            fed.ifca_assign_(chosen)  # every participant takes the cluster model that fits its data best
        members = [[k for k in chosen if fed.assign[k] == g] for g in range(len(fed.models))]  # sorted, as chosen
        for x, agg, ks in zip(fed.models, fed.aggs, members):
            if agg is not None and fed.dp is None:
                agg.reset(x, ks)
            elif agg is not None:  # DP: the round and cluster keying the noise, explicitly
                agg.reset(x, ks, round_idx=r)
        lr = task.lr(r)
        task.round_start(r)
        fed.count_comm(len(chosen))
        rows, losses = {}, []
        # this rank's share, balanced by client size; one process: every chosen client, in order
        plan = D.assign_clients(chosen, [task.sizes[k] for k in chosen], world)
        trained = (batched.train_round(task, fed, plan[rank], r, lr) if fed.stacked  # --client-batching stacked
                   else one_at_a_time(task, fed, plan[rank], r, lr))
        for k, out in trained:  # the task's params hold client k's trained model
            fed.algo.client_end(k, params, out["steps"], lr)
            rows[k] = fed.add(k, int(fed.assign[k]), out)
            losses.append(out["loss"])
        losses = dict(zip(plan[rank], torch.stack(losses).tolist() if losses else []))  # one read per round
        if world > 1:  # the small exchanges, then ONE all-reduce of every aggregator's sums
            fed.store.sync()  # this rank's rows on disk before rank 0's checkpoint names them
            parts = D.all_gather_object((rows, losses, fed.store.written()))
            rows = {k: v for part, _, _ in parts for k, v in part.items()}
            losses = {k: v for _, part, _ in parts for k, v in part.items()}
            fed.store.mark([part for _, _, part in parts])  # which client rows the other ranks wrote
            for agg, ks in zip(fed.aggs, members):
                if agg is not None:
                    agg.pre_reduce(rows, ks)
            D.all_reduce_sum_([t for agg in fed.aggs if agg is not None for t in agg.accumulators()]
                              + fed.algo.accumulators() + task.accumulators())
            fed.algo.after_reduce(plan)
        rows, losses = {k: rows[k] for k in chosen}, {k: losses[k] for k in chosen}
        for x, agg, server, ks, g in zip(fed.models, fed.aggs, fed.servers, members, range(len(members))):
            if ks or fed.dp is not None:  # DP: an empty cohort's noised mean too (skipping tells who took part)
                fed.algo.server_step(x, None if agg is None else task.project(agg.result(), x), server, g)
        if fed.dp is not None:
            fed.dp.accountant.step()  # once per round: a round any client could have been sampled in
        rnd = {"round": r, "chosen": chosen, "rows": rows, "losses": losses, "lr": lr,
               "aggregator": fed.round_metrics(members)}
        task.round_end(rnd)
        timing["round_seconds"] += time.perf_counter() - t_round
        if rd is None:
            continue
        evaluating = (r + 1) % task.eval_every == 0 or r + 1 == task.rounds
        row = task.evaluate(rnd) if evaluating else None  # every rank scores its share; rank 0 logs
        if row is not None and fed.dp is not None:
            row |= fed.dp.row(rnd, fed.aggs)  # epsilon at delta after this round, the clients' norms
        if row is not None and rd.is_main:
            rd.log(row)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k == task.metric})
        stop = task.check(rd, rnd)  # every rank holds the same round, so every rank stops here (exit 3)
        if evaluating:
            saved = rd.is_main and rd.save_checkpoint(fed.state_dict(r + 1, names), periodic=True)
            if fed.store.tables:  # the rows the checkpoint names are kept from now on, on every rank
                if D.broadcast_object(saved):
                    fed.store.commit()
        if stop:  # the task's plateau rule: the run ends here, after this round's checkpoint
            break


def one_at_a_time(task: Task, fed: Federation, ks: list[int], r: int, lr: float):
    """Local training of clients ``ks`` in round r, one after another in the task's one model: each from its
    cluster's global model, with a fresh optimizer state or its own (--client-opt-state). A generator: yields
    (k, ``train_client``'s result) after client k's training, its model in ``task.params``."""
    for k in ks:
        g = int(fed.assign[k])
        P.load_(task.params, fed.models[g])  # every client starts from its cluster's global model
        opt = task.make_optimizer(lr)  # with a fresh state
        if opt is not None and fed.client_opt is not None:  # the client's own (moments, momentum)
            opt.state = defaultdict(dict, fed.opt_state(k))
        fed.algo.client_start(k, fed.models[g], g)
        t0 = time.perf_counter()
        out = task.train_client(k, r, opt, fed.algo)
        if task.device.type == "cuda":
            torch.cuda.synchronize(task.device)
        fed.timing["client_seconds"] += time.perf_counter() - t0
        if opt is not None and fed.client_opt is not None:
            fed.put_opt_state(k, opt.state)
        yield k, out


def _opt_row(state: dict, plist) -> tuple[list[str], list[torch.Tensor]]:
    """An optimizer's per-parameter state as a client-store row: names "<param index>/<key>/<param|cpu>" (where
    the tensor lives: with its parameter, or on the CPU as Adam's step counts) and the tensors."""
    names, values = [], []
    for i, p in enumerate(plist):
        for key, v in state.get(p, {}).items():
            check(torch.is_tensor(v), f"--client-opt-state persist keeps tensor optimizer state only; the optimizer's "
                                      f"{key!r} is a {type(v).__name__}")
            names.append(f"{i}/{key}/{'param' if v.device == p.device else 'cpu'}")
            values.append(v)
    return names, values


def _opt_state_from_row(names: list[str], values: list[torch.Tensor], plist) -> dict:
    state: dict = {}
    for name, v in zip(names, values):
        i, key, where = name.rsplit("/", 2)
        p = plist[int(i)]
        state.setdefault(p, {})[key] = v.to(p.device) if where == "param" else v
    return state


def _opt_state_from_list(states: list[dict], plist, device) -> dict:
    """A checkpoint's optimizer state from before the client store: per parameter position, inline."""
    return {p: {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in s.items()}
            for p, s in zip(plist, states) if s}


def namespace_defaults(**kw) -> argparse.Namespace:
    """The shared flags at their defaults (``common.algorithm_flags``'), for callers that build arguments by hand."""
    parser = argparse.ArgumentParser()
    algorithm_flags.add_algorithm_args(parser)
    args = argparse.Namespace(**(vars(parser.parse_args([])) | kw))
    resolve_server_lr(args)
    return args
