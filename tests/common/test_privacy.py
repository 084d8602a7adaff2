"""DP-FedAvg through the round engine (common/privacy.py): every round's DP mean (an empty Poisson cohort
included) and one accountant step per round, on the quadratic clients; a one-line refusal for every combination
DP cannot run with. Each subproject's quick script under DP: tests/<subproject>/test_dp.py (``dpcases``)."""
from __future__ import annotations

import pytest
import torch
from clicases import one_line_error
from enginecases import K, Quadratic, problem

from common import algorithm_flags, cli, dp, engine
from common import params as P

pytest.importorskip("dp_accounting")


def dp_args(**kw):
    return engine.namespace_defaults(**({"dp_clip": 1.0, "dp_noise": 1.0, "participation_rate": 0.25} | kw))


# ----------------------------------------------------------------------------- the engine, on quadratic clients
def test_every_round_releases_a_noised_mean_and_steps_the_accountant(monkeypatch):
    """q = 1/4 of 4 clients over 6 rounds (seed 0): some cohorts are empty, yet every round resets and reads the
    DP mean, its noise moves the model, and the accountant counts 6 rounds."""
    A, b, sizes = problem()
    task = Quadratic(A, b, sizes, rounds=6)
    fed = engine.Federation(task, dp_args())
    cohorts = [dp.sample_cohort(0, r, K, 0.25) for r in range(6)]
    assert any(not c for c in cohorts) and any(c for c in cohorts)
    calls, seen, real_result = [], [], dp.DPMean.result

    def spy(self):
        calls.append(self.round)
        return real_result(self)

    monkeypatch.setattr(dp.DPMean, "result", spy)
    monkeypatch.setattr(Quadratic, "round_end",
                        lambda self, rnd: seen.append((rnd["chosen"], P.clone(self.fed.models[0]))))
    start = P.clone(fed.models[0])
    engine.run(task, fed)
    assert calls == list(range(6)) and [c for c, _ in seen] == cohorts
    assert fed.dp.accountant.rounds == 6 and fed.dp.cohort == 1.0
    models = [start] + [x for _, x in seen]
    for r, c in enumerate(cohorts):
        if not c:  # no client: the model still moves, by the noise / m (std z C / 1)
            assert not torch.equal(models[r + 1][0], models[r][0])


def test_fixed_cohorts_are_the_tasks_own_and_poisson_the_dp_stream():
    A, b, sizes = problem()
    task = Quadratic(A, b, sizes, per_round=2)
    fixed = engine.Federation(task, dp_args(dp_sampling="fixed", participation_rate=0.5)).dp
    poisson = engine.Federation(task, dp_args(participation_rate=0.5)).dp
    assert fixed.q == poisson.q == 0.5
    assert [fixed.sample(task, r) for r in range(4)] == [task.sample(r) for r in range(4)]
    assert [poisson.sample(task, r) for r in range(4)] == [dp.sample_cohort(0, r, K, 0.5) for r in range(4)]
    assert fixed.accountant.N == K and poisson.accountant.N is None


def test_dp_off_builds_no_private_rounds():
    A, b, sizes = problem()
    fed = engine.Federation(Quadratic(A, b, sizes), engine.namespace_defaults())
    assert fed.dp is None and type(fed.aggs[0]).__name__ == "Mean" and "dp" not in fed.state_dict(0, ["theta"])


def test_server_optimizers_step_on_the_noised_mean():
    """FedAdam after DP: the server's step is taken from the DP mean's result (post-processing)."""
    A, b, sizes = problem()
    task = Quadratic(A, b, sizes, rounds=1)
    fed = engine.Federation(task, dp_args(server_opt="fedadam", participation_rate=1.0))
    x0 = P.clone(fed.models[0])
    engine.run(task, fed)
    ref = engine.Federation(Quadratic(A, b, sizes, rounds=1), dp_args(server_opt="fedadam", participation_rate=1.0))
    agg = ref.aggs[0]
    agg.reset(x0, [0, 1, 2, 3], round_idx=0)
    ref_task = ref.task
    for k in range(K):
        P.load_(ref_task.params, x0)
        ref_task.train_client(k, 0, ref_task.make_optimizer(0.05), engine.AL.FedAvg())
        agg.add(k, ref_task.params)
    ref.servers[0].step(ref.models[0], agg.result())
    assert torch.equal(fed.models[0][0], ref.models[0][0])


# ----------------------------------------------------------------------------- refusals, in one line
def _mamba(*extra):
    from mamba_fl import fed_avg
    return fed_avg.main, ["--quick", "--quiet", *extra]


def _vit(*extra):
    from vit_sparse_fl import train_federated
    return train_federated.main, ["--quick", "--quiet", *extra]


def _sparse(*extra):
    from vit_sparse_fl import train_federated_sparse
    return train_federated_sparse.main, ["--quick", "--quiet", *extra]


def _lora(*extra):
    from lora_glue_fl import fedavg_rounds
    return fedavg_rounds.main, ["--quick", "--quiet", *extra]


DP = ["--dp-clip", "1", "--dp-noise", "1"]


@pytest.mark.parametrize("case,why", [
    (lambda: _mamba(*DP, "--algorithm", "scaffold"), "SCAFFOLD sends per-client control variates"),
    (lambda: _mamba(*DP, "--algorithm", "feddyn"), "FedDyn's server state"),
    (lambda: _mamba(*DP, "--algorithm", "fednova", "--optimizer", "sgd"), "FedNova weighs clients"),
    (lambda: _mamba(*DP, "--aggregator", "fisher"), "FedFisher weighs each coordinate"),
    (lambda: _mamba(*DP, "--aggregator", "entropy"), "FedEntropy weighs clients"),
    (lambda: _mamba(*DP, "--aggregator", "median"), "robust and weighted aggregators are not private"),
    (lambda: _mamba(*DP, "--clustering", "ifca", "--num-clusters", "2"), "IFCA assigns each client"),
    (lambda: _mamba(*DP, "--clustering", "data"), "groups clients by their data"),
    (lambda: _lora(*DP), "merges the clients' adapter factors"),
    (lambda: _vit(*DP, "--head-warmup", "1"), "--head-warmup's rounds are plain FedAvg"),
    (lambda: _sparse(*DP), "sensitivity scores on its own data"),
    (lambda: _mamba("--dp-noise", "1"), "--dp-noise changes nothing without --dp-clip"),
    (lambda: _mamba("--dp-clip", "1"), "exactly one of --dp-noise"),
    (lambda: _mamba(*DP, "--dp-epsilon", "3"), "exactly one of --dp-noise"),
    (lambda: _mamba(*DP, "--dp-sampling", "fixed", "--dp-accountant", "pld"), "RDP only"),
    (lambda: _mamba(*DP, "--dp-count-noise", "1"), "--dp-count-noise changes nothing without --dp-quantile"),
    (lambda: _mamba(*DP, "--dp-quantile", "0.5", "--dp-count-noise", "0.4"), "raise --dp-count-noise"),
])
def test_refused_combinations_say_why_in_one_line(case, why, out_dir, capsys):
    main, argv = case()
    err = one_line_error(main, [*argv, "--out-dir", str(out_dir)], capsys)
    assert why in err, err
    assert not any(out_dir.iterdir())  # refused before anything was written


def test_help_names_the_default_delta():
    parser = cli.ArgumentParser()
    algorithm_flags.add_dp_args(parser)
    assert "default 1 / N^1.1, N the number of clients" in " ".join(parser.format_help().split())
