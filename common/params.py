"""Parameter views: a model's trainable parameters as a list of tensors, with in-place math helpers.

Every helper takes and returns plain lists of tensors in the order of ``trainable(model)``, so the
aggregators, Fisher and SCAFFOLD code never see module names. Tied weights (e.g. an LM's embedding
shared with its output head) appear once, because ``named_parameters`` de-duplicates shared tensors.
The list ops use fused ``torch._foreach_*`` kernels: one launch per op, not one per tensor.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

Tensors = list[torch.Tensor]


def named_trainable(model: nn.Module, trainable_only: bool = True) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs, tied parameters once, frozen ones skipped unless asked for."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]


def trainable(model: nn.Module, trainable_only: bool = True) -> list[nn.Parameter]:
    """The parameter objects themselves (loading into them changes the model)."""
    return [p for _, p in named_trainable(model, trainable_only)]


def clone(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> Tensors:
    """Detached copies (optionally cast), e.g. a snapshot of the global model."""
    return [t.detach().to(dtype=dtype or t.dtype, copy=True) for t in tensors]


def zeros_like(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> Tensors:
    return [torch.zeros_like(t, dtype=dtype or t.dtype) for t in tensors]


@torch.no_grad()
def load_(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> None:
    """Copy ``src`` into ``dst`` in place (e.g. global weights into the one model object)."""
    _check(dst, src)
    torch._foreach_copy_(list(dst), list(src))


@torch.no_grad()
def sub(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Tensors:
    """a - b, new tensors."""
    _check(a, b)
    return list(torch._foreach_sub([t.detach() for t in a], [t.detach() for t in b]))


@torch.no_grad()
def add_(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor], alpha: float = 1.0) -> None:
    """dst += alpha * src, in place."""
    _check(dst, src)
    torch._foreach_add_(list(dst), list(src), alpha=alpha)


@torch.no_grad()
def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Sum of elementwise products over all tensors, accumulated in float64."""
    _check(a, b)
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


@torch.no_grad()
def norm(tensors: Sequence[torch.Tensor]) -> float:
    """Global L2 norm over all tensors."""
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().float().norm() for t in tensors])))


def numel(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def flatten(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """One contiguous 1-D buffer holding all tensors (for a single all-reduce or bulk math)."""
    return torch.cat([t.detach().reshape(-1).to(dtype or t.dtype) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> Tensors:
    """Views of ``flat`` shaped like ``like``."""
    out, i = [], 0
    for t in like:
        out.append(flat[i:i + t.numel()].view_as(t))
        i += t.numel()
    if i != flat.numel():
        raise ValueError(f"flat buffer has {flat.numel()} elements, tensors need {i}")
    return out


def state_to_cpu(tensors: Iterable[torch.Tensor]) -> Tensors:
    """CPU copies, for checkpoints."""
    return [t.detach().cpu().clone() for t in tensors]


def _check(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> None:
    if len(a) != len(b):
        raise ValueError(f"parameter lists differ in length: {len(a)} vs {len(b)}")
