"""Sharded evaluation: on 2 gloo ranks every rank scores its share of the batches, and after the
all-reduce every rank holds exactly the single-process metrics."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from multirank import run_ranks, torchrun_env
from torch import nn

from common import distributed as D
from common import evaluate as E

V, D_MODEL, CLASSES = 11, 6, 3


class CountingLM(nn.Module):
    """A tiny causal 'LM' (embedding -> linear) that counts its forward calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out, self.calls = nn.Embedding(V, D_MODEL), nn.Linear(D_MODEL, V), 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return self.out(self.emb(input_ids))


class CountingClassifier(nn.Module):
    def __init__(self, outputs: int):
        super().__init__()
        torch.manual_seed(1)
        self.lin, self.calls = nn.Linear(4, outputs), 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


def lm_batches():
    """7 batches (an odd count: the ranks' shares differ), uneven sizes, some labels ignored."""
    g = torch.Generator().manual_seed(2)
    out = []
    for i in range(7):
        ids = torch.randint(0, V, (1 + i % 3, 5), generator=g)
        labels = ids.clone()
        labels[0, -1] = E.IGNORE_INDEX
        out.append({"input_ids": ids, "labels": labels})
    return out


def cls_batches(regression: bool):
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(5):
        x = torch.randn(2 + i, 4, generator=g)
        y = torch.randn(2 + i, generator=g) if regression else torch.randint(0, CLASSES, (2 + i,), generator=g)
        out.append((x, y))
    return out


def evaluate_all(shard: bool) -> dict:
    lm, clf, reg = CountingLM(), CountingClassifier(CLASSES), CountingClassifier(1)
    out = {"ppl": E.perplexity(lm, lm_batches(), shard=shard),
           "cls": E.classification_eval(clf, cls_batches(False), return_predictions=True, shard=shard),
           "reg": E.classification_eval(reg, cls_batches(True), return_predictions=True, shard=shard)}
    out["calls"] = (lm.calls, clf.calls, reg.calls)
    return out


def worker(rank, world, port, out_dir):
    torchrun_env(rank, world, port)
    try:
        D.init()
        assert list(D.my_share(range(7))) == list(range(rank, 7, world))
        assert list(D.my_batch_starts(10, 3)) == list(range(3 * rank, 10, 3 * world))
        assert list(D.my_batch_starts(10, 3, shard=False)) == [0, 3, 6, 9]
        torch.save(evaluate_all(shard=True), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        D.cleanup()


def _same_metrics(a: dict, b: dict) -> None:
    assert a["ppl"]["tokens"] == b["ppl"]["tokens"]
    assert a["ppl"]["loss"] == pytest.approx(b["ppl"]["loss"], rel=1e-12)
    for key in ("cls", "reg"):
        assert a[key]["n"] == b[key]["n"]
        assert a[key]["loss"] == pytest.approx(b[key]["loss"], rel=1e-6)
        np.testing.assert_equal(np.isnan(a[key]["accuracy"]), np.isnan(b[key]["accuracy"]))
        if not np.isnan(b[key]["accuracy"]):
            assert a[key]["accuracy"] == b[key]["accuracy"]
        # predictions come rank by rank: same (prediction, target) pairs, in another order
        pairs = lambda r: np.array(sorted(zip(r["predictions"].tolist(), r["targets"].tolist())))  # noqa: E731
        np.testing.assert_allclose(pairs(a[key]), pairs(b[key]), rtol=1e-6)


def test_shard_is_a_no_op_in_one_process():
    assert list(D.my_share(range(5))) == list(range(5))
    one, plain = evaluate_all(shard=True), evaluate_all(shard=False)
    _same_metrics(one, plain)
    assert one["calls"] == (7, 5, 5)


def test_two_ranks_split_the_batches_and_agree_with_one_process(tmp_path):
    run_ranks(worker, str(tmp_path))
    single = evaluate_all(shard=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["calls"] == (4, 3, 3) and ranks[1]["calls"] == (3, 2, 2)  # each scored only its share
    for r in ranks:
        _same_metrics(r, single)
    assert ranks[0]["cls"]["accuracy"] == ranks[1]["cls"]["accuracy"]
