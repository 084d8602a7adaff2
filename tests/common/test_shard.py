"""Partitioners: property tests (disjointness, coverage, exact nc, balanced sizes), determinism, manifests."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import shard
from common.cli import UsageError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_partition(shards, n):
    """Disjoint, covering range(n), each sorted int64 and non-empty."""
    for s in shards:
        assert s.dtype == np.int64 and len(s) > 0
        assert np.all(np.diff(s) > 0)
    flat = np.concatenate(shards)
    assert len(flat) == n
    assert np.array_equal(np.sort(flat), np.arange(n))


def histograms(shards, labels):
    """[K][C] label counts per client (labels are 0..C-1)."""
    return np.array([np.bincount(labels[s], minlength=labels.max() + 1) for s in shards])


@st.composite
def labelled(draw, max_classes=12):
    """Labels with every class present at least ``min_per_class`` times, and a client count."""
    n_cls = draw(st.integers(1, max_classes))
    extra = draw(st.lists(st.integers(0, n_cls - 1), max_size=300))
    base = list(range(n_cls)) * draw(st.integers(1, 4))
    labels = np.array(base + extra)
    np.random.default_rng(draw(st.integers(0, 99))).shuffle(labels)
    return labels, n_cls


@SETTINGS
@given(n=st.integers(1, 2000), k=st.integers(1, 50), seed=st.integers(0, 2**31))
def test_iid_and_contiguous_partition_with_sizes_within_one(n, k, seed):
    if n < k:
        with pytest.raises(UsageError):
            shard.iid(n, k, seed)
        return
    for shards in (shard.iid(n, k, seed), shard.contiguous(n, k)):
        assert len(shards) == k
        assert_partition(shards, n)
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
    blocks = shard.contiguous(n, k)
    assert all(s[-1] + 1 == t[0] for s, t in itertools.pairwise(blocks))   # consecutive, in order


@SETTINGS
@given(data=labelled(), k=st.integers(1, 30), nc=st.integers(1, 12), seed=st.integers(0, 1000))
def test_pathological_exact_classes_every_sample_used(data, k, nc, seed):
    labels, n_cls = data
    per_class = np.bincount(labels)
    holders = -(-k * nc // n_cls)        # the most clients any class can be spread over
    feasible = nc <= n_cls and k * nc >= n_cls and per_class.min() >= holders and len(labels) >= k
    if not feasible:
        # ceil-holders is only an upper bound: some infeasible-looking cases do succeed
        try:
            shards = shard.pathological(labels, k, nc, seed)
        except UsageError:
            return
    else:
        shards = shard.pathological(labels, k, nc, seed)
    assert len(shards) == k
    assert_partition(shards, len(labels))
    hist = histograms(shards, labels)
    assert (hist > 0).sum(1).tolist() == [nc] * k
    # each class is held by floor or ceil(k*nc/C) clients
    held_by = (hist > 0).sum(0)
    assert held_by.max() - held_by.min() <= 1


def test_pathological_not_a_multiple_and_errors():
    labels = np.repeat(np.arange(10), 50)
    shards = shard.pathological(labels, 7, 3, seed=1)        # 21 slots over 10 classes
    assert (histograms(shards, labels) > 0).sum(1).tolist() == [3] * 7
    assert_partition(shards, 500)
    with pytest.raises(UsageError, match="nc=11"):
        shard.pathological(labels, 5, 11, seed=0)
    with pytest.raises(UsageError, match="unused"):
        shard.pathological(labels, 3, 2, seed=0)              # 6 slots < 10 classes
    few = np.concatenate([labels, [10, 10]])                  # class 10 has 2 samples
    with pytest.raises(UsageError, match="class 10 has 2 samples"):
        shard.pathological(few, 50, 11, seed=0)


@SETTINGS
@given(data=labelled(), k=st.integers(1, 20), alpha=st.floats(0.05, 100), seed=st.integers(0, 1000))
def test_dirichlet_partitions_with_min_size(data, k, alpha, seed):
    labels, _ = data
    min_size = max(1, len(labels) // (4 * k))
    try:
        shards = shard.dirichlet(labels, k, alpha, seed, min_size=min_size, max_tries=50)
    except UsageError as e:
        assert f"alpha={alpha}" in str(e) or "samples" in str(e)
        return
    assert_partition(shards, len(labels))
    assert min(len(s) for s in shards) >= min_size


def test_dirichlet_small_alpha_concentrates_labels():
    labels = np.repeat(np.arange(10), 300)
    def mean_classes(alpha):
        hist = histograms(shard.dirichlet(labels, 20, alpha, seed=3, min_size=5), labels)
        top = (hist.max(1) / hist.sum(1)).mean()       # share of each client's most common label
        return top, np.mean((hist > 0).sum(1))
    top_small, classes_small = mean_classes(0.05)
    top_large, classes_large = mean_classes(100.0)
    assert top_small > 0.7 and top_large < 0.2
    assert classes_small < 4 and classes_large == 10


def test_dirichlet_impossible_names_alpha_and_min_size():
    labels = np.repeat(np.arange(2), 20)
    with pytest.raises(UsageError, match=r"alpha=0\.001.*min_size=5"):   # 2 classes rarely feed 3 clients
        shard.dirichlet(labels, 3, 0.001, seed=0, min_size=5, max_tries=10)
    with pytest.raises(UsageError, match="min_size"):
        shard.dirichlet(labels, 5, 1.0, seed=0, min_size=10)


@SETTINGS
@given(n=st.integers(10, 3000), k=st.integers(1, 10), r=st.floats(0.0, 0.9), seed=st.integers(0, 1000))
def test_overlap_ratio_is_exact_up_to_rounding(n, k, r, seed):
    m = shard.overlap_pool_size(n, k, r)
    if n - m < k:
        with pytest.raises(UsageError):
            shard.overlap(n, k, r, seed)
        return
    shards = shard.overlap(n, k, r, seed)
    assert len(np.unique(np.concatenate(shards))) == n          # every sample used
    for a, b in itertools.combinations(shards, 2):              # any two clients share exactly the pool
        assert len(np.intersect1d(a, b)) == m
    sizes = np.array([len(s) for s in shards])
    own = sizes - m
    assert own.max() - own.min() <= 1 and own.sum() == n - m    # private parts disjoint and balanced
    for size in sizes:     # shared fraction = r up to rounding m (half a sample) and o_k (one)
        assert abs(m / size - r) <= 2.0 / size


def test_overlap_end_points():
    assert_partition(shard.overlap(100, 4, 0.0, seed=0), 100)
    full = shard.overlap(100, 4, 1.0, seed=0)
    assert all(np.array_equal(s, np.arange(100)) for s in full)
    with pytest.raises(UsageError, match="overlap_ratio"):
        shard.overlap(100, 4, 1.5, seed=0)


@SETTINGS
@given(cats=st.lists(st.sampled_from(["news", "fiction", "wiki", "forum", "law"]), min_size=1, max_size=200),
       k=st.integers(1, 40), seed=st.integers(0, 1000))
def test_category_groups_without_empty_clients(cats, k, seed):
    cats = np.array(cats)
    if k > len(cats):
        with pytest.raises(UsageError):
            shard.category(cats, k, seed)
        return
    shards = shard.category(cats, k, seed)
    assert len(shards) == k
    assert_partition(shards, len(cats))
    n_cat = len(set(cats.tolist()))
    per_client = [set(cats[s].tolist()) for s in shards]
    if k <= n_cat:        # whole categories: no category split across clients
        owners = {c: [i for i, p in enumerate(per_client) if c in p] for c in set(cats.tolist())}
        assert all(len(o) == 1 for o in owners.values())
    else:                 # one category per client
        assert all(len(p) == 1 for p in per_client)


def test_category_split_is_proportional():
    cats = np.array([0] * 900 + [1] * 100)
    sizes = [len(s) for s in shard.category(cats, 10, seed=0)]
    assert sorted(sizes) == [100] * 10


def test_sorted_blocks_orders_by_score():
    scores = np.random.default_rng(0).normal(size=1001)
    blocks = shard.sorted_blocks(scores, 4)
    assert_partition(blocks, 1001)
    assert all(scores[a].max() <= scores[b].min() for a, b in itertools.pairwise(blocks))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_deterministic_for_a_seed():
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    for make in (lambda s: shard.iid(5000, 7, s), lambda s: shard.pathological(labels, 7, 3, s),
                 lambda s: shard.dirichlet(labels, 7, 0.3, s), lambda s: shard.overlap(5000, 7, 0.2, s),
                 lambda s: shard.category(labels, 13, s)):
        a, b, c = make(5), make(5), make(6)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_large_n_covers_every_index_once():  # its speed: benchmarks/bench_data.py
    labels = np.random.default_rng(0).integers(0, 100, 1_000_000)
    for shards in (shard.dirichlet(labels, 100, 0.5, seed=0, min_size=10), shard.pathological(labels, 100, 5, seed=0)):
        assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(1_000_000))


def test_manifest_indices_are_read_strictly():
    np.testing.assert_array_equal(shard.manifest_indices([3, 0, 7], "m.json"), [3, 0, 7])
    for indices, phrase in ((["3"], r"\[0\] is '3'"), ([1, 2.5], r"\[1\] is 2.5"), ([], "empty"), ({}, "a list")):
        with pytest.raises(UsageError, match=phrase):  # NumPy would convert these
            shard.manifest_indices(indices, "m.json")


@pytest.mark.parametrize("seed", range(10))
def test_dirichlet_mix_is_valid_for_every_seed_and_nearly_pure_at_tiny_alpha(seed):
    # AG News-like: 4 topics, 10 clients, alpha 0.01 (the label-wise split cannot serve 10 clients here)
    labels = np.repeat(np.arange(4), [1700, 1710, 1720, 1710])
    shards = shard.dirichlet_mix(labels, 10, 0.01, seed)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(labels)
    assert len(np.unique(np.concatenate(shards))) == len(labels)  # disjoint, every sample used
    dominant = [np.bincount(labels[s], minlength=4).max() / len(s) for s in shards]
    assert np.mean(dominant) > 0.75  # clients are mostly one topic
    assert shard.dirichlet_mix(labels, 10, 0.01, seed)[3].tolist() == shards[3].tolist()  # deterministic


def test_dirichlet_mix_large_alpha_is_near_iid():
    labels = np.repeat(np.arange(4), 2000)
    shards = shard.dirichlet_mix(labels, 8, 1000.0, seed=0)
    for s in shards:
        share = np.bincount(labels[s], minlength=4) / len(s)
        assert np.abs(share - 0.25).max() < 0.05
