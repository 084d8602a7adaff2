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


# ----------------------------------------------------------------------------- flat lists and thread counts
def _big(seed, sizes=((300, 500), (70_000,), (1000, 90), (3,))):
    """Tensors whose total (about 310K elements) spans several CHUNK_NUMEL pieces; one above PARALLEL_MIN_NUMEL."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in sizes]


def test_clone_and_zeros_tile_one_buffer_and_foreach_takes_the_flat_path():
    a = _tensors(5)
    c, z = P.clone(a), P.zeros_like(a)
    assert P.as_flat(c) is not None and P.as_flat(z) is not None and P.as_flat(a) is None
    assert P.as_flat(P.clone([a[0], a[1].double()])) is None  # mixed dtypes: separate tensors
    b = _tensors(6)
    for flat_a, flat_b in ((a, b), (P.clone(a), P.clone(b)), (P.clone(a), b)):  # flat, separate or mixed
        out = P.foreach(torch._foreach_sub, flat_a, flat_b)
        assert all(torch.equal(o, x - y) for o, x, y in zip(out, a, b))
    flat_out = P.foreach(torch._foreach_mul, P.clone(a), P.clone(b))
    assert P.as_flat(flat_out) is not None  # an out-of-place result of flat lists is flat too
    # two buffers of one size tiled by other shapes are not the same layout: refused, as torch refuses them
    x, y = P.clone([torch.zeros(3), torch.zeros(5)]), P.clone([torch.arange(5.0), torch.arange(3.0)])
    with pytest.raises(RuntimeError):
        P.foreach(torch._foreach_add_, x, y)


@pytest.mark.parametrize("busy", [False, True])
def test_foreach_results_do_not_depend_on_the_thread_choice(monkeypatch, busy):
    """Flat or separate, quiet or busy machine (one thread or every thread): the same bits; the thread count
    is restored afterwards."""
    monkeypatch.setattr(P, "machine_busy", lambda: busy)
    a, b = _big(1), _big(2)
    threads = torch.get_num_threads()
    ref = [x.add(y, alpha=0.3) for x, y in zip(a, b)]  # per tensor, torch default threads
    for dst, src in ((P.clone(a), b), ([t.clone() for t in a], b), (P.clone(a), P.clone(b))):
        P.foreach(torch._foreach_add_, dst, src, alpha=0.3)
        assert all(torch.equal(d, r) for d, r in zip(dst, ref))
    assert torch.get_num_threads() == threads
    assert P.op_threads(10) == 1
    assert P.op_threads(P.PARALLEL_MIN_NUMEL) == (1 if busy else threads)


def test_chunked_apply_equals_whole_list_ops_bit_for_bit():
    a, b = _big(3), _big(4)

    def body(fe, x, y):
        d = fe(torch._foreach_sub, y, x)
        fe(torch._foreach_lerp_, x, fe(torch._foreach_mul, d, d), weight=0.3)
        fe(torch._foreach_addcdiv_, x, y, fe(torch._foreach_add, fe(torch._foreach_sqrt, fe(torch._foreach_abs, y)),
                                            scalar=1e-3), value=0.1)
    whole, pieces = [t.clone() for t in a], P.clone(a)
    P.chunked_apply(body, whole, b)
    P.chunked_apply(body, pieces, P.clone(b), chunk=1000)  # 310 pieces
    assert all(torch.equal(x, y) for x, y in zip(whole, pieces))


def test_flat_parameters_keeps_values_objects_and_training():
    torch.manual_seed(0)
    model = TiedLM()
    before = [p.detach().clone() for p in P.trainable(model)]
    ids = [id(p) for p in P.trainable(model)]
    out_before = model(torch.tensor([[1, 2, 3]]))
    ps = P.flat_parameters_(model)
    assert [id(p) for p in ps] == ids and P.as_flat(ps) is not None
    assert model.head.weight is model.emb.weight  # the tie survives
    assert all(torch.equal(p, b) for p, b in zip(ps, before))
    torch.testing.assert_close(model(torch.tensor([[1, 2, 3]])), out_before, rtol=0, atol=0)
    opt = torch.optim.AdamW(ps, lr=0.1)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    assert P.as_flat(P.trainable(model)) is not None  # the optimizer updates the views in place
    assert not torch.equal(ps[0], before[0])
    assert P.flat_parameters_(model) == ps  # already flat: a no-op
    assert isinstance(P.machine_busy(), bool)
