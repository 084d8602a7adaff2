"""What llm_noniid/train.py runs once its flags are parsed: the checks of its arguments, its run names, the LLM task
that ``common.engine`` runs (``LlmTask``: per-round drift metrics, failure-mode detection) and the run itself.
"""
from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import torch

from common import algorithm_flags, algorithms, cli, compiled, engine, export, fisher, flags, report
from common import clustering as C
from common import distributed as dist
from common import params as P
from common.aggregate import WeightedMean
from common.checkpoint import atomic_write_json, atomic_write_text
from common.evaluate import autocast, mean_entropy, perplexity, unigram_perplexity
from common.runlog import RunDir, data_fingerprint, run_name
from common.seed import client_generator, client_rng, numpy_rng, seed_everything
from common.text import derived_cache_dir, load_tokenizer
from llm_noniid import data as D
from llm_noniid import failure
from llm_noniid.model import add_lora, check_memory, hub_name, lm_loss, load_base
from llm_noniid.options import SOURCE_ALGORITHMS
from llm_noniid.partition import PARTITIONS, TOKEN_SKEWS, TOPIC_SPLITS, partition, statistics


def validate(args) -> None:
    def choice(dest: str, choices: tuple, expected: str) -> None:
        value = getattr(args, dest)
        cli.check(value in choices, f"--{dest.replace('_', '-')} {value!r} is unknown; expected {expected}")

    c = cli.check
    flags.resolve_clients_per_round(args)
    if args.algorithm in SOURCE_ALGORITHMS:  # the source's algorithm names for the server optimizers
        c(args.server_opt in ("fedavg", args.algorithm), f"--algorithm {args.algorithm} contradicts --server-opt "
                                                         f"{args.server_opt}")
        args.server_opt = args.algorithm
    choice("lr_schedule", ("constant", "cosine"), "constant or cosine")
    choice("local_optimizer", ("sgd", "adamw"), "sgd or adamw")
    engine.check_algorithm_args(args, plain_sgd=args.local_optimizer == "sgd", shifted_scaffold=True,
                                algorithms=(*algorithms.REGISTRY, *SOURCE_ALGORITHMS), stats=LlmTask.supported_stats,
                                optimizer_hint="use --local-optimizer sgd")
    c(args.client_opt_state == "reset" or args.local_optimizer != "sgd", "--client-opt-state persist: the local "
      "optimizer --local-optimizer sgd keeps no state between steps; persist keeps AdamW's moments (adamw)")
    entropy = args.aggregator == "entropy"
    if args.client_holdout is None:
        args.client_holdout = 0.1 if entropy else 0.0
    c(not entropy or args.client_holdout > 0, "--aggregator entropy measures entropy on the clients' held-out "
                                              "examples: --client-holdout must be > 0")
    choice("partition", PARTITIONS, f"one of {', '.join(PARTITIONS)}")
    choice("token_skew", TOKEN_SKEWS, f"one of {', '.join(TOKEN_SKEWS)}")
    choice("style_criterion", D.STYLE_CRITERIA, ", ".join(D.STYLE_CRITERIA))
    choice("topic_split", TOPIC_SPLITS, "mix or labels")
    choice("cluster_features", C.FEATURES, "tokens or topics")
    # each flag's own range (the counts, rates, fractions, --participation-rate, --clients-per-round) is its
    # flag's type; what needs more than one flag: --num-clusters against the clients is engine's, and flags that
    # only some settings read
    lora, part = "with --lora-r 0 (every parameter trains, no adapters)", f"(here --partition {args.partition})"
    topic = args.partition == "topic_skew"
    flags.refuse_unused(args, [
        *((dest, args.lora_r > 0, lora) for dest in ("lora_targets", "lora_alpha", "lora_dropout")),
        ("alpha", topic, f"without --partition topic_skew {part}"),
        ("topic_split", topic, f"without --partition topic_skew {part}"),
        ("min_size", topic and args.topic_split == "labels", "without --partition topic_skew --topic-split labels"),
        ("style_criterion", args.partition == "style_skew", f"without --partition style_skew {part}"),
        ("token_skew", args.partition == "token_skew", f"without --partition token_skew {part}"),
        ("cluster_features", args.clustering == "data", f"without --clustering data (here {args.clustering})"),
        ("bpe_vocab_size", args.tokenizer == "bpe" or args.tokenizer == "auto" and args.model == "tiny-gpt2",
         "without --tokenizer bpe (the offline BPE; --model tiny-gpt2's own)"),
        *((dest, args.aggregator == "fisher", f"without --aggregator fisher (here {args.aggregator})")
          for dest in algorithm_flags.FISHER_STAT_FLAGS)])


def default_run_name(a) -> str:
    """<algorithm>_<partition>[_<clustering>]_k.._p.._lr.._(e|j).._<the shared flags' tags>[_sched.._]s<seed>: the
    shared flags (aggregator, algorithm settings, server optimizer, clustering) tagged by ``common.engine``."""
    part = {"topic_skew": f"topic_a{a.alpha:g}", "style_skew": f"style_{a.style_criterion}",
            "token_skew": f"token_{a.token_skew}"}.get(a.partition, a.partition)
    if a.partition == "topic_skew" and a.topic_split != "mix":
        part += f"_{a.topic_split}"
    shared = engine.run_name_tags(a)
    cluster = shared.pop("cl")
    shared.pop(a.algorithm, None)  # the name's prefix
    if a.algorithm in SOURCE_ALGORITHMS:  # the prefix names the server optimizer
        shared["so"] = None
    return run_name(a.algorithm, part, cluster, k=a.num_clients, p=a.participation_rate, lr=a.learning_rate,
                    e=None if a.local_steps else a.local_epochs, j=a.local_steps or None, **shared,
                    persist=a.client_opt_state == "persist",
                    sched=a.lr_schedule if a.lr_schedule != "constant" else None, quick=a.quick, s=a.seed)


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
        atomic_write_text(path, text)  # torchrun ranks may write it at the same time
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


def next_token_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T-1, V]: position t predicts token t+1 (the Fisher's targets are shifted to match)."""
    return model(input_ids=input_ids, use_cache=False).logits[:, :-1]


class DriftMean(WeightedMean):
    """The size-weighted mean of a cluster's clients plus the drift of their updates d_k = theta_k - x from the
    round's global model x (captured at ``reset``): the weighted RMS of ||d_k - d_bar|| (from sum_k w_k ||d_k||^2
    and ||d_bar||^2) and the mean cosine drift 1 - cos(theta_k, x); its sums join the engine's one all-reduce
    (``LlmTask.accumulators``). The task keeps one per cluster beside the aggregator, whichever that is: drift
    measures the clients' updates, not the aggregate."""

    def __init__(self, x: list[torch.Tensor]):
        super().__init__(x)
        self.x = x
        # float64: ||d_k||^2 is later differenced with ||d_bar||^2, which float32 would not survive
        self._x64 = P.flatten(x, torch.float64)
        self._client = torch.empty_like(self._x64)  # scratch for every client: theta_k, then d_k in place
        self._client_views = P.unflatten(self._client, x)
        # [sum_k w_k ||d_k||^2, sum_k (1 - cos(theta_k, x)), clients] stay on the device: no host sync per client
        self._sums = torch.zeros(3, dtype=torch.float64, device=self._x64.device)

    @torch.no_grad()
    def reset(self) -> None:
        super().reset()
        torch._foreach_copy_(P.unflatten(self._x64, self.x), self.x)
        self._x_norm = torch.linalg.vector_norm(self._x64)
        self._sums.zero_()

    @torch.no_grad()
    def add(self, client_params: list[torch.Tensor], weight: float = 1.0) -> None:
        super().add(client_params, weight)
        torch._foreach_copy_(self._client_views, [p.detach() for p in client_params])  # cast to float64
        cos = torch.dot(self._client, self._x64) / (torch.linalg.vector_norm(self._client) * self._x_norm
                                                     ).clamp_min(1e-12)
        d = self._client.sub_(self._x64)
        self._sums[0] += weight * torch.dot(d, d)
        self._sums[1] += 1.0 - cos
        self._sums[2] += 1

    def accumulators(self) -> list[torch.Tensor]:
        return [*super().accumulators(), self._sums]

    @torch.no_grad()
    def drift(self) -> dict:
        """The round's drift metrics (one host read)."""
        torch._foreach_copy_(self._client_views, self.result())  # the mean, in the float64 scratch buffer
        avg_norm = torch.linalg.vector_norm(self._client)
        d_bar = self._client.sub_(self._x64)
        w_sq_norm, cos_drift, n, d_bar_sq, avg_norm = torch.stack([*self._sums, torch.dot(d_bar, d_bar),
                                                                   avg_norm]).tolist()
        divergence = max(w_sq_norm / max(self.total_weight, 1e-12) - d_bar_sq, 0.0) ** 0.5
        return {"client_divergence": divergence, "client_divergence_rel": divergence / max(avg_norm, 1e-12),
                "cosine_drift": cos_drift / max(n, 1), "update_norm": d_bar_sq ** 0.5}


class LlmTask(engine.Task):
    """The rounds' task for ``common.engine``: a log row every round (drift: ``DriftMean``, one per cluster, fed by
    ``client_metrics``), evaluation every
    --eval-every rounds, the failure-mode rules (``failure.py``). The engine's round r is llm's round r + 1 (its
    participant, batch-order and dropout streams count rounds from 1)."""

    name, metric, purpose = "rounds", "val_ppl", "participants"
    supported_stats = ("fisher", "entropy")  # on the client's training examples / its --client-holdout examples

    def __init__(self, args, rd, fwd, params, device, client_data, client_held, eval_batches, info: dict):
        self.args, self.rd, self.fwd, self.params, self.device = args, rd, fwd, params, device
        self.client_data, self.client_held, self.eval_batches, self.info = client_data, client_held, eval_batches, info
        self.sizes = [int(cx.shape[0]) for cx, _ in client_data]
        self.rounds, self.eval_every, self.seed = args.num_rounds, 1, args.seed  # a row every round
        self.per_round = engine.clients_per_round(args.participation_rate, args.num_clients)
        self.round_lr = args.learning_rate  # plain SGD's step size (this round's, set by make_optimizer)
        self.optimizer = None if args.local_optimizer == "sgd" else torch.optim.AdamW(
            params, lr=args.learning_rate, weight_decay=args.weight_decay)
        self.adaptive_local = self.optimizer is not None
        self.acc = {"detected": {}, "train_tokens": 0}  # bytes sent: the engine's (fed.comm)
        self.drift: list[DriftMean] = []  # per cluster, built at the first round

    def lr(self, r: int) -> float:
        a = self.args
        return engine.cosine_lr(r, a.num_rounds, a.learning_rate) if a.lr_schedule == "cosine" else a.learning_rate

    def make_optimizer(self, lr: float):
        opt = super().make_optimizer(lr)
        for group in opt.param_groups if opt is not None else []:
            group["lr"] = lr
        self.round_lr = lr
        return opt

    def sample(self, r: int) -> list[int]:
        return self.admit(r, engine.sample_clients(self.seed, r + 1, len(self.sizes), self.per_round, self.purpose))

    def admit(self, r: int, cohort: list[int]) -> list[int]:
        self.participants = cohort
        return [k for k in cohort if self.sizes[k]]  # a client without examples sits the round out

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean next-token loss of a batch (bf16 autocast on CUDA); tests override it."""
        with autocast(self.device):
            return lm_loss(self.fwd, x, y)

    def train_client(self, k, r, opt, algo) -> dict:
        """Client k's local steps of round r (its batch order and dropout from the streams keyed (seed, r + 1, k)):
        gradient, clipping to --max-grad-norm, the algorithm's hook, then the SGD or AdamW step."""
        a, params = self.args, self.params
        cx, cy = self.client_data[k]
        gen = client_generator(a.seed, r + 1, k)
        steps, tokens, loss_sum, gnorm_sum = 0, 0, 0.0, 0.0  # the sums become device tensors: no host sync per step
        with client_rng(a.seed, r + 1, k):
            for x, y in batches(cx, cy, a.batch_size, a.local_epochs, a.max_local_steps, gen, self.device,
                                exact_steps=a.local_steps):
                for p in params:
                    p.grad = None
                loss = self.loss(x, y)
                loss.backward()
                for p in params:
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad
                grads = [p.grad for p in params]
                gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                if a.max_grad_norm > 0:
                    torch._foreach_mul_(grads, (a.max_grad_norm / (gnorm + 1e-6)).clamp(max=1.0))
                algo.adjust_grads(params)  # FedProx's mu (theta - theta_global), SCAFFOLD's c - c_i
                if opt is not None:
                    opt.step()
                else:  # plain SGD: theta <- theta - lr (g + wd theta)
                    with torch.no_grad():
                        if a.weight_decay:
                            torch._foreach_add_(grads, [p.detach() for p in params], alpha=a.weight_decay)
                        torch._foreach_add_([p.detach() for p in params], grads, alpha=-self.round_lr)
                algo.after_step(params, self.round_lr)  # SCAFFOLD with AdamW: theta -= lr (c - c_i)
                steps, tokens = steps + 1, tokens + x.numel()
                loss_sum, gnorm_sum = loss_sum + loss.detach().float(), gnorm_sum + gnorm.detach().float()
        mu = algo.mu if isinstance(algo, algorithms.FedProx) else 0.0  # (mu/2) ||theta - theta_global||^2 at the end
        prox = 0.5 * mu * P.norm(P.sub(params, algo.anchor)) ** 2 if mu > 0 else 0.0
        loss = torch.as_tensor(loss_sum, dtype=torch.float64, device=self.device) / max(steps, 1)
        return {"loss": loss, "steps": steps, "tokens": tokens, "prox": prox,
                "grad_norm": float(gnorm_sum) / max(steps, 1)}

    def client_loss(self, k: int) -> float:  # IFCA's choice: the loaded model's loss on client k's first batches
        (cx, cy), bs = self.client_data[k], self.args.batch_size
        n = min(cx.shape[0], self.args.ifca_batches * bs)
        return perplexity(self.fwd, [(cx[i:i + bs], cy[i:i + bs]) for i in range(0, n, bs)])["loss"]

    def client_features(self, k: int) -> np.ndarray:
        if self.args.cluster_features == "tokens":
            return C.token_distribution(self.client_data[k][1], self.info["vocab_size"])
        return C.topic_distribution(self.info["topics"][k], self.info["num_topics"])

    def round_start(self, r: int) -> None:
        self.r = r
        if not self.drift:
            self.drift = [DriftMean(x) for x in self.fed.models]
        for d in self.drift:
            d.reset()

    def client_stat(self, name: str, k: int, out: dict):
        """FedFisher's Fisher diagonal on --fisher-samples of the client's training examples (next-token targets),
        FedEntropy's mean next-token entropy on its held-out examples (--client-holdout)."""
        if name == "fisher":
            (cx, cy), bs = self.client_data[k], self.args.fisher_batch

            def batches(pick):
                pick = pick.to(cx.device)
                return [(cx[pick[i:i + bs]], cy[pick[i:i + bs]][:, 1:]) for i in range(0, len(pick), bs)]
            return fisher.client_fisher(getattr(self.fwd, "_orig_mod", self.fwd), cx.shape[0], batches, self.args,
                                        self.r + 1, k, forward=next_token_logits, params=self.params)
        if name == "entropy":
            hx, hy = self.client_held[k]
            return mean_entropy(self.fwd, [(hx[i:i + 32], hy[i:i + 32]) for i in range(0, hx.shape[0], 32)],
                                vocab_size=self.info["vocab_size"], device=self.device)
        return super().client_stat(name, k, out)

    def client_metrics(self, k, out) -> dict:
        self.drift[self.fed.assign[k]].add(self.params, float(self.sizes[k]))
        return {key: out[key] for key in ("grad_norm", "prox", "steps", "tokens")}

    def accumulators(self) -> list[torch.Tensor]:
        return [t for d in self.drift for t in d.accumulators()]

    def round_end(self, rnd) -> None:
        self.acc["train_tokens"] += sum(v["tokens"] for v in rnd["rows"].values())

    def evaluate(self, rnd) -> dict:
        """The round's row (every rank): drift metrics (clusters weighted by their clients' sizes), the clients'
        losses and gradient norms (none in a round without clients: DP's Poisson cohort may be empty), and on
        evaluation rounds the validation scores."""
        a, fed, r, rows, losses = self.args, self.fed, rnd["round"] + 1, rnd["rows"], rnd["losses"]
        finished = [(g, sum(self.sizes[k] for k in rnd["chosen"] if fed.assign[k] == g), agg.drift())
                    for g, agg in enumerate(self.drift) if any(fed.assign[k] == g for k in rnd["chosen"])]
        cw = np.array([n for _, n, _ in finished], dtype=np.float64)
        gnorms = [v["grad_norm"] for v in rows.values()]
        row = {"round": r, "step": int(sum(v["steps"] for v in rows.values())), "participants": self.participants,
               **{key: float(np.dot(cw, [met[key] for _, _, met in finished]) / cw.sum())
                  for key in (finished[0][2] if finished else ())}}
        if len(fed.models) > 1:
            row.update(clusters=fed.assign.tolist(), client_divergence_rel_per_cluster={
                str(g): met["client_divergence_rel"] for g, _, met in finished})
        w = np.array([self.sizes[k] for k in losses], dtype=np.float64)
        if losses:
            row.update(train_loss=float(np.dot(w, list(losses.values())) / w.sum()),
                       client_train_loss={str(k): v for k, v in losses.items()},
                       grad_norm_mean=float(np.mean(gnorms)), grad_norm_var=float(np.var(gnorms)),
                       prox_term=float(np.mean([v["prox"] for v in rows.values()])))
        if a.algorithm == "scaffold":
            controls = fed.algo.controls
            row.update(cv_norm=float(np.mean([P.norm(sc.c) for sc in controls])),
                       cv_client_norm=float(np.mean([P.norm(controls[fed.assign[k]].control(k)) for k in losses])))
        if r % a.eval_every == 0 or r == a.num_rounds:
            row.update(self.scores())
        elif not all(bool(torch.isfinite(t).all()) for x in fed.models for t in x):
            # a non-finite model between evaluations scores NaN: the divergence rule stops the run this round
            row.update(val_loss=math.nan, val_ppl=math.inf)
        row.update(rnd["aggregator"])  # the aggregator's own round metrics (fisher_eps_share, entropy weights)
        self.row = row
        return row

    def scores(self) -> dict:
        """Global validation loss of each cluster's model; the run's val_loss weighs them by the clients
        (by size) each serves; personalised: every client's held-out examples under its own cluster's model."""
        fed, per_cluster = self.fed, []
        for x in fed.models:
            P.load_(self.params, x)  # the same model on every rank: each scores its share
            per_cluster.append(perplexity(self.fwd, self.eval_batches, shard=True)["loss"])
        w = np.array(self.sizes, dtype=np.float64)
        loss = float(np.dot(w, [per_cluster[g] for g in fed.assign]) / w.sum())
        out = {"val_loss": loss, "val_ppl": _ppl(loss)}
        if len(fed.models) > 1:
            out["val_loss_per_cluster"] = per_cluster
        if self.args.client_holdout > 0:
            nll, tokens = 0.0, 0
            for k, (hx, hy) in enumerate(self.client_held):
                if hx.shape[0]:
                    P.load_(self.params, fed.models[fed.assign[k]])
                    ev = perplexity(self.fwd, [(hx[i:i + 32], hy[i:i + 32]) for i in range(0, hx.shape[0], 32)],
                                    shard=True)
                    nll, tokens = nll + ev["loss"] * ev["tokens"], tokens + ev["tokens"]
            ploss = nll / max(tokens, 1)
            out.update(personal_val_loss=ploss, personal_val_ppl=_ppl(ploss))
        return out

    def check(self, rd, rnd) -> None:
        """The failure-mode rules on the rows so far (rank 0's, sent to every rank); divergence stops the run
        before this round's checkpoint, so checkpoint.pt keeps the round before."""
        detected = self.acc["detected"]
        if rd.is_main:
            for mode, at in failure.detect(rd.rows(), initial_ppl=self.acc.get("initial_val_ppl")).items():
                detected.setdefault(mode, at)
        self.acc["detected"] = detected = dist.broadcast_object(detected)
        if "divergence" in detected:
            th, at = failure.Thresholds(), detected["divergence"]
            reason = None if not math.isfinite(self.row.get("val_loss", 0.0)) else (
                f"a validation loss > {1 + th.div_rel_increase:g} x the best so far since round {at}")
            rd.diverge(f"round {rnd['round'] + 1}", "validation loss", self.summary("diverged") if rd.is_main else None,
                       reason=reason)

    def summary(self, status: str) -> dict:
        rows, fed, acc, info, timing = self.rd.rows(), self.fed, self.acc, self.info, self.fed.timing
        evals = [x for x in rows if "val_loss" in x]
        best = min((x for x in evals if math.isfinite(x["val_loss"])), key=lambda x: x["val_loss"], default=None)
        last = evals[-1] if evals else {}
        return {
            "status": status, "rounds_done": rows[-1]["round"] if rows else 0, "num_rounds": self.rounds,
            "final_val_loss": last.get("val_loss"), "final_val_ppl": last.get("val_ppl"),
            "best_val_ppl": best["val_ppl"] if best else None, "best_round": best["round"] if best else None,
            "initial_val_ppl": acc.get("initial_val_ppl"), "final_personal_val_ppl": last.get("personal_val_ppl"),
            # reference points: a model not well below the unigram has learned token frequencies only
            "uniform_ppl": info["refs"]["uniform_ppl"], "unigram_val_ppl": info["refs"]["unigram_ppl"],
            "personal_unigram_ppl": info["personal_refs"],
            "final_client_divergence_rel": rows[-1].get("client_divergence_rel") if rows else None,
            "failure_modes": acc["detected"], "thresholds": vars(failure.Thresholds()),
            "num_clusters": len(fed.models), "clusters": fed.assign.tolist(), "clustering": fed.info,
            "cluster_purity": C.purity(fed.assign, np.array(info["dominant_topic"])) if len(fed.models) > 1
            else None,
            "dominant_topic": info["dominant_topic"],
            "local_steps_per_round": rows[-1]["step"] if rows else 0,  # from rows: a finished run resumed runs none
            "trainable_params": P.numel(self.params), **fed.comm,  # bytes_up, bytes_down: the engine's count
            "client_sizes": self.sizes, "vocab_size": info["vocab_size"], "partition_stats": info["partition_stats"],
            "client_seconds": round(timing["client_seconds"], 3), "round_seconds": round(timing["round_seconds"], 3),
            "overhead_fraction": (1 - timing["client_seconds"] / timing["round_seconds"]) if timing["round_seconds"]
            else None,
            "train_tokens": acc["train_tokens"] + fed.info.get("init_tokens", 0)}  # IFCA's starts included

    def state_dict(self) -> dict:
        return self.acc

    def load_state_dict(self, state: dict) -> None:
        self.acc = state


def run(args, rank: int, world: int) -> dict:
    """The federated run on ``common.engine``. Under torchrun every rank builds the same model and data, trains
    and scores its share (the round's sums all-reduced: every rank applies the same update); rank 0 writes."""
    device = dist.device_for_rank(cli.resolve_device(args.device))
    seed_everything(args.seed)

    # ------------------------------------------------------------------ data and tokenizer
    train_data, valid_data = D.load_splits(args.data, args.data_dir, args.cache_dir)
    train_data = D.subsample(train_data, args.max_train_examples, args.seed)
    total = len(valid_data.texts)
    valid_data = D.subsample(valid_data, args.max_eval_examples, args.seed + 1)
    scored = f"{len(valid_data.texts)} of {total} texts"  # what the run's last line says it scored
    tok = build_tokenizer(args, train_data.texts)
    vocab_size = len(tok)
    examples = max(len(train_data.texts), len(valid_data.texts))  # the most any batch takes
    if args.model == "tiny-gpt2":  # its shape is known before it is built (another model's once loaded, below)
        check_memory(args, vocab_size, device, examples)
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
    # every client's tokens stay on the device for the whole run; --client-holdout: a seeded share held out
    client_data, client_held = [], []
    for k in range(args.num_clients):
        cx, cy = clients.client_tensors(k, x_all, y_all)
        n_held = int(round(args.client_holdout * cx.shape[0])) if cx.shape[0] >= 2 else 0
        order = torch.as_tensor(numpy_rng(args.seed, "holdout", k).permutation(cx.shape[0]))
        held, kept = order[:n_held], order[n_held:]
        client_data.append((cx[kept].to(device), cy[kept].to(device)))
        client_held.append((cx[held].to(device), cy[held].to(device)))
    dominant_topic = [int(np.bincount(train_data.labels[s], minlength=train_data.num_classes).argmax())
                      if len(s) else -1 for s in clients.shards]
    refs = unigram_perplexity(torch.cat([cy for _, cy in client_data]), y_val, vocab_size)
    personal_refs = _personal_unigram(client_data, client_held, vocab_size)

    # ------------------------------------------------------------------ model, run directory, state
    base = load_base(args.model, vocab_size=vocab_size, seq_len=args.seq_len, eos_id=tok.eos_token_id,
                     cache_dir=args.cache_dir)
    if args.model != "tiny-gpt2":
        check_memory(args, vocab_size, device, examples, base)
    # a loaded base stays in eval mode, as from_pretrained leaves it: its own dropout is off in the local steps,
    # while peft's LoRA modules (and their --lora-dropout) train; tiny-gpt2 has no dropout
    model = add_lora(base, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets).to(device)
    fwd = compiled.maybe_compile(model, args)  # forward passes only; `model` for parameters and state
    params = P.trainable(model)
    names = [n for n, _ in P.named_trainable(model)]
    rd = RunDir(args.out_dir, args.run_name or default_run_name(args), args, kind="llm_noniid/train",
                resume=args.resume, device=device, is_main=rank == 0, data=fingerprint,  # more rounds: --extend
                spans_length="the cosine learning rate" if args.lr_schedule == "cosine" else None)
    stats = statistics(clients, x_all, y_all, train_data.labels, train_data.num_classes, vocab_size)

    eval_batches = [{"input_ids": x_val[i:i + 32].to(device), "labels": y_val[i:i + 32].to(device)}
                    for i in range(0, x_val.shape[0], 32)]
    info = {"refs": refs, "personal_refs": personal_refs, "dominant_topic": dominant_topic, "vocab_size": vocab_size,
            "partition_stats": {k: v for k, v in stats.items() if k != "clients"},
            "topics": [train_data.labels[s] for s in clients.shards], "num_topics": train_data.num_classes}
    task = LlmTask(args, rd, fwd, params, device, client_data, client_held, eval_batches, info)
    # before any round (a base's zero-shot perplexity); a resumed run keeps its checkpoint's value
    task.acc["initial_val_ppl"] = perplexity(fwd, eval_batches, shard=True)["ppl"]
    fed = engine.Federation(task, args)  # --clustering data: each client's own distribution, sent once
    start = fed.start(rd, names)  # the checkpoint's state, else (IFCA) the clusters' starting models
    if rd.is_main:
        atomic_write_json(rd.artifact("partition.json"), {"partition": args.partition, **stats,
                                                          "clusters": fed.assign.tolist(), "clustering": fed.info})
    dist.barrier()  # every rank has read the checkpoint before rank 0 writes the next one
    engine.run(task, fed, rd, names, start)

    dist.barrier()  # rank 0 has written every row before the other ranks read them
    summary = rd.write_summary(task.summary("complete"))
    if rd.is_main:
        save_models(args, rd, model, params, fed.models, tok, summary)
        report.print_ending(rd.path, "final validation perplexity", summary["final_val_ppl"],
                            {"unigram": refs["unigram_ppl"], "uniform": refs["uniform_ppl"]}, scored=scored,
                            figures=f"python plots/plot_llm_noniid.py --runs {args.out_dir}",
                            loader="AutoModelForCausalLM.from_pretrained"
                            + ("; LoRA adapter in adapter/: PeftModel.from_pretrained" if args.lora_r else ""))
    rd.release()
    return summary


def save_models(args, rd, model, params, cluster_params, tok, summary: dict) -> None:
    """<run>/model (with clusters: cluster 0's, the others' in model_cluster<g>), LoRA merged in, with its tokenizer;
    LoRA runs also <run>/adapter (peft format) naming the hub base or, for tiny-gpt2, <run>/base_model."""
    info = {k: summary.get(k) for k in ("status", "final_val_loss", "final_val_ppl", "unigram_val_ppl")}
    for g, cp in enumerate(cluster_params):
        P.load_(params, cp)
        suffix = f"_cluster{g}" if g else ""
        export.save_model_dir(rd.path, export.merged(model), tok, info=info | {"cluster": g}, name="model" + suffix)
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
