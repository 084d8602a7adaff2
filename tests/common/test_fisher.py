"""Diagonal Fisher: vmap per-example gradients against a Python loop, on a classifier, an image model and
a tiny causal LM with tied embeddings."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common import params as P
from common.fisher import diagonal_fisher, example_loss, lm_targets


def close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol * max(1.0, float(y.abs().max())))


def mlp_data(n=10, d=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, classes))
    x, y = torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)
    return model, [(x[:4], y[:4]), (x[4:], y[4:])]


def by_hand(model, batches):
    """Independent reference: squared autograd gradients of each example's cross-entropy."""
    ps = P.trainable(model)
    acc, n = [torch.zeros_like(p) for p in ps], 0
    model.eval()
    for x, y in batches:
        for i in range(len(x)):
            loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
            for a, g in zip(acc, torch.autograd.grad(loss, ps)):
                a += g ** 2
            n += 1
    return [a / n for a in acc]


def test_mlp_per_example_matches_loop_and_hand_reference():
    model, batches = mlp_data()
    model.train()
    fast = diagonal_fisher(model, batches, method="per_example", chunk_size=3)
    assert model.training  # mode restored; dropout was off during the computation
    close(fast, diagonal_fisher(model, batches, method="loop"))
    close(fast, by_hand(model, batches))
    assert [f.shape for f in fast] == [p.shape for p in model.parameters()]
    assert all(f.dtype == torch.float32 and (f >= 0).all() for f in fast)
    assert P.as_flat(fast) is not None  # views of one buffer: FisherMean adds it in one (fused) op
    first6 = diagonal_fisher(model, batches, method="loop", max_examples=6)
    close(first6, by_hand(model, [batches[0], (batches[1][0][:2], batches[1][1][:2])]))


def test_batch_method_is_the_scaled_squared_batch_gradient():
    model, batches = mlp_data()
    one = [(x[i:i + 1], y[i:i + 1]) for x, y in batches for i in range(len(x))]
    close(diagonal_fisher(model, one, method="batch"), by_hand(model, batches))  # batch size 1: exact
    approx = diagonal_fisher(model, batches, method="batch")
    ps = P.trainable(model)
    ref = [torch.zeros_like(p) for p in ps]
    for x, y in batches:
        for r, g in zip(ref, torch.autograd.grad(nn.functional.cross_entropy(model(x), y), ps)):
            r += len(x) * (len(x) * g ** 2)  # m g_b^2 per batch, weighted by m
    close(approx, [r / 10 for r in ref])


def test_sampled_labels_deterministic_for_a_generator():
    model, batches = mlp_data(n=12)
    runs = [diagonal_fisher(model, batches, labels="sampled", generator=torch.Generator().manual_seed(s), method=m)
            for s, m in [(1, "per_example"), (1, "loop"), (2, "per_example")]]
    close(runs[0], runs[1])  # same labels whatever the method
    assert not torch.allclose(runs[0][0], runs[2][0])  # another seed draws other labels
    no_targets = [(x, None) for x, _ in batches]
    close(diagonal_fisher(model, no_targets, labels="sampled", generator=torch.Generator().manual_seed(1)), runs[0])


def test_image_classifier_per_example_matches_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y = torch.randn(5, 3, 8, 8), torch.randint(0, 5, (5,))
    close(diagonal_fisher(model, [(x, y)], chunk_size=2), diagonal_fisher(model, [(x, y)], method="loop"))


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=True,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def test_causal_lm_tied_embedding_and_ignore_index():
    model = tiny_gpt2()
    params = P.trainable(model)
    names = [n for n, _ in P.named_trainable(model)]
    assert model.lm_head.weight is model.transformer.wte.weight and "lm_head.weight" not in names
    ids = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(3))
    targets = lm_targets(ids)
    targets[1, :3] = -100  # a padded prefix
    targets[3] = -100  # an example with nothing to predict: not counted
    fast = diagonal_fisher(model, [(ids, targets)], chunk_size=2)
    loop = diagonal_fisher(model, [(ids, targets)], method="loop")
    close(fast, loop)
    assert len(fast) == len(params)  # one Fisher tensor for the tied embedding / head weight
    # the tied weight's Fisher includes the head's gradient: hand-check against full-model autograd
    wte = names.index("transformer.wte.weight")
    hand = torch.zeros_like(params[wte])
    model.eval()  # diagonal_fisher runs without dropout
    for i in range(3):
        logits = model(ids[i:i + 1]).logits[0]
        ok = targets[i] != -100
        loss = nn.functional.cross_entropy(logits[ok], targets[i][ok])
        hand += torch.autograd.grad(loss, params[wte])[0] ** 2
    torch.testing.assert_close(fast[wte], hand / 3, rtol=1e-5, atol=1e-9)
    # the example without targets is skipped, not counted as a zero gradient
    close(diagonal_fisher(model, [(ids[:3], targets[:3])], chunk_size=2), fast)


def test_example_loss_ignores_positions():
    logits = torch.randn(5, 7)
    t = torch.tensor([1, -100, 3, -100, 0])
    ref = nn.functional.cross_entropy(logits, t, ignore_index=-100)
    torch.testing.assert_close(example_loss(logits, t), ref)
    assert float(example_loss(logits, torch.full((5,), -100))) == 0.0


class Branchy(nn.Module):
    """Data-dependent Python control flow: cannot run under vmap."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        out = self.lin(x)
        return out * 2 if float(out.detach().sum()) > 0 else out


def test_unvmappable_model_falls_back_to_loop_with_a_warning():
    torch.manual_seed(0)
    model, x, y = Branchy(), torch.randn(6, 3), torch.randint(0, 2, (6,))
    with pytest.warns(RuntimeWarning, match="vmap"):
        fast = diagonal_fisher(model, [(x[:3], y[:3]), (x[3:], y[3:])], chunk_size=2)
    close(fast, diagonal_fisher(model, [(x, y)], method="loop"))


def test_bad_arguments():
    model, batches = mlp_data()
    with pytest.raises(ValueError, match="labels"):
        diagonal_fisher(model, batches, labels="true")
    with pytest.raises(ValueError, match="not parameters"):
        diagonal_fisher(model, batches, params=[torch.zeros(2, requires_grad=True)])


def test_local_step_fisher_pairs_by_hand_and_converges_to_the_per_example_fisher():
    """LocalStepFisher against the full per-example Fisher of a tiny model: the pair formula on recorded
    gradients, and, at fixed parameters over many random m-example steps, the per-example Fisher of the
    whole data set (the estimate is unbiased; the 'batch' m g^2 is not)."""
    from common.fisher import LocalStepFisher

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 4, (64,), generator=g)
    y[:32] = 0  # a skewed label distribution: a clearly nonzero mean gradient mu
    ps = P.trainable(model)
    m = 4
    est = LocalStepFisher(ps, examples_per_step=m)
    grads = []
    for _ in range(3):
        idx = torch.randint(0, 64, (m,), generator=g)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        grads.append([p.grad.clone() for p in ps])
        for p in ps:
            p.grad = None  # as opt.zero_grad(set_to_none=True) does after each step
    hand = [sum(a[i] * b[i] + m / 2 * (b[i] - a[i]) ** 2 for a, b in zip(grads, grads[1:])) / 2 for i in range(len(ps))]
    close(est.estimate(), [h.clamp_min(0) for h in hand])
    assert P.as_flat(est.estimate()) is not None  # views of one buffer, as diagonal_fisher's
    est.reset()
    with pytest.raises(ValueError, match="at least 2"):
        est.estimate()

    full = P.flatten(diagonal_fisher(model, [(x, y)], method="per_example"))
    batch_sq = torch.zeros_like(full)
    steps = 4000
    for _ in range(steps):
        idx = torch.randint(0, 64, (m,), generator=g)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        batch_sq += m * P.flatten([p.grad for p in ps]) ** 2
        for p in ps:
            p.grad = None
    rel = lambda f: float((f - full).norm() / full.norm())
    assert est.steps == steps
    assert rel(P.flatten(est.estimate())) < 0.1        # unbiased: converges to the per-example Fisher
    assert rel(batch_sq / steps) > 3 * rel(P.flatten(est.estimate()))  # m g^2 keeps its (m - 1) mu^2 bias
    est.remove()
    nn.functional.cross_entropy(model(x[:m]), y[:m]).backward()  # removed hooks record nothing
    assert est.steps == steps
