"""Client clustering (llm_noniid: can grouping similar clients fix the failures of one global model?): each
client gets a cluster; ``common.engine`` keeps one model per cluster and runs the algorithm inside each.

* ``data`` (one-shot): each client sends once its token unigrams (``--cluster-features tokens``) or topic
  histogram (``topics``); the server clusters them by average linkage on the Hellinger distance into
  ``--num-clusters`` groups, or (0) the number in 2..min(K-1, 8) with the best silhouette (one cluster below
  ``MIN_SILHOUETTE``).
* ``ifca`` (Ghosh et al. 2020): every round each participant trains the cluster model with the lowest loss on
  a few of its own batches. Identical starts would collapse into one cluster, so they start farthest first:
  a random client's local model (``--ifca-init-rounds`` rounds), then that of the client whose best loss
  under the models so far is the highest. Evaluation: each client's examples by its own cluster's model.
"""
from __future__ import annotations

import numpy as np
import torch

from common.errors import check

METHODS = ("none", "data", "ifca")
FEATURES = ("tokens", "topics")
MIN_SILHOUETTE = 0.25  # below this the best split is not clearly better than none (Kaufman & Rousseeuw: weak)


def token_distribution(labels: torch.Tensor, vocab_size: int) -> np.ndarray:
    """A client's unigram distribution over the tokens it trains on (labels [n, T], -100 ignored) -> [V]."""
    y = labels[labels >= 0].reshape(-1).long().cpu()
    counts = torch.bincount(y, minlength=vocab_size)[:vocab_size].double().numpy()
    return counts / max(counts.sum(), 1.0)


def topic_distribution(topics: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(topics, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def hellinger_distances(dists: np.ndarray) -> np.ndarray:
    """Pairwise Hellinger distances [K, K] between the rows of ``dists`` [K, V] (probability vectors):
    ||sqrt(p) - sqrt(q)|| / sqrt(2), in [0, 1]."""
    r = np.sqrt(np.clip(dists, 0, None))
    return np.stack([np.sqrt(((r - row) ** 2).sum(1) / 2.0) for row in r])  # exact zeros on the diagonal


def agglomerative(dist: np.ndarray, num_clusters: int) -> np.ndarray:
    """Average-linkage agglomerative clustering on a distance matrix [K, K] -> labels [K] in 0..C-1,
    numbered by each cluster's smallest member (deterministic)."""
    k = dist.shape[0]
    check(1 <= num_clusters <= k, f"--num-clusters must be in 1..{k} (the number of clients), got {num_clusters}")
    groups = [[i] for i in range(k)]
    while len(groups) > num_clusters:
        best, pair = np.inf, (0, 1)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                d = dist[np.ix_(groups[a], groups[b])].mean()
                if d < best - 1e-15:
                    best, pair = d, (a, b)
        a, b = pair
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    labels = np.empty(k, dtype=np.int64)
    for g, members in enumerate(sorted(groups, key=min)):
        labels[members] = g
    return labels


def silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987) of ``labels`` on the distance matrix; singletons score 0."""
    k = len(labels)
    scores = np.zeros(k)
    for i in range(k):
        same = (labels == labels[i]) & (np.arange(k) != i)
        if not same.any():
            continue
        a = dist[i, same].mean()
        b = min(dist[i, labels == g].mean() for g in set(labels.tolist()) if g != labels[i])
        scores[i] = (b - a) / max(a, b, 1e-12)
    return float(scores.mean())


def data_clusters(dists: np.ndarray, num_clusters: int) -> tuple[np.ndarray, dict]:
    """Clusters of clients from their data distributions [K, V]; ``num_clusters`` 0 chooses by silhouette.
    Returns (labels [K], info with the distance matrix summary and the silhouette of each candidate)."""
    dist = hellinger_distances(dists)
    k = dist.shape[0]
    info = {"mean_distance": float(dist[np.triu_indices(k, 1)].mean()) if k > 1 else 0.0}
    if num_clusters:
        labels = agglomerative(dist, num_clusters)
        info["silhouette"] = silhouette(dist, labels) if 1 < num_clusters < k else None
        return labels, info
    scores = {c: silhouette(dist, agglomerative(dist, c)) for c in range(2, min(k - 1, 8) + 1)}
    info["silhouette_by_num_clusters"] = {str(c): round(s, 4) for c, s in scores.items()}
    best = max(scores, key=lambda c: (scores[c], -c)) if scores else 1
    if not scores or scores[best] < MIN_SILHOUETTE:
        best = 1
    info["silhouette"] = scores.get(best)
    return agglomerative(dist, best), info


def farthest_first(loss: np.ndarray, chosen: list[int]) -> int:
    """k-means++'s deterministic cousin for IFCA's starting points: the client whose best loss under the
    cluster models built so far is the highest (``loss`` [K, len(chosen)]; ties: lowest index)."""
    best = loss.min(axis=1)
    best[chosen] = -np.inf
    return int(np.argmax(best))


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of clients whose cluster's majority planted group is their own group (1 = groups recovered)."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    return sum(np.bincount(truth[labels == g]).max() for g in set(labels.tolist())) / len(labels)
