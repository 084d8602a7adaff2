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


def _reference_sparse_step(ps, masks, state, lr, mu, damp, wd, nesterov):
    """SparseSGDM's arithmetic one tensor at a time (the former implementation)."""
    for p, m in zip(ps, masks):
        zero = torch.zeros((), dtype=p.dtype)
        d_p = p.grad if m is None else torch.where(m, p.grad, zero)
        if wd != 0:
            d_p = d_p.add(p if m is None else torch.where(m, p, zero), alpha=wd)
        if mu != 0:
            buf = state.get(p)
            if buf is None:
                buf = state[p] = torch.clone(d_p).detach()
            else:
                buf.mul_(mu).add_(d_p, alpha=1 - damp)
            d_p = d_p.add(buf, alpha=mu) if nesterov else buf
        if m is None:
            p.add_(d_p, alpha=-lr)
        else:
            p.copy_(torch.where(m, p.add(d_p, alpha=-lr), p))


@pytest.mark.parametrize("wd,mu,damp,nesterov", [(0.0, 0.0, 0.0, False), (0.1, 0.0, 0.0, False),
                                                 (1e-4, 0.9, 0.0, False), (0.1, 0.9, 0.3, False),
                                                 (1e-4, 0.9, 0.0, True)])
def test_foreach_step_equals_the_per_tensor_loop_bit_for_bit(wd, mu, damp, nesterov):
    g = torch.Generator().manual_seed(3)
    shapes = [(144, 48), (144,), (48,), (192, 48), (3, 7, 5), (1,), (50, 48)]
    base = [torch.randn(s, generator=g) for s in shapes]
    base[0][0, 0], base[1][0] = -0.0, 1e-40                    # a signed zero and a subnormal
    masks = [torch.rand(s, generator=g) < d for s, d in zip(shapes, (0.1, 0.5, 0.0, 1.0, 0.3, 0.0, 1.0))]
    masks[-1] = None                                           # a dense tensor (the head)
    ours, ref = [p.clone().requires_grad_() for p in base], [p.clone().requires_grad_() for p in base]
    opt, ref_state = sparse.SparseSGDM(ours, masks, lr=0.3, momentum=mu, dampening=damp, weight_decay=wd,
                                       nesterov=nesterov), {}
    for _ in range(4):
        grads = [torch.randn(s, generator=g) for s in shapes]
        grads[2][0] = float("nan")                             # off the mask: must not leak
        for a, b, gr in zip(ours, ref, grads):
            a.grad, b.grad = gr.clone(), gr.clone()
        opt.step()
        with torch.no_grad():
            _reference_sparse_step(ref, masks, ref_state, 0.3, mu, damp, wd, nesterov)
    for a, b in zip(ours, ref):
        assert torch.equal(a.detach().view(torch.int32), b.detach().view(torch.int32))
        if mu:
            assert torch.equal(opt.state[a]["momentum_buffer"].view(torch.int32), ref_state[b].view(torch.int32))


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


def test_parameters_with_all_false_masks_skip_backward_with_the_same_result():
    """The head warm-up: the backbone's masks are all False, so fed_round lets it take no gradient."""
    import torch.nn.functional as F

    from vit_sparse_fl import federated, vit

    torch.manual_seed(0)
    model = vit.ViTClassifier(vit.ViTConfig(**{**vit.VIT_TINY.__dict__, "num_classes": 5}))
    names, params = zip(*model.named_parameters())
    head_only = [None if n.startswith("head.") else torch.zeros_like(p, dtype=torch.bool)
                 for n, p in zip(names, params)]
    assert federated.untrained(list(params), None) == []
    frozen = federated.untrained(list(params), head_only)
    assert len(frozen) == len(params) - 2                     # all but head.weight / head.bias
    start = [p.detach().clone() for p in params]
    x = torch.randn(3, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (3, 8), generator=torch.Generator().manual_seed(2))
    results = []
    for skip in (False, True):
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        opt = sparse.SparseSGDM(params, head_only, lr=0.1, momentum=0.9, weight_decay=1e-4)
        torch.manual_seed(3)                                    # the same dropout masks
        with federated.no_grad_for(frozen if skip else []):
            for xb, yb in zip(x, y):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), yb, label_smoothing=0.1).backward()
                assert (model.backbone.cls_token.grad is None) == skip
                opt.step()
        results.append([p.detach().clone() for p in params])
    assert all(p.requires_grad for p in params)               # restored after the block
    for a, b, s, n in zip(*results, start, names):
        assert torch.equal(a, b)
        assert torch.equal(a, s) != n.startswith("head.")     # only the head moved
