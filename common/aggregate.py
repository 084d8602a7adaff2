"""CONTRACT STUB (to be implemented): streaming aggregators, server optimizers, SCAFFOLD, LoRA merges.

Every aggregator: ``add(...)`` one client at a time (O(parameters) memory), ``result()``,
``accumulators()`` (the tensors to SUM across ranks: one all-reduce combines per-rank aggregators),
``reset()``, ``state_dict()``, ``load_state_dict()``.
"""
from __future__ import annotations
from collections.abc import Sequence
import torch

class WeightedMean:
    """FedAvg: result = sum_k w_k theta_k / sum_k w_k."""
    def __init__(self, like: Sequence[torch.Tensor], acc_dtype: torch.dtype = torch.float32): ...
    def add(self, tensors: Sequence[torch.Tensor], weight: float = 1.0) -> None: ...
    def result(self) -> list[torch.Tensor]: ...
    def accumulators(self) -> list[torch.Tensor]: ...

class FisherMean:
    """FedFisher: result = sum_k F_k * theta_k / (sum_k F_k + eps)."""
    def __init__(self, like, eps: float = 1e-8, acc_dtype=torch.float32): ...
    def add(self, tensors, fisher, weight: float = 1.0) -> None: ...
    def result(self) -> list[torch.Tensor]: ...

class MaskedMean:
    """Each coordinate averaged over the clients whose mask is 1 there; others keep ``fallback``."""
    def __init__(self, like, acc_dtype=torch.float32): ...
    def add(self, tensors, masks, weight: float = 1.0) -> None: ...
    def result(self, fallback) -> list[torch.Tensor]: ...

def entropy_weights(entropies: Sequence[float], temperature: float = 1.0) -> list[float]:
    """alpha_k = softmax(-H_k / T)."""
    raise NotImplementedError

class ServerOptimizer:
    """Applies the pseudo-gradient (global - average) to the global params IN PLACE: step(global, average)."""
def make_server_optimizer(name: str, like, lr: float = 1.0, momentum: float = 0.9, form: str = "ema",
                          betas=(0.9, 0.99), tau: float = 1e-3) -> ServerOptimizer:
    """name: fedavg | fedavgm | fedadam. form for fedavgm: 'heavy-ball' (Flower) or 'ema' (source)."""
    raise NotImplementedError

class Scaffold:
    """SCAFFOLD option II bookkeeping (Karimireddy et al. 2020)."""
    def __init__(self, like, num_clients: int, server_lr: float = 1.0): ...
    def correction(self, client: int) -> list[torch.Tensor]: """c - c_i (add to the local gradient)."""
    def client_update(self, client: int, x, y, local_steps: int, local_lr: float): """returns (delta_y, delta_c), updates c_i"""
    def server_update(self, x, mean_delta_y, sum_delta_c) -> None: """x += eta_g mean dy; c += sum dc / N"""

def lora_svd_merge(As, Bs, weights, scales, rank: int):
    """Rank-r truncated SVD of sum_k w_k s_k B_k A_k -> (A [r, in], B [out, r]) with B @ A = that approximation."""
    raise NotImplementedError
def lora_naive_merge(As, Bs, weights):
    """(sum w_k A_k, sum w_k B_k)."""
    raise NotImplementedError
def lora_exact_merge(As, Bs, weights, scales):
    """Stacked factors whose product equals sum_k w_k s_k B_k A_k exactly (rank sum r_k)."""
    raise NotImplementedError
