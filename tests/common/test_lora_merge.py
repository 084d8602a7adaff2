"""LoRA merges against the dense update: SVD merge = best rank-r approximation, exact and naive merges."""
from __future__ import annotations

import pytest
import torch

from common import lora_merge as LM


def lora_clients(k=3, rank=2, d_out=7, d_in=5, seed=9):
    g = torch.Generator().manual_seed(seed)
    As = [torch.randn(rank, d_in, generator=g) for _ in range(k)]
    Bs = [torch.randn(d_out, rank, generator=g) for _ in range(k)]
    return As, Bs, [0.2, 0.5, 0.3][:k], [2.0, 2.0, 0.5][:k]


def test_lora_svd_merge_is_the_best_rank_r_approximation():
    As, Bs, w, s = lora_clients()
    dense = sum(wk * sk * b @ a for a, b, wk, sk in zip(As, Bs, w, s))
    torch.testing.assert_close(LM.lora_delta(As, Bs, w, s), dense)
    for r, out_scale in [(1, 1.0), (2, 16 / 2), (4, 0.5)]:
        a, b = LM.lora_svd_merge(As, Bs, w, s, rank=r, out_scale=out_scale)
        assert a.shape == (r, 5) and b.shape == (7, r)
        u, sv, vh = torch.linalg.svd(dense)
        best = u[:, :r] @ torch.diag(sv[:r]) @ vh[:r]
        torch.testing.assert_close(out_scale * b @ a, best, rtol=1e-4, atol=1e-5)
        # Eckart-Young: the error is the tail of the spectrum, and no other rank-r product does better
        err = torch.linalg.matrix_norm(dense - out_scale * b @ a)
        assert err == pytest.approx(float(sv[r:].square().sum().sqrt()), rel=1e-4, abs=1e-5)
        naive_a, naive_b = LM.lora_naive_merge(As, Bs, w)
        assert err <= torch.linalg.matrix_norm(dense - naive_b @ naive_a) + 1e-6
        # singular values split evenly: both factors carry sqrt(sigma / out_scale)
        torch.testing.assert_close(a.norm(dim=1), b.norm(dim=0), rtol=1e-4, atol=1e-6)


def test_lora_svd_merge_exact_when_rank_covers_sum_of_ranks():
    As, Bs, w, s = lora_clients(k=2, rank=2, d_out=9, d_in=8)
    dense = LM.lora_delta(As, Bs, w, s)
    a, b = LM.lora_svd_merge(As, Bs, w, s, rank=4)
    torch.testing.assert_close(b @ a, dense, rtol=1e-4, atol=1e-5)
    a, b = LM.lora_svd_merge(As, Bs, w, s, rank=6)  # rank above sum r_k: zero padding, still exact
    assert a.shape == (6, 8) and torch.count_nonzero(a[4:]) == 0 and torch.count_nonzero(b[:, 4:]) == 0
    torch.testing.assert_close(b @ a, dense, rtol=1e-4, atol=1e-5)
    ea, eb = LM.lora_exact_merge(As, Bs, w, s, out_scale=2.0)
    assert ea.shape == (4, 8) and eb.shape == (9, 4)
    torch.testing.assert_close(2.0 * eb @ ea, dense, rtol=1e-5, atol=1e-6)


def test_lora_naive_merge_and_errors():
    As, Bs, w, _ = lora_clients()
    na, nb = LM.lora_naive_merge(As, Bs, w)
    torch.testing.assert_close(na, sum(wk * a for wk, a in zip(w, As)))
    torch.testing.assert_close(nb, sum(wk * b for wk, b in zip(w, Bs)))
    with pytest.raises(ValueError, match="A \\[r, in\\]"):
        LM.lora_svd_merge([As[0].T], [Bs[0]], [1.0], [1.0], rank=2)
    with pytest.raises(ValueError, match="as many"):
        LM.lora_exact_merge(As, Bs[:2], w, [1.0] * 3)
