"""Client partitioners: each returns ``list[np.ndarray]``, one sorted int64 index array per client.

Deterministic for the ``seed`` (``common.seed.numpy_rng``), vectorised (n = 1e6 well under a second); an
impossible split is a one-line ``UsageError`` naming the setting. No client is ever empty.

=============  ========================================================================  ==========
partitioner    what each client gets                                                      disjoint
=============  ========================================================================  ==========
iid            a random 1/K of the data; sizes within one of each other                   yes
contiguous     the k-th consecutive block (the usual split of one token stream)           yes
pathological   samples of exactly ``nc`` distinct classes; every sample used              yes
dirichlet      per class, proportions over clients ~ Dir(alpha); at least ``min_size``    yes
dirichlet_mix  equal sizes; the client's class mix ~ Dir(alpha) (valid for every seed)    yes
overlap        its own disjoint part plus a pool shared by all clients (``overlap``)       no
category       whole categories, or a slice of one when clients outnumber categories      yes
sorted_blocks  the k-th block of the data sorted by a per-example score (style skew)       yes
=============  ========================================================================  ==========
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from common.errors import UsageError, check
from common.seed import numpy_rng

Shards = list[np.ndarray]


def _sorted_shards(parts) -> Shards:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _check_k(n: int, num_clients: int) -> None:
    check(num_clients >= 1, f"number of clients must be at least 1, got {num_clients}")
    check(n >= num_clients, f"cannot split {n} samples over {num_clients} clients without empty clients; "
                            "use fewer clients or more data")


def _labels(labels, num_clients: int) -> np.ndarray:
    """``labels`` (or categories, scores) as a 1-D array with at least one per client."""
    labels = np.asarray(labels)
    check(labels.ndim == 1, f"labels must be a 1-D array, got shape {labels.shape}")
    _check_k(len(labels), num_clients)
    return labels


def _class_groups(inverse: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> Shards:
    """Each class's indices in random order (one shuffle, then a stable sort by class)."""
    perm = rng.permutation(len(inverse))
    return np.split(perm[np.argsort(inverse[perm], kind="stable")], np.cumsum(counts)[:-1])


def iid(n: int, num_clients: int, seed: int) -> Shards:
    """A random permutation of ``range(n)`` cut into ``num_clients`` parts, sizes within one of each other."""
    _check_k(n, num_clients)
    return _sorted_shards(np.array_split(numpy_rng(seed, "shard", "iid").permutation(n), num_clients))


def contiguous(n: int, num_clients: int) -> Shards:
    """Consecutive blocks in order (sizes within one), as the source split of a token stream."""
    _check_k(n, num_clients)
    return _sorted_shards(np.array_split(np.arange(n), num_clients))


def _class_slots(num_classes: int, num_clients: int, nc: int, rng: np.random.Generator) -> np.ndarray:
    """[num_clients, nc] class ids, distinct within a row, each class in floor or ceil(K*nc/C) rows: consecutive
    random permutations read off nc at a time; where a row straddles two, the classes it already holds move to
    the end of the new permutation (needs nc <= C)."""
    total = num_clients * nc
    seq: list[int] = []
    while len(seq) < total:
        perm = rng.permutation(num_classes).tolist()
        held = set(seq[len(seq) - len(seq) % nc:])  # the part-filled row's classes (none at a row start)
        seq += [c for c in perm if c not in held] + [c for c in perm if c in held]
    return np.asarray(seq[:total], dtype=np.int64).reshape(num_clients, nc)


def pathological(labels: np.ndarray, num_clients: int, nc: int, seed: int) -> Shards:
    """Exactly ``nc`` distinct classes per client, every sample used (McMahan et al.'s skew, made exact): each
    class is held by floor or ceil(K*nc / C) clients and its shuffled samples split near-equally among them.
    Impossible when ``nc > C``, ``K*nc < C`` or a class has fewer samples than the clients holding it."""
    labels = _labels(labels, num_clients)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_cls = len(classes)
    check(1 <= nc <= n_cls, f"classes per client (nc={nc}) must be between 1 and the number of classes "
                            f"({n_cls})")
    check(num_clients * nc >= n_cls, f"num_clients*nc = {num_clients}*{nc} < {n_cls} classes: some class "
                                     "would be unused; raise nc or the number of clients")
    rng = numpy_rng(seed, "shard", "pathological")
    slots = _class_slots(n_cls, num_clients, nc, rng)
    holders = [np.nonzero((slots == c).any(1))[0] for c in range(n_cls)]
    for c, h in enumerate(holders):
        check(counts[c] >= len(h), f"class {classes[c].item()!r} has {counts[c]} samples but must be held by "
                                   f"{len(h)} clients; lower nc or the number of clients")
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, chunk in enumerate(_class_groups(inverse, counts, rng)):
        for client, piece in zip(holders[c], np.array_split(chunk, len(holders[c]))):
            parts[client].append(piece)
    return _sorted_shards(np.concatenate(p) for p in parts)


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 1,
              max_tries: int = 1000) -> Shards:
    """Per class, proportions over clients ~ Dir(alpha·1), redrawn until every client has at least ``min_size``
    samples (Hsu et al. 2019); class c's shuffled indices are cut at ``floor(cumsum(p_c) * n_c)``. A
    ``UsageError`` when ``max_tries`` draws all leave some client short."""
    labels = _labels(labels, num_clients)
    check(alpha > 0, f"dirichlet alpha must be positive, got {alpha}")
    check(min_size >= 0 and min_size * num_clients <= len(labels),
          f"min_size={min_size} for {num_clients} clients needs at least {min_size * num_clients} samples, "
          f"have {len(labels)}")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    need = max(min_size, 1)     # never an empty client, even with min_size=0
    rng = numpy_rng(seed, "shard", "dirichlet")
    for _ in range(max_tries):
        props = rng.dirichlet(np.full(num_clients, float(alpha)), size=len(counts))        # [C, K]
        cuts = np.floor(np.cumsum(props, axis=1) * counts[:, None]).astype(np.int64)       # [C, K]
        cuts[:, -1] = counts                                          # float round-off must not drop samples
        sizes = np.diff(cuts, axis=1, prepend=0)                                         # [C, K]
        if sizes.sum(0).min() >= need:
            break
    else:
        raise UsageError(f"dirichlet split with alpha={alpha} left a client with fewer than min_size={need} "
                         f"samples in {max_tries} tries; raise alpha, lower min_size or use fewer clients")
    groups, bounds = _class_groups(inverse, counts, rng), np.concatenate([np.zeros_like(cuts[:, :1]), cuts], axis=1)
    return _sorted_shards(np.concatenate([g[b[k]:b[k + 1]] for g, b in zip(groups, bounds)])
                          for k in range(num_clients))


def dirichlet_mix(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> Shards:
    """Client-wise Dirichlet with equal sizes: client k's class mix q_k ~ Dir(alpha·1), its floor/ceil(N/K)
    samples drawn from q_k without replacement (Hsu et al. 2019). Valid for every seed and alpha: clients are
    served in random order; a client whose classes are used up draws from the available ones in proportion
    to q_k (where q_k puts no mass there, from the one it prefers most). Every sample is used once."""
    labels = _labels(labels, num_clients)
    check(alpha > 0, f"dirichlet alpha must be positive, got {alpha}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rng = numpy_rng(seed, "shard", "dirichlet_mix")
    mixes = rng.dirichlet(np.full(len(classes), float(alpha)), size=num_clients)          # [K, C]
    sizes = np.full(num_clients, len(labels) // num_clients)
    sizes[:len(labels) % num_clients] += 1
    remaining = counts.astype(np.int64).copy()
    take = np.zeros((num_clients, len(classes)), dtype=np.int64)                          # [K, C]
    for k in rng.permutation(num_clients):
        need, q = int(sizes[k]), mixes[k]
        while need > 0:
            p = np.where(remaining > 0, q, 0.0)
            if p.sum() <= 0:  # q_k's mass sits on used-up classes: its favourite class still available
                p = np.where(remaining > 0, q + 1e-300, -1.0)
                p = (p == p.max()).astype(np.float64)
            draw = np.minimum(rng.multinomial(need, p / p.sum()), remaining)
            take[k] += draw
            remaining -= draw
            need -= int(draw.sum())
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    ends = np.cumsum(take, axis=0)  # [K, C]: client k takes pools[c][ends[k, c] - take[k, c]:ends[k, c]]
    return _sorted_shards(np.concatenate([p[e - t:e] for p, e, t in zip(pools, ends[k], take[k])])
                          for k in range(num_clients))


def overlap_pool_size(n: int, num_clients: int, overlap_ratio: float) -> int:
    """Size m of the shared pool: m / (m + (n - m)/K) = overlap_ratio, i.e. m = r·n / ((1 - r)·K + r)."""
    r = float(overlap_ratio)
    return round(r * n / ((1.0 - r) * num_clients + r))


def overlap(n: int, num_clients: int, overlap_ratio: float, seed: int) -> Shards:
    """Each client holds its own disjoint part plus one random pool of m = ``overlap_pool_size(n, K, r)``
    samples shared by every client; the other n - m are split iid, so the shared fraction of each client's
    data is ``overlap_ratio`` r up to rounding. r = 0 is ``iid``; r = 1 gives every client everything."""
    _check_k(n, num_clients)
    check(0.0 <= overlap_ratio <= 1.0, f"overlap_ratio must be in [0, 1], got {overlap_ratio}")
    m = overlap_pool_size(n, num_clients, overlap_ratio)
    check(overlap_ratio == 1.0 or n - m >= num_clients,
          f"overlap_ratio={overlap_ratio} leaves {n - m} private samples for {num_clients} clients; lower it")
    perm = numpy_rng(seed, "shard", "overlap").permutation(n)  # the pool, then the private parts
    return _sorted_shards(np.concatenate([perm[:m], own]) for own in np.array_split(perm[m:], num_clients))


def category(categories: np.ndarray, num_clients: int, seed: int) -> Shards:
    """Clients grouped by a per-example category (genre, topic, source...). K <= G categories: whole
    categories dealt out largest first, each to the currently smallest client (ties at random). K > G: each
    category gets clients in proportion to its size (largest remainder, between 1 and its size), its
    shuffled samples split evenly among them."""
    categories = _labels(categories, num_clients)
    _, inverse, counts = np.unique(categories, return_inverse=True, return_counts=True)
    rng = numpy_rng(seed, "shard", "category")
    groups = _class_groups(inverse, counts, rng)
    n_cat = len(counts)
    if num_clients <= n_cat:
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        load = np.zeros(num_clients, dtype=np.int64)
        for g in np.lexsort((rng.random(n_cat), -counts)):          # largest first, random among equals
            k = int(np.flatnonzero(load == load.min())[rng.integers((load == load.min()).sum())])
            parts[k].append(groups[g])
            load[k] += counts[g]
        return _sorted_shards(np.concatenate(p) for p in parts)
    share = counts / counts.sum() * num_clients
    alloc = np.clip(np.floor(share).astype(np.int64), 1, counts)
    while alloc.sum() != num_clients:      # largest remainder, respecting 1 <= alloc <= count
        up = alloc.sum() < num_clients
        room = np.flatnonzero(alloc < counts if up else alloc > 1)
        alloc[room[(np.argmax if up else np.argmin)((share - alloc)[room])]] += 1 if up else -1
    return _sorted_shards(piece for g, a in zip(groups, alloc) for piece in np.array_split(g, a))


def document_topics(docs: list[str], num_topics: int, seed: int = 0, max_words: int = 20000) -> np.ndarray:
    """A topic per document, for ``category`` shards of real text: spherical k-means (k-means++ starts from
    ``seed``) on tf-idf vectors over the ``max_words`` most frequent whitespace words (raw frequencies are
    dominated by function words and put nearly every article in one group)."""
    check(1 <= num_topics <= len(docs), f"{num_topics} topics need at least as many documents (got {len(docs)})")
    words = [d.split() for d in docs]
    vocab = Counter(t for w in words for t in w)
    index = {t: i for i, t in enumerate(sorted(vocab, key=lambda t: (-vocab[t], t))[:max_words])}
    x = np.zeros((len(docs), len(index)))
    for i, w in enumerate(words):
        np.add.at(x[i], [index[t] for t in w if t in index], 1.0)
    x = x / np.maximum(x.sum(1, keepdims=True), 1.0) * np.log(len(docs) / np.maximum((x > 0).sum(0), 1))
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = numpy_rng(seed, "shard", "document_topics")
    centres = [int(rng.integers(len(docs)))]
    for _ in range(num_topics - 1):  # k-means++: far documents are likelier starts
        d = np.clip(1 - x @ x[centres].T, 0, None).min(1)
        centres.append(int(rng.choice(len(docs), p=d / d.sum())) if d.sum() > 0 else int(rng.integers(len(docs))))
    c = x[centres]
    for _ in range(100):
        labels = np.argmax(x @ c.T, axis=1)
        new = np.stack([x[labels == g].sum(0) if (labels == g).any() else c[g] for g in range(num_topics)])
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, c):
            break
        c = new
    return labels


def sorted_blocks(scores: np.ndarray, num_clients: int) -> Shards:
    """Consecutive blocks (sizes within one) of the data stably sorted by a per-example score: client 0 gets the
    lowest scores (length, formality or complexity skew)."""
    scores = _labels(scores, num_clients)
    return _sorted_shards(np.array_split(np.argsort(scores, kind="stable"), num_clients))


def manifest_indices(value, where: str) -> np.ndarray:
    """A manifest's ``indices`` as int64, read strictly: strings ("3"), fractions (1.5) and booleans are refused
    in one line naming the first one, not converted as NumPy would."""
    check(isinstance(value, list), f"{where}: 'indices' must be a list of integers, got {type(value).__name__}")
    bad = next((i for i, v in enumerate(value) if type(v) is not int or v < 0), None)
    if bad is not None:
        raise UsageError(f"{where}: 'indices'[{bad}] is {value[bad]!r}; expected non-negative integers "
                         "(row numbers of the training split)")
    check(len(value) > 0, f"{where}: 'indices' is empty; every client needs data")
    check(max(value) < 2**63, f"{where}: index {max(value)} does not fit in 64 bits")
    return np.asarray(value, dtype=np.int64)

