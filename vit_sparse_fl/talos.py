"""TaLoS's own mask calibration (Iurada et al. 2025, iurada/talos-task-arithmetic, vision/pruners.py and
vision/prune_finetune.py), as an alternative to the true-Fisher score of ``common.fisher``.

The official score (squared gradient of the *sampled logit* z_y), rescored on the model with not-kept weights
scaled by 0.1, and the kthvalue threshold that keeps ties; vit_sparse_fl/README.md ("Sensitivity scores").
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from common.fisher import sample_labels

NOT_KEPT = 0.1          # the official mask value of a coordinate that is not kept


@torch.no_grad()
def talos_scores(model: nn.Module, batches: Iterable, params: Sequence[torch.Tensor],
                 masks: Sequence[torch.Tensor | None] | None = None, *, generator: torch.Generator | None = None,
                 chunk_size: int = 16) -> list[torch.Tensor]:
    """Float32 sum over the images of ``batches`` ((inputs, anything) pairs) of (d z_y / d theta)^2 for each
    of ``params``, y sampled from the model, in eval mode, with the coordinates where ``masks`` is False scaled by
    0.1 (restored bit-for-bit afterwards). ``model(inputs)`` returns logits [B, C]."""
    params = list(params)
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    names = [names_by_id[id(p)] for p in params]
    scale = [None if m is None else torch.where(m, 1.0, NOT_KEPT).to(p.dtype)
             for p, m in zip(params, masks or [None] * len(params))]
    saved = [p.detach().clone() for p in params]
    was_training = model.training
    model.eval()
    scores = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]

    def sampled_logit(p_dict, x, y):          # one image: the logit of its sampled class
        return functional_call(model, p_dict, (x.unsqueeze(0),))[0].gather(0, y.unsqueeze(0)).squeeze(0)

    # torch.func.grad ignores the decorator's no_grad (a transform sees only the no_grad inside it)
    per_example = vmap(grad(sampled_logit), in_dims=(None, 0, 0))
    try:
        for p, s in zip(params, scale):
            if s is not None:
                p.mul_(s)                     # the masked forward of the official code: w * mask
        p_dict = {n: p.detach() for n, p in zip(names, params)}
        for inputs, _ in batches:
            y = sample_labels(model(inputs), generator)
            for lo in range(0, len(inputs), chunk_size):
                g = per_example(p_dict, inputs[lo:lo + chunk_size], y[lo:lo + chunk_size])
                torch._foreach_add_(scores, [(g[n].float() ** 2).sum(0) for n in names])
        # the gradient reaching the weight itself is mask * the gradient of the effective weight
        scores = [sc if s is None else sc * s.float() ** 2 for sc, s in zip(scores, scale)]
    finally:
        for p, w in zip(params, saved):
            p.copy_(w)
        model.train(was_training)
    return scores


@torch.no_grad()
def kthvalue_select(scores: Sequence[torch.Tensor], keep_share: float, eligible: Sequence[torch.Tensor],
                    largest: bool = False) -> list[torch.Tensor]:
    """The official threshold: keep the eligible coordinates scoring <= the k-th smallest eligible score, k =
    min(int(keep_share * N), n_eligible - 1), N all coordinates (ties kept); ``largest``: on negated scores."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    if largest:
        flat = -flat
    ok = torch.cat([e.reshape(-1) for e in eligible])
    values = flat[ok]
    if values.numel() == 0:
        raise ValueError("no eligible coordinate left to keep")
    k = max(1, min(int(keep_share * flat.numel()), values.numel() - 1))
    threshold = torch.kthvalue(values.cpu(), k).values.to(flat.device)
    keep = ok & (flat <= threshold)
    return [m.view_as(s) for m, s in zip(keep.split([s.numel() for s in scores]), scores)]
