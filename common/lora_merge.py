"""Merging clients' LoRA adapters into one: exact (stacked factors), naive (FedAvg of A and B), the dense
reference update, and the rank-r truncated SVD merge that lora_glue_fl runs.

Shapes follow peft: A_k [r_k, in], B_k [out, r_k]; client k's update of W [out, in] is s_k B_k A_k with
s_k = alpha_k / r_k. Weights w_k are used as given (pass n_k / sum n for FedAvg).
"""
from __future__ import annotations

import math

import torch


def lora_exact_merge(As, Bs, weights, scales, out_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked factors A [sum r_k, in], B [out, sum r_k] with out_scale * B @ A = sum_k w_k s_k B_k A_k
    exactly (the rank grows with the number of clients)."""
    _check_lora(As, Bs, weights, scales, out_scale)
    return torch.cat(list(As), 0), torch.cat([b * (w * s / out_scale) for b, w, s in zip(Bs, weights, scales)], 1)


def lora_naive_merge(As, Bs, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum w_k A_k, sum w_k B_k): what FedAvg of adapters does; its product is NOT the mean update."""
    _check_lora(As, Bs, weights, [1.0] * len(As), 1.0)
    return sum(w * a for w, a in zip(weights, As)), sum(w * b for w, b in zip(weights, Bs))


def lora_delta(As, Bs, weights, scales) -> torch.Tensor:
    """The dense merged update sum_k w_k s_k B_k A_k [out, in] (a reference; memory out x in)."""
    return sum(w * s * (b.float() @ a.float()) for a, b, w, s in zip(As, Bs, weights, scales))


@torch.no_grad()
def lora_svd_merge(As, Bs, weights, scales, rank: int, out_scale: float = 1.0,
                   compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-r truncated SVD of dW = sum_k w_k s_k B_k A_k as LoRA factors A [rank, in], B [out, rank] with
    out_scale * B @ A = U_r S_r V_r^T (Eckart-Young's best rank-r approximation; rows beyond dW's rank are
    zero). The singular values are split sqrt/sqrt (each over sqrt(out_scale)), so both factors share a scale
    and stay trainable; for a peft adapter adding (alpha / r) B @ A pass out_scale = alpha / r (its ``scaling``).
    dW is never formed: with B_stack = Q_b R_b and A_stack^T = Q_a R_a (QR of the exact stacked factors),
    dW = Q_b (R_b R_a^T) Q_a^T, so only the small (sum r_k)^2 core is decomposed.
    """
    if rank < 1 or not out_scale > 0:
        raise ValueError(f"rank must be >= 1 and out_scale > 0, got {rank}, {out_scale}")
    A_stack, B_stack = lora_exact_merge(As, Bs, weights, scales)
    out_dtype = As[0].dtype
    q_b, u, s, vh, q_a = _core_svd(A_stack, B_stack, compute_dtype)
    k = min(rank, s.numel())
    root = s[:k].sqrt() / math.sqrt(out_scale)
    B = torch.zeros(B_stack.shape[0], rank, dtype=compute_dtype, device=B_stack.device)
    A = torch.zeros(rank, A_stack.shape[1], dtype=compute_dtype, device=A_stack.device)
    B[:, :k] = (q_b @ u[:, :k]) * root
    A[:k] = root[:, None] * (vh[:k] @ q_a.T)
    return A.to(out_dtype), B.to(out_dtype)


@torch.no_grad()
def lora_singular_values(As, Bs, weights, scales, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The singular values of dW = sum_k w_k s_k B_k A_k, descending (min(out, in, sum r_k) of them), from the
    same (sum r_k)^2 core as ``lora_svd_merge``: the rank-r merge drops exactly s[r:], so its squared Frobenius
    error is sum s[r:]^2 (Eckart-Young), for every r at once."""
    A_stack, B_stack = lora_exact_merge(As, Bs, weights, scales)
    return _core_svd(A_stack, B_stack, compute_dtype)[2]


def _core_svd(A_stack, B_stack, compute_dtype):
    """(Q_b, U, S, V^T, Q_a) with B_stack A_stack = Q_b U diag(S) V^T Q_a^T: the SVD of the small core only."""
    q_b, r_b = torch.linalg.qr(B_stack.to(compute_dtype))  # [out, m], [m, R]
    q_a, r_a = torch.linalg.qr(A_stack.to(compute_dtype).T)  # [in, n], [n, R]
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # core [m, n]
    return q_b, u, s, vh, q_a


def _check_lora(As, Bs, weights, scales, out_scale) -> None:
    if not (len(As) == len(Bs) == len(weights) == len(scales)) or not As:
        raise ValueError(f"LoRA merge needs as many A, B, weights and scales (>= 1): got {len(As)}, {len(Bs)}, "
                         f"{len(weights)}, {len(scales)}")
    for a, b in zip(As, Bs):
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA factors must be A [r, in], B [out, r]; got A {tuple(a.shape)}, B {tuple(b.shape)}")
    if not out_scale > 0:
        raise ValueError(f"out_scale must be > 0, got {out_scale}")
