"""Sparse fine-tuning: masks from Fisher scores, magnitudes or at random, and the SparseSGDM optimizer.

Mask convention: a bool tensor per parameter, ``True`` = trainable. ``sparsity`` s is the share of the
masked (backbone) coordinates that are frozen, so a mask has density exactly 1 - s (ties are broken by
position, never by letting more coordinates through). The classifier head is never masked.

Strategies (scores are ranked over ALL masked tensors together: one global threshold):
  least_sensitive   train the coordinates with the SMALLEST Fisher scores (TaLoS, Iurada et al. 2025)
  most_sensitive    train the LARGEST Fisher scores
  lowest_magnitude / highest_magnitude   |theta| of the pre-trained weights
  random            uniform, from a seeded generator
Fisher strategies are calibrated over R rounds with the exponential keep schedule
k_r = (1 - s)^((r + 1) / R): each round rescores (fresh sampled labels) and keeps the k_r share among the
coordinates still eligible, so the mask shrinks monotonically to exactly 1 - s.
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
    if keep > 0:
        # a stable sort ranks equal scores by position, so the count is exact even at ties
        order = torch.sort(flat, descending=largest, stable=True).indices
        mask[order[:keep]] = True
    return [m.view_as(s) for m, s in zip(mask.split([s.numel() for s in scores]), scores)]


def compute_masks(params: Sequence[torch.Tensor], strategy: str, sparsity: float, *,
                  fisher_fn: Callable[[int, list[torch.Tensor]], list[torch.Tensor]] | None = None,
                  rounds: int = 1, generator: torch.Generator | None = None,
                  threshold: str = "exact") -> list[torch.Tensor]:
    """Masks (True = trainable) for ``params``, density exactly 1 - ``sparsity`` over all of them.

    ``fisher_fn(r, masks)`` returns the Fisher scores for calibration round ``r`` (needed for the two
    *_sensitive strategies); ``masks`` is the current mask, for callers that want to score the masked model.
    ``threshold``: 'exact' keeps exactly the scheduled count each round (ties broken by position);
    'kthvalue' is TaLoS's rule (``talos.kthvalue_select``: ties at the threshold are kept, so the density
    of the *_sensitive masks can exceed 1 - s).
    """
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
    n = sum(m.numel() for m in masks)
    return sum(int(m.sum()) for m in masks) / max(n, 1)


class SparseSGDM(torch.optim.Optimizer):
    """SGD with momentum whose update touches only the coordinates where ``mask`` is True.

    Same arithmetic as ``torch.optim.SGD`` (weight decay added to the gradient, momentum buffer
    ``b = mu*b + (1 - dampening)*g``, optional Nesterov), but gradient, weight decay and momentum buffer
    are zero off the mask and the write-back is a ``torch.where``, so masked coordinates keep their exact
    bits (no -0.0 / NaN leaks). With an all-True mask it reproduces ``torch.optim.SGD`` exactly.
    ``masks``: one bool tensor per parameter in ``params`` order, or None for a dense parameter.
    """

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
        """One step with ``torch.optim.SGD``'s arithmetic, done as ``torch._foreach_*`` calls over the
        group's tensors (per tensor, the same elementwise ops as a loop of single-tensor ops, without its
        per-op overhead). Off the mask, the decayed gradient is selected to +0 (so is the momentum buffer)
        and the write-back selects the old value."""
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
