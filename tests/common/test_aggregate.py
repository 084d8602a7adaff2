"""Streaming aggregators (weighted and Fisher-weighted means) and FedEntropy weights against
direct dense computations."""
from __future__ import annotations

import math

import pytest
import torch
from tensorcases import BIG, SHAPES, big_clients, clients, close

from common import aggregate as A
from common import params as P


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
    assert P.as_flat(agg.result()) is not None  # new results tile one buffer: the next step is one op too
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
    assert P.as_flat(as_views(cs[0])) is not None and P.as_flat(cs[0]) is None
    assert P.as_flat(as_views(cs[0])[1:]) is not None and P.as_flat(as_views(cs[0])[::2]) is None
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


# ----------------------------------------------------------------------------- Fisher mean
def _dense_fisher_mean(cs, fs, w, eps_rel):
    """The FisherMean formula written out per tensor: floor eps relative to the mean of sum w F."""
    dens = [sum(wk * f[i] for f, wk in zip(fs, w)) for i in range(len(SHAPES))]
    eps = eps_rel * float(torch.cat([d.flatten() for d in dens]).mean())
    out = []
    for i in range(len(SHAPES)):
        num = sum(wk * f[i] * c[i] for c, f, wk in zip(cs, fs, w))
        mean = sum(wk * c[i] for c, wk in zip(cs, w)) / sum(w)
        out.append((num + eps * mean) / (dens[i] + eps))
    return out


def test_fisher_mean_matches_dense_formula():
    cs, fs = clients(4, seed=1), [[f.abs() for f in c] for c in clients(4, seed=2)]
    w = [1.0, 2.0, 0.5, 3.0]
    for eps_rel in (1e-6, 0.5):
        agg = A.FisherMean(cs[0], eps=eps_rel)
        for c, f, wk in zip(cs, fs, w):
            agg.add(c, f, wk)
        close(agg.result(), _dense_fisher_mean(cs, fs, w, eps_rel), tol=1e-5)
    with pytest.raises(ValueError, match="eps"):
        A.FisherMean(cs[0], eps=0.0)


def _weighted_mean(cs, w):
    return [sum(wk * c[i] for c, wk in zip(cs, w)) / sum(w) for i in range(len(SHAPES))]


def test_fisher_mean_zero_fisher_gives_the_weighted_mean_exactly_never_zero():
    """A coordinate with no Fisher information on any client gets FedAvg's weighted mean, bit for bit where
    the Fisher is exactly zero (the bare sum F theta / (sum F + eps) would give ~0 there)."""
    cs, fs = clients(3, seed=3), [[f.abs() + 0.1 for f in c] for c in clients(3, seed=13)]
    for f in fs:
        f[0].zero_()          # tensor 0: no client has information anywhere
        f[1].view(-1)[:3] = 0  # tensor 1: three coordinates without information
    w = [1.0, 2.0, 4.0]
    agg = A.FisherMean(cs[0])
    for c, f, wk in zip(cs, fs, w):
        agg.add(c, f, wk)
    res, mean = agg.result(), _weighted_mean(cs, w)
    torch.testing.assert_close(res[0], mean[0], rtol=0, atol=0)
    torch.testing.assert_close(res[1].view(-1)[:3], mean[1].view(-1)[:3], rtol=0, atol=0)
    assert not torch.allclose(res[1].view(-1)[3:], mean[1].view(-1)[3:])  # elsewhere the Fisher decides
    n_zero = math.prod(SHAPES[0]) + 3
    assert agg.eps_share == pytest.approx(n_zero / sum(math.prod(s) for s in SHAPES))
    nothing = A.FisherMean(cs[0])
    for c, wk in zip(cs, w):
        nothing.add(c, [torch.zeros(s) for s in SHAPES], wk)
    close(nothing.result(), mean, tol=0)
    assert nothing.eps_share == 1.0


def test_fisher_mean_equal_fisher_is_fedavg():
    cs, w = clients(4, seed=7), [1.0, 3.0, 2.0, 0.5]
    shared = [f.abs() + 1e-3 for f in clients(1, seed=8)[0]]  # same Fisher for every client, varying by coordinate
    agg = A.FisherMean(cs[0])
    for c, wk in zip(cs, w):
        agg.add(c, shared, wk)
    close(agg.result(), _weighted_mean(cs, w), tol=1e-6)
    assert agg.eps_share == 0.0


def test_fisher_mean_client_with_tenfold_fisher_dominates():
    cs = clients(2, seed=9)
    ones = [torch.ones(s) for s in SHAPES]
    agg = A.FisherMean(cs[0])
    agg.add(cs[0], [10 * o for o in ones], 1.0)
    agg.add(cs[1], ones, 1.0)
    close(agg.result(), [(10 * a + b) / 11 for a, b in zip(cs[0], cs[1])], tol=1e-6)  # weight 10/11


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


# ----------------------------------------------------------------------------- bit-equality of the fast paths
def _previous_implementation(kind, cs, extra, w):
    """The aggregators as they were before the flat / thread-count / chunked paths: per-tensor foreach ops
    into per-tensor float32 sums, the same formulas. The new code must give the same bits."""
    shapes = [t.shape for t in cs[0]]
    z = lambda: [torch.zeros(s) for s in shapes]
    num, den, tot = z(), z(), z()
    for k, c in enumerate(cs):
        if kind == "weighted":
            torch._foreach_add_(num, c, alpha=w[k])
        else:
            torch._foreach_addcmul_(num, extra[k], c, value=w[k])
            torch._foreach_add_(den, extra[k], alpha=w[k])
            torch._foreach_add_(tot, c, alpha=w[k])
    total = sum(w)
    if kind == "weighted":
        return [torch.mul(s, 1.0 / total) for s in num]
    flat_num, flat_den, flat_tot = (torch.cat([t.reshape(-1) for t in x]) for x in (num, den, tot))
    mean = flat_tot / total
    eps = 1e-6 * float(flat_den.mean())
    return P.unflatten(torch.where(flat_den > 0, (flat_num + eps * mean) / (flat_den + eps), mean), cs[0])


@pytest.mark.parametrize("busy", [False, True])
@pytest.mark.parametrize("kind", ["weighted", "fisher"])
def test_flat_separate_busy_or_quiet_all_bit_equal_to_the_previous_implementation(monkeypatch, kind, busy):
    """Clients as separate tensors or tiling one buffer, one thread (busy machine) or every thread: the same
    bits as the previous per-tensor implementation. The model spans several of the scratch chunks (128K
    elements here), so FisherMean's result goes through them chunk by chunk."""
    monkeypatch.setattr(P, "machine_busy", lambda: busy)
    monkeypatch.setattr(A._Streaming, "_CHUNK", 1 << 17)
    g = torch.Generator().manual_seed(3)
    shapes = [(400, 700), (90_000,), (5, 3), (1,)]  # 370K elements
    cs = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    w = [1.0, 2.5, 0.75]
    extra = [[torch.rand(s, generator=g) ** 3 for s in shapes] for _ in cs]
    extra[0][2].zero_()
    ref = _previous_implementation(kind, cs, extra, w)
    make = {"weighted": A.WeightedMean, "fisher": A.FisherMean}[kind]
    for flat in (False, True):
        agg = make(cs[0])
        for k, c in enumerate(cs):
            args = (c,) if kind == "weighted" else (c, extra[k])
            agg.add(*(as_views(a) if flat else a for a in args), weight=w[k])
        for out in (None, as_views(P.zeros_like(cs[0])), [torch.empty(s) for s in shapes]):
            res = agg.result(out=out)
            assert all(torch.equal(r, x) for r, x in zip(res, ref)), (flat, out is None)


# ----------------------------------------------------------------------------- big shapes
@pytest.mark.parametrize("chunk", [A._Streaming._CHUNK, 1000])
@pytest.mark.parametrize("out_kind", ["new", "flat", "separate", "bf16"])
def test_fisher_mean_result_is_the_whole_tensor_formula_bit_for_bit(monkeypatch, chunk, out_kind):
    """result() works chunk by chunk in scratch space; its values must be those of the whole-tensor
    expression where(den > 0, (num + eps mean) / (den + eps), mean), and eps_share the count of den <= eps."""
    monkeypatch.setattr(A._Streaming, "_CHUNK", chunk)
    cs, fs = big_clients(4, seed=21), big_clients(4, seed=22, positive=True)
    for f in fs:  # coordinates no client's loss touched (den = 0) and tiny ones (below the eps floor)
        f[1][:300] = 0.0
        f[0][:5] *= 1e-12
    agg = A.FisherMean(cs[0], eps=1e-2)
    for k, (c, f) in enumerate(zip(cs, fs)):
        agg.add(c, f, 1.0 + k)
    num, den, tot = (b[:agg.numel] for b in agg.accumulators())
    mean = tot / agg.total_weight
    eps = agg.eps * float(den.mean())
    ref = torch.where(den > 0, (num + eps * mean) / (den + eps), mean)
    out = {"new": None, "flat": as_views([torch.zeros(s) for s in BIG]), "separate": [torch.zeros(s) for s in BIG],
           "bf16": as_views([torch.zeros(s, dtype=torch.bfloat16) for s in BIG])}[out_kind]
    res = agg.result(out=out)
    assert torch.equal(P.flatten(res), ref.to(res[0].dtype))
    assert agg.eps_share == int((den <= eps).sum()) / agg.numel and 0 < agg.eps_share < 0.1
    nothing = A.FisherMean(cs[0])  # no Fisher information anywhere: the weighted mean, every coordinate at the floor
    for k, c in enumerate(cs):
        nothing.add(c, [torch.zeros(s) for s in BIG], 1.0 + k)
    assert torch.equal(P.flatten(nothing.result()), mean) and nothing.eps_share == 1.0


@pytest.mark.parametrize("kind", ["weighted", "fisher"])
def test_result_of_big_bf16_parameters_with_float32_sums(kind):
    """Sums in another dtype than the parameters, in buffers big enough to be 2 MiB aligned inside their
    storage (common.params.empty_flat): result() without ``out`` allocates bf16 tensors at the right places
    (it used the sums' storage offsets, alignment included, and failed with a shape error)."""
    shapes = [(P.HUGE_PAGE_MIN_BYTES // 4 + 100,), (7, 3)]
    g = torch.Generator().manual_seed(0)
    cs = [[torch.randn(s, generator=g).to(torch.bfloat16) for s in shapes] for _ in range(2)]
    make = {"weighted": A.WeightedMean, "fisher": A.FisherMean}[kind]
    agg = make(cs[0])
    assert agg._flats[0].storage_offset() > 0  # the case: the buffer starts inside its storage
    for c, w in zip(cs, (1.0, 3.0)):
        agg.add(c, w) if kind == "weighted" else agg.add(c, [torch.ones(s, dtype=torch.bfloat16) for s in shapes], w)
    res = agg.result()
    for r, a, b in zip(res, *cs):
        assert r.dtype == torch.bfloat16 and r.shape == a.shape
        torch.testing.assert_close(r, ((a.float() + 3 * b.float()) / 4).to(torch.bfloat16))
