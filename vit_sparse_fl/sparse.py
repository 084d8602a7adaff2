"""Sparse fine-tuning: masks from Fisher scores, magnitudes or at random, and the SparseSGDM optimizer.

A mask is a bool tensor per parameter, ``True`` = trainable; the classifier head is never masked. Scores are ranked
over all masked tensors together (one global threshold): least_sensitive trains the smallest Fisher scores (TaLoS,
Iurada et al. 2025), most_sensitive the largest, lowest/highest_magnitude rank |theta|, random is uniform.
Fisher strategies calibrate over R rounds, each rescoring the coordinates still eligible and keeping
k_r = (1 - s)^((r + 1) / R) of all of them (not of those still eligible), so the last round keeps 1 - s.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vit_sparse_fl import talos

STRATEGIES = ("least_sensitive", "most_sensitive", "lowest_magnitude", "highest_magnitude", "random")


def keep_schedule(sparsity: float, rounds: int) -> list[float]:
    """[k_0, ..., k_{R-1}] with k_r = (1 - s)^((r + 1) / R); the last equals 1 - s."""
    return [(1.0 - sparsity) ** ((r + 1) / rounds) for r in range(rounds)]


@torch.no_grad()
def select(scores: Sequence[torch.Tensor], keep: int, largest: bool,
           eligible: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Masks keeping exactly ``keep`` coordinates: the smallest (or largest) scores among ``eligible``."""
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
    if eligible is not None:
        ok = torch.cat([e.reshape(-1) for e in eligible])
        if keep > int(ok.sum()):
            raise ValueError(f"cannot keep {keep} coordinates, only {int(ok.sum())} are eligible")
        never = torch.tensor(float("-inf") if largest else float("inf"), device=flat.device)
        flat = torch.where(ok, flat, never)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    # a stable sort ranks equal scores by position, so the count is exact even at ties
    mask[torch.sort(flat, descending=largest, stable=True).indices[:keep]] = True
    return [m.view_as(s) for m, s in zip(mask.split([s.numel() for s in scores]), scores)]


def compute_masks(params: Sequence[torch.Tensor], strategy: str, sparsity: float, *,
                  fisher_fn: Callable[[int, list[torch.Tensor]], list[torch.Tensor]] | None = None, rounds: int = 1,
                  generator: torch.Generator | None = None, threshold: str = "exact") -> list[torch.Tensor]:
    """Masks (True = trainable) for ``params``, density exactly 1 - ``sparsity`` over all of them.

    ``fisher_fn(r, masks)``: the scores of calibration round ``r`` given the current masks (*_sensitive only).
    ``threshold``: 'exact' keeps exactly the scheduled count (ties broken by position); 'kthvalue' is TaLoS's
    rule (``talos.kthvalue_select``: ties kept, so the density can exceed 1 - s)."""
    if threshold not in ("exact", "kthvalue"):
        raise ValueError(f"threshold must be 'exact' or 'kthvalue', got {threshold!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mask strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    total = sum(p.numel() for p in params)
    target = total - int(round(sparsity * total))
    if strategy in ("lowest_magnitude", "highest_magnitude"):
        return select([p.detach().abs() for p in params], target, largest=strategy == "highest_magnitude")
    if strategy == "random":
        dev = params[0].device
        gen_dev = generator.device if generator is not None else dev
        scores = [torch.rand(p.shape, generator=generator, device=gen_dev).to(dev) for p in params]
        return select(scores, target, largest=True)
    if fisher_fn is None:
        raise ValueError(f"strategy {strategy} needs Fisher scores")
    masks = [torch.ones_like(p, dtype=torch.bool) for p in params]
    for r, k in enumerate(keep_schedule(sparsity, rounds)):
        keep = target if r == rounds - 1 else max(target, int(round(k * total)))
        scores = fisher_fn(r, masks)
        if threshold == "kthvalue":
            masks = talos.kthvalue_select(scores, k, masks, largest=strategy == "most_sensitive")
        else:
            masks = select(scores, keep, largest=strategy == "most_sensitive", eligible=masks)
    return masks


def density(masks: Sequence[torch.Tensor]) -> float:
    return sum(int(m.sum()) for m in masks) / max(sum(m.numel() for m in masks), 1)


class SparseSGDM(torch.optim.Optimizer):
    """``torch.optim.SGD``'s arithmetic (exactly, with an all-True mask), updating only where ``mask`` is True:
    gradient, weight decay and momentum buffer are zero off the mask and the write-back is a ``torch.where``,
    so masked coordinates keep their exact bits. ``masks``: per parameter, a bool tensor or None (dense)."""

    def __init__(self, params, masks: Sequence[torch.Tensor | None], lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        params = list(params)
        if len(masks) != len(params):
            raise ValueError(f"{len(masks)} masks for {len(params)} parameters")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))
        for p, m in zip(params, masks):
            if m is not None:
                if m.shape != p.shape:
                    raise ValueError(f"mask shape {tuple(m.shape)} does not match parameter {tuple(p.shape)}")
                self.state[p]["mask"] = m.to(device=p.device, dtype=torch.bool)

    @torch.no_grad()
    def step(self, closure=None):
        """One step as ``torch._foreach_*`` calls over each group's tensors (the same elementwise ops)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, damp, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            masks = [state.get("mask") for state in states]
            d_p = [p.grad for p in params]
            if wd != 0:
                d_p = torch._foreach_add(d_p, params, alpha=wd)
            # where(m, g + wd p, 0) is where(m, g, 0) + wd where(m, p, 0) bit for bit: on the mask the same
            # add, off it +0 either way (0 + wd * 0 = +0)
            d_p = [d if m is None else torch.where(m, d, 0.0) for d, m in zip(d_p, masks)]
            if mu != 0:
                bufs = [state.get("momentum_buffer") for state in states]
                if all(b is not None for b in bufs):
                    torch._foreach_mul_(bufs, mu)
                    torch._foreach_add_(bufs, d_p, alpha=1 - damp)
                else:
                    for i, (state, d) in enumerate(zip(states, d_p)):
                        if bufs[i] is None:
                            bufs[i] = state["momentum_buffer"] = torch.clone(d).detach()
                        else:
                            bufs[i].mul_(mu).add_(d, alpha=1 - damp)
                d_p = torch._foreach_add(d_p, bufs, alpha=mu) if group["nesterov"] else bufs
            dense = [i for i, m in enumerate(masks) if m is None]
            if dense:
                torch._foreach_add_([params[i] for i in dense], [d_p[i] for i in dense], alpha=-lr)
            masked = [i for i, m in enumerate(masks) if m is not None]
            if masked:
                moved = torch._foreach_add([params[i] for i in masked], [d_p[i] for i in masked], alpha=-lr)
                for i, new in zip(masked, moved):
                    torch.where(masks[i], new, params[i], out=params[i])
        return loss
