"""common.params: tied weights once, in-place loads into the model, foreach ops against per-tensor references."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common import params as P


class TiedLM(nn.Module):
    def __init__(self, vocab=13, dim=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied, as in GPT-2 / Mamba2 LMs
        self.frozen = nn.Linear(dim, dim)
        self.frozen.requires_grad_(False)

    def forward(self, ids):
        return self.head(self.frozen(self.norm(self.emb(ids))))


def test_tied_weights_appear_once_and_frozen_are_skipped():
    model = TiedLM()
    names = [n for n, _ in P.named_trainable(model)]
    assert names == ["emb.weight", "norm.weight", "norm.bias"]
    ps = P.trainable(model)
    assert ps[0] is model.head.weight
    assert P.numel(ps) == 13 * 6 + 6 + 6
    all_names = [n for n, _ in P.named_trainable(model, trainable_only=False)]
    assert all_names == names + ["frozen.weight", "frozen.bias"]


def test_load_changes_the_model_in_place_without_new_tensors():
    torch.manual_seed(0)
    model = TiedLM()
    ps = P.trainable(model)
    ptrs = [p.data_ptr() for p in ps]
    new = [torch.randn_like(p) for p in ps]
    P.load_(ps, new)  # parameters require grad: must still work
    assert [p.data_ptr() for p in P.trainable(model)] == ptrs
    assert torch.equal(model.head.weight, new[0]) and torch.equal(model.emb.weight, new[0])
    ids = torch.tensor([[1, 2, 3]])
    ref = TiedLM()
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(ids), ref(ids))
    with pytest.raises(ValueError, match="differ in length"):
        P.load_(ps, new[:2])


def _tensors(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in [(3, 4), (5,), (2, 2, 2), ()]]


def test_foreach_ops_match_per_tensor_reference():
    a, b = _tensors(1), _tensors(2)
    for d, x, y in zip(P.sub(a, b), a, b):
        torch.testing.assert_close(d, x - y)
    assert P.dot(a, b) == pytest.approx(sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b)),
                                        rel=1e-12)
    assert P.norm(a) == pytest.approx(sum(float((x.double() ** 2).sum()) for x in a) ** 0.5, rel=1e-6)
    assert P.norm([]) == 0.0
    dst = P.clone(a)
    P.add_(dst, b, alpha=-0.5)
    for d, x, y in zip(dst, a, b):
        torch.testing.assert_close(d, x - 0.5 * y)
    with pytest.raises(ValueError):
        P.sub(a, b[:-1])


def test_clone_and_zeros_are_independent_copies():
    a = [nn.Parameter(t) for t in _tensors(3)]
    c = P.clone(a)
    assert all(not t.requires_grad for t in c)
    with torch.no_grad():
        a[0].add_(1.0)
    assert not torch.equal(c[0], a[0])
    half = P.clone(a, dtype=torch.float16)
    assert all(t.dtype == torch.float16 for t in half)
    z = P.zeros_like(a, dtype=torch.float64)
    assert all(t.dtype == torch.float64 and t.shape == x.shape and not t.any() for t, x in zip(z, a))
    cpu = P.state_to_cpu(a)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in cpu)
    torch.testing.assert_close(cpu, [t.detach() for t in a])


def test_flatten_unflatten_round_trip_shares_storage():
    a = _tensors(4)
    flat = P.flatten(a)
    assert flat.shape == (P.numel(a),)
    views = P.unflatten(flat, a)
    for v, x in zip(views, a):
        assert v.shape == x.shape
        torch.testing.assert_close(v, x)
    flat.zero_()
    assert all(not v.any() for v in views)  # views, not copies
    assert P.flatten(a, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="flat buffer"):
        P.unflatten(torch.zeros(P.numel(a) + 1), a)
