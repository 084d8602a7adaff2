"""User-level DP (common/dp.py): the accountant against dp-accounting called directly, the rounds it counts, and
the mechanism (clipping, noise variance, the DP-off limit, resume, adaptive clipping) against references."""
from __future__ import annotations

import math
from argparse import Namespace

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from tensorcases import SHAPES, clients, close

from common import dp
from common import params as P
from common.errors import UsageError

DELTA = 1e-5


def library_epsilon(event, relation, accountant="rdp") -> float:
    """epsilon at DELTA straight from dp-accounting, with the event built here, not by common.dp."""
    acc = (dpa.rdp.RdpAccountant(neighboring_relation=relation) if accountant == "rdp"
           else dpa.pld.PLDAccountant(neighboring_relation=relation))
    return acc.compose(event).get_epsilon(DELTA)


# ----------------------------------------------------------------------------- the accountant
@pytest.mark.parametrize("q,z,rounds", [(q, z, r) for q in (0.01, 0.1, 1.0) for z in (0.7, 1.5) for r in (1, 300)])
def test_epsilon_matches_library_poisson_rdp(q, z, rounds):
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds)
    ref = library_epsilon(event, dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    assert dp.epsilon(q, z, rounds, DELTA) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("q,z,rounds", [(0.01, 1.0, 100), (0.1, 1.2, 10), (0.05, 2.0, 1000)])
def test_epsilon_matches_library_poisson_pld(q, z, rounds):
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds)
    ref = library_epsilon(event, dpa.NeighboringRelation.ADD_OR_REMOVE_ONE, "pld")
    assert dp.epsilon(q, z, rounds, DELTA, accountant="pld") == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("N,m,z,rounds", [(1000, 10, 1.0, 100), (100, 10, 2.0, 50), (50, 50, 3.0, 5)])
def test_epsilon_matches_library_fixed_cohorts(N, m, z, rounds):
    """Fixed-size cohorts: sampling without replacement under replace-one, where the clipped sum moves by up to 2C
    when one user is replaced, so the library's Gaussian event carries z / 2 (noise std over sensitivity)."""
    event = dpa.SelfComposedDpEvent(dpa.SampledWithoutReplacementDpEvent(N, m, dpa.GaussianDpEvent(z / 2)), rounds)
    ref = library_epsilon(event, dpa.NeighboringRelation.REPLACE_ONE)
    assert dp.epsilon(m / N, z, rounds, DELTA, sampling="fixed", N=N) == pytest.approx(ref, rel=1e-6)


def test_epsilon_edges_and_refusals():
    assert dp.epsilon(0.1, 1.0, 0, DELTA) == 0.0
    assert dp.epsilon(0.1, 0.0, 10, DELTA) == math.inf  # no noise: no privacy
    with pytest.raises(UsageError, match="RDP only"):
        dp.epsilon(0.1, 1.0, 10, DELTA, sampling="fixed", N=100, accountant="pld")
    with pytest.raises(UsageError, match="whole number"):
        dp.epsilon(0.015, 1.0, 10, DELTA, sampling="fixed", N=100)
    with pytest.raises(UsageError, match="delta"):
        dp.epsilon(0.1, 1.0, 10, 0.0)


@pytest.mark.parametrize("target,q,rounds", [(3.0, 0.01, 1000), (1.0, 0.1, 100), (8.0, 1.0, 20)])
def test_noise_for_epsilon_round_trips(target, q, rounds):
    """(Fixed-size cohorts take the same path with their event; each of their epsilons costs ~0.5 s.)"""
    z = dp.noise_for_epsilon(target, DELTA, q, rounds, tol=1e-4)
    assert dp.epsilon(q, z, rounds, DELTA) <= target  # the solved noise meets the target
    assert dp.epsilon(q, z - 2e-4, rounds, DELTA) > target  # and is (within tol) the least that does


def test_accountant_counts_rounds_not_local_steps():
    """The FL-bench bug: the compositions are the rounds a client could be sampled in. A loop of R rounds of E
    local epochs of S steps steps the accountant R times and spends epsilon(q, z, R); the library composing R
    single rounds one by one agrees (RDP adds), and counting epochs or steps would report more."""
    q, z, R, E, S = 0.05, 1.1, 12, 3, 5
    acc = dp.Accountant(q, z, DELTA)
    lib = dpa.rdp.RdpAccountant()
    for _ in range(R):
        for _epoch in range(E):
            for _step in range(S):
                pass  # a client's local training: no release, nothing to count
        acc.step()
        lib.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)))
    assert acc.rounds == R
    assert acc.epsilon() == pytest.approx(dp.epsilon(q, z, R, DELTA), rel=1e-12)
    assert acc.epsilon() == pytest.approx(lib.get_epsilon(DELTA), rel=1e-6)
    assert dp.epsilon(q, z, R * E, DELTA) > acc.epsilon() * 1.3 < dp.epsilon(q, z, R * E * S, DELTA)
    # resume: the state carries the rounds, and refuses another mechanism
    again = dp.Accountant(q, z, DELTA)
    again.load_state_dict(acc.state_dict())
    assert again.epsilon() == acc.epsilon() and again.metrics()["dp_rounds"] == R
    with pytest.raises(UsageError, match="same DP flags"):
        dp.Accountant(q, 2 * z, DELTA).load_state_dict(acc.state_dict())


# ----------------------------------------------------------------------------- sampling
def test_sampling_streams():
    N, q = 2000, 0.05
    a = [dp.sample_cohort(7, r, N, q) for r in range(50)]
    assert a == [dp.sample_cohort(7, r, N, q) for r in range(50)]  # keyed: the same on every rank and on resume
    sizes = np.array([len(c) for c in a])
    assert abs(sizes.mean() - q * N) < 5 * math.sqrt(q * (1 - q) * N / 50)  # 5 sigma on the mean cohort
    assert len({tuple(c) for c in a}) == 50
    fixed = dp.sample_cohort(7, 3, 100, 0.1, "fixed")
    assert len(fixed) == len(set(fixed)) == 10 and fixed == sorted(fixed)
    assert dp.expected_cohort(q, N) == pytest.approx(100)


# ----------------------------------------------------------------------------- the mechanism
def make(like, clip=1.0, noise=0.0, cohort=4, seed=0, **kw) -> dp.DPMean:
    return dp.DPMean(like, Namespace(dp_clip=clip, dp_noise=noise, dp_cohort=cohort, seed=seed, **kw))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-3, 3), st.floats(1e-3, 1e3))
def test_clipped_norm_never_exceeds_c_and_unclipped_untouched(seed, log_scale, clip):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(s, generator=g) for s in SHAPES]
    delta = [torch.randn(s, generator=g) * 10 ** log_scale for s in SHAPES]
    client = [a + d for a, d in zip(x, delta)]
    agg = make(x, clip=clip)
    agg.reset(x, [0])
    row = agg.add(0, client, 123.0, {})
    summed = agg.accumulators()[0][:-2]  # one client: the sum is its clipped delta
    exact = P.flatten(client).sub(P.flatten(x))  # the delta as the aggregator computes it (float32)
    assert row["dp_norm"] == pytest.approx(float(exact.double().norm()), rel=1e-12)
    assert float(torch.linalg.vector_norm(summed, dtype=torch.float64)) <= clip
    if row["dp_norm"] <= clip:
        assert torch.equal(summed, exact) and not row["dp_clipped"]
    else:  # the direction kept, the length C
        assert row["dp_clipped"]
        torch.testing.assert_close(summed.double() / clip, exact.double() / row["dp_norm"], rtol=1e-5, atol=1e-6)
        assert float(summed.double().norm()) == pytest.approx(clip, rel=1e-5)


def test_dp_off_is_the_unweighted_mean_of_deltas():
    """z = 0 and C = inf with the cohort as denominator: x + mean_k (theta_k - x), whatever the weights."""
    x, cs = clients(1, seed=3)[0], clients(5, seed=4)
    agg = make(x, clip=math.inf, noise=0.0, cohort=5)
    agg.reset(x, list(range(5)))
    for k, (c, w) in enumerate(zip(cs, [1.0, 100.0, 3.0, 0.5, 7.0])):
        agg.add(k, c, w, {})
    ref = [a + torch.stack([c[i] - a for c in cs]).mean(0) for i, a in enumerate(x)]
    close(agg.result(), ref, tol=1e-6)
    assert agg.result() is agg.result()  # once per round


def test_noise_variance_is_z_c_squared():
    """No clients: result - x = noise / m. Over S seeds and d coordinates the noise's sample variance must match
    (z C)^2: the pooled one within the chi-square(d (S - 1)) quantiles, every coordinate's within chi-square(S - 1)
    quantiles at 1e-6 / d each (Bonferroni). False-failure rate <= 2e-6 + 1e-6 + 1e-6 (pooled, coordinates,
    mean)."""
    d, S, z, C, m = 256, 300, 1.3, 0.7, 8.0
    like = [torch.zeros(d)]
    draws = []
    for seed in range(S):
        agg = make(like, clip=C, noise=z, cohort=m, seed=seed)
        agg.reset(like, [], round_idx=5)
        draws.append(agg.result()[0] * m)
    noise = torch.stack(draws).double().numpy()  # [S, d]
    sigma2 = (z * C) ** 2
    per_coord = noise.var(axis=0, ddof=1) * (S - 1) / sigma2  # ~ chi2(S - 1) each
    lo, hi = stats.chi2.ppf([0.5e-6 / d, 1 - 0.5e-6 / d], S - 1)
    assert ((per_coord > lo) & (per_coord < hi)).all()
    pooled = per_coord.sum()  # ~ chi2(d (S - 1)): relative error of the variance about 0.5 %
    lo, hi = stats.chi2.ppf([1e-6, 1 - 1e-6], d * (S - 1))
    assert lo < pooled < hi, pooled / (d * (S - 1))
    assert abs(noise.mean()) < stats.norm.ppf(1 - 0.5e-6) * math.sqrt(sigma2 / (S * d))


def test_noise_is_keyed_by_seed_round_and_cluster():
    like = [torch.zeros(64)]
    args = Namespace(dp_clip=1.0, dp_noise=1.0, dp_cohort=1.0, seed=0)

    def draw(round_idx, cluster=0, seed=0):
        agg = dp.DPMean(like, Namespace(**{**vars(args), "seed": seed}), cluster=cluster)
        agg.reset(like, [], round_idx=round_idx)
        return agg.result()[0]

    assert torch.equal(draw(3), draw(3))  # every rank, and a resumed run, draws the same noise
    assert not torch.equal(draw(3), draw(4))
    assert not torch.equal(draw(3), draw(3, cluster=1))
    assert not torch.equal(draw(3), draw(3, seed=1))


def synthetic_round(x, r, n, median=1.0, seed=0):
    """Round r's n clients: x plus random directions with log-normal norms (median ``median``)."""
    g = torch.Generator().manual_seed(1000 * seed + r)
    u = torch.randn(n, P.numel(x), generator=g)
    u *= (median * torch.exp(0.5 * torch.randn(n, 1, generator=g))) / u.norm(dim=1, keepdim=True)
    return [P.unflatten(row + P.flatten(x), x) for row in u]


def test_state_dict_round_trip_continues_bit_equal():
    kw = dict(clip=0.3, noise=1.0, cohort=6, seed=11, dp_quantile=0.5, dp_clip_lr=0.2, dp_count_noise=2.0)
    x0 = clients(1, seed=5)[0]

    def run(agg, x, rounds):
        for r in rounds:
            agg.reset(x, list(range(6)))
            for k, c in enumerate(synthetic_round(x, r, 6)):
                agg.add(k, c, 1.0, {})
            x = [t.clone() for t in agg.result()]
        return x

    straight = make(x0, **kw)
    x_end = run(straight, x0, range(6))
    first = make(x0, **kw)
    x_mid = run(first, x0, range(3))
    resumed = make(x0, **kw)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(run(resumed, x_mid, range(3, 6)), x_end))
    assert resumed.clip == straight.clip and resumed.state_dict() == straight.state_dict()


def test_adaptive_clipping_tracks_the_target_quantile():
    """Norms log-normal with median 1 (so the gamma-quantile is exp(0.5 Phi^-1(gamma))); from C = 0.02, C moves
    geometrically toward it and then stays near it; the update's noise multiplier leaves the total at z."""
    z, sigma_b, n = 1.0, 2.5, 50  # sigma_b = n / 20, as the paper suggests
    for gamma in (0.5, 0.8):
        target = math.exp(0.5 * stats.norm.ppf(gamma))
        agg = make([torch.zeros(s) for s in SHAPES], clip=0.02, noise=z, cohort=n, dp_quantile=gamma,
                   dp_clip_lr=0.2, dp_count_noise=sigma_b)
        assert (agg.z_update ** -2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
        x, clips = [torch.zeros(s) for s in SHAPES], []
        for r in range(100):
            agg.reset(x, list(range(n)))
            for k, c in enumerate(synthetic_round(x, r, n, seed=int(gamma * 10))):
                agg.add(k, c, 1.0, {})
            agg.result()
            clips.append(agg.clip)
        assert clips[30] > 0.1 > 0.02  # it climbed
        assert abs(math.log(np.mean(clips[-50:]) / target)) < 0.15, (gamma, np.mean(clips[-50:]), target)


def test_adaptive_clipping_needs_count_noise_above_half_z():
    with pytest.raises(UsageError, match="dp-count-noise"):
        dp.update_noise_multiplier(2.0, 0.9)
    assert dp.update_noise_multiplier(0.0, 0.1) == 0.0


# ----------------------------------------------------------------------------- what composes
def test_refusals_and_compositions():
    assert dp.refusal() is None
    for opt in ("fedavgm", "fedadam", "fedyogi"):
        assert dp.refusal(server_opt=opt) is None  # noise before the server optimizer: post-processing
    assert "control variates" in dp.refusal(algorithm="scaffold")
    assert "unnoised" in dp.refusal(algorithm="feddyn") and "step count" in dp.refusal(algorithm="fednova")
    assert "features" in dp.refusal(clustering="data")
    assert "Fisher" in dp.refusal(aggregator="fisher")
    assert "entropy" in dp.refusal(aggregator="entropy")
    assert "robust" in dp.refusal(aggregator="krum")
    assert "IFCA" in dp.refusal(clustering="ifca")
    assert dp.refusal(algorithm="fedprox") is None
