"""Sharded evaluation: on 2 gloo ranks every rank scores its share of the batches, and after the
all-reduce every rank holds exactly the single-process metrics."""
from __future__ import annotations

import os

import pytest
import torch
from multirank import run_ranks, torchrun_env
from torch import nn

from common import distributed as D
from common import evaluate as E

V, D_MODEL = 11, 6


class CountingLM(nn.Module):
    """A tiny causal 'LM' (embedding -> linear) that counts its forward calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out, self.calls = nn.Embedding(V, D_MODEL), nn.Linear(D_MODEL, V), 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return self.out(self.emb(input_ids))


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


def evaluate_all(shard: bool) -> dict:
    lm = CountingLM()
    return {"ppl": E.perplexity(lm, lm_batches(), shard=shard), "calls": lm.calls}


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


def test_shard_is_a_no_op_in_one_process():
    assert list(D.my_share(range(5))) == list(range(5))
    one, plain = evaluate_all(shard=True), evaluate_all(shard=False)
    _same_metrics(one, plain)
    assert one["calls"] == 7


def test_two_ranks_split_the_batches_and_agree_with_one_process(tmp_path):
    run_ranks(worker, str(tmp_path))
    single = evaluate_all(shard=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["calls"] == 4 and ranks[1]["calls"] == 3  # each scored only its share
    for r in ranks:
        _same_metrics(r, single)
