"""FedDyn and FedNova against the algorithms written out by hand on small quadratic problems: client k's loss
L_k(theta) = 1/2 sum a_k (theta - c_k)^2 (coordinate-wise curvatures a_k > 0), its gradient a_k (theta - c_k),
local steps plain SGD. The rounds run as the engine runs them: client_start, steps with adjust_grads,
client_end, the mean aggregator weighted by ``client_weight``, the server step through the aggregate."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from common import params as P
from common import server_opt as SO
from common.aggregate import WeightedMean
from common.algorithms import FedAvg
from common.feddyn import FedDyn
from common.fednova import FedNova, normalized_average

SHAPES = [(3,), (2, 2)]
K = 5


class PlainFedAvg(FedAvg):
    """FedAvg's hooks (none) and its server step on the aggregate's list, as a reference."""

    def server_step(self, x, aggregate, server, cluster: int = 0) -> None:
        server.step(x, aggregate)


def problem(seed=0, dtype=torch.float64):
    """Curvatures a_k in [0.3, 2] and optima c_k per client, and the starting model."""
    g = torch.Generator().manual_seed(seed)
    a = [[(0.3 + 1.7 * torch.rand(s, generator=g)).to(dtype) for s in SHAPES] for _ in range(K)]
    c = [[(3 * torch.randn(s, generator=g)).to(dtype) for s in SHAPES] for _ in range(K)]
    x = P.clone([torch.zeros(s, dtype=dtype) for s in SHAPES])
    return a, c, x


def train(algo, k, x, steps, lr, a, c):
    """Client k: ``steps`` plain SGD steps from x with the algorithm's hooks (as a Task's train_client does)."""
    params = [t.clone().requires_grad_(True) for t in x]
    algo.client_start(k, x, 0)
    for _ in range(steps):
        with torch.no_grad():
            for p, ak, ck in zip(params, a[k], c[k]):
                p.grad = ak * (p - ck)
            algo.adjust_grads(params)
            for p in params:
                p.sub_(lr * p.grad)
            algo.after_step(params, lr)
    algo.client_end(k, params, steps, lr)
    return [p.detach() for p in params]


def run_round(algo, x, server, chosen, steps, lr, a, c, sizes, callable_aggregate=False):
    agg = WeightedMean(x, acc_dtype=x[0].dtype)
    agg.reset()
    for k in chosen:
        theta = train(algo, k, x, steps[k], lr, a, c)
        w = algo.client_weight(k, sizes[k], steps[k]) if hasattr(algo, "client_weight") else sizes[k]
        agg.add(theta, weight=w)
    algo.server_step(x, agg.result if callable_aggregate else agg.result(), server, 0)


def fedavg_server(x):
    return SO.make_server_optimizer("fedavg", x, acc_dtype=x[0].dtype)


# -- FedDyn ---------------------------------------------------------------------------------------------------
def feddyn_by_hand(x, rounds, alpha, lr, steps, a, c):
    """Acar et al. 2021, Algorithm 1, written out (float64): rounds = the chosen clients of each round."""
    x = [t.clone() for t in x]
    g = {k: [torch.zeros_like(t) for t in x] for k in range(K)}
    h = [torch.zeros_like(t) for t in x]
    for chosen in rounds:
        thetas = []
        for k in chosen:
            th = [t.clone() for t in x]
            for _ in range(steps[k]):
                th = [t - lr * (ak * (t - ck) - gk + alpha * (t - xi))
                      for t, ak, ck, gk, xi in zip(th, a[k], c[k], g[k], x)]
            g[k] = [gk - alpha * (t - xi) for gk, t, xi in zip(g[k], th, x)]
            thetas.append(th)
        h = [hi - alpha / K * sum(th[i] - x[i] for th in thetas) for i, hi in enumerate(h)]
        x = [sum(th[i] for th in thetas) / len(thetas) - h[i] / alpha for i in range(len(x))]
    return x, g, h


@pytest.mark.parametrize("callable_aggregate", [False, True])
def test_feddyn_matches_algorithm_1_by_hand(callable_aggregate):
    """Partial participation, unequal local steps and sizes (FedDyn's mean is unweighted): five rounds."""
    a, c, x = problem(1)
    alpha, lr, steps, sizes = 0.1, 0.05, [3, 7, 5, 2, 4], [10, 1, 5, 3, 8]
    rounds = [[0, 2, 3], [1, 2, 4], [0, 1, 3, 4], [2, 3], [0, 1, 2, 3, 4]]
    ref_x, ref_g, ref_h = feddyn_by_hand(x, rounds, alpha, lr, steps, a, c)
    algo, server = FedDyn([x], K, alpha, acc_dtype=torch.float64), fedavg_server(x)
    assert algo.client_weight(0, 10, 3) == 1.0
    for chosen in rounds:
        run_round(algo, x, server, chosen, steps, lr, a, c, sizes, callable_aggregate)
    for ours, ref in [(x, ref_x), (algo.h[0], ref_h)] + [(algo.state(k), ref_g[k]) for k in range(K)]:
        assert all(torch.allclose(o, r, rtol=1e-12, atol=1e-12) for o, r in zip(ours, ref))


def test_feddyn_reaches_the_global_optimum_where_fedavg_does_not():
    """Ten local steps, full participation: FedAvg settles at a point biased toward each client's own optimum
    (its fixed point depends on the local steps); FedDyn's fixed point is the minimizer of the mean loss,
    sum_k a_k c_k / sum_k a_k per coordinate."""
    a, c, x0 = problem(2)
    optimum = [sum(a[k][i] * c[k][i] for k in range(K)) / sum(a[k][i] for k in range(K)) for i in range(len(SHAPES))]
    steps, lr, sizes = [10] * K, 0.2, [1] * K
    errors = {}
    for name in ("fedavg", "feddyn"):
        x = [t.clone() for t in x0]
        algo = FedDyn([x], K, 1.0, acc_dtype=torch.float64) if name == "feddyn" else PlainFedAvg()
        server = fedavg_server(x)
        for _ in range(60):
            run_round(algo, x, server, range(K), steps, lr, a, c, sizes)
        errors[name] = max(float((xi - oi).abs().max()) for xi, oi in zip(x, optimum))
    assert errors["feddyn"] < 1e-9 and errors["fedavg"] > 0.1, errors


@pytest.mark.parametrize("optimizer", ["sgd", "adamw fresh", "adamw kept"])
def test_feddyn_diverges_only_with_adamw_moments_kept_across_rounds(optimizer):
    """One local step a round: with plain SGD FedDyn reaches the mean loss's minimizer; with AdamW its drift is a
    normalized step, not lr times a gradient, so g_k and h / alpha (the sum of every past drift) stop meaning
    gradients: a fresh AdamW each round stalls near the optimum, one whose moments are kept across rounds drives
    the sum ever further (what ``FedDyn.refuse`` refuses), for a large alpha and a small one alike."""
    a, c, x0 = problem(3)
    optimum = [sum(a[k][i] * c[k][i] for k in range(K)) / sum(a[k][i] for k in range(K)) for i in range(len(SHAPES))]
    errors = {}
    for alpha in (0.1, 0.001):
        x = [t.clone() for t in x0]
        algo, server = FedDyn([x], K, alpha, acc_dtype=torch.float64), fedavg_server(x)
        params = [[t.clone().requires_grad_(True) for t in x] for _ in range(K)]  # client k's model, reused
        make = (lambda ps: torch.optim.SGD(ps, lr=0.2)) if optimizer == "sgd" else (
            lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.0))
        kept = [make(ps) for ps in params]  # its optimizer, with its moments
        for r in range(80):
            for k in range(K):
                opt = kept[k] if optimizer == "adamw kept" else make(params[k])
                with torch.no_grad():
                    for p, xi, ak, ck in zip(params[k], x, a[k], c[k]):
                        p.copy_(xi)
                        p.grad = ak * (p - ck)
                algo.client_start(k, x, 0)
                algo.adjust_grads(params[k])
                opt.step()
                algo.client_end(k, params[k], 1, 0.05)
            mean = [sum(params[k][i].detach() for k in range(K)) / K for i in range(len(SHAPES))]
            algo.server_step(x, mean, server, 0)
            if r in (29, 79):
                errors[alpha, r] = max(float((xi - oi).abs().max()) for xi, oi in zip(x, optimum))
    for alpha in (0.1, 0.001):
        early, late = errors[alpha, 29], errors[alpha, 79]
        if optimizer == "sgd":  # converging to the optimum
            assert late < 0.01 and late < early / 20, errors
        elif optimizer == "adamw fresh":  # oscillating at a distance, not growing
            assert late < min(early, 2.0), errors
        else:  # the distance grows from round to round
            assert late > 10 and late > 3 * early, errors


def test_feddyn_state_round_trip_resumes_bit_equal():
    a, c, x0 = problem(3, torch.float32)
    steps, lr, sizes, rounds = [2, 4, 3, 5, 1], 0.05, [1] * K, [[0, 1], [2, 3, 4], [1, 4], [0, 2, 3]]
    x_full = [t.clone() for t in x0]
    full, server = FedDyn([x_full], K, 0.2), fedavg_server(x_full)
    for chosen in rounds:
        run_round(full, x_full, server, chosen, steps, lr, a, c, sizes)
    x = [t.clone() for t in x0]
    first, server = FedDyn([x], K, 0.2), fedavg_server(x)
    for chosen in rounds[:2]:
        run_round(first, x, server, chosen, steps, lr, a, c, sizes)
    second = FedDyn([x], K, 0.2)
    second.load_state_dict(first.state_dict())
    for chosen in rounds[2:]:
        run_round(second, x, server, chosen, steps, lr, a, c, sizes)
    assert all(torch.equal(u, v) for u, v in zip(x, x_full))
    assert second.grads.clients() == full.grads.clients() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="FedDyn state"):
        FedDyn([x], K + 1, 0.2).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="FedDyn state"):
        second.load_state_dict(FedNova([x], [1] * K).state_dict())


def test_feddyn_sums_across_ranks_and_low_precision():
    """Two 'ranks' each train half the round; their accumulators SUMMED give the one-process step (the sums'
    order differs: close, not bit-equal). bfloat16 parameters: g_k stays float32, the model bfloat16."""
    a, c, x0 = problem(4, torch.float32)
    steps, lr, sizes = [3] * K, 0.05, [1] * K
    x_one, one = [t.clone() for t in x0], FedDyn([x0], K, 0.1)
    run_round(one, x_one, fedavg_server(x_one), range(K), steps, lr, a, c, sizes)
    ranks, agg = [FedDyn([x0], K, 0.1) for _ in range(2)], WeightedMean(x0)
    agg.reset()
    for k in range(K):
        agg.add(train(ranks[k % 2], k, x0, steps[k], lr, a, c), weight=1.0)
    total = [u + v for u, v in zip(ranks[0].accumulators(), ranks[1].accumulators())]
    x_two = [t.clone() for t in x0]
    for t, s in zip(ranks[0].accumulators(), total):
        t.copy_(s)
    ranks[0].server_step(x_two, agg.result(), fedavg_server(x_two), 0)
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(x_one, x_two))
    xb = P.clone([t.bfloat16() for t in x0])
    algo = FedDyn([xb], K, 0.1)
    for _ in range(2):
        run_round(algo, xb, fedavg_server(xb), [0, 1], steps, lr, [[t.bfloat16() for t in ak] for ak in a],
                  [[t.bfloat16() for t in ck] for ck in c], sizes)
    assert all(t.dtype == torch.bfloat16 for t in xb) and algo.state(0)[0].dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in xb)


# -- FedNova --------------------------------------------------------------------------------------------------
def test_fednova_matches_the_formula_by_hand():
    """x <- x - tau_eff sum_k p_k (x - theta_k) / tau_k, over three rounds: the class (weights n_k / tau_k into
    the mean, then the extrapolation), ``normalized_average`` and the sums written here agree."""
    a, c, x = problem(5)
    steps, lr, sizes = [1, 8, 3, 5, 2], 0.05, [4.0, 1.0, 6.0, 2.0, 3.0]
    algo, server = FedNova([x], sizes, acc_dtype=torch.float64), fedavg_server(x)
    for chosen in ([0, 1, 2], [1, 3, 4], [0, 1, 2, 3, 4]):
        thetas = [train(FedAvg(), k, x, steps[k], lr, a, c) for k in chosen]
        n = sum(sizes[k] for k in chosen)
        tau_eff = sum(sizes[k] / n * steps[k] for k in chosen)
        ref = [xi - tau_eff * sum(sizes[k] / n * (xi - th[i]) / steps[k] for k, th in zip(chosen, thetas))
               for i, xi in enumerate(x)]
        standalone = normalized_average(x, thetas, [sizes[k] for k in chosen], [steps[k] for k in chosen])
        run_round(algo, x, server, chosen, steps, lr, a, c, sizes)
        for ours in (x, standalone):
            assert all(torch.allclose(o, r, rtol=1e-12, atol=1e-12) for o, r in zip(ours, ref))
        assert algo.accumulators()[0].abs().sum() == 0  # cleared for the next round


def test_fednova_is_fedavg_with_equal_steps_and_differs_otherwise():
    a, c, x0 = problem(6, torch.float32)
    sizes, lr = [4.0, 1.0, 6.0, 2.0, 3.0], 0.05
    for steps, same in (([4] * K, True), ([1, 8, 3, 5, 2], False)):
        xs = {}
        for name in ("fedavg", "fednova"):
            x = [t.clone() for t in x0]
            algo = FedNova([x], sizes) if name == "fednova" else PlainFedAvg()
            server = fedavg_server(x)
            for _ in range(3):
                run_round(algo, x, server, range(K), steps, lr, a, c, sizes)
            xs[name] = x
        gap = max(float((u - v).abs().max()) for u, v in zip(xs["fedavg"], xs["fednova"]))
        assert (gap < 1e-6) if same else (gap > 1e-2), (steps, gap)
    algo = FedNova([x0], sizes)
    algo.client_end(0, x0, 4, lr)
    algo.client_end(1, x0, 4, lr)
    assert algo.factor() == 1.0


def test_fednova_removes_the_objective_inconsistency():
    """Clients running 1 to 20 local steps. Local GD on a quadratic gives x - theta_k = (1 - (1 - lr a_k)^tau_k)
    (x - c_k), so FedAvg's fixed point weighs c_k by 1 - (1 - lr a_k)^tau_k ~ tau_k lr a_k (biased toward the
    busy clients) and FedNova's by that over tau_k ~ lr a_k: near the optimum of the mean loss. Both runs reach
    their fixed points; FedNova's is over ten times closer to the optimum."""
    a, c, x0 = problem(7)
    sizes, steps, lr = [1.0] * K, [1, 20, 3, 8, 2], 0.01
    optimum = [sum(a[k][i] * c[k][i] for k in range(K)) / sum(a[k][i] for k in range(K)) for i in range(len(SHAPES))]
    errors = {}
    for name in ("fedavg", "fednova"):
        w = [[(1 - (1 - lr * ak) ** steps[k]) / (steps[k] if name == "fednova" else 1) for ak in a[k]]
             for k in range(K)]
        fixed = [sum(w[k][i] * c[k][i] for k in range(K)) / sum(w[k][i] for k in range(K)) for i in range(len(SHAPES))]
        x = [t.clone() for t in x0]
        algo = FedNova([x], sizes, acc_dtype=torch.float64) if name == "fednova" else PlainFedAvg()
        server = fedavg_server(x)
        for _ in range(200):
            run_round(algo, x, server, range(K), steps, lr, a, c, sizes)
        assert all(torch.allclose(xi, fi, atol=1e-4) for xi, fi in zip(x, fixed)), name
        errors[name] = max(float((xi - oi).abs().max()) for xi, oi in zip(x, optimum))
    assert errors["fednova"] < 0.1 * errors["fedavg"], errors


def test_refusals_counts_and_state():
    x = [torch.zeros(3)]
    for cls in (FedDyn, FedNova):
        assert cls.refuse(SimpleNamespace(aggregator="mean")) is None and cls.refuse(SimpleNamespace()) is None
        assert "--aggregator mean (here median)" in cls.refuse(SimpleNamespace(aggregator="median"))
        assert (cls.up, cls.down) == (1, 1)
    assert FedNova.plain_sgd and not FedDyn.plain_sgd
    adamw = SimpleNamespace(optimizer="adamw", client_opt_state="persist")  # mamba_fl's flag; llm_noniid's below
    assert "diverges" in FedDyn.refuse(adamw) and "--client-opt-state reset" in FedDyn.refuse(adamw)
    assert FedDyn.refuse(SimpleNamespace(local_optimizer="adamw", client_opt_state="persist")) is not None
    for fine in (dict(optimizer="sgd", client_opt_state="persist"), dict(optimizer="adamw", client_opt_state="reset")):
        assert FedDyn.refuse(SimpleNamespace(**fine)) is None
    nova = FedNova.from_args(SimpleNamespace(), [x, x], [2.0, 3.0])
    assert nova.client_weight(0, 6.0, 3) == 2.0 and nova.client_weight(1, 0.0, 0) == 0.0
    nova.client_start(1, x, 1)
    nova.client_end(1, x, 3, 0.1)
    fresh = FedNova([x, x], [2.0, 3.0])
    fresh.load_state_dict(nova.state_dict())
    assert fresh.accumulators()[1].tolist() == [3.0, 9.0, 1.0]
    with pytest.raises(ValueError, match="no client"):
        FedNova([x], [1.0]).server_step(x, x, fedavg_server(x))
    dyn = FedDyn.from_args(SimpleNamespace(feddyn_alpha=0.3), [x, x], [1, 1, 1, 1], assign=[0, 1, 1, 1])
    assert dyn.alpha == 0.3 and dyn.members == [1, 3]
    with pytest.raises(ValueError, match="alpha"):
        FedDyn([x], 2, 0.0)
