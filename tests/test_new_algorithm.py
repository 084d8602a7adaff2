"""A new client algorithm in one file: the toy below is defined and registered here, in the test, and runs through
every subproject's quick federated script in-process, no subproject edited (common/README.md's recipe, "Add an
algorithm", uses it as its example). The checks: each script accepted ``--algorithm toy_scaled`` and named its run
after it, the engine called the toy's hooks once per trained client (``client_start`` / ``client_end``, at least one
``adjust_grads``) and its server step once a round, with the same clients every round, and every server step moved
the global model by exactly the toy's scale of the aggregate's move (so the aggregate was real and the step the
toy's, not FedAvg's)."""
from __future__ import annotations

import importlib
import json

import pytest
import torch

from common import algorithm_flags
from common import algorithms as AL
from common import params as P


class ToyScaled(AL.FedAvg):
    """FedAvg with a server-side scaling: x <- x + SCALE (aggregate - x) (then the server optimizer's step)."""

    name, help = "toy_scaled", "FedAvg, the server moving SCALE of the way to the aggregate"
    SCALE = 0.5
    made: list[ToyScaled] = []  # the instances the scripts built (one per run)

    def __init__(self):
        self.calls = {"client_start": 0, "adjust_grads": 0, "client_end": 0, "server_step": 0}
        self.per_round, self.clients, self.moves = [], 0, []

    @classmethod
    def from_args(cls, args, cluster_models, sizes, assign=None, shift=False) -> ToyScaled:
        cls.made.append(cls())
        return cls.made[-1]

    def client_start(self, k, anchor, cluster=0) -> None:
        super().client_start(k, anchor, cluster)
        self.calls["client_start"] += 1

    def adjust_grads(self, params) -> None:
        self.calls["adjust_grads"] += 1

    def client_end(self, k, params, steps, lr) -> None:
        self.calls["client_end"] += 1
        self.clients += 1

    @torch.no_grad()
    def server_step(self, x, aggregate, server, cluster=0) -> None:
        self.calls["server_step"] += 1
        self.per_round.append(self.clients)
        self.clients = 0
        before = P.clone(x)
        target = [xi.double() + self.SCALE * (a.double() - xi.double()) for xi, a in zip(x, aggregate)]
        server.step(x, target)
        # (how far x moved, how far the aggregate was): the toy's step moves SCALE of the way
        self.moves.append((P.norm(P.sub([t.double() for t in x], [b.double() for b in before])),
                           P.norm(P.sub([a.double() for a in aggregate], [b.double() for b in before]))))


@pytest.fixture
def toy(monkeypatch):
    """``--algorithm toy_scaled`` registered for this test only (``common.algorithms.register`` does the same) and
    listed among the flag's values (``common.algorithm_flags.ALGORITHMS``, as common/README.md's recipe says)."""
    monkeypatch.setitem(AL.REGISTRY, ToyScaled.name, ToyScaled)
    monkeypatch.setitem(algorithm_flags.ALGORITHMS, ToyScaled.name, ToyScaled.help)
    ToyScaled.made = []
    return ToyScaled


# each subproject's quick federated script, shortened to a few rounds: (module, its flags, rounds)
SCRIPTS = {"mamba_fl": ("mamba_fl.fed_avg", ["--rounds", "3", "--eval-every", "3"], 3),
           "vit_sparse_fl": ("vit_sparse_fl.train_federated", ["--rounds", "2"], 2),
           "llm_noniid": ("llm_noniid.train", ["--num-rounds", "2"], 2),
           "lora_glue_fl": ("lora_glue_fl.fedavg_rounds", ["--rounds", "2", "--local_epochs", "1",
                                                           "--max_train_samples", "300"], 2)}


@pytest.mark.parametrize("subproject", SCRIPTS)
def test_a_toy_algorithm_runs_in_every_subproject_unedited(toy, subproject, tmp_path):
    module, flags, rounds = SCRIPTS[subproject]
    importlib.import_module(module).main(["--quick", "--algorithm", "toy_scaled", *flags, "--out-dir", str(tmp_path),
                                          "--quiet"])
    (algo,) = toy.made  # the script built the registered class, once
    run_dir = next(p.parent for p in tmp_path.glob("*/summary.json"))
    assert "toy_scaled" in run_dir.name  # the run is named after its algorithm (common.engine.run_name_tags)
    assert json.loads((run_dir / "args.json").read_text())["args"]["algorithm"] == "toy_scaled"
    calls = algo.calls
    assert calls["server_step"] == rounds
    assert len(set(algo.per_round)) == 1 and algo.per_round[0] >= 1  # the same number of clients each round
    assert calls["client_start"] == calls["client_end"] == rounds * algo.per_round[0]
    assert calls["adjust_grads"] >= calls["client_end"]  # at least one local step each
    for moved, full in algo.moves:
        assert full > 0 and moved == pytest.approx(ToyScaled.SCALE * full, rel=1e-5)
