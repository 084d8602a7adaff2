"""What llm_noniid/shakespeare.py runs once its flags are parsed: LEAF's character LSTM and the tiny causal LM
(``CharLSTM``, ``LastToken``), the checks of its arguments, the task that ``common.engine`` runs
(``ShakespeareTask``), the clients (the roles or a synthetic population) and the run itself.
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import batched, cli, engine, flags, report
from common import params as P
from common import shakespeare as S
from common import stacked_lstm as SL
from common.runlog import RunDir, data_fingerprint, run_name
from common.seed import client_generator, client_rng, numpy_rng, seed_everything
from llm_noniid.model import tiny_gpt2
from llm_noniid.options import VALIDATION_FRACTION


class CharLSTM(nn.Module):
    """LEAF's / McMahan et al.'s Shakespeare model: an ``embed``-dim character embedding, a ``layers``-layer LSTM
    of ``hidden`` units, a linear read-out of the last step: [B, T] character ids -> [B, vocab] logits."""

    def __init__(self, vocab: int, embed: int = 8, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])

    def stacked(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """n copies at once (``p``: name -> [n, *shape]): [n, B, T] ids -> [n, B, vocab] (``common.stacked_lstm``)."""
        rows = torch.arange(len(x), device=x.device)[:, None, None]
        lstm = {k.removeprefix("lstm."): v for k, v in p.items() if k.startswith("lstm.")}
        h = SL.lstm(self.lstm, lstm, p["embed.weight"][rows, x])[:, :, -1]
        return torch.baddbmm(p["head.bias"].unsqueeze(1), h, p["head.weight"].transpose(1, 2))


class LastToken(nn.Module):
    """A causal LM (``llm_noniid.model.tiny_gpt2`` over characters) scored on its last position only."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=x).logits[:, -1]

    def stacked(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """n copies at once (``p``: name -> [n, *shape]): [n, B, T] ids -> [n, B, vocab] (``common.batched``)."""
        return batched.stacked_forward(self, p, x)


def validate(args) -> None:
    cli.check(args.model in ("lstm", "tiny-gpt2"), f"--model {args.model!r} is unknown; expected lstm or tiny-gpt2")
    cli.check(args.data_dir is not None, "--data-dir is needed: build one with python -m common.shakespeare --out "
                                         "DIR, or run --quick (the committed sample)")
    engine.check_algorithm_args(args, plain_sgd=True, optimizer_hint="")
    flags.refuse_unused(args, [*((dest, args.model == "lstm", f"with --model {args.model}")
                                 for dest in ("embed_dim", "hidden", "layers")),
                               ("population_seed", args.population > 0, "without --population")])
    cli.check(not (args.population and args.max_client_samples), "--max-client-samples caps the roles; a "
              "--population's clients take their sizes from the roles' (drop one of the two)")


def default_run_name(a) -> str:
    return run_name("shakespeare", a.model, engine.name_suffix(a).lstrip("_") or None, n=a.population or None,
                    val=a.eval_split == "validation", m=a.clients_per_round,
                    cap=a.max_client_samples or None, e=a.local_epochs, b=a.batch_size or "inf",
                    lr=a.learning_rate, s=a.seed)


def build_model(args, vocab: int) -> nn.Module:
    if args.model == "lstm":
        return CharLSTM(vocab, args.embed_dim, args.hidden, args.layers)
    return LastToken(tiny_gpt2(vocab, S.SEQ_LEN, None))


class ShakespeareTask(engine.Task):
    """Client k: ``--local-epochs`` passes of SGD over its training windows (``train_of(k)``: positions in the
    stream) in batches of ``--batch-size``, drawn from its own stream (seed, round, k); evaluation: accuracy and
    loss of the global model on ``eval_pos`` (the test or validation subset)."""

    name, metric = "shakespeare", "test_accuracy"

    def __init__(self, args, data: S.Shakespeare, model: nn.Module, device, eval_pos: np.ndarray, sizes, train_of):
        self.args, self.data, self.model, self.device = args, data, model, device
        self.params, self.seed = P.trainable(model), args.seed
        self.names = [n for n, _ in P.named_trainable(model)]
        self.sizes, self.train_of = sizes, train_of
        self.rounds, self.eval_every = args.rounds, args.eval_every
        self.per_round = min(args.clients_per_round, len(self.sizes))
        self.eval_pos = eval_pos
        self.optimizer = torch.optim.SGD(self.params, lr=args.learning_rate)
        self.best = {"test_accuracy": -1.0, "round": 0}

    def lr(self, r: int) -> float:
        return self.args.learning_rate

    def make_optimizer(self, lr: float):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return super().make_optimizer(lr)

    def client_batches(self, k, r) -> batched.Batches:
        """Client k's batches in round r: --local-epochs shuffles (its stream (seed, round, k)) in batches of
        --batch-size (0: all its samples in one), at most --max-local-steps of them; each batch's windows cut when
        it is taken."""
        a, pos = self.args, self.train_of(k)
        size = a.batch_size or max(len(pos), 1)
        gen, picks = client_generator(a.seed, r, k), []
        for _ in range(a.local_epochs):
            order = torch.randperm(len(pos), generator=gen).numpy()
            picks += [pos[order[i:i + size]] for i in range(0, len(pos), size)]
        return batched.Batches(picks[:a.max_local_steps] if a.max_local_steps else picks, self.data.windows)

    def train_client(self, k, r, opt, algo) -> dict:
        total, steps = torch.zeros((), device=self.device), 0
        self.model.train()
        with client_rng(self.args.seed, r, k):
            for x, y in self.client_batches(k, r):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(self.model(x.to(self.device)), y.to(self.device))
                loss.backward()
                algo.adjust_grads(self.params)
                opt.step()
                total += loss.detach()
                steps += 1
        return {"loss": total / max(steps, 1), "steps": steps}

    def stacked_losses(self, params, x, y) -> torch.Tensor:
        logits = self.model.stacked(dict(zip(self.names, params)), x)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)

    @torch.no_grad()
    def scores(self) -> dict:
        self.model.eval()
        right, nll = 0, 0.0
        for i in range(0, len(self.eval_pos), 1000):
            x, y = self.data.windows(self.eval_pos[i:i + 1000])
            logits = self.model(x.to(self.device)).float()
            y = y.to(self.device)
            right += int((logits.argmax(-1) == y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
        n = max(len(self.eval_pos), 1)
        return {"test_accuracy": right / n, "test_loss": nll / n}

    def evaluate(self, rnd) -> dict:
        P.load_(self.params, self.fed.models[0])
        row = {"round": rnd["round"] + 1, "train_loss": float(np.mean(list(rnd["losses"].values()))),
               **self.scores()}
        if row["test_accuracy"] > self.best["test_accuracy"]:
            self.best = {"test_accuracy": row["test_accuracy"], "round": row["round"]}
        return row

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


def references(data: S.Shakespeare, eval_pos: np.ndarray, clients: int) -> dict:
    """The accuracy of always predicting the most frequent training character, and of a uniform guess."""
    counts = torch.bincount(data.stream[torch.as_tensor(np.concatenate(data.train[:clients]))].long(),
                            minlength=len(data.vocab))
    majority = int(counts.argmax())
    hits = int((data.stream[torch.as_tensor(eval_pos)].long() == majority).sum()) if len(eval_pos) else 0
    return {"majority_char": data.vocab[majority], "majority_accuracy": hits / max(len(eval_pos), 1),
            "uniform_accuracy": 1.0 / len(data.vocab)}


def cap_samples(train: list[np.ndarray], n: int, seed: int = 0) -> list[np.ndarray]:
    """Each role's training positions, at most ``n`` of them: a role with more keeps a random subset of n, seeded by
    (seed, "shakespeare-cap", k) and sorted, so every --seed and round sees the same clients."""
    return [pos if len(pos) <= n else np.sort(numpy_rng(seed, "shakespeare-cap", k).choice(pos, n, replace=False))
            for k, pos in enumerate(train)]


def clients(args, data: S.Shakespeare) -> tuple[np.ndarray, object]:
    """The clients' sizes n_k ([N] float64, the engine's weights) and ``train_of(k)``, client k's training positions:
    the roles themselves (at most ``--max-client-samples`` each), or ``--population`` synthetic clients cut from them
    (three integers each)."""
    if not args.population:
        train = cap_samples(data.train, args.max_client_samples) if args.max_client_samples else data.train
        return np.array([len(t) for t in train], dtype=np.float64), train.__getitem__
    pop = S.population([len(t) for t in data.train], args.population, args.population_seed)
    return pop.length.astype(np.float64), functools.partial(pop.positions, data.train)


def run(args) -> dict:
    device = cli.resolve_device(args.device)
    seed_everything(args.seed)
    data = S.load(args.data_dir)
    k = len(data.train) if not args.max_clients else min(args.max_clients, len(data.train))
    data.train, data.test = data.train[:k], data.test[:k]
    if args.eval_split == "validation":
        data.train, data.test = S.hold_out(data.train, VALIDATION_FRACTION)
    test = np.concatenate(data.test)
    eval_pos = test if not args.max_eval_samples or args.max_eval_samples >= len(test) else np.sort(
        numpy_rng(args.seed, "shakespeare-eval").choice(test, args.max_eval_samples, replace=False))
    refs = references(data, eval_pos, k)
    sizes, train_of = clients(args, data)
    folder = Path(args.data_dir)
    fingerprint = data_fingerprint("shakespeare", folder, files=[folder / "manifest.json", folder / "clients.jsonl"],
                                   splits={"clients": k, "eval": len(eval_pos),
                                           **({"population": len(sizes)} if args.population else {})})
    model = build_model(args, len(data.vocab)).to(device)
    names = [n for n, _ in P.named_trainable(model)]
    rd = RunDir(args.out_dir, args.run_name or default_run_name(args), args, kind="llm_noniid/shakespeare",
                resume=args.resume, device=device, data=fingerprint)
    task = ShakespeareTask(args, data, model, device, eval_pos, sizes, train_of)
    fed = engine.Federation(task, args)
    start = fed.start(rd, names)
    t0 = time.perf_counter()
    engine.run(task, fed, rd, names, start)
    rows = rd.rows()
    last = rows[-1] if rows else {}
    summary = rd.write_summary({
        "status": "complete", "rounds_done": last.get("round", 0), "clients": len(sizes), "roles": k,
        "population": args.population, "eval_split": args.eval_split, "clients_per_round": task.per_round,
        "model": args.model, "trainable_params": P.numel(task.params), "vocab_size": len(data.vocab),
        "train_samples": int(sum(task.sizes)), "eval_samples": len(eval_pos),
        "final_test_accuracy": last.get("test_accuracy"), "final_test_loss": last.get("test_loss"),
        "best_test_accuracy": task.best["test_accuracy"], "best_round": task.best["round"], **refs,
        "uniform_loss": math.log(len(data.vocab)), "data_fingerprint": data.manifest["fingerprint"],
        "wall_seconds_this_session": round(time.perf_counter() - t0, 3), **fed.comm,
        "client_seconds": round(fed.timing["client_seconds"], 3),
        "round_seconds": round(fed.timing["round_seconds"], 3)})
    report.print_ending(rd.path, "final test accuracy", summary["final_test_accuracy"],
                        {"majority character": refs["majority_accuracy"], "uniform": refs["uniform_accuracy"]})
    rd.release()
    return summary
