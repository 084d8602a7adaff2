"""CONTRACT STUB (to be implemented): diagonal Fisher from per-example gradients (torch.func)."""
from __future__ import annotations

def diagonal_fisher(model, batches, *, labels: str = "empirical", forward=None, params=None,
                    method: str = "per_example", chunk_size: int = 16, generator=None, max_examples=None):
    """Mean over examples of squared per-example gradients, for each parameter in ``params``
    (default ``common.params.trainable(model)``), as a list of tensors in that order.

    batches: iterable of (inputs, targets); forward(model, inputs) -> logits [B, ..., C] (default model(inputs),
    taking ``.logits`` when present); targets [B, ...] with -100 ignored.
    labels: 'empirical' (targets from the data) or 'sampled' (y ~ softmax(logits), the true Fisher).
    method: 'per_example' (torch.func vmap(grad)), 'loop' (reference), 'batch' (squared batch gradient).
    """
    raise NotImplementedError
