"""The aggregator and algorithm registries through the engine, against the rules written out by hand on quadratic
clients: SCAFFOLD composed with FedFisher, FedEntropy per cluster (and its streaming softmax on every rank split),
communication counted once, and the one-line refusals of combinations that cannot run."""
from __future__ import annotations

import math

import pytest
import torch
from enginecases import DIM, K, Quadratic, grad, problem

from common import aggregators, algorithm_flags, algorithms, cli, engine
from common.errors import UsageError

FISHER = [torch.tensor([1.0, 0.1, 3.0], dtype=torch.float64) * (k + 1) for k in range(K)]
ENTROPY = [2.0, 1.0, 3.0, 1.5]


class WithStats(Quadratic):
    """Quadratic clients that also report a fixed Fisher diagonal and entropy per client."""

    supported_stats = ("fisher", "entropy")

    def client_stat(self, name, k, out):
        return [FISHER[k].clone()] if name == "fisher" else ENTROPY[k]


def args(**kw):
    return engine.namespace_defaults(**kw)


def run(task, a):
    fed = engine.Federation(task, a)
    engine.run(task, fed)
    return fed


def test_the_registries_hold_the_built_in_rules_and_the_flags_list_them():
    assert {"mean", "fisher", "entropy"} <= set(aggregators.REGISTRY)
    assert {"fedavg", "fedprox", "scaffold"} <= set(algorithms.REGISTRY)
    parser = cli.ArgumentParser()
    algorithm_flags.add_algorithm_args(parser, aggregator="fisher")
    a = parser.parse_args([])
    assert (a.aggregator, a.fisher_eps, a.temperature) == ("fisher", 1e-6, 1.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--aggregator", "nope"])


def test_scaffold_with_fisher_moves_x_to_the_fisher_aggregate_and_counts_its_traffic():
    """SCAFFOLD + FedFisher: x <- x + lr_g (Fisher mean - x); c <- c + mean dc; the Fisher is sent up too."""
    A, b, n = problem(1)
    lr, lr_g, steps, rounds, eps = 0.05, 0.8, 2, 3, 1e-6
    fed = run(WithStats(A, b, n, rounds=rounds, per_round=2, lr=lr, steps=steps),
              args(algorithm="scaffold", aggregator="fisher", server_lr=lr_g))
    x = torch.ones(DIM, dtype=torch.float64)
    c, ci = torch.zeros(DIM, dtype=torch.float64), [torch.zeros(DIM, dtype=torch.float64) for _ in range(K)]
    for r in range(rounds):
        chosen = engine.sample_clients(0, r, K, 2)
        ys, dcs = {}, []
        for k in chosen:
            y = x.clone()
            for _ in range(steps):
                y = y - lr * (grad(A[k], b[k], y) + c - ci[k])
            new = ci[k] - c + (x - y) / (steps * lr)
            dcs.append(new - ci[k])
            ci[k], ys[k] = new, y
        num = sum(n[k] * FISHER[k] * ys[k] for k in chosen)
        den = sum(n[k] * FISHER[k] for k in chosen)
        mean = sum(n[k] * ys[k] for k in chosen) / sum(n[k] for k in chosen)
        e = eps * float(den.mean())
        x = x + lr_g * ((num + e * mean) / (den + e) - x)
        c = c + sum(dcs) / K
    torch.testing.assert_close(fed.models[0][0], x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fed.algo.controls[0].c[0].double(), c, rtol=1e-5, atol=1e-6)
    assert math.isfinite(fed.aggs[0].round_metrics()["fisher_eps_share"])
    per_message = DIM * 8  # float64 values
    assert fed.comm == {"bytes_up": rounds * 2 * (2 + 1) * per_message, "bytes_down": rounds * 2 * 2 * per_message}


def test_scaffold_with_the_mean_keeps_its_own_sums_and_builds_no_aggregator():
    A, b, n = problem(1)
    fed = run(Quadratic(A, b, n, rounds=1), args(algorithm="scaffold"))
    assert fed.aggs == [None] and fed.comm["bytes_up"] == K * 2 * DIM * 8 == fed.comm["bytes_down"]


@pytest.mark.parametrize("aggregator,up", [("mean", 1), ("fisher", 2), ("entropy", 1)])
def test_fedavg_traffic_is_the_model_down_and_the_model_and_the_aggregators_extra_up(aggregator, up):
    A, b, n = problem()
    fed = run(WithStats(A, b, n, rounds=2), args(aggregator=aggregator))
    assert fed.comm == {"bytes_up": 2 * K * up * DIM * 8, "bytes_down": 2 * K * DIM * 8}


def test_entropy_weights_each_cluster_by_the_softmax_of_its_own_clients():
    """Two data clusters: each cluster's model is softmax(-H/T) over its members' models, with its own reference
    entropy (one shared reference would rescale the wrong sums)."""
    A, b, n = problem(2)
    task = WithStats(A, b, n, rounds=1, steps=1)
    task.client_features = lambda k: torch.tensor([1.0, 0.0] if k % 2 else [0.0, 1.0]).numpy()
    T = 0.05  # small: a client 0.5 nats more confident than the cluster's first re-bases the sums (MOVE_REF)
    fed = run(task, args(aggregator="entropy", temperature=T, clustering="data", num_clusters=2))
    x, lr = torch.ones(DIM, dtype=torch.float64), 0.05
    for g in range(2):
        ks = [k for k in range(K) if fed.assign[k] == g]
        alpha = torch.softmax(-torch.tensor([ENTROPY[k] for k in ks], dtype=torch.float64) / T, 0)
        want = sum(a * (x - lr * grad(A[k], b[k], x)) for a, k in zip(alpha, ks))
        torch.testing.assert_close(fed.models[g][0], want, rtol=1e-6, atol=1e-6)
    metrics = fed.round_metrics([[k for k in range(K) if fed.assign[k] == g] for g in range(2)])
    assert len(metrics["entropy_weight"]) == 2 and all(sum(w.values()) == pytest.approx(1) for w in
                                                         metrics["entropy_weight"])


@pytest.mark.parametrize("temperature", [0.5, 1e-3])
def test_entropy_streaming_is_the_softmax_on_every_rank_split(temperature):
    """The streaming sums (in order, and split over two ranks then re-based) give softmax(-H/T)'s mean, also where
    exp(-(H_k - H_first)/T) overflows a float (T = 1e-3: a client 1 nat more confident than the first)."""
    hs, thetas = [5.0, 4.0, 4.0004, 6.0], torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    rows = {k: {"entropy": h} for k, h in enumerate(hs)}
    a = args(aggregator="entropy", temperature=temperature)
    expected = torch.softmax(-torch.tensor(hs, dtype=torch.float64) / temperature, 0) @ thetas.double()

    def aggregate(clients):
        agg = aggregators.make("entropy", [thetas[0]], a)
        agg.reset([thetas[0]], list(range(4)))
        for k in clients:
            assert agg.add(k, [thetas[k]], 1.0, {"entropy": hs[k]}) == {"entropy": hs[k]}
        return agg

    torch.testing.assert_close(aggregate(range(4)).result()[0].double(), expected, rtol=1e-5, atol=1e-6)
    ranks = [aggregate(part) for part in ([1, 3], [0, 2])]  # each rank its own reference first
    for agg in ranks:
        agg.pre_reduce(rows, list(range(4)))
    for t0, t1 in zip(ranks[0].accumulators(), ranks[1].accumulators()):
        t0.add_(t1)  # the all-reduce
    torch.testing.assert_close(ranks[0].result()[0].double(), expected, rtol=1e-5, atol=1e-6)
    ratio = ranks[0].round_metrics()["entropy_weight_ratio"]
    assert ratio == (math.inf if temperature < 0.01 else pytest.approx(math.exp(2.0 / temperature)))


@pytest.mark.parametrize("kw,check_kw,why", [
    (dict(aggregator="fisher"), {}, "needs each client's fisher, which this script does not compute"),
    (dict(aggregator="entropy"), dict(stats=("fisher",)), "expected one of: mean, fisher"),
    (dict(aggregator="fisher"), dict(stats=("fisher",), aggregator="the merge re-factorises"), "re-factorises"),
    (dict(algorithm="scaffold", aggregator="fisher", server_opt="fedavgm"), dict(stats=("fisher",)),
     "own server step"),
])
def test_combinations_that_cannot_run_are_refused_in_one_line(kw, check_kw, why):
    with pytest.raises(UsageError, match=why) as e:
        engine.check_algorithm_args(args(**kw), plain_sgd=True, optimizer_hint="", **check_kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv,why", [(["--fisher-eps", "0.1"], "without --aggregator fisher"),
                                      (["--temperature", "2"], "without --aggregator entropy"),
                                      (["--scaffold-weighting", "size"], "without --algorithm scaffold")])
def test_an_aggregators_or_algorithms_own_flag_is_refused_without_it(argv, why):
    parser = cli.ArgumentParser()
    algorithm_flags.add_algorithm_args(parser)
    a = cli.parse(parser, argv)
    with pytest.raises(UsageError, match=why):
        engine.check_algorithm_args(a, plain_sgd=True, optimizer_hint="")


def test_a_task_without_the_statistic_is_refused_before_the_rounds():
    A, b, n = problem()
    with pytest.raises(UsageError, match="fisher"):
        engine.Federation(Quadratic(A, b, n), args(aggregator="fisher"))
