"""Federated next-character prediction on LEAF's Shakespeare: each speaking role a client (common.shakespeare),
the LEAF / McMahan et al. 2017 character LSTM or this project's tiny causal LM, through the round engine.

    python llm_noniid/shakespeare.py --quick
    python -m common.shakespeare --out data/shakespeare
    python llm_noniid/shakespeare.py --data-dir data/shakespeare --clients-per-round 10 --rounds 20 \\
        --learning-rate 0.8 --batch-size 10 --local-epochs 1 --max-eval-samples 20000

A task of its own rather than train.py's ``--data``: LEAF's task is one prediction per 80-character window, scored
by accuracy, on ~1,100 clients fixed by the data, where train.py tokenizes a text pool, partitions it into a few
clients, scores perplexity of whole sequences and keeps per-client tensors and drift sums whose cost grows with the
clients. Here a client's windows are cut from one shared character stream per batch, so a round costs its clients'
samples whatever the population.

``--population N``: N synthetic clients instead of the roles, for populations larger than the 1,166 real ones (a
cross-device setting, DP's sampling). Client i is a contiguous slice of ONE real role's training samples, its role
drawn in proportion to the role's size and its length from the real roles' sizes (``common.shakespeare.population``,
seeded by --population-seed): several synthetic clients share a speaker and may overlap, so this is a population of
the real roles' sizes and styles, not more data. Evaluation stays on the real test split. A client costs three
integers; a round costs its clients' samples.

``--eval-split validation``: 10% of every role's training samples held out at random (seeded) and scored instead
of the test split (the rest trains, and a population is cut from the rest): for choosing settings without looking
at the test numbers. Writes <out-dir>/<run-name>/ with args.json, metrics.jsonl (one row per evaluation:
test accuracy and loss), summary.json (final and best accuracy beside the majority-character and uniform
references), checkpoint.pt.
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

from common import cli, engine, flags, report
from common import params as P
from common import shakespeare as S
from common.runlog import RunDir, data_fingerprint, run_name
from common.seed import client_generator, client_rng, numpy_rng, seed_everything
from llm_noniid.model import tiny_gpt2

SAMPLE = Path(__file__).resolve().parents[1] / "common" / "data" / "shakespeare_sample"
# --quick: the committed 12-role sample, 10 of them a round; the LSTM learns past the majority character in seconds
VALIDATION_FRACTION = 0.1  # --eval-split validation: each role's training samples held out
QUICK = dict(data_dir=str(SAMPLE), rounds=6, clients_per_round=10, local_epochs=1, batch_size=10,
             learning_rate=2.0, hidden=64, max_eval_samples=0)


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


class LastToken(nn.Module):
    """A causal LM (``llm_noniid.model.tiny_gpt2`` over characters) scored on its last position only."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=x).logits[:, -1]


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.presets = {"quick": QUICK}
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="a folder built by `python -m common.shakespeare --out DIR` "
                   "(--quick: the committed 12-role sample, common/data/shakespeare_sample)")
    g.add_argument("--max-clients", type=flags.COUNT, default=0, help="only the first N roles (0: every role)")
    g.add_argument("--population", type=flags.COUNT, default=0, help="N synthetic clients, each a contiguous "
                   "slice of one real role's training samples (several share a speaker); 0: the roles themselves")
    g.add_argument("--population-seed", type=flags.SEED, default=0, help="seed of the synthetic population (fixed "
                   "across --seed: the data, not the run)")
    g.add_argument("--eval-split", choices=("test", "validation"), default="test", help="test: the roles' test "
                   "split | validation: 10%% of each role's training samples held out (choose settings on it)")
    g.add_argument("--max-eval-samples", type=flags.COUNT, default=20000, help="test samples scored, a seeded "
                   "subset of every role's test samples (0: all; the full build holds ~845,000)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="lstm", help="lstm (LEAF / McMahan et al. 2017: 8-dim embedding, 2-layer LSTM "
                   "of 256 units) | tiny-gpt2 (llm_noniid's random 2-layer GPT-2, over characters)")
    g.add_argument("--embed-dim", type=flags.POSITIVE_INT, default=8, help="lstm: character embedding size")
    g.add_argument("--hidden", type=flags.POSITIVE_INT, default=256, help="lstm: units per LSTM layer")
    g.add_argument("--layers", type=flags.POSITIVE_INT, default=2, help="lstm: LSTM layers")
    g = p.add_argument_group("local training")
    g.add_argument("--local-epochs", type=flags.POSITIVE_INT, default=1, help="E: passes over the client's samples")
    g.add_argument("--batch-size", type=flags.POSITIVE_INT, default=10, help="B: local batch size (samples)")
    g.add_argument("--max-local-steps", type=flags.COUNT, default=0, help="cap on local SGD steps (0: no cap)")
    g.add_argument("--learning-rate", type=flags.POSITIVE, default=0.8, help="local SGD learning rate (LEAF: 0.8)")
    g = p.add_argument_group("federation")
    g.add_argument("--rounds", type=flags.POSITIVE_INT, default=20, help="communication rounds")
    g.add_argument("--clients-per-round", type=flags.POSITIVE_INT, default=10, help="clients sampled each round")
    g.add_argument("--eval-every", type=flags.POSITIVE_INT, default=1, help="evaluate every N rounds")
    engine.add_algorithm_args(p, client_opt_state=None, clustering="one global model is scored here")
    cli.add_run_args(p, out_dir="runs/shakespeare")
    return p


def validate(args) -> None:
    cli.check(args.model in ("lstm", "tiny-gpt2"), f"--model {args.model!r} is unknown; expected lstm or tiny-gpt2")
    cli.check(args.data_dir is not None, "--data-dir is needed: build one with python -m common.shakespeare --out "
                                         "DIR, or run --quick (the committed sample)")
    engine.check_algorithm_args(args, plain_sgd=True, optimizer_hint="")
    flags.refuse_unused(args, [*((dest, args.model == "lstm", f"with --model {args.model}")
                                 for dest in ("embed_dim", "hidden", "layers")),
                               ("population_seed", args.population > 0, "without --population")])


check_args = validate


def default_run_name(a) -> str:
    return run_name("shakespeare", a.model, engine.name_suffix(a).lstrip("_") or None, n=a.population or None,
                    val=a.eval_split == "validation", m=a.clients_per_round,
                    e=a.local_epochs, b=a.batch_size, lr=a.learning_rate, s=a.seed)


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

    def train_client(self, k, r, opt, algo) -> dict:
        a, pos = self.args, self.train_of(k)
        gen = client_generator(a.seed, r, k)
        total, steps = torch.zeros((), device=self.device), 0
        self.model.train()
        with client_rng(a.seed, r, k):
            for _ in range(a.local_epochs):
                order = torch.randperm(len(pos), generator=gen).numpy()
                for i in range(0, len(pos), a.batch_size):
                    if a.max_local_steps and steps >= a.max_local_steps:
                        break
                    x, y = self.data.windows(pos[order[i:i + a.batch_size]])
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(self.model(x.to(self.device)), y.to(self.device))
                    loss.backward()
                    algo.adjust_grads(self.params)
                    opt.step()
                    total += loss.detach()
                    steps += 1
        return {"loss": total / max(steps, 1), "steps": steps}

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


def clients(args, data: S.Shakespeare) -> tuple[np.ndarray, object]:
    """The clients' sizes n_k ([N] float64, the engine's weights) and ``train_of(k)``, client k's training positions:
    the roles themselves, or ``--population`` synthetic clients cut from them (three integers each)."""
    if not args.population:
        return np.array([len(t) for t in data.train], dtype=np.float64), data.train.__getitem__
    pop = S.population([len(t) for t in data.train], args.population, args.population_seed)
    return pop.length.astype(np.float64), functools.partial(pop.positions, data.train)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    validate(args)
    return run(args)


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


if __name__ == "__main__":
    cli.run(main)
