"""Aggregators, server optimizers, SCAFFOLD and LoRA merges against direct dense computations."""
from __future__ import annotations

import math

import pytest
import torch

from common import aggregate as A
from common import params as P

SHAPES = [(4, 3), (5,), (2, 3, 2), (1,)]


def clients(k, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g).to(dtype) for s in SHAPES] for _ in range(k)]


def close(a, b, tol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x.double(), y.double(), rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- weighted mean
def test_weighted_mean_matches_stack_reference():
    cs, w = clients(5), [3.0, 1.0, 7.0, 2.0, 0.5]
    agg = A.WeightedMean(cs[0])
    for c, wk in zip(cs, w):
        agg.add(c, wk)
    wt = torch.tensor(w)
    ref = [(torch.stack([c[i] for c in cs]) * wt.view(-1, *[1] * len(s))).sum(0) / wt.sum()
           for i, s in enumerate(SHAPES)]
    close(agg.result(), ref)
    assert A.as_flat(agg.result()) is not None  # new results tile one buffer: the next step is one op too
    assert agg.total_weight == pytest.approx(sum(w))
    # unweighted is torch.stack(...).mean(0); add_flat is the same as add
    flat = A.WeightedMean(cs[0])
    for c in cs:
        flat.add_flat(P.flatten(c))
    close(flat.result(), [torch.stack([c[i] for c in cs]).mean(0) for i in range(len(SHAPES))])


def as_views(ts):
    return P.unflatten(P.flatten(ts), ts)


def test_flat_fast_path_equals_per_tensor_path():
    """Clients given as views tiling one buffer take the single-op path; results must not change."""
    cs, fs = clients(4, seed=11), [[f.abs() for f in c] for c in clients(4, seed=12)]
    assert A.as_flat(as_views(cs[0])) is not None and A.as_flat(cs[0]) is None
    assert A.as_flat(as_views(cs[0])[1:]) is not None and A.as_flat(as_views(cs[0])[::2]) is None
    for make in (A.WeightedMean, A.FisherMean):
        slow, fast = make(cs[0]), make(cs[0])
        for k, (c, f) in enumerate(zip(cs, fs)):
            args = (c, f) if make is A.FisherMean else (c,)
            slow.add(*args, weight=k + 1.0)
            fast.add(*(as_views(a) for a in args), weight=k + 1.0)
        out = as_views(P.zeros_like(cs[0]))
        close(fast.result(out=out), slow.result(), tol=1e-6)
        close(out, slow.result(), tol=1e-6)


def test_weighted_mean_low_precision_params_accumulate_in_float32():
    cs = clients(4, dtype=torch.bfloat16)
    agg = A.WeightedMean(cs[0])
    for c in cs:
        agg.add(c, 2.0)
    res = agg.result()
    assert all(r.dtype == torch.bfloat16 for r in res)
    ref = [torch.stack([c[i].float() for c in cs]).mean(0) for i in range(len(SHAPES))]
    close([r.float() for r in res], [r.bfloat16().float() for r in ref], tol=1e-2)
    out = P.zeros_like(cs[0], dtype=torch.float32)  # result into existing tensors, any dtype
    assert all(r is o for r, o in zip(agg.result(out=out), out))
    close(out, ref, tol=1e-6)


def test_weighted_mean_state_dict_mid_stream_and_reset():
    cs = clients(6)
    full = A.WeightedMean(cs[0])
    for k, c in enumerate(cs):
        full.add(c, k + 1)
    part = A.WeightedMean(cs[0])
    for k, c in enumerate(cs[:3]):
        part.add(c, k + 1)
    state = part.state_dict()
    part.add(cs[5], 100.0)  # the saved state must not see later adds
    resumed = A.WeightedMean(cs[0])
    resumed.load_state_dict(state)
    for k, c in enumerate(cs[3:], start=3):
        resumed.add(c, k + 1)
    close(resumed.result(), full.result(), tol=0)
    resumed.reset()
    with pytest.raises(ValueError, match="no client"):
        resumed.result()
    with pytest.raises(ValueError, match="FisherMean"):
        A.FisherMean(cs[0]).load_state_dict(state)
    with pytest.raises(ValueError, match="tensors"):
        full.add(cs[0][:2])
    with pytest.raises(ValueError, match="shape"):
        full.add(as_views(cs[0][::-1]))  # right sizes, wrong order


def test_accumulators_sum_like_an_all_reduce():
    """Two partial aggregators whose accumulators are summed equal one aggregator over all clients."""
    cs, w = clients(6), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    one, a, b = (A.WeightedMean(cs[0]) for _ in range(3))
    for k, c in enumerate(cs):
        one.add(c, w[k])
        (a if k % 2 else b).add(c, w[k])
    for x, y in zip(a.accumulators(), b.accumulators()):
        x.add_(y)
    close(a.result(), one.result())


# ----------------------------------------------------------------------------- Fisher and masked means
def test_fisher_mean_matches_dense_formula():
    cs, fs = clients(4, seed=1), [[f.abs() for f in c] for c in clients(4, seed=2)]
    w, eps = [1.0, 2.0, 0.5, 3.0], 1e-8
    agg = A.FisherMean(cs[0], eps=eps)
    for c, f, wk in zip(cs, fs, w):
        agg.add(c, f, wk)
    for i in range(len(SHAPES)):
        num = sum(wk * f[i] * c[i] for c, f, wk in zip(cs, fs, w))
        den = sum(wk * f[i] for f, wk in zip(fs, w))
        torch.testing.assert_close(agg.result()[i], num / (den + eps), rtol=1e-6, atol=1e-6)


def test_fisher_mean_floor_gives_plain_mean_where_fisher_is_zero():
    cs = clients(3, seed=3)
    zero = [torch.zeros(s) for s in SHAPES]
    plain, floored = A.FisherMean(cs[0]), A.FisherMean(cs[0], floor=1e-6)
    for c in cs:
        plain.add(c, zero)
        floored.add(c, zero)
    assert all(r.abs().max() < 1e-3 for r in plain.result())  # the bare formula collapses to ~0
    mean = [torch.stack([c[i] for c in cs]).mean(0) for i in range(len(SHAPES))]
    close(floored.result(), [m * 3e-6 / (3e-6 + 1e-8) for m in mean], tol=1e-6)  # eps still in the denominator


def test_masked_mean_averages_only_over_updating_clients():
    cs, g = clients(4, seed=4), torch.Generator().manual_seed(5)
    masks = [[torch.rand(s, generator=g) < 0.5 for s in SHAPES] for _ in cs]
    masks[2][1] = None  # client 2 updated tensor 1 everywhere
    w = [1.0, 3.0, 2.0, 0.5]
    fallback = clients(1, seed=6)[0]
    agg = A.MaskedMean(cs[0])
    for c, m, wk in zip(cs, masks, w):
        agg.add(c, m, wk)
    res = agg.result(fallback)
    for i, s in enumerate(SHAPES):
        m = torch.stack([torch.ones(s) if mk[i] is None else mk[i].float() for mk in masks])
        x = torch.stack([c[i] for c in cs])
        wt = torch.tensor(w).view(-1, *[1] * len(s))
        den = (wt * m).sum(0)
        ref = torch.where(den > 0, (wt * m * x).sum(0) / den.clamp_min(1e-30), fallback[i])
        torch.testing.assert_close(res[i], ref, rtol=1e-6, atol=1e-6)
        untouched = den == 0
        assert torch.equal(res[i][untouched], fallback[i][untouched])


def test_entropy_weights_softmax_and_stability():
    h, t = [2.0, 1.0, 3.5], 0.7
    ref = torch.softmax(-torch.tensor(h, dtype=torch.float64) / t, 0)
    assert A.entropy_weights(h, t) == pytest.approx(ref.tolist(), abs=1e-12)
    w = A.entropy_weights([1e4, 1e4 + 1.0, 5e4], temperature=1e-2)  # naive exp under/overflows
    assert math.isclose(sum(w), 1.0) and w[0] == pytest.approx(1.0) and w[2] == 0.0
    assert A.entropy_weights([4.0, 4.0]) == [0.5, 0.5]
    with pytest.raises(ValueError):
        A.entropy_weights([1.0], temperature=0)
    with pytest.raises(ValueError):
        A.entropy_weights([float("nan")])


# ----------------------------------------------------------------------------- server optimizers
def run_rounds(opt, rounds, seed=7):
    theta = clients(1, seed=seed)[0]
    avgs = clients(rounds, seed=seed + 1)
    for avg in avgs:
        opt.step(theta, avg)
    return theta, avgs


def test_fedavg_server_step():
    theta, avgs = run_rounds(A.make_server_optimizer("fedavg", clients(1)[0]), 2)
    close(theta, avgs[-1], tol=0)
    lr = 0.3
    theta, avgs = run_rounds(A.make_server_optimizer("fedavg", clients(1)[0], lr=lr), 3)
    ref = clients(1, seed=7)[0]
    for avg in avgs:
        ref = [t + lr * (a - t) for t, a in zip(ref, avg)]
    close(theta, ref)


@pytest.mark.parametrize("form", ["heavy-ball", "ema"])
def test_fedavgm_by_hand(form):
    lr, beta = 0.8, 0.6
    opt = A.make_server_optimizer("fedavgm", clients(1)[0], lr=lr, momentum=beta, form=form)
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
    opt = A.make_server_optimizer("fedadam", clients(1)[0], lr=lr, betas=(b1, b2), tau=tau,
                                  bias_correction=bias_correction)
    theta, avgs = run_rounds(opt, 3)
    ref = clients(1, seed=7)[0]
    m, v = [torch.zeros(s) for s in SHAPES], [torch.zeros(s) for s in SHAPES]
    for t_, avg in enumerate(avgs, start=1):
        d = [a - t for a, t in zip(avg, ref)]
        m = [b1 * mi + (1 - b1) * di for mi, di in zip(m, d)]
        v = [b2 * vi + (1 - b2) * di * di for vi, di in zip(v, d)]
        eta = lr * (math.sqrt(1 - b2 ** t_) / (1 - b1 ** t_) if bias_correction else 1.0)
        ref = [t + eta * mi / (vi.sqrt() + tau) for t, mi, vi in zip(ref, m, v)]
    close(theta, ref, tol=1e-5)


def test_server_optimizer_state_round_trip_and_errors():
    like = clients(1)[0]
    full = A.make_server_optimizer("fedadam", like, lr=0.1)
    theta_full, avgs = run_rounds(full, 4)
    first = A.make_server_optimizer("fedadam", like, lr=0.1)
    theta = clients(1, seed=7)[0]
    for avg in avgs[:2]:
        first.step(theta, avg)
    second = A.make_server_optimizer("fedadam", like, lr=0.1)
    second.load_state_dict(first.state_dict())
    for avg in avgs[2:]:
        second.step(theta, avg)
    close(theta, theta_full, tol=0)
    assert second.steps == 4
    with pytest.raises(ValueError, match="fedavgm"):
        A.make_server_optimizer("fedavgm", like).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="unknown server optimizer"):
        A.make_server_optimizer("fedsgd", like)
    with pytest.raises(ValueError, match="form"):
        A.make_server_optimizer("fedavgm", like, form="nesterov")


# ----------------------------------------------------------------------------- SCAFFOLD
def test_scaffold_option_two_by_hand():
    n_clients, k_steps, lr_l, lr_g = 5, 3, 0.1, 0.7
    x = clients(1, seed=8)[0]
    sc = A.Scaffold(x, num_clients=n_clients, server_lr=lr_g)
    c_ref = [torch.zeros(s) for s in SHAPES]
    ci_ref = {i: [torch.zeros(s) for s in SHAPES] for i in range(n_clients)}
    for rnd, sampled in enumerate([[0, 2, 3], [2, 4]]):
        ys = clients(len(sampled), seed=20 + rnd)
        close(sc.correction(sampled[0]), [c - ci for c, ci in zip(c_ref, ci_ref[sampled[0]])])
        dys, dcs = [], []
        for i, y in zip(sampled, ys):
            dy, dc = sc.client_update(i, x, y, k_steps, lr_l)
            new_ci = [ci - c + (xx - yy) / (k_steps * lr_l) for ci, c, xx, yy in zip(ci_ref[i], c_ref, x, y)]
            dys.append([yy - xx for yy, xx in zip(y, x)])
            dcs.append([a - b for a, b in zip(new_ci, ci_ref[i])])
            ci_ref[i] = new_ci
            close(dy, dys[-1], tol=1e-5)
            close(dc, dcs[-1], tol=1e-5)
        x_ref = [xx + lr_g * torch.stack([d[j] for d in dys]).mean(0) for j, xx in enumerate(x)]
        c_ref = [c + torch.stack([d[j] for d in dcs]).sum(0) / n_clients for j, c in enumerate(c_ref)]
        sc.server_update(x)
        close(x, x_ref, tol=1e-5)
        close(sc.c, c_ref, tol=1e-5)
    for i in range(n_clients):  # every client's control persists (never sampled: zero)
        close(sc.control(i), ci_ref[i], tol=1e-5)
    state = sc.state_dict()
    assert sorted(state["c_i"]) == [0, 1, 2, 3, 4] and len(state["c"]) == len(SHAPES)
    other = A.Scaffold(x, num_clients=n_clients, server_lr=lr_g)
    other.load_state_dict(state)
    close(other.correction(2), sc.correction(2), tol=0)
    with pytest.raises(ValueError, match="no client_update"):
        other.server_update(x)


# ----------------------------------------------------------------------------- LoRA merges
def lora_clients(k=3, rank=2, d_out=7, d_in=5, seed=9):
    g = torch.Generator().manual_seed(seed)
    As = [torch.randn(rank, d_in, generator=g) for _ in range(k)]
    Bs = [torch.randn(d_out, rank, generator=g) for _ in range(k)]
    return As, Bs, [0.2, 0.5, 0.3][:k], [2.0, 2.0, 0.5][:k]


def test_lora_svd_merge_is_the_best_rank_r_approximation():
    As, Bs, w, s = lora_clients()
    dense = sum(wk * sk * b @ a for a, b, wk, sk in zip(As, Bs, w, s))
    torch.testing.assert_close(A.lora_delta(As, Bs, w, s), dense)
    for r, out_scale in [(1, 1.0), (2, 16 / 2), (4, 0.5)]:
        a, b = A.lora_svd_merge(As, Bs, w, s, rank=r, out_scale=out_scale)
        assert a.shape == (r, 5) and b.shape == (7, r)
        u, sv, vh = torch.linalg.svd(dense)
        best = u[:, :r] @ torch.diag(sv[:r]) @ vh[:r]
        torch.testing.assert_close(out_scale * b @ a, best, rtol=1e-4, atol=1e-5)
        # Eckart-Young: the error is the tail of the spectrum, and no other rank-r product does better
        err = torch.linalg.matrix_norm(dense - out_scale * b @ a)
        assert err == pytest.approx(float(sv[r:].square().sum().sqrt()), rel=1e-4, abs=1e-5)
        naive_a, naive_b = A.lora_naive_merge(As, Bs, w)
        assert err <= torch.linalg.matrix_norm(dense - naive_b @ naive_a) + 1e-6
        # singular values split evenly: both factors carry sqrt(sigma / out_scale)
        torch.testing.assert_close(a.norm(dim=1), b.norm(dim=0), rtol=1e-4, atol=1e-6)


def test_lora_svd_merge_exact_when_rank_covers_sum_of_ranks():
    As, Bs, w, s = lora_clients(k=2, rank=2, d_out=9, d_in=8)
    dense = A.lora_delta(As, Bs, w, s)
    a, b = A.lora_svd_merge(As, Bs, w, s, rank=4)
    torch.testing.assert_close(b @ a, dense, rtol=1e-4, atol=1e-5)
    a, b = A.lora_svd_merge(As, Bs, w, s, rank=6)  # rank above sum r_k: zero padding, still exact
    assert a.shape == (6, 8) and torch.count_nonzero(a[4:]) == 0 and torch.count_nonzero(b[:, 4:]) == 0
    torch.testing.assert_close(b @ a, dense, rtol=1e-4, atol=1e-5)
    ea, eb = A.lora_exact_merge(As, Bs, w, s, out_scale=2.0)
    assert ea.shape == (4, 8) and eb.shape == (9, 4)
    torch.testing.assert_close(2.0 * eb @ ea, dense, rtol=1e-5, atol=1e-6)


def test_lora_naive_merge_and_errors():
    As, Bs, w, _ = lora_clients()
    na, nb = A.lora_naive_merge(As, Bs, w)
    torch.testing.assert_close(na, sum(wk * a for wk, a in zip(w, As)))
    torch.testing.assert_close(nb, sum(wk * b for wk, b in zip(w, Bs)))
    with pytest.raises(ValueError, match="A \\[r, in\\]"):
        A.lora_svd_merge([As[0].T], [Bs[0]], [1.0], [1.0], rank=2)
    with pytest.raises(ValueError, match="as many"):
        A.lora_exact_merge(As, Bs[:2], w, [1.0] * 3)
