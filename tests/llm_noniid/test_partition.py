"""Each partition gives its promised statistic (on token ids drawn from a Zipf law, no tokenizer needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.cli import UsageError
from llm_noniid import data as D
from llm_noniid.partition import frequency_bands, partition, statistics, token_counts

N, T, V, K = 600, 16, 300, 5


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, V + 1) ** 1.1
    ids = torch.as_tensor(rng.choice(V, size=(N, T), p=p / p.sum()), dtype=torch.long)
    lens = rng.integers(4, T + 1, N)
    labels = ids.clone()
    for i, n in enumerate(lens):
        labels[i, n:] = -100
    topics = rng.integers(0, 4, N)
    return ids.masked_fill(labels < 0, 0), labels, topics


def split(kind, corpus, **kw):
    _, labels, topics = corpus
    return partition(kind, labels_lm=labels, topics=topics, num_clients=K, seed=0, vocab_size=V, **kw)


def test_iid_is_a_partition_of_everything(corpus):
    c = split("iid", corpus)
    allidx = np.sort(np.concatenate(c.shards))
    assert np.array_equal(allidx, np.arange(N))
    assert max(map(len, c.shards)) - min(map(len, c.shards)) <= 1


def test_dirichlet_small_alpha_concentrates_each_label(corpus):
    ids, labels, topics = corpus
    skew = split("topic_skew", corpus, alpha=0.01, min_size=1, topic_split="labels")
    iid = split("iid", corpus)
    def top_share(c):
        hist = np.stack([np.bincount(topics[s], minlength=4) for s in c.shards])  # [K, 4]
        return (hist.max(0) / hist.sum(0)).mean()   # share of each label held by its biggest client
    assert top_share(skew) > 0.9
    assert top_share(iid) < 0.4
    st = statistics(skew, ids, labels, topics, 4, V)
    assert st["mean_classes_per_client"] < 2.0


def test_topic_mix_split_is_equal_sized_and_nearly_pure(corpus):
    ids, labels, topics = corpus
    skew = split("topic_skew", corpus, alpha=0.01)  # the default: client-wise mixes, equal sizes
    sizes = [len(s) for s in skew.shards]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == N
    dominant = [np.bincount(topics[s], minlength=4).max() / len(s) for s in skew.shards]
    assert np.mean(dominant) > 0.75


@pytest.mark.parametrize("seed", range(10))
def test_failure_grid_topic_split_valid_for_every_seed(seed):
    # the failure grid's split: 4 AG News topics, 10 clients, alpha 0.01 (the label-wise split is refused here)
    topics = np.random.default_rng(seed).integers(0, 4, 6840)
    labels = torch.zeros(6840, 4, dtype=torch.long)
    c = partition("topic_skew", labels_lm=labels, topics=topics, num_clients=10, seed=seed, vocab_size=V,
                  alpha=0.01)
    assert min(len(s) for s in c.shards) == 684


def test_label_wise_split_points_to_the_mix_split_when_impossible():
    topics = np.random.default_rng(0).integers(0, 4, 2000)
    with pytest.raises(UsageError, match="--topic-split mix"):
        partition("topic_skew", labels_lm=torch.zeros(2000, 4, dtype=torch.long), topics=topics, num_clients=40,
                  seed=0, vocab_size=V, alpha=0.001, min_size=2, topic_split="labels")


def test_style_skew_sorts_clients_by_score(corpus):
    texts = [" ".join(["word"] * (i % 37 + 1)) for i in range(N)]
    scores = D.style_scores(texts, "length")
    c = split("style_skew", corpus, style=scores)
    means = [scores[s].mean() for s in c.shards]
    assert means == sorted(means) and len(set(means)) == K


def test_style_scores_rank_as_documented():
    formal = "The committee approved the comprehensive infrastructure legislation yesterday."
    casual = "lol i can't believe you did that!! we're gonna win ok?"
    f = D.style_scores([formal, casual], "formality")
    assert f[0] > f[1]
    long_sentence = ("Comprehensive institutional reorganization necessitates extraordinary "
                     "administrative coordination across international organizations.")
    cx = D.style_scores(["The cat sat.", long_sentence], "complexity")
    assert cx[1] > cx[0] + 5
    for texts in (["x"], []):  # refused before any text is scored, so also for none
        with pytest.raises(UsageError, match="--style-criterion 'loudness' is unknown; expected length, formality"):
            D.style_scores(texts, "loudness")


def test_frequency_skew_moves_clients_toward_their_band(corpus):
    ids, labels, _ = corpus
    c = split("token_skew", corpus, token_skew="frequency")
    band = frequency_bands(token_counts(labels, V), K)
    counts = token_counts(labels, V).numpy()
    corpus_share = np.bincount(band, weights=counts, minlength=K) / counts.sum()
    assert np.allclose(corpus_share, 1 / K, atol=0.12)  # equal-mass bands
    for k in range(K):
        _, y = c.client_tensors(k, ids, labels)
        v = y[y != -100].numpy()
        own = np.bincount(band[v], minlength=K) / len(v)
        assert own[k] > corpus_share[k] * 1.2, (k, own, corpus_share)  # over-represents its own band
        assert own.argmax() == k


def test_frequency_bands_are_ordered_by_count():
    counts = torch.tensor([100, 1, 50, 0, 10, 5])
    band = frequency_bands(counts, 2)
    assert band[0] == 0 and band[1] == 1 and band[3] == 1  # most frequent first; unseen in the last band


def test_truncation_skew_gives_each_client_its_maximum_length(corpus):
    ids, labels, _ = corpus
    c = split("token_skew", corpus, token_skew="truncation")
    assert c.max_len == [round(T * (k + 1) / K) for k in range(K)]
    maxima = []
    for k in range(K):
        _, y = c.client_tensors(k, ids, labels)
        maxima.append(int(D.lengths(y).max()))
        assert (y[:, c.max_len[k]:] == -100).all()
    assert maxima == sorted(maxima) and len(set(maxima)) == K


def test_vocabulary_skew_gives_disjoint_leaning_vocabularies(corpus):
    ids, labels, topics = corpus
    voc = statistics(split("token_skew", corpus, token_skew="vocabulary"), ids, labels, topics, 4, V)
    iid = statistics(split("iid", corpus), ids, labels, topics, 4, V)
    assert voc["mean_vocab_jaccard"] == 0.0
    assert iid["mean_vocab_jaccard"] > 0.5
    assert all(p["tokens"] > 0 for p in voc["clients"])


def test_unknown_partition_and_bad_alpha(corpus):
    with pytest.raises(UsageError, match="--partition"):
        split("label_flip", corpus)
    with pytest.raises(UsageError, match="--alpha"):
        split("topic_skew", corpus, alpha=0.0)
    with pytest.raises(UsageError, match="--token-skew"):
        split("token_skew", corpus, token_skew="emoji")
