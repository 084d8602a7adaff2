"""The round engine against FedAvg, FedProx, SCAFFOLD (both weightings), FedAvgM and IFCA written out by hand on
quadratic clients, the client optimizer state kept or reset, and the one-line refusals of the shared flags."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from enginecases import DIM, K, Quadratic, grad, problem

from common import algorithm_flags, cli, engine
from common.errors import UsageError


def args(**kw):
    return engine.namespace_defaults(**kw)


def run(task, a):
    fed = engine.Federation(task, a)
    if a.clustering == "ifca":
        fed.ifca_init_()
    engine.run(task, fed)
    return fed


@pytest.mark.parametrize("algorithm,mu", [("fedavg", 0.0), ("fedprox", 0.3)])
def test_fedavg_and_fedprox_match_the_update_rules(algorithm, mu):
    A, b, n = problem()
    fed = run(Quadratic(A, b, n), args(algorithm=algorithm, mu=mu))
    x, lr = torch.ones(DIM, dtype=torch.float64), 0.05
    for _ in range(3):
        ys = []
        for k in range(K):
            y = x.clone()
            for _ in range(3):
                y = y - lr * (grad(A[k], b[k], y) + mu * (y - x))
            ys.append(y)
        x = sum(w * y for w, y in zip(n, ys)) / sum(n)
    torch.testing.assert_close(fed.models[0][0], x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weighting", ["uniform", "size"])
def test_scaffold_matches_option_two_with_partial_participation(weighting):
    A, b, n = problem(1)
    lr, lr_g, steps, rounds = 0.05, 0.8, 2, 4
    task = Quadratic(A, b, n, rounds=rounds, per_round=2, lr=lr, steps=steps)
    fed = run(task, args(algorithm="scaffold", server_lr=lr_g, scaffold_weighting=weighting))
    x = torch.ones(DIM, dtype=torch.float64)
    c, ci = torch.zeros(DIM, dtype=torch.float64), [torch.zeros(DIM, dtype=torch.float64) for _ in range(K)]
    p = [v / sum(n) for v in n]
    for r in range(rounds):
        chosen = engine.sample_clients(0, r, K, 2)
        dys, dcs, ws = [], [], []
        for k in chosen:
            y = x.clone()
            for _ in range(steps):
                y = y - lr * (grad(A[k], b[k], y) + c - ci[k])
            new = ci[k] - c + (x - y) / (steps * lr)
            dys.append(y - x)
            dcs.append(new - ci[k])
            ws.append(n[k] if weighting == "size" else 1.0)
            ci[k] = new
        x = x + lr_g * sum(w * d for w, d in zip(ws, dys)) / sum(ws)
        c = c + (sum(p[k] * d for k, d in zip(chosen, dcs)) if weighting == "size" else sum(dcs) / K)
    torch.testing.assert_close(fed.models[0][0], x, rtol=1e-6, atol=1e-6)  # controls in float32
    torch.testing.assert_close(fed.algo.controls[0].c[0].double(), c, rtol=1e-5, atol=1e-6)


def test_fedavgm_heavy_ball_server():
    A, b, n = problem(2)
    fed = run(Quadratic(A, b, n, steps=1), args(server_opt="fedavgm", server_momentum=0.5, server_lr=0.7))
    x, m, lr = torch.ones(DIM, dtype=torch.float64), torch.zeros(DIM, dtype=torch.float64), 0.05
    for _ in range(3):
        avg = sum(w * (x - lr * grad(A[k], b[k], x)) for k, w in enumerate(n)) / sum(n)
        m = 0.5 * m + (x - avg)
        x = x - 0.7 * m
    torch.testing.assert_close(fed.models[0][0], x, rtol=1e-6, atol=1e-6)  # server state in float32


def test_client_momentum_kept_or_reset():
    """persist: a client's momentum buffer carries into its next round; reset: every round starts without."""
    A, b, n = problem(3)
    one = [A[0]], [b[0]], [1.0]
    got = {s: run(Quadratic(*one, rounds=2, per_round=1, steps=2, momentum=0.9), args(client_opt_state=s))
           for s in ("persist", "reset")}
    lr, mom = 0.05, 0.9
    for state in ("persist", "reset"):
        x, buf = torch.ones(DIM, dtype=torch.float64), None
        for _ in range(2):
            if state == "reset":
                buf = None
            for _ in range(2):
                g = grad(A[0], b[0], x)
                buf = g if buf is None else mom * buf + g
                x = x - lr * buf
        torch.testing.assert_close(got[state].models[0][0], x, rtol=1e-12, atol=1e-12)
    assert not torch.equal(got["persist"].models[0][0], got["reset"].models[0][0])


def test_ifca_separates_two_planted_groups():
    """Two groups of clients with opposite optima: IFCA's two cluster models each settle on one group."""
    rng = torch.Generator().manual_seed(0)
    A = [torch.eye(DIM, dtype=torch.float64) + 0.01 * torch.randn(DIM, DIM, generator=rng, dtype=torch.float64)
         for _ in range(K)]
    b = [torch.full((DIM,), 3.0 if k % 2 else -3.0, dtype=torch.float64) for k in range(K)]
    task = Quadratic(A, b, [1.0] * K, rounds=5, lr=0.2, steps=3)
    fed = run(task, args(clustering="ifca", num_clusters=2, ifca_init_rounds=1))
    assert fed.assign.tolist() in ([0, 1, 0, 1], [1, 0, 1, 0])
    for g in range(2):
        target = 3.0 if fed.assign[1] == g else -3.0
        assert torch.allclose(fed.models[g][0], torch.full((DIM,), target, dtype=torch.float64), atol=0.2)


@pytest.mark.parametrize("state,kept", [("reset", [False, False, False]), ("persist", [False, True, True])])
def test_ifca_starts_are_rounds_of_their_seed_client_on_batches_of_their_own(state, kept):
    """Each starting model: --ifca-init-rounds rounds of its seed client alone, each on a stream of its own (rounds
    -1, -2, ...: never a real round's), the optimizer state reset between them unless --client-opt-state persist."""
    calls = []

    class Recording(Quadratic):
        def train_client(self, k, r, opt, algo):
            calls.append((k, r, bool(opt.state)))
            return super().train_client(k, r, opt, algo)

    task = Recording(*problem(), rounds=1, momentum=0.9)
    fed = engine.Federation(task, args(clustering="ifca", num_clusters=2, ifca_init_rounds=3, client_opt_state=state))
    fed.ifca_init_()
    seeds = fed.info["seed_clients"]
    assert calls == [(seeds[g], -1 - i, kept[i]) for g in range(2) for i in range(3)]


def test_sample_clients_is_seeded_sorted_and_distinct():
    a = engine.sample_clients(3, 5, 20, 7)
    assert a == sorted(set(a)) and len(a) == 7 and a == engine.sample_clients(3, 5, 20, 7)
    assert a != engine.sample_clients(3, 6, 20, 7)
    assert engine.clients_per_round(0.1, 100) == 10 and engine.clients_per_round(0.001, 10) == 1


@pytest.mark.parametrize("kw,why", [
    (dict(algorithm="scaffold"), "plain SGD"),
    (dict(algorithm="scaffold", server_opt="fedadam"), "own server step"),
    (dict(algorithm="moon"), "unknown"),
    (dict(clustering="ifca"), "num-clusters >= 2"),
    (dict(num_clusters=2), "needs --clustering"),
])
def test_nonsense_combinations_are_refused_in_one_line(kw, why):
    a = args(**kw)
    sgd = kw.get("server_opt") is not None
    with pytest.raises(UsageError, match=why):
        engine.check_algorithm_args(a, plain_sgd=sgd, optimizer_hint="use --optimizer sgd")


@pytest.mark.parametrize("flag,value", [("--mu", "-1"), ("--server-lr", "0"), ("--server-momentum", "1"),
                                        ("--num-clusters", "-2"), ("--ifca-batches", "0")])
def test_out_of_range_numbers_are_refused_by_the_parser(flag, value, capsys):
    parser = cli.ArgumentParser()
    algorithm_flags.add_algorithm_args(parser)
    with pytest.raises(SystemExit) as e:
        parser.parse_args([flag, value])
    assert e.value.code == 2 and f"{flag} must be" in capsys.readouterr().err


def test_a_script_that_cannot_run_scaffold_says_why():
    parser = cli.ArgumentParser()
    algorithm_flags.add_algorithm_args(parser, scaffold="its merge re-factorises the adapters")
    a = parser.parse_args(["--algorithm", "scaffold"])
    with pytest.raises(UsageError, match="re-factorises"):
        engine.check_algorithm_args(a, plain_sgd=True, optimizer_hint="", scaffold="its merge re-factorises the "
                                    "adapters")
    assert np.isclose(a.mu, 0.01)


def test_the_server_lr_default_follows_the_server_optimizer():
    parser = cli.ArgumentParser()
    algorithm_flags.add_algorithm_args(parser)
    for argv, lr, tag in (([], 1.0, ""), (["--server-opt", "fedavgm"], 1.0, "_sofedavgm"),
                          (["--server-opt", "fedadam"], 1e-2, "_sofedadam"),
                          (["--server-opt", "fedadam", "--server-lr", "1"], 1.0, "_sofedadam_slr1"),
                          (["--server-lr", "0.5"], 0.5, "_slr0.5")):
        a = parser.parse_args(argv)
        engine.check_algorithm_args(a, plain_sgd=True, optimizer_hint="")
        assert a.server_lr == lr and engine.name_suffix(a) == tag, argv
    assert engine.namespace_defaults(server_opt="fedadam").server_lr == 1e-2
