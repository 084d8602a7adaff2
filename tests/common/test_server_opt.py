"""Server optimizers (FedAvg with a server lr, FedAvgM in both forms, FedAdam, FedYogi, FedAdagrad) against the
formulas by hand, and the adaptive ones against Flower's own updates (tests/data/flower_reference.json, written by
benchmarks/flower_reference.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorcases import SHAPES, clients, close

from common import params as P
from common import server_opt as O


def run_rounds(opt, rounds, seed=7):
    theta = clients(1, seed=seed)[0]
    avgs = clients(rounds, seed=seed + 1)
    for avg in avgs:
        opt.step(theta, avg)
    return theta, avgs


def test_fedavg_server_step():
    theta, avgs = run_rounds(O.make_server_optimizer("fedavg", clients(1)[0]), 2)
    close(theta, avgs[-1], tol=0)
    lr = 0.3
    theta, avgs = run_rounds(O.make_server_optimizer("fedavg", clients(1)[0], lr=lr), 3)
    ref = clients(1, seed=7)[0]
    for avg in avgs:
        ref = [t + lr * (a - t) for t, a in zip(ref, avg)]
    close(theta, ref)


@pytest.mark.parametrize("form", ["heavy-ball", "ema"])
def test_fedavgm_by_hand(form):
    lr, beta = 0.8, 0.6
    opt = O.make_server_optimizer("fedavgm", clients(1)[0], lr=lr, momentum=beta, form=form)
    theta, avgs = run_rounds(opt, 4)
    ref, buf = clients(1, seed=7)[0], [torch.zeros(s) for s in SHAPES]
    for avg in avgs:
        if form == "heavy-ball":  # Flower / Hsu et al.: m <- beta m + (theta - avg); theta <- theta - lr m
            buf = [beta * m + (t - a) for m, t, a in zip(buf, ref, avg)]
            ref = [t - lr * m for t, m in zip(ref, buf)]
        else:  # v <- beta v + (1 - beta)(avg - theta); theta <- theta + lr v
            buf = [beta * v + (1 - beta) * (a - t) for v, t, a in zip(buf, ref, avg)]
            ref = [t + lr * v for t, v in zip(ref, buf)]
    close(theta, ref, tol=1e-5)
    close(opt.buffers[0], buf, tol=1e-5)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_fedadam_by_hand(bias_correction):
    lr, (b1, b2), tau = 0.05, (0.9, 0.99), 1e-3
    opt = O.make_server_optimizer("fedadam", clients(1)[0], lr=lr, betas=(b1, b2), tau=tau,
                                  bias_correction=bias_correction)
    theta, avgs = run_rounds(opt, 3)
    ref = clients(1, seed=7)[0]
    m, v = [torch.zeros(s) for s in SHAPES], [torch.zeros(s) for s in SHAPES]
    for t_, avg in enumerate(avgs, start=1):
        d = [a - t for a, t in zip(avg, ref)]
        m = [b1 * mi + (1 - b1) * di for mi, di in zip(m, d)]
        v = [b2 * vi + (1 - b2) * di * di for vi, di in zip(v, d)]
        # Flower 1.41 FedAdam.aggregate_fit: eta_norm = eta * sqrt(1 - b2^(server_round + 1))
        # / (1 - b1^(server_round + 1)), server_round = 1, 2, ...
        eta = lr * (math.sqrt(1 - b2 ** (t_ + 1)) / (1 - b1 ** (t_ + 1)) if bias_correction else 1.0)
        ref = [t + eta * mi / (vi.sqrt() + tau) for t, mi, vi in zip(ref, m, v)]
    close(theta, ref, tol=1e-5)


@pytest.mark.parametrize("initial_v", [0.0, 1e-3 ** 2])
@pytest.mark.parametrize("name", ["fedyogi", "fedadagrad"])
def test_fedyogi_fedadagrad_by_hand(name, initial_v):
    """Reddi et al. 2021, Algorithm 2, written out: m <- b1 m + (1 - b1) d; Yogi v <- v - (1 - b2) d^2
    sign(v - d^2), Adagrad v <- v + d^2; theta <- theta + lr m / (sqrt(v) + tau); v from ``initial_v``."""
    lr, (b1, b2), tau = 0.05, (0.8, 0.9), 1e-3
    opt = O.make_server_optimizer(name, clients(1)[0], lr=lr, betas=(b1, b2), tau=tau, initial_v=initial_v)
    theta, avgs = run_rounds(opt, 4)
    ref = clients(1, seed=7)[0]
    m, v = [torch.zeros(s) for s in SHAPES], [torch.full(s, initial_v) for s in SHAPES]
    for avg in avgs:
        d = [a - t for a, t in zip(avg, ref)]
        m = [b1 * mi + (1 - b1) * di for mi, di in zip(m, d)]
        if name == "fedyogi":
            v = [vi - (1 - b2) * di * di * torch.sign(vi - di * di) for vi, di in zip(v, d)]
        else:
            v = [vi + di * di for vi, di in zip(v, d)]
        ref = [t + lr * mi / (vi.sqrt() + tau) for t, mi, vi in zip(ref, m, v)]
    close(theta, ref, tol=1e-5)
    close(opt.buffers[0], m, tol=1e-6)
    close(opt.buffers[1], v, tol=1e-6)
    assert all(float(b.min()) >= 0 for b in opt.buffers[1])


def test_yogi_moves_v_less_than_adam_on_a_jump():
    """Yogi's additive v update: after a large delta v is (1 - b2) d^2 as Adam's, but on a small delta that
    follows, Adam's v decays multiplicatively (to b2 v + (1 - b2) d^2) while Yogi's falls by (1 - b2) d^2 only."""
    like = [torch.zeros(1)]
    yogi, adam = (O.make_server_optimizer(n, like, lr=0.1, betas=(0.0, 0.5), tau=1e-3) for n in ("fedyogi", "fedadam"))
    for opt in (yogi, adam):
        theta = [torch.zeros(1)]
        opt.step(theta, [torch.full((1,), 10.0)])
        opt.step(theta, [theta[0] + 0.01])
    assert float(yogi.buffers[1][0]) == pytest.approx(50.0 - 0.5 * 1e-4)
    assert float(adam.buffers[1][0]) == pytest.approx(0.5 * 50.0 + 0.5 * 1e-4)


FLOWER = json.loads((Path(__file__).resolve().parents[1] / "data" / "flower_reference.json").read_text())


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_steps_match_flower_fixture(name):
    """Flower's FedAdam (with its eta_norm: bias_correction=True), FedYogi and FedAdagrad (b1 = 0, as Flower
    fixes it) over 4 rounds on the fixture's float64 inputs, to 1e-6."""
    server = FLOWER["server"]
    case = server["cases"][name]
    kw = case["kwargs"]
    theta = [torch.tensor(t, dtype=torch.float64) for t in server["theta"]]
    opt = O.make_server_optimizer(name, theta, lr=kw["eta"], betas=(kw.get("beta_1", 0.0), kw.get("beta_2", 0.99)),
                                  tau=kw["tau"], bias_correction=name == "fedadam", acc_dtype=torch.float64)
    for avg, flower in zip(server["averages"], case["rounds"]):
        opt.step(theta, [torch.tensor(a, dtype=torch.float64) for a in avg])
        close(theta, [torch.tensor(f, dtype=torch.float64) for f in flower], tol=1e-6)
    assert len(case["rounds"]) == 4, FLOWER["flwr_version"]


def test_fedadam_bias_correction_matches_flower_strategy():
    """bias_correction=True against Flower's own FedAdam.aggregate_fit (float64, one client per round)."""
    flwr = pytest.importorskip("flwr")
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdam as FlowerFedAdam

    lr, (b1, b2), tau = 0.05, (0.9, 0.99), 1e-3
    theta = [t.double() for t in clients(1, seed=7)[0]]
    avgs = [[t.double() for t in a] for a in clients(4, seed=8)]
    ours = O.make_server_optimizer("fedadam", theta, lr=lr, betas=(b1, b2), tau=tau, bias_correction=True,
                                   acc_dtype=torch.float64)
    strategy = FlowerFedAdam(initial_parameters=ndarrays_to_parameters([t.numpy().copy() for t in theta]),
                             eta=lr, beta_1=b1, beta_2=b2, tau=tau)
    for server_round, avg in enumerate(avgs, start=1):
        ours.step(theta, avg)
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([a.numpy() for a in avg]), 1, {})
        flower_params, _ = strategy.aggregate_fit(server_round, [(None, res)], [])
        flower = parameters_to_ndarrays(flower_params)
        assert max(float(np.abs(t.numpy() - f).max()) for t, f in zip(theta, flower)) < 1e-12, flwr.__version__


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizer_state_round_trip_and_errors(name):
    like = clients(1)[0]
    full = O.make_server_optimizer(name, like, lr=0.1)
    theta_full, avgs = run_rounds(full, 4)
    first = O.make_server_optimizer(name, like, lr=0.1)
    theta = clients(1, seed=7)[0]
    for avg in avgs[:2]:
        first.step(theta, avg)
    second = O.make_server_optimizer(name, like, lr=0.1)
    second.load_state_dict(first.state_dict())
    for avg in avgs[2:]:
        second.step(theta, avg)
    close(theta, theta_full, tol=0)
    assert second.steps == 4
    with pytest.raises(ValueError, match="fedavgm"):
        O.make_server_optimizer("fedavgm", like).load_state_dict(first.state_dict())
    other = "fedyogi" if name == "fedadagrad" else "fedadagrad"  # FedAdagrad's buffers are FedYogi's
    with pytest.raises(ValueError, match=other):
        O.make_server_optimizer(other, like).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="unknown server optimizer"):
        O.make_server_optimizer("fedsgd", like)
    with pytest.raises(ValueError, match="form"):
        O.make_server_optimizer("fedavgm", like, form="nesterov")



STEPS = [("fedavg", {"lr": 0.7}), ("fedavgm", {"form": "heavy-ball"}), ("fedavgm", {"form": "ema"}),
         ("fedadam", {"bias_correction": True}), ("fedyogi", {}), ("fedadagrad", {"betas": (0.9, 0.0)})]


@pytest.mark.parametrize("fused", [True, "small blocks", False])
@pytest.mark.parametrize("name,kwargs", STEPS)
def test_flat_chunked_step_is_bit_equal_to_the_per_tensor_step(monkeypatch, name, kwargs, fused):
    """Parameters, average and state tiling one buffer take torch's fused kernels block by block (one block
    here, or 18 with "small blocks") or the chunked path (several cache-sized pieces here, ``fused=False``:
    what other dtypes get); separate tensors the per-tensor one: the same bits after a few steps, state
    included."""
    if not fused:
        monkeypatch.setattr(O.ServerOptimizer, "_fusable", lambda self, params, average: False)
    if fused == "small blocks":
        monkeypatch.setattr(O.ServerOptimizer, "_FUSED_BLOCK", 10_000)
    g = torch.Generator().manual_seed(0)
    shapes = [(300, 400), (50_000,), (7,)]  # 170K elements: three CHUNK_NUMEL pieces
    x0 = [torch.randn(s, generator=g) for s in shapes]
    avgs = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    flat, sep = P.clone(x0), [t.clone() for t in x0]
    assert P.as_flat(flat) is not None and P.as_flat(sep) is None
    opt_flat = O.make_server_optimizer(name, flat, **kwargs)
    opt_sep = O.make_server_optimizer(name, sep, **kwargs)
    opt_sep.buffers = [[t.clone() for t in b] for b in opt_sep.buffers]  # separate state tensors too
    for a in avgs:
        opt_flat.step(flat, P.clone(a))
        opt_sep.step(sep, a)
    assert all(torch.equal(x, y) for x, y in zip(flat, sep))
    for b_flat, b_sep in zip(opt_flat.buffers, opt_sep.buffers):
        assert all(torch.equal(x, y) for x, y in zip(b_flat, b_sep))


@pytest.mark.parametrize("name,kwargs", STEPS[1:4])
def test_fused_kernels_match_the_foreach_step(monkeypatch, name, kwargs):
    """torch's fused SGD-momentum / Adam kernels against the foreach ops they replace: the same step up to
    float rounding, state included, over several rounds."""
    g = torch.Generator().manual_seed(1)
    x0 = P.clone([torch.randn(s, generator=g) for s in SHAPES])
    avgs = [P.clone([t + 0.01 * torch.randn(t.shape, generator=g) for t in x0]) for _ in range(4)]
    fused_x, ref_x = P.clone(x0), P.clone(x0)
    fused = O.make_server_optimizer(name, fused_x, **kwargs)
    ref = O.make_server_optimizer(name, ref_x, **kwargs)
    for a in avgs:
        fused.step(fused_x, a)
        with monkeypatch.context() as m:
            m.setattr(O.ServerOptimizer, "_fusable", lambda self, params, average: False)
            ref.step(ref_x, a)
    close(fused_x, ref_x, tol=1e-6)
    for b_fused, b_ref in zip(fused.buffers, ref.buffers):
        close(b_fused, b_ref, tol=1e-6)
    assert fused.steps == ref.steps == len(avgs)


def test_other_dtypes_take_the_foreach_step():
    """bfloat16 parameters with float32 state are not fusable: the foreach step, parameters stay bfloat16."""
    like = [t.bfloat16() for t in clients(1)[0]]
    opt = O.make_server_optimizer("fedadam", like, lr=0.1)
    assert not opt._fusable(like, like)
    theta = [t.clone() for t in like]
    opt.step(theta, [t + 1 for t in like])
    assert all(t.dtype == torch.bfloat16 for t in theta) and not all(torch.equal(a, b) for a, b in zip(theta, like))
