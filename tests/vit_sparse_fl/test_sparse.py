"""Mask construction and SparseSGDM against simple references."""
from __future__ import annotations

import pytest
import torch

from vit_sparse_fl import sparse


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g), torch.randn(11, generator=g), torch.randn(3, 4, 2, generator=g)]


@pytest.mark.parametrize("nesterov,dampening", [(False, 0.0), (False, 0.3), (True, 0.0)])
def test_all_ones_mask_equals_torch_sgd(nesterov, dampening):
    ref = [p.clone().requires_grad_() for p in _params()]
    ours = [p.clone().requires_grad_() for p in _params()]
    kw = dict(lr=0.1, momentum=0.9, dampening=dampening, weight_decay=0.01, nesterov=nesterov)
    opt_ref = torch.optim.SGD(ref, **kw)
    opt = sparse.SparseSGDM(ours, [torch.ones_like(p, dtype=torch.bool) for p in ours], **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        for ps, o in ((ref, opt_ref), (ours, opt)):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            o.step()
    for a, b in zip(ref, ours):
        assert torch.equal(a, b)      # bit for bit, not just close


def test_masked_coordinates_keep_their_bits():
    ps = [p.clone().requires_grad_() for p in _params()]
    ps[0].data[0, 0] = -0.0           # a signed zero must survive too
    before = [p.detach().clone() for p in ps]
    g = torch.Generator().manual_seed(2)
    masks = [torch.rand(p.shape, generator=g) < 0.3 for p in ps]
    masks[0][0, 0] = False
    masks[1][0] = False               # gets a NaN gradient below: it must not leak into the weights
    opt = sparse.SparseSGDM(ps, masks, lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(4):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        ps[1].grad[0] = float("nan")
        opt.step()
    for p, b, m in zip(ps, before, masks):
        off = ~m
        assert torch.equal(p.detach()[off].view(torch.int32), b[off].view(torch.int32))
        assert not torch.equal(p.detach()[m], b[m])           # the unmasked part did move
        assert torch.all(opt.state[p]["momentum_buffer"][off] == 0)


@pytest.mark.parametrize("strategy", sparse.STRATEGIES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97])
def test_each_strategy_gives_exactly_the_requested_density(strategy, sparsity):
    ps = _params()
    total = sum(p.numel() for p in ps)
    # integer-valued scores: many ties, which must not change the count
    def fisher(r, masks):
        g = torch.Generator().manual_seed(r)
        return [torch.randint(0, 3, p.shape, generator=g).float() for p in ps]

    masks = sparse.compute_masks(ps, strategy, sparsity, fisher_fn=fisher, rounds=3,
                                 generator=torch.Generator().manual_seed(0))
    kept = sum(int(m.sum()) for m in masks)
    assert kept == total - round(sparsity * total)
    assert [m.shape for m in masks] == [p.shape for p in ps] and all(m.dtype == torch.bool for m in masks)


def test_least_and_most_sensitive_are_disjoint_with_distinct_scores():
    ps = _params()
    scores = [torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(ps)]
    least = sparse.compute_masks(ps, "least_sensitive", 0.6, fisher_fn=lambda r, m: scores, rounds=1)
    most = sparse.compute_masks(ps, "most_sensitive", 0.6, fisher_fn=lambda r, m: scores, rounds=1)
    assert not any(bool((a & b).any()) for a, b in zip(least, most))
    flat = torch.cat([s.reshape(-1) for s in scores])
    kept = torch.cat([m.reshape(-1) for m in least])
    assert flat[kept].max() < flat[~kept].min()          # one global threshold across tensors


def test_calibration_only_rescores_eligible_coordinates():
    ps = _params()
    seen = []

    def fisher(r, masks):
        seen.append([m.clone() for m in masks])
        return [torch.rand(p.shape, generator=torch.Generator().manual_seed(10 + r)) for p in ps]

    final = sparse.compute_masks(ps, "least_sensitive", 0.8, fisher_fn=fisher, rounds=4)
    seen.append(final)
    total = sum(p.numel() for p in ps)
    counts = [sum(int(m.sum()) for m in ms) for ms in seen]
    assert counts[0] == total
    target = total - round(0.8 * total)
    assert counts[1:] == [max(target, round(k * total)) for k in sparse.keep_schedule(0.8, 4)[:-1]] + [target]
    for prev, nxt in zip(seen, seen[1:]):                 # the mask only shrinks
        assert all(not bool((b & ~a).any()) for a, b in zip(prev, nxt))


def test_keep_schedule_is_exponential():
    ks = sparse.keep_schedule(0.9, 5)
    assert ks[-1] == pytest.approx(0.1)
    assert all(b / a == pytest.approx(0.1 ** 0.2) for a, b in zip(ks, ks[1:]))


def test_bad_strategy_and_sparsity_are_refused():
    with pytest.raises(ValueError, match="unknown mask strategy"):
        sparse.compute_masks(_params(), "biggest", 0.5)
    for s in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            sparse.compute_masks(_params(), "random", s)
