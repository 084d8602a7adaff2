"""Client partitions for llm_noniid (the README's partition table): iid, topic skew, style skew and three token
skews (frequency, truncation, vocabulary), as ``Clients``: the token skews change what each client trains on (a
truncation length or a vocabulary mask), not just which texts it holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from common import shard
from common.cli import UsageError, check
from common.seed import numpy_rng
from llm_noniid.data import IGNORE_INDEX, lengths

PARTITIONS = ("iid", "topic_skew", "style_skew", "token_skew")
TOPIC_SPLITS = ("mix", "labels")
TOKEN_SKEWS = ("frequency", "truncation", "vocabulary")


@dataclass
class Clients:
    """shards[c]: example indices of client c; max_len[c]: truncation length (None: full);
    vocab[c]: bool mask [V] of the tokens client c is trained to predict (None: all)."""
    shards: list[np.ndarray]
    max_len: list[int | None] = field(default_factory=list)
    vocab: list[torch.Tensor | None] = field(default_factory=list)

    def client_tensors(self, c: int, input_ids: torch.Tensor, labels: torch.Tensor):
        """(input_ids [n_c, T], labels [n_c, T]) of client c with its token skew applied."""
        idx = torch.as_tensor(self.shards[c], dtype=torch.long)
        x, y = input_ids[idx].clone(), labels[idx].clone()
        if self.max_len and self.max_len[c] is not None:
            pads = x[labels[idx] == IGNORE_INDEX]  # the pad id in x, or 0 when the rows have no padding
            y[:, self.max_len[c]:] = IGNORE_INDEX
            x[:, self.max_len[c]:] = int(pads[0]) if pads.numel() else 0
        if self.vocab and self.vocab[c] is not None:
            keep = self.vocab[c][y.clamp(min=0)] & (y != IGNORE_INDEX)
            y = torch.where(keep, y, torch.full_like(y, IGNORE_INDEX))
        return x, y


def token_counts(labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Corpus count of every token id over real positions -> [V] int64."""
    return torch.bincount(labels[labels != IGNORE_INDEX], minlength=vocab_size)


def assign_by_affinity(affinity: np.ndarray, seed: int) -> list[np.ndarray]:
    """Balanced greedy assignment: affinity [N, K]; examples in order of their strongest affinity go to
    their best client that still has room (capacity ceil(N / K)). Every example used once."""
    n, k = affinity.shape
    capacity = np.full(k, -(-n // k))
    a = affinity + numpy_rng(seed, "affinity").random((n, k)) * 1e-9  # seeded tie-breaking
    owner = np.empty(n, dtype=np.int64)
    for i in np.argsort(-a.max(axis=1), kind="stable"):
        c = next(j for j in np.argsort(-a[i], kind="stable") if capacity[j] > 0)
        owner[i] = c
        capacity[c] -= 1
    return [np.flatnonzero(owner == c).astype(np.int64) for c in range(k)]


def frequency_bands(counts: torch.Tensor, num_bands: int) -> np.ndarray:
    """Band of every token id [V]: ranks by count cut into ``num_bands`` bands of equal token mass
    (band 0 = most frequent); unseen tokens get the last band."""
    counts = counts.double().numpy()
    order = np.argsort(-counts, kind="stable")
    before = (np.cumsum(counts[order]) - counts[order]) / max(counts.sum(), 1.0)  # mass ranked above the token
    band = np.minimum((before * num_bands).astype(np.int64), num_bands - 1)[np.argsort(order)]  # back to id order
    band[counts == 0] = num_bands - 1
    return band


def _group_shares(labels: torch.Tensor, group_of_token: np.ndarray, k: int) -> np.ndarray:
    """Share of each example's real tokens in each token group -> [N, K]."""
    g = torch.as_tensor(group_of_token, dtype=torch.long)
    valid = labels != IGNORE_INDEX
    onehot = torch.nn.functional.one_hot(g[labels.clamp(min=0)], k).double() * valid.unsqueeze(-1)
    return (onehot.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)).numpy()


def partition(kind: str, *, labels_lm: torch.Tensor, topics: np.ndarray, num_clients: int, seed: int,
              vocab_size: int, alpha: float = 0.5, min_size: int = 2, style: np.ndarray | None = None,
              token_skew: str = "frequency", topic_split: str = "mix") -> Clients:
    """Split the training examples (labels_lm [N, T] LM labels; topics [N] topic labels) over clients. topic_skew
    ``"mix"``: equal client sizes, each client's topic mix ~ Dir(alpha) (skew not confounded with size or local
    steps); ``"labels"``: each topic split over the clients ~ Dir(alpha), redrawn until every client has
    ``min_size`` examples (Flower's ``DirichletPartitioner``; impossible at tiny alpha with more clients than
    topics)."""
    n, k = labels_lm.shape[0], num_clients
    check(n >= k, f"{n} training examples cannot be split over {k} clients")
    if kind == "iid":
        return Clients(shard.iid(n, k, seed))
    if kind == "topic_skew":
        check(alpha > 0, f"--alpha must be > 0, got {alpha}")
        if topic_split == "mix":
            return Clients(shard.dirichlet_mix(topics, k, alpha, seed))
        check(topic_split == "labels", f"--topic-split {topic_split!r} is unknown; expected mix or labels")
        try:
            return Clients(shard.dirichlet(topics, k, alpha, seed, min_size=min(min_size, n // k)))
        except UsageError as e:
            raise UsageError(f"{e}; or use --topic-split mix (equal client sizes, valid for every seed)") from None
    if kind == "style_skew":
        check(style is not None, "style_skew needs style scores")
        return Clients(shard.sorted_blocks(style, k))
    check(kind == "token_skew", f"--partition {kind!r} is unknown; expected one of {', '.join(PARTITIONS)}")
    counts = token_counts(labels_lm, vocab_size)
    if token_skew == "frequency":
        band = frequency_bands(counts, k)
        share = _group_shares(labels_lm, band, k)
        corpus_share = np.bincount(band, weights=counts.double().numpy(), minlength=k) / max(int(counts.sum()), 1)
        return Clients(assign_by_affinity(share / np.maximum(corpus_share, 1e-12), seed))
    if token_skew == "truncation":
        max_len = [max(2, round(labels_lm.shape[1] * (c + 1) / k)) for c in range(k)]  # 1/k .. all of seq_len
        return Clients(shard.iid(n, k, seed), max_len=max_len)
    if token_skew == "vocabulary":
        seen = np.flatnonzero(counts.numpy() > 0)
        order = seen[np.argsort(-counts.numpy()[seen], kind="stable")]
        group = np.full(vocab_size, -1, dtype=np.int64)
        group[order] = np.arange(len(order)) % k  # round robin by rank: subsets of similar mass
        share = _group_shares(labels_lm, np.where(group < 0, 0, group), k)
        return Clients(assign_by_affinity(share, seed), vocab=[torch.as_tensor(group == c) for c in range(k)])
    raise UsageError(f"--token-skew {token_skew!r} is unknown; expected one of {', '.join(TOKEN_SKEWS)}")


def statistics(clients: Clients, input_ids: torch.Tensor, labels_lm: torch.Tensor, topics: np.ndarray,
               num_classes: int, vocab_size: int) -> dict:
    """Per-client statistics for partition.json and the plots: sizes, topic histograms, length
    distribution (trained tokens per example), vocabulary size, and pairwise vocabulary overlap."""
    per, vocab_sets = [], []
    for c in range(len(clients.shards)):
        _, y = clients.client_tensors(c, input_ids, labels_lm)
        ln = lengths(y).numpy()
        hist = np.bincount(topics[clients.shards[c]], minlength=num_classes)
        vocab_sets.append(set(torch.unique(y[y != IGNORE_INDEX]).tolist()))
        per.append({"client": c, "size": len(clients.shards[c]),
                    "label_hist": hist.tolist() if num_classes <= 64 else None,
                    "classes": int((hist > 0).sum()), "tokens": int(ln.sum()),
                    "length_mean": float(ln.mean()) if len(ln) else 0.0,
                    "length_quantiles": np.quantile(ln, [0.1, 0.5, 0.9]).tolist() if len(ln) else [0, 0, 0],
                    "length_max": int(ln.max()) if len(ln) else 0, "vocab_size": len(vocab_sets[-1])})
    jac = [len(a & b) / max(len(a | b), 1) for i, a in enumerate(vocab_sets) for b in vocab_sets[i + 1:]]
    sizes = [p["size"] for p in per]
    return {"clients": per, "num_clients": len(per), "size_min": min(sizes), "size_max": max(sizes),
            "mean_classes_per_client": float(np.mean([p["classes"] for p in per])),
            "mean_vocab_jaccard": float(np.mean(jac)) if jac else 1.0,
            "max_len": clients.max_len or None}
