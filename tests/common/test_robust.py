"""Robust aggregators (coordinate median, trimmed mean, Krum, Multi-Krum) against hand computations and against
Flower's strategies on the fixture's inputs (tests/data/flower_reference.json, benchmarks/flower_reference.py)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorcases import SHAPES, clients, close

from common import params as P
from common import robust as R
from common.errors import UsageError

FLOWER = json.loads((Path(__file__).resolve().parents[1] / "data" / "flower_reference.json").read_text())


def aggregate(cls, models, weights=None, chosen=None, **settings):
    """One round through the Aggregator interface: reset, add every client, result."""
    agg = cls(models[0], SimpleNamespace(**settings))
    chosen = chosen or list(range(len(models)))
    agg.reset(models[0], chosen)
    for k, m, w in zip(chosen, models, weights or [1.0] * len(models)):
        assert agg.add(k, m, w, {}) == {}
    return agg, agg.result()


def test_median_and_trimmed_mean_by_hand():
    rows = torch.tensor([[1.0, 9.0], [4.0, -1.0], [2.0, 3.0], [100.0, 5.0]])
    assert R.coordinate_median(rows).tolist() == [3.0, 4.0]  # even n: the mean of the two middle values
    assert R.coordinate_median(rows[:3]).tolist() == [2.0, 3.0]
    assert R.trimmed_mean(rows, 0.25).tolist() == [3.0, 4.0]  # drops 1 of 4 at each end
    assert R.trimmed_mean(rows, 0.2).tolist() == pytest.approx([107 / 4, 4.0])  # int(0.8) = 0: the plain mean
    assert R.trimmed_mean(rows[:3], 0.34).tolist() == [2.0, 3.0]
    with pytest.raises(UsageError, match="0.5"):
        R.trimmed_mean(rows, 0.5)


def test_krum_scores_by_hand():
    """Points on a line 0, 1, 3, 10: squared distances; n - f - 2 nearest (f = 0: 2, f = 1: max(1, 1))."""
    rows = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    d = R.squared_distances(rows)
    assert d[0].tolist() == [0, 1, 9, 100] and d[3].tolist() == [100, 81, 49, 0]
    assert R.krum_scores(d, 0).tolist() == [1 + 9, 1 + 4, 4 + 9, 49 + 81]
    assert R.krum_scores(d, 1).tolist() == [1, 1, 4, 49]


@pytest.mark.parametrize("cls,settings", [(R.CoordinateMedian, {}), (R.TrimmedMean, {"trim_fraction": 0.25}),
                                          (R.Krum, {"krum_byzantine": 1}),
                                          (R.MultiKrum, {"krum_byzantine": 1, "multikrum_keep": 2})])
def test_aggregators_against_stacked_reference(cls, settings):
    """Separate tensors in, the model's shapes and dtype out; each against the same rule on the stacked rows."""
    models = clients(5, seed=3)
    models[4] = [8 * t + 5 for t in models[4]]  # an outlier
    weights = [3.0, 1.0, 2.0, 5.0, 4.0]
    agg, out = aggregate(cls, models, weights, **settings)
    assert [t.shape for t in out] == [torch.Size(s) for s in SHAPES] and all(t.dtype == torch.float32 for t in out)
    rows = torch.stack([P.flatten(m) for m in models])
    if cls is R.CoordinateMedian:
        ref = rows.median(dim=0).values  # odd n: torch's median is the middle value
    elif cls is R.TrimmedMean:
        ref = rows.sort(dim=0).values[1:4].mean(dim=0)
    else:
        d = ((rows[:, None] - rows[None]) ** 2).sum(-1)
        scores = d.sort(dim=1).values[:, 1:3].sum(1)  # n - f - 2 = 2 nearest
        best = scores.argsort()[:settings.get("multikrum_keep", 1)]
        assert 4 not in best.tolist() and agg.round_metrics() == {"krum_selected": best.tolist()}
        w = torch.tensor(weights)[best]
        ref = (w[:, None] * rows[best]).sum(0) / w.sum()
    close(out, P.unflatten(ref, models[0]), tol=1e-6)


def test_krum_returns_the_chosen_client_bit_for_bit_in_bfloat16():
    models = [[t.bfloat16() for t in m] for m in clients(4, seed=5)]
    agg, out = aggregate(R.Krum, models)
    k = agg.round_metrics()["krum_selected"][0]
    assert all(o.dtype == torch.bfloat16 and torch.equal(o, t) for o, t in zip(out, models[k]))


@pytest.mark.parametrize("name", ["median", "trimmed_mean_0.2", "trimmed_mean_0.34", "krum_f1",
                                  "multikrum_f1_keep3"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_aggregators_match_flower_fixture(name, dtype):
    """Flower's FedMedian, FedTrimmedAvg, Krum and Krum with num_clients_to_keep on rounds of 5, 6 and 7 clients
    with unequal num_examples (the weights), an outlier last: the same aggregate to 1e-6."""
    kwargs = FLOWER["robust"]["strategies"][name]["kwargs"]
    cls, settings = {"median": (R.CoordinateMedian, {}),
                     "trimmed": (R.TrimmedMean, {"trim_fraction": kwargs.get("beta")}),
                     "krum": (R.Krum, {"krum_byzantine": kwargs.get("num_malicious_clients")}),
                     "multikrum": (R.MultiKrum, {"krum_byzantine": kwargs.get("num_malicious_clients"),
                                                 "multikrum_keep": kwargs.get("num_clients_to_keep")})}[
        name.split("_")[0] if not name.startswith("trimmed") else "trimmed"]
    for rnd in FLOWER["robust"]["rounds"]:
        models = [[torch.tensor(t, dtype=dtype) for t in m] for m in rnd["clients"]]
        chosen = [10 + 3 * i for i in range(len(models))]  # slots keyed by client id, not position
        agg, out = aggregate(cls, models, [float(n) for n in rnd["num_examples"]], chosen, **settings)
        close(out, [torch.tensor(t, dtype=torch.float64) for t in rnd["results"][name]], tol=1e-6)
        if cls in (R.Krum, R.MultiKrum):
            assert chosen[-1] not in agg.round_metrics()["krum_selected"]
    assert FLOWER["flwr_version"]


def test_slots_summed_across_ranks_gather_every_client():
    """Two 'ranks' each add their share; the SUM of their accumulators is what one process holding every client
    has: the result is the same bits."""
    models, chosen = clients(5, seed=9), [1, 4, 6, 7, 9]
    whole, out = aggregate(R.CoordinateMedian, models, chosen=chosen)
    ranks = [R.CoordinateMedian(models[0]) for _ in range(2)]
    for r, agg in enumerate(ranks):
        agg.reset(models[0], chosen)
        for i, k in enumerate(chosen):
            if i % 2 == r:
                agg.add(k, models[i], 1.0, {})
    total = ranks[0].accumulators()[0] + ranks[1].accumulators()[0]
    for agg in ranks:
        agg.accumulators()[0].copy_(total)
        agg.pre_reduce({}, chosen)
        assert all(torch.equal(a, b) for a, b in zip(agg.result(), out))
    assert torch.equal(total, whole.accumulators()[0])


def test_refusals_and_state():
    models = clients(3)
    agg = R.TrimmedMean(models[0], None)
    assert agg.fraction == 0.2 and agg.holds_clients and agg.up == 0 and agg.stats == ()
    agg.reset(models[0], [0, 1, 2])
    agg.add(0, models[0], 1.0, {})
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        agg.result()  # clients 1 and 2 missing
    with pytest.raises(ValueError, match="not among"):
        agg.add(5, models[0], 1.0, {})
    with pytest.raises(ValueError, match="shapes"):
        agg.add(1, models[0][:2], 1.0, {})
    agg.load_state_dict(agg.state_dict())
    with pytest.raises(ValueError, match="median"):
        R.CoordinateMedian(models[0]).load_state_dict(agg.state_dict())
    with pytest.raises(UsageError, match="--trim-fraction"):
        R.TrimmedMean(models[0], SimpleNamespace(trim_fraction=0.5))
    with pytest.raises(UsageError, match="--krum-byzantine"):
        R.Krum(models[0], SimpleNamespace(krum_byzantine=-1))
    with pytest.raises(UsageError, match="--multikrum-keep 4 exceeds"):
        aggregate(R.MultiKrum, models, multikrum_keep=4)
    agg, _ = aggregate(R.MultiKrum, models, krum_byzantine=1)  # keep 0: n - f = 2
    assert len(agg.round_metrics()["krum_selected"]) == 2
