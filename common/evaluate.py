"""Evaluation loops and metrics.

* ``perplexity``: token-weighted, exp(total NLL / total tokens) over the whole split (not the mean of
  per-batch perplexities, which over-weights short final batches).
* ``mean_entropy``: predictive entropy in nats per token over the real (unpadded) vocabulary.
* ``accuracy``, ``f1_score``, ``matthews_corrcoef``, ``pearson``, ``spearman``: NumPy float64, matching
  scikit-learn / SciPy on the cases GLUE uses.

Loops run under ``torch.inference_mode()`` in eval mode (each module's flag restored after) and read their
device-side sums once at the end. ``shard=True`` under ``torchrun`` (call on every rank): every rank scores
batches rank, rank + N, ... (``common.distributed.my_share``) and one all-reduce gives all the whole split's
metrics. (A model that lazily caches tensors in its first forward would cache inference tensors here.)
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import distributed
from common.errors import check

IGNORE_INDEX = -100
# Rows of [N, V] logits converted to float32 at a time (8192 positions x 50k tokens would be 1.6 GB).
CHUNK_ROWS = 2048

# context helpers

def cuda_precision() -> str:
    """What a CUDA run computes in: "bf16 autocast", or "float32" with ``FEDLAB_PRECISION=float32`` (then a GPU
    run computes what a CPU run does, up to the order of floating-point sums)."""
    value = os.environ.get("FEDLAB_PRECISION", "bf16")
    check(value in ("bf16", "float32"), f"FEDLAB_PRECISION={value!r}: expected 'float32' (CUDA without autocast) "
                                        "or 'bf16' (the default)")
    return "float32" if value == "float32" else "bf16 autocast"


def autocast(device: str | torch.device | None):
    """bf16 autocast on CUDA (unless ``cuda_precision`` says float32), a no-op context elsewhere (CPU bf16 autocast
    is slow and changes results)."""
    if device is not None and torch.device(device).type == "cuda" and cuda_precision() != "float32":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` inside the block; afterwards every submodule gets back its own previous flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to(x: Any, device: torch.device) -> Any:
    """Move tensors (possibly inside dicts, lists, tuples) to ``device``."""
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


# language models

def _default_lm_forward(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Logits of ``model(**inputs)``: a tensor, an HF ``ModelOutput`` (``.logits``) or a tuple (first item)."""
    out = model(**inputs)
    if torch.is_tensor(out):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


def _lm_batch(batch: Any) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels [B, T]) of a dict with ``input_ids`` [B, T] and optional ``labels`` /
    ``attention_mask``, an (input_ids, labels) tuple or bare input_ids (labels: the ids, padding ignored)."""
    if torch.is_tensor(batch):
        batch = {"input_ids": batch}
    elif isinstance(batch, (tuple, list)):
        batch = {"input_ids": batch[0], "labels": batch[1]}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch.get("labels")
    if labels is None:
        labels = inputs["input_ids"]
        if inputs.get("attention_mask") is not None:
            labels = labels.masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
    if "input_ids" in inputs:  # -100 padding in input_ids (e.g. the last partial block) is not a token id
        inputs["input_ids"] = inputs["input_ids"].clamp_min(0)
    return inputs, labels


def _lm_logits(model: nn.Module, batches: Iterable[Any], device: torch.device, forward=_default_lm_forward,
               vocab_size: int | None = None):
    """Per batch: (logits [N, V], labels [N]), position t scored on label t+1 (HF causal-LM convention), only
    the first ``vocab_size`` logits when given."""
    for batch in batches:
        inputs, labels = _lm_batch(_to(batch, device))
        with autocast(device):
            logits = forward(model, inputs)
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        yield logits[:, :-1, :].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)


def perplexity(model: nn.Module, batches: Iterable[Any], device=None,
               forward: Callable[[nn.Module, dict], torch.Tensor] | None = None,
               vocab_size: int | None = None, shard: bool = False) -> dict:
    """Token-weighted perplexity of a causal LM -> {"loss": nats per token, "ppl": exp(loss), "tokens"}.

    batches: dicts with ``input_ids`` and ``labels`` [B, T] (aligned, shifted here, -100 ignored), (input_ids,
    labels) tuples or bare input_ids. forward: ``forward(model, inputs) -> logits [B, T, V]`` (default
    ``model(**inputs).logits``). vocab_size: only the first logits are scored (padded vocabularies). shard:
    under torchrun, the batches split over the ranks (call on every rank; all get the result)."""
    device = _device_of(model, device)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    with eval_mode(model), torch.inference_mode():
        for flat_logits, flat_labels in _lm_logits(model, distributed.my_share(batches) if shard else batches,
                                                   device, forward or _default_lm_forward, vocab_size):
            for lg, lb in zip(flat_logits.split(CHUNK_ROWS), flat_labels.split(CHUNK_ROWS)):
                nll += F.cross_entropy(lg.float(), lb, ignore_index=IGNORE_INDEX, reduction="sum").double()
            count += (flat_labels != IGNORE_INDEX).sum()
    if shard:  # add up the ranks' partial sums (one all-reduce)
        distributed.all_reduce_sum_((nll, count))
    tokens = int(count.item())
    loss = float(nll.item()) / tokens if tokens else float("nan")
    ppl = float("inf") if loss > 700 else math.exp(loss)  # NaN stays NaN; a diverged model gives inf
    return {"loss": loss, "ppl": ppl, "tokens": tokens}


def unigram_perplexity(train_tokens: torch.Tensor, eval_blocks: torch.Tensor, vocab_size: int,
                       smoothing: float = 1.0) -> dict:
    """Reference points of a language model, scored on the positions ``perplexity`` scores in ``eval_blocks``
    [M, T]: the uniform guess and a unigram model of the training tokens (add-``smoothing`` counts). Returns
    {"uniform_ppl": vocab_size, "unigram_ppl", "unigram_loss" (nats per token), "tokens"}."""
    train = train_tokens.reshape(-1)
    train = train[train >= 0].long().cpu()
    counts = torch.bincount(train, minlength=vocab_size)[:vocab_size].double() + smoothing
    logp = counts.log() - counts.sum().log()
    targets = eval_blocks[:, 1:].reshape(-1).long().cpu()
    targets = targets[(targets >= 0) & (targets < vocab_size)]
    loss = float(-logp[targets].mean()) if targets.numel() else float("nan")
    return {"uniform_ppl": float(vocab_size), "unigram_ppl": math.exp(loss), "unigram_loss": loss,
            "tokens": int(targets.numel())}


def mean_entropy(model: nn.Module, batches: Iterable[Any], vocab_size: int | None = None, device=None) -> float:
    """Mean predictive entropy H(p(. | prefix)) in nats per token over the positions ``perplexity`` scores
    (batches as there), softmax over the first ``vocab_size`` logits only (padded entries do not count)."""
    device = _device_of(model, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    with eval_mode(model), torch.inference_mode():
        for flat_logits, flat_labels in _lm_logits(model, batches, device, vocab_size=vocab_size):
            keep = flat_labels != IGNORE_INDEX
            for chunk in flat_logits[keep].split(CHUNK_ROWS):
                logp = F.log_softmax(chunk.float(), dim=-1)  # [rows, V]
                total += -(logp.exp() * logp).sum().double()
            count += keep.sum()
    n = int(count.item())
    return float(total.item()) / n if n else float("nan")


def mean_class_entropy(model: nn.Module, batches: Iterable[Any], device=None) -> float:
    """Mean predictive entropy H(p(. | x)) in nats per example of a classifier: ``batches`` of inputs or (inputs,
    labels) (labels unused), ``model(inputs)`` logits [B, C] (or an output with ``.logits``)."""
    device = _device_of(model, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with eval_mode(model), torch.inference_mode():
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            with autocast(device):
                out = model(inputs)
            logp = F.log_softmax(getattr(out, "logits", out).float(), dim=-1)  # [B, C]
            total += -(logp.exp() * logp).sum().double()
            count += logp.shape[0]
    return float(total.item()) / count if count else float("nan")


# metrics on predictions (NumPy, float64)

def _np(x: Any, dtype=None) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


def _pair(a: Any, b: Any, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    a, b = _np(a, dtype), _np(b, dtype)
    if a.shape != b.shape:
        raise ValueError(f"predictions and targets differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("no predictions to score")
    return a, b


def accuracy(pred, target) -> float:
    """Fraction of exact matches."""
    pred, target = _pair(pred, target)
    return float(np.mean(pred == target))


def f1_score(pred, target) -> float:
    """Binary F1 of the positive class 1: 2TP / (2TP + FP + FN); 0.0 when there is no positive at all."""
    pred, target = _pair(pred, target)
    p, t = pred == 1, target == 1
    denom = float(p.sum() + t.sum())  # 2 TP + FP + FN
    return 2 * float(np.sum(p & t)) / denom if denom else 0.0


def matthews_corrcoef(pred, target) -> float:
    """Matthews correlation (Gorodkin 2004's multi-class form): (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)), c
    correct, s total, t/p per-class true/predicted counts; 0.0 for a zero denominator, as scikit-learn."""
    pred, target = _pair(pred, target)
    classes, idx = np.unique(np.concatenate([pred, target]), return_inverse=True)
    pi, ti = idx[:pred.size], idx[pred.size:]
    p, t = (np.bincount(i, minlength=classes.size).astype(np.float64) for i in (pi, ti))
    c, s = float(np.sum(pi == ti)), float(pred.size)
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom > 0 else 0.0


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either input is constant (as SciPy)."""
    x, y = _pair(x, y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(np.clip((x @ y) / denom, -1.0, 1.0)) if denom > 0 else float("nan")


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (SciPy's ``rankdata(method="average")``)."""
    _, inverse, counts = np.unique(_np(x), return_inverse=True, return_counts=True)
    last = np.cumsum(counts).astype(np.float64)  # rank of the last copy of each distinct value
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks (ties handled)."""
    x, y = _pair(x, y, np.float64)
    return pearson(rankdata(x), rankdata(y))

