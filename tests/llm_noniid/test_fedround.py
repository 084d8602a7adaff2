"""The round code of train.py on plain tensors: FedProx mu=0 == FedAvg, SCAFFOLD with zero control variates
and one step == FedAvg, SCAFFOLD removes client drift on heterogeneous quadratics, option II by hand."""
from __future__ import annotations

import pytest
import torch

from common.cli import UsageError
from common.scaffold import Scaffold
from common.server_opt import make_server_optimizer
from llm_noniid import fedround

D, K = 6, 4
F64 = torch.float64


def quadratics(seed=0):
    """Client k: f_k(t) = 0.5 sum_j a_kj (t_j - b_kj)^2, different curvatures and optima."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + 2.0 * torch.rand(K, D, generator=g, dtype=torch.float64)
    b = 3.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    return a, b


def loss_of(a, b, k, theta):
    return lambda _batch: 0.5 * (a[k] * (theta - b[k]) ** 2).sum()


def run(algorithm, rounds, steps, lr=0.05, mu=0.0, a_b=None, weights=None):
    """FedAvg / FedProx / SCAFFOLD through fedround with ONE parameter tensor reused by every client."""
    a, b = a_b or quadratics()
    theta = torch.zeros(D, dtype=F64, requires_grad=True)  # the "model"
    x = [torch.zeros(D, dtype=F64)]                        # global parameters
    opt = make_server_optimizer("fedavg", x, acc_dtype=F64)
    # SCAFFOLD weighted like FedAvg: the size-weighted variant when weights are given, else the paper's
    scaffold = Scaffold(x, K, acc_dtype=F64, client_weights=weights) if algorithm == "scaffold" else None
    weights = weights or [1.0] * K
    hist = []
    for _ in range(rounds):
        server = fedround.RoundServer(x)
        for k in range(K):
            fedround.client_round([theta], x, loss_of(a, b, k, theta), range(steps), algorithm=algorithm, lr=lr,
                                  mu=mu, scaffold=scaffold, client=k)
            server.add([theta], weights[k])
        hist.append(server.finish(algorithm, server_opt=opt, scaffold=scaffold))
    return x[0].clone(), hist, scaffold


def optimum(a, b):
    return (a * b).sum(0) / a.sum(0)


def test_fedprox_mu_zero_is_fedavg_and_mu_pulls_toward_the_global_model():
    avg, _, _ = run("fedavg", 3, 5)
    prox0, _, _ = run("fedprox", 3, 5, mu=0.0)
    assert torch.equal(avg, prox0)
    prox, hist, _ = run("fedprox", 3, 5, mu=1.0)
    assert not torch.allclose(prox, avg)
    fedavg_div = run("fedavg", 3, 5)[1][-1]["client_divergence"]
    assert hist[-1]["client_divergence"] < fedavg_div  # the proximal term holds clients together


def test_fedprox_gradient_is_the_squared_norm_term():
    """One local step equals autograd of f + mu/2 ||t - x||^2."""
    a, b = quadratics()
    x = [torch.randn(D, dtype=F64)]
    theta = torch.zeros(D, dtype=F64, requires_grad=True)
    mu, lr = 0.7, 0.1
    fedround.client_round([theta], x, loss_of(a, b, 0, theta), range(1), algorithm="fedprox", lr=lr, mu=mu)
    t = x[0].clone().requires_grad_(True)
    (0.5 * (a[0] * (t - b[0]) ** 2).sum() + 0.5 * mu * ((t - x[0]) ** 2).sum()).backward()
    assert torch.allclose(theta.detach(), x[0] - lr * t.grad)


def test_scaffold_zero_controls_one_step_is_fedavg():
    w = [1.0, 2.0, 3.0, 4.0]
    avg, _, _ = run("fedavg", 1, 1, weights=w)
    sca, _, _ = run("scaffold", 1, 1, weights=w)
    assert torch.allclose(avg, sca, atol=1e-12)


def test_scaffold_reduces_client_drift_on_heterogeneous_quadratics():
    a_b = quadratics(1)
    star = optimum(*a_b)
    avg, h_avg, _ = run("fedavg", 40, 5, lr=0.1, a_b=a_b)
    sca, h_sca, _ = run("scaffold", 40, 5, lr=0.1, a_b=a_b)
    # FedAvg's clients keep pulling toward their own optima; SCAFFOLD's corrected steps do not
    assert h_sca[-1]["client_divergence"] < 0.05 * h_avg[-1]["client_divergence"]
    assert h_avg[-1]["client_divergence"] > 0.5
    # and FedAvg converges to a biased point, SCAFFOLD to the true optimum
    assert (sca - star).norm() < 1e-3
    assert (avg - star).norm() > 0.1


def paper_scaffold(a, b, sizes, rounds, steps, lr, lr_g, picks, weighting):
    """Algorithm 1 of Karimireddy et al. (2020), option II, written out on the quadratics: the paper's uniform
    means over the sampled set S (``weighting="uniform"``) or both means size-weighted (``"size"``)."""
    n = len(sizes)
    p = torch.tensor(sizes, dtype=F64) / sum(sizes)
    x, c = torch.zeros(D, dtype=F64), torch.zeros(D, dtype=F64)
    ci = [torch.zeros(D, dtype=F64) for _ in range(n)]
    for r in range(rounds):
        dys, dcs = {}, {}
        for i in picks[r]:
            y = x.clone()
            for _ in range(steps):
                y = y - lr * (a[i] * (y - b[i]) - ci[i] + c)
            new = ci[i] - c + (x - y) / (steps * lr)
            dys[i], dcs[i] = y - x, new - ci[i]
            ci[i] = new
        if weighting == "uniform":
            x = x + lr_g * sum(dys.values()) / len(dys)
            c = c + sum(dcs.values()) / n
        else:
            x = x + lr_g * sum(sizes[i] * dys[i] for i in dys) / sum(sizes[i] for i in dys)
            c = c + sum(p[i] * dcs[i] for i in dcs)
    return x, c


@pytest.mark.parametrize("weighting", ["uniform", "size"])
def test_scaffold_with_unequal_sizes_is_the_papers_algorithm(weighting):
    a, b = quadratics(3)
    sizes = [3.0, 40.0, 7.0, 500.0]   # very unequal clients: the weighting matters
    picks = [[0, 1, 3], [1, 2], [0, 2, 3], [0, 1, 2, 3], [3, 1]] * 3
    lr, steps, lr_g = 0.05, 4, 0.8
    want_x, want_c = paper_scaffold(a, b, sizes, len(picks), steps, lr, lr_g, picks, weighting)
    theta = torch.zeros(D, dtype=F64, requires_grad=True)
    x = [torch.zeros(D, dtype=F64)]
    sc = Scaffold(x, K, server_lr=lr_g, acc_dtype=F64, client_weights=sizes if weighting == "size" else None)
    for chosen in picks:
        server = fedround.RoundServer(x)
        for k in chosen:  # RoundServer's FedAvg weights (sizes) must not leak into SCAFFOLD's update
            fedround.client_round([theta], x, loss_of(a, b, k, theta), range(steps), algorithm="scaffold", lr=lr,
                                  scaffold=sc, client=k)
            server.add([theta], sizes[k])
        server.finish("scaffold", scaffold=sc)
    assert torch.allclose(x[0], want_x, rtol=0, atol=1e-12)
    assert torch.allclose(sc.c[0], want_c, rtol=0, atol=1e-12)
    other_x, _ = paper_scaffold(a, b, sizes, len(picks), steps, lr, lr_g, picks,
                                "size" if weighting == "uniform" else "uniform")
    assert (other_x - want_x).abs().max() > 1e-2  # and the two weightings really differ here


def test_scaffold_option_ii_by_hand():
    a, b = quadratics(2)
    lr, steps, k = 0.05, 3, 1
    x = [torch.randn(D, dtype=F64)]
    sc = Scaffold(x, K, server_lr=0.5, acc_dtype=F64)
    c0, ci0 = torch.randn(D, dtype=F64), torch.randn(D, dtype=F64)
    sc.c[0].copy_(c0)
    sc.control(k)[0].copy_(ci0)
    theta = torch.zeros(D, dtype=F64, requires_grad=True)
    fedround.client_round([theta], x, loss_of(a, b, k, theta), range(steps), algorithm="scaffold", lr=lr,
                          scaffold=sc, client=k)
    y = x[0].clone()
    for _ in range(steps):  # y <- y - lr (g(y) - c_i + c)
        y = y - lr * (a[k] * (y - b[k]) - ci0 + c0)
    assert torch.allclose(theta.detach(), y)
    ci_new = ci0 - c0 + (x[0] - y) / (steps * lr)
    assert torch.allclose(sc.control(k)[0], ci_new)
    x0 = x[0].clone()
    server = fedround.RoundServer(x)
    server.add([theta], 1.0)
    server.finish("scaffold", scaffold=sc)
    assert torch.allclose(x[0], x0 + 0.5 * (y - x0))              # x += lr_g mean dy
    assert torch.allclose(sc.c[0], c0 + (ci_new - ci0) / K)       # c += sum dc / N


def test_divergence_metric_is_rms_distance_to_the_mean():
    x = [torch.zeros(3)]
    server = fedround.RoundServer(x)
    clients = [torch.tensor([1.0, 0, 0]), torch.tensor([-1.0, 0, 0]), torch.tensor([0.0, 3, 0])]
    for c in clients:
        server.add([c], 1.0)
    m = server.finish("fedavg", server_opt=make_server_optimizer("fedavg", x))
    mean = torch.stack(clients).mean(0)
    rms = torch.stack([(c - mean).norm() ** 2 for c in clients]).mean().sqrt()
    assert m["client_divergence"] == pytest.approx(float(rms))
    assert torch.allclose(x[0], mean)


def test_scaffold_refuses_adaptive_local_optimizer():
    with pytest.raises(UsageError, match="SCAFFOLD needs plain SGD"):
        fedround.check_local_optimizer("scaffold", "adamw")
    fedround.check_local_optimizer("fedprox", "adamw")
