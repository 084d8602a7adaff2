"""``add_many`` of benchmarks/aggregation.py (bench_aggregate.py's K uploads in memory, Flower's input, summed block
by block of coordinates) against ``common.aggregate``'s ``add``, client by client."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tensorcases import BIG, big_clients, close

from common import aggregate as A
from common import params as P

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("bench_aggregate_many", BENCH / "aggregation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_views(ts):
    return P.unflatten(P.flatten(ts), ts)


def _same(agg_a, agg_b, *result_args):
    for x, y in zip(agg_a.accumulators(), agg_b.accumulators()):
        assert torch.equal(x, y)
    for x, y in zip(agg_a.result(*result_args), agg_b.result(*result_args)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("block_bytes", [A.WeightedMean._BLOCK_BYTES, 4096 * 3 + 100])
@pytest.mark.parametrize("given", ["flat", "views", "tensors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weighted_mean_add_many_is_add_bit_for_bit(bench, monkeypatch, block_bytes, given, dtype):
    """Blocked accumulation (each upload read once, the sums' block kept in cache) must give exactly the
    values of add() client by client: same elementwise ops in the same order per coordinate."""
    monkeypatch.setattr(A._Streaming, "_BLOCK_BYTES", block_bytes)
    cs = big_clients(7, seed=3, dtype=dtype)
    w = [3.0, 1.0, 0.37, 2.0, 11.0, 0.5, 1.25]
    ups = {"flat": [P.flatten(c) for c in cs], "views": [as_views(c) for c in cs], "tensors": cs}[given]
    like = [t.float() for t in cs[0]]
    one, many = A.WeightedMean(like), bench.ManyWeightedMean(like)
    for c, wk in zip(cs, w):
        one.add(c, wk)
    many.add_many(ups, w)
    _same(one, many)
    assert many.total_weight == one.total_weight
    # after reset (the sum not zeroed yet) and after a client already added (the sum not written first)
    one.reset(), many.reset()
    one.add(cs[0], 2.0), many.add(cs[0], 2.0)
    for c, wk in zip(cs[1:], w[1:]):
        one.add(c, wk)
    many.add_many(ups[1:], w[1:])
    _same(one, many)


def test_weighted_mean_add_many_takes_several_blocks_with_a_ragged_end(bench, monkeypatch):
    monkeypatch.setattr(A._Streaming, "_BLOCK_BYTES", 4096 * 3 + 100)
    agg = bench.ManyWeightedMean([torch.zeros(s) for s in BIG])
    numel = P.numel(agg._views[0])
    assert agg._block() % 64 == 0 and numel % agg._block() != 0 and numel // agg._block() >= 10
    cs = big_clients(3, seed=5)
    agg.add_many([P.flatten(c) for c in cs])  # default weights 1: the plain mean
    ref = [torch.stack([c[i] for c in cs]).mean(0) for i in range(len(BIG))]
    close(agg.result(), ref)


@pytest.mark.parametrize("given", ["flat", "tensors"])
def test_fisher_mean_add_many_is_add_bit_for_bit(bench, monkeypatch, given):
    monkeypatch.setattr(A._Streaming, "_BLOCK_BYTES", 4096 * 5 + 12)
    cs, fs = big_clients(6, seed=7), big_clients(6, seed=8, positive=True)
    w = [1.0, 4.0, 0.3, 2.5, 7.0, 1.5]
    pack = (lambda c: P.flatten(c)) if given == "flat" else (lambda c: c)
    one, many = A.FisherMean(cs[0], eps=1e-3), bench.ManyFisherMean(cs[0], eps=1e-3)
    for c, f, wk in zip(cs, fs, w):
        one.add(c, f, wk)
    many.add_many([pack(c) for c in cs], [pack(f) for f in fs], w)
    _same(one, many)
    assert many.eps_share == one.eps_share


def test_add_many_refuses_mismatched_lists(bench):
    cs = big_clients(3, seed=1)
    with pytest.raises(ValueError, match="3 clients but 2 weights"):
        bench.ManyWeightedMean(cs[0]).add_many(cs, [1.0, 2.0])
    with pytest.raises(ValueError, match="3 clients but 2 Fisher"):
        bench.ManyFisherMean(cs[0]).add_many(cs, cs[:2])
    with pytest.raises(ValueError, match="1-D with 34259 values"):  # a flat upload of the wrong size
        bench.ManyWeightedMean(cs[0]).add_many([P.flatten(cs[0])[:-1]])
