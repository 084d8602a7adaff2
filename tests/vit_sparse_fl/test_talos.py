"""TaLoS's official calibration (vit_sparse_fl.talos) on a case small enough to compute by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vit_sparse_fl import sparse, talos


class TwoLayer(nn.Module):
    """logits = W2 (W1 x) + b, with b = [30, -30] a buffer: softmax puts ~1 - 1e-24 on class 0, so the
    sampled class is 0 and the score is the squared gradient of z_0 = W2[0] . (W1 x) + 30."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor([[1.0, 0.5], [2.0, 3.0]]))
        self.w2 = nn.Parameter(torch.tensor([[2.0, 0.5], [1.0, 1.0]]))
        self.register_buffer("b", torch.tensor([30.0, -30.0]))

    def forward(self, x):
        return x @ self.w1.T @ self.w2.T + self.b


BATCHES = [(torch.tensor([[1.0, 1.0]]), None)]


def test_score_is_the_squared_gradient_of_the_sampled_logit():
    model = TwoLayer()
    w1, w2 = talos.talos_scores(model, BATCHES, [model.w1, model.w2])
    # h = W1 x = [1.5, 5]; dz0/dW2[0, j] = h_j, dz0/dW2[1, :] = 0; dz0/dW1[j, k] = W2[0, j] x_k
    assert torch.equal(w2, torch.tensor([[2.25, 25.0], [0.0, 0.0]]))
    assert torch.equal(w1, torch.tensor([[4.0, 4.0], [0.25, 0.25]]))
    # summed over images (not averaged): the same image twice doubles every score
    w1_twice, _ = talos.talos_scores(model, BATCHES * 2, [model.w1, model.w2])
    assert torch.equal(w1_twice, 2 * w1)
    # the true Fisher would differentiate log p_0 = z_0 - logsumexp(z), whose gradient here is ~1e-24 z-grads
    from common.fisher import diagonal_fisher
    fisher = diagonal_fisher(model, [(BATCHES[0][0], torch.tensor([0]))], params=[model.w1, model.w2])
    assert float(fisher[0].max()) < 1e-20


def test_calibration_rescores_the_changed_model_and_keeps_ties():
    model = TwoLayer()
    before = [model.w1.detach().clone(), model.w2.detach().clone()]
    seen = []

    def score(r, masks):
        seen.append(talos.talos_scores(model, BATCHES, [model.w1, model.w2], masks))
        return seen[-1]

    # s = 0.8, R = 2: k_0 = 0.2 ** 0.5 = 0.447 -> int(0.447 * 8) = 3; k_1 = 0.2 -> int(1.6) = 1
    masks = sparse.compute_masks([model.w1, model.w2], "least_sensitive", 0.8, fisher_fn=score, rounds=2,
                                 threshold="kthvalue")
    # round 0: sorted scores 0, 0, 0.25, 0.25, 2.25, 4, 4, 25; the 3rd smallest is 0.25 and both 0.25s
    # stay (ties kept): 4 coordinates kept where an exact count would keep 3
    # round 1 scores the model with the not-kept W1[0, :] and W2[0, :] times 0.1:
    # W1eff = [[.1, .05], [2, 3]], W2eff = [[.2, .05], [1, 1]], h = [.15, 5]
    # dz0/dW1[1, k] = W2eff[0, 1] x_k = 0.05 -> 0.0025 (0.25 on the unchanged model);
    # not-kept coordinates get mask^2 = 0.01 times their effective-weight gradient squared
    r1_w1, r1_w2 = seen[1]
    assert torch.allclose(r1_w1, torch.tensor([[0.0004, 0.0004], [0.0025, 0.0025]]), rtol=1e-5, atol=0)
    assert torch.allclose(r1_w2, torch.tensor([[0.000225, 0.25], [0.0, 0.0]]), rtol=1e-5, atol=0)
    # round 1 keeps min(1, 4 - 1) = 1 -> threshold 0: both zeros of W2[1, :] stay (ties), W1[1, :] goes
    assert masks[0].sum() == 0 and torch.equal(masks[1], torch.tensor([[False, False], [True, True]]))
    # the weights are restored bit for bit
    assert torch.equal(model.w1, before[0]) and torch.equal(model.w2, before[1])


def test_kthvalue_select_keeps_ties_and_never_revives():
    scores = [torch.tensor([3.0, 1.0, 1.0, 2.0]), torch.tensor([1.0, 5.0])]
    everyone = [torch.ones(4, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
    kept = talos.kthvalue_select(scores, 2 / 6, everyone)          # k = 2: threshold 1.0, three ones kept
    assert [m.tolist() for m in kept] == [[False, True, True, False], [True, False]]
    most = talos.kthvalue_select(scores, 2 / 6, everyone, largest=True)      # the two largest: 5 and 3
    assert [m.tolist() for m in most] == [[True, False, False, False], [False, True]]
    # a coordinate that is not eligible is never kept, however small its new score
    eligible = [torch.tensor([True, False, True, True]), torch.ones(2, dtype=torch.bool)]
    again = talos.kthvalue_select([torch.tensor([3.0, 0.0, 1.0, 2.0]), torch.tensor([1.0, 5.0])], 2 / 6, eligible)
    assert not again[0][1] and again[0][2] and again[1][0]


def test_exact_threshold_is_unchanged():
    with pytest.raises(ValueError, match="threshold"):
        sparse.compute_masks([torch.zeros(3)], "random", 0.5, threshold="median")
