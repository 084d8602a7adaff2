"""One cross-device FedAvg workload, run by five engines (the rows of ``bench_cross_device.py``): this project's round
engine (sequential, and batched where that mode exists), a plain PyTorch loop, Flower's simulation engine and
pfl-research. Each ``run_*`` trains the same thing and stamps its round boundaries on a ``Clock``:

  model     llm_noniid.shakespeare_task.CharLSTM (LEAF / McMahan et al.: 8-dim embedding, 2-layer LSTM), built after
            ``seed_everything(seed)``: the same initial weights in every engine
  data      common.shakespeare: the first ``clients`` roles; round r's cohort ``engine.sample_clients(seed, r, ...)``;
            client k's samples in round r: its training windows in the order ``client_generator(seed, r, k)``
            draws, cut to ``local_steps`` x ``batch_size`` (1 local epoch when ``local_steps`` is 0), in batches of
            ``batch_size``: exactly the batches ``llm_noniid/shakespeare.py`` trains on with --max-local-steps
  local     plain SGD at ``lr``, a fresh optimizer per client; server: the average of the cohort's models
            weighted by each client's training windows n_k (server step size 1)
  scored    after the last round, outside the timing, by the same function (``heldout``): loss and accuracy of
            the global model on a seeded subset of the roles' held-out windows

The engine runs ``common.engine.run`` on ``llm_noniid.shakespeare_task.ShakespeareTask`` without a run directory (no log
rows or checkpoints: nothing but rounds). Flower's ClientApp (``flower_train``) and the plain loop share one client
function (``local_sgd``); pfl-research trains with its own loop on the same batches (its ``Dataset.iter`` does not
shuffle). Flower and pfl-research are imported only by their own runners.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common import engine
from common import shakespeare as S
from common.seed import client_generator, numpy_rng, seed_everything
from llm_noniid.shakespeare_task import CharLSTM


@dataclass(frozen=True)
class Workload:
    data_dir: str
    clients: int = 1000       # the first N roles of the build
    per_round: int = 10       # cohort size
    rounds: int = 4
    batch_size: int = 10
    local_steps: int = 20     # cap on local SGD steps (0: one full local epoch)
    lr: float = 0.8
    hidden: int = 256
    embed: int = 8
    layers: int = 2
    seed: int = 0
    eval_samples: int = 5000  # held-out windows scored (0: all of the roles')

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class Clock:
    """Stamps of the rounds: when the first began and when each ended, in wall-clock seconds (``time.time``:
    comparable across the processes of one machine) and in CPU seconds of this process and all its descendants
    (Flower's Ray processes included; on a shared machine the steadier measure of the work done)."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.notes: dict = {}  # what an engine reports of itself (this engine: its time outside local training)

    def start(self) -> None:
        if not self.wall:
            self.end()

    def end(self) -> None:
        self.wall.append(time.time())
        self.cpu.append(tree_usage(os.getpid())[1])

    @property
    def first_start(self) -> float:
        return self.wall[0]

    @property
    def rounds(self) -> int:
        return max(len(self.wall) - 1, 0)

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.wall, self.wall[1:])]

    def cpu_durations(self) -> list[float]:
        return [b - a for a, b in zip(self.cpu, self.cpu[1:])]


def tree_usage(root: int) -> tuple[int, float, int]:
    """(resident bytes, CPU seconds, processes) of ``root`` and every process descending from it, read from /proc
    (Linux). CPU seconds: user + system time of the processes alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss, cpu, count, todo = 0, 0, 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            rss += int(fields[21]) * PAGE  # field 24 of stat: resident pages
            cpu += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime (clock ticks)
            count += 1
        except (OSError, IndexError, ValueError):
            pass
        todo += children.get(pid, [])
    return rss, cpu / TICKS, count


PAGE, TICKS = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the shared workload
class Data:
    """The build cut to the workload's clients, their sizes n_k and the held-out windows scored."""

    def __init__(self, w: Workload):
        self.shk = S.load(w.data_dir)
        k = min(w.clients, len(self.shk.train))
        self.train, test = self.shk.train[:k], np.concatenate(self.shk.test[:k])
        self.sizes = [float(len(t)) for t in self.train]
        self.eval_pos = test if not w.eval_samples or w.eval_samples >= len(test) else np.sort(
            numpy_rng(w.seed, "shakespeare-eval").choice(test, w.eval_samples, replace=False))
        self.vocab = len(self.shk.vocab)

    def windows(self, pos):
        return self.shk.windows(pos)


def build_model(w: Workload, vocab: int, cls: type = CharLSTM) -> CharLSTM:
    seed_everything(w.seed)
    return cls(vocab, w.embed, w.hidden, w.layers)


def cohort(w: Workload, num_clients: int, r: int) -> list[int]:
    return engine.sample_clients(w.seed, r, num_clients, min(w.per_round, num_clients))


def client_positions(w: Workload, data: Data, r: int, k: int) -> np.ndarray:
    """Client k's training windows in round r, in the order it trains on them (ShakespeareTask.train_client's)."""
    pos = data.train[k]
    order = torch.randperm(len(pos), generator=client_generator(w.seed, r, k)).numpy()
    return pos[order[:w.local_steps * w.batch_size] if w.local_steps else order]


def samples_per_round(w: Workload, data: Data) -> list[int]:
    return [sum(len(client_positions(w, data, r, k)) for k in cohort(w, len(data.train), r)) for r in range(w.rounds)]


def local_sgd(model, opt, data: Data, w: Workload, r: int, k: int) -> float:
    """One client's local training (the plain loop's and Flower's client); its mean training loss."""
    pos, total, steps = client_positions(w, data, r, k), torch.zeros(()), 0
    model.train()
    for i in range(0, len(pos), w.batch_size):
        x, y = data.windows(pos[i:i + w.batch_size])
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        total += loss.detach()
        steps += 1
    return float(total) / max(steps, 1)


@torch.no_grad()
def heldout(model, data: Data) -> dict:
    """Loss and accuracy of ``model`` on the held-out windows (ShakespeareTask.scores' computation, in chunks of 100
    windows: 1,000 at once through the 256-unit LSTM took ~300 MB, which the peak RSS would have counted)."""
    model.eval()
    right, nll = 0, 0.0
    for i in range(0, len(data.eval_pos), 100):
        x, y = data.windows(data.eval_pos[i:i + 100])
        logits = model(x).float()
        right += int((logits.argmax(-1) == y).sum())
        nll += float(F.cross_entropy(logits, y, reduction="sum"))
    n = max(len(data.eval_pos), 1)
    return {"heldout_loss": nll / n, "heldout_accuracy": right / n}


# ---------------------------------------------------------------- this project's engine
def engine_argv(w: Workload) -> list[str]:
    """llm_noniid/shakespeare.py's flags for the workload."""
    return ["--data-dir", w.data_dir, "--max-clients", str(w.clients), "--clients-per-round", str(w.per_round),
            "--rounds", str(w.rounds), "--eval-every", str(w.rounds), "--local-epochs", "1",
            "--batch-size", str(w.batch_size), "--max-local-steps", str(w.local_steps), "--learning-rate", str(w.lr),
            "--hidden", str(w.hidden), "--embed-dim", str(w.embed), "--layers", str(w.layers),
            "--seed", str(w.seed), "--max-eval-samples", str(w.eval_samples), "--quiet", "--device", "cpu"]


def run_engine(w: Workload, clock: Clock, data: Data, extra: tuple[str, ...] = ()):
    """``common.engine.run`` over ShakespeareTask (``extra``: more flags, the batched mode's)."""
    from common import cli
    from common import params as P
    from llm_noniid import shakespeare, shakespeare_task

    args = cli.parse(shakespeare.get_args_parser(), [*engine_argv(w), *extra])
    shakespeare_task.validate(args)

    class Timed(shakespeare_task.ShakespeareTask):
        def round_start(self, r):
            clock.start()
            super().round_start(r)

        def round_end(self, rnd):
            super().round_end(rnd)
            clock.end()

    model = build_model(w, data.vocab)
    data.shk.train, data.shk.test = data.train, data.shk.test[:len(data.train)]
    sizes, train_of = shakespeare_task.clients(args, data.shk)  # the roles themselves (no --population)
    task = Timed(args, data.shk, model, torch.device("cpu"), data.eval_pos, sizes, train_of)
    fed = engine.Federation(task, args)
    engine.run(task, fed)
    P.load_(task.params, fed.models[0])
    t = fed.timing  # the engine's own timers: whole rounds, and the clients' train_client calls within them
    clock.notes["outside_local_training"] = 1 - t["client_seconds"] / t["round_seconds"]
    return model


# ---------------------------------------------------------------- the plain loop
def run_loop(w: Workload, clock: Clock, data: Data):
    """The floor of a sequential simulator: one model; per client load the global weights, train, add n_k x the
    weights to a running sum; the global model is the sum over the cohort's n."""
    model = build_model(w, data.vocab)
    params = list(model.parameters())
    global_ = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=w.lr)
    for r in range(w.rounds):
        clock.start()
        acc, total = [torch.zeros_like(p) for p in params], 0.0
        for k in cohort(w, len(data.train), r):
            with torch.no_grad():
                torch._foreach_copy_(params, global_)
            local_sgd(model, opt, data, w, r, k)
            torch._foreach_add_(acc, [p.detach() for p in params], alpha=data.sizes[k])
            total += data.sizes[k]
        torch._foreach_div_(acc, total)
        global_ = acc
        clock.end()
    with torch.no_grad():
        torch._foreach_copy_(params, global_)
    return model


# ---------------------------------------------------------------- Flower (flwr[simulation], Ray)
_ACTOR: dict = {}  # per Ray actor process: the data, model and optimizer of its workload


def flower_train(msg, context):
    """Flower ClientApp's train: client k of round r (from the message's config) on this process's model."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    cfg = msg.content["config"]
    w, r, k = Workload(**json.loads(cfg["workload"])), int(cfg["round"]), int(cfg["client"])
    if _ACTOR.get("workload") != w:
        torch.set_num_threads(1)
        data = Data(w)
        model = build_model(w, data.vocab)
        _ACTOR.update(workload=w, data=data, model=model, opt=torch.optim.SGD(model.parameters(), lr=w.lr))
    data, model = _ACTOR["data"], _ACTOR["model"]
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss = local_sgd(model, _ACTOR["opt"], data, w, r, k)
    metrics = MetricRecord({"num-examples": data.sizes[k], "train_loss": loss})
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def run_flower(w: Workload, clock: Clock, data: Data, actors: int = 1):
    """Flower's simulation engine (``run_simulation``, Ray backend): ``clients`` SuperNodes, ``actors`` ClientApp
    processes of one CPU each; a FedAvg strategy whose configure_train sends round r's cohort (client k in the
    message's config) instead of sampling nodes itself; no federated evaluation."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    class Cohorts(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            clock.start()
            r = server_round - 1
            nodes = sorted(grid.get_node_ids())
            return [Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord(
                {**dict(config), "round": r, "client": k})}), message_type=MessageType.TRAIN, dst_node_id=node)
                    for node, k in zip(nodes, cohort(w, len(data.train), r))]

        def aggregate_train(self, server_round, replies):
            out = super().aggregate_train(server_round, replies)
            clock.end()
            return out

    model, final = build_model(w, data.vocab), {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        strategy = Cohorts(fraction_evaluate=0.0, min_available_nodes=len(data.train))
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=w.rounds,
                                train_config=ConfigRecord({"workload": w.to_json()}))
        final["arrays"] = result.arrays

    client = ClientApp()
    client.train()(flower_train)
    run_simulation(server_app=server, client_app=client, num_supernodes=len(data.train),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": actors, "num_gpus": 0, "log_to_driver": False}})
    if "arrays" not in final:
        raise RuntimeError("Flower's ServerApp ended without a model (see its log above)")
    model.load_state_dict(final["arrays"].to_torch_state_dict())
    return model


# ---------------------------------------------------------------- pfl-research
class PflCharLSTM(CharLSTM):
    """CharLSTM with the two methods pfl's PyTorchModel calls: ``loss(x, y)`` and ``metrics(x, y)``."""

    def loss(self, x, y):
        self.train()
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y):
        from pfl.metrics import Weighted

        self.eval()
        return {"loss": Weighted(float(F.cross_entropy(self(x), y, reduction="sum")), len(y))}


def run_pfl(w: Workload, clock: Clock, data: Data):
    """pfl-research's SimulatedBackend and FederatedAveraging in one process: users (r, k) handed out round by
    round (round r's cohort), each a Dataset of its round's windows; statistics weighted by n_k (a weighting
    postprocessor: pfl's own WeightByDatapoints would weigh by the round's cut, not by n_k); central SGD at lr 1."""
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightingStrategy
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    users = iter([(r, k) for r in range(w.rounds) for k in cohort(w, len(data.train), r)])

    def make_dataset(user):
        r, k = user
        x, y = data.windows(client_positions(w, data, r, k))
        return Dataset(raw_data=[x, y], user_id=user)

    class BySize(WeightingStrategy):
        def postprocess_one_user(self, *, stats, user_context):
            stats.reweight(data.sizes[user_context.user_id[1]])
            return stats, Metrics()

    class Timer(TrainingProcessCallback):
        def on_train_begin(self, *, model):
            clock.start()
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            clock.end()
            return False, Metrics()

    model = build_model(w, data.vocab, PflCharLSTM)
    federated = FederatedDataset(make_dataset, lambda: next(users))
    backend = SimulatedBackend(training_data=federated, val_data=federated, postprocessors=[BySize()])
    pfl_model = PyTorchModel(model=model, local_optimizer_create=torch.optim.SGD,
                             central_optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=w.rounds, evaluation_frequency=w.rounds,
                                           train_cohort_size=min(w.per_round, len(data.train)), val_cohort_size=None),
        backend=backend, model=pfl_model, callbacks=[Timer()],
        model_train_params=NNTrainHyperParams(local_num_epochs=1, local_learning_rate=w.lr,
                                              local_batch_size=w.batch_size),
        model_eval_params=NNEvalHyperParams(local_batch_size=1000))
    return model
