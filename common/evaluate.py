"""CONTRACT STUB (to be implemented): evaluation and metrics."""
from __future__ import annotations

def autocast(device):
    """bf16 autocast on CUDA, a no-op elsewhere."""
    raise NotImplementedError
def perplexity(model, batches, device=None) -> dict:
    """Token-weighted: exp(total NLL / total tokens). batches yield dicts with input_ids [B,T] and labels [B,T]
    (HF convention: labels aligned with input_ids, shifted inside; -100 ignored). -> {loss, ppl, tokens}"""
    raise NotImplementedError
def mean_entropy(model, batches, vocab_size: int | None = None, device=None) -> float:
    """Mean predictive entropy in nats per token over the first vocab_size logits."""
    raise NotImplementedError
def classification_eval(model, batches, device=None, forward=None) -> dict:
    """-> {loss, accuracy, n}; forward(model, inputs) -> logits, batches yield (inputs, targets)."""
    raise NotImplementedError
def accuracy(pred, target) -> float: ...
def f1_score(pred, target) -> float: ...
def matthews_corrcoef(pred, target) -> float: ...
def pearson(x, y) -> float: ...
def spearman(x, y) -> float: ...
