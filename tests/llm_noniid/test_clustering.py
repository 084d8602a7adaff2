"""Client clustering: the distance / linkage / silhouette pieces against scipy, planted client groups recovered
by the data-aware method and by IFCA through the real train.py, resume of a clustered run bit for bit, and
equal local steps whatever the client sizes."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from clicases import LLM_SMOKE, the_run

from common import clustering as C
from common.checkpoint import load_checkpoint
from llm_noniid import train

WORDS = {1: "apple banana cherry grape lemon mango melon peach pear plum".split(),
         2: "rocket orbit comet planet galaxy nebula quasar meteor lunar solar".split()}


def planted(n_clients=6, vocab=50, seed=0):
    """Token distributions of clients drawn from two planted groups with different vocabularies."""
    rng = np.random.default_rng(seed)
    base = [rng.dirichlet(np.ones(vocab) * 0.3) for _ in range(2)]
    truth = np.arange(n_clients) % 2
    dists = np.stack([rng.dirichlet(200 * base[t] + 1e-3) for t in truth])
    return dists, truth


def test_hellinger_agglomerative_and_silhouette_match_scipy():
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist, squareform

    dists, _ = planted(9, seed=1)
    d = C.hellinger_distances(dists)
    ref = squareform(pdist(np.sqrt(dists), "euclidean")) / np.sqrt(2)
    np.testing.assert_allclose(d, ref, atol=1e-12)
    for k in (2, 3, 4):
        ours = C.agglomerative(d, k)
        theirs = fcluster(linkage(squareform(d, checks=False), "average"), k, "maxclust")
        # the same partition (labels may be numbered differently)
        assert len({(a, b) for a, b in zip(ours, theirs)}) == k
    labels = C.agglomerative(d, 2)
    a_b = []
    for i in range(len(labels)):
        same = (labels == labels[i]) & (np.arange(len(labels)) != i)
        a, b = d[i, same].mean(), d[i, labels != labels[i]].mean()
        a_b.append((b - a) / max(a, b))
    assert C.silhouette(d, labels) == pytest.approx(np.mean(a_b))


def test_data_clusters_recover_planted_groups_and_do_not_split_iid_clients():
    dists, truth = planted(8)
    labels, info = C.data_clusters(dists, 0)  # number chosen by silhouette
    assert labels.max() + 1 == 2 and C.purity(labels, truth) == 1.0 and info["silhouette"] > 0.5
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(50))
    iid = np.stack([rng.multinomial(5000, p) / 5000 for _ in range(8)])  # one distribution, sampling noise
    labels, info = C.data_clusters(iid, 0)
    assert labels.max() == 0 and info["silhouette"] is None or info["silhouette"] < C.MIN_SILHOUETTE


def test_farthest_first_picks_the_worst_served_client():
    loss = np.array([[1.0, 5.0], [4.0, 0.5], [3.0, 2.0]])
    assert C.farthest_first(loss, [0]) == 2  # best losses 1, 0.5, 2 -> client 2


@pytest.fixture(scope="module")
def two_topic_data(tmp_path_factory):
    """AG News CSVs (the original layout) with two topics of disjoint vocabulary."""
    root = tmp_path_factory.mktemp("two_topics")
    rng = np.random.default_rng(0)
    for name, n in (("train.csv", 320), ("test.csv", 60)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL)
            for i in range(n):
                cls = 1 + i % 2
                words = rng.choice(WORDS[cls], size=(2, 12))
                w.writerow([cls, " ".join(words[0][:4]), " ".join(words[1])])
    return root


def clustered(out, data_dir, *extra):
    return train.main(["--quick", *LLM_SMOKE, "--quiet", "--data", "ag_news", "--data-dir", str(data_dir),
                       "--max-train-examples", "0", "--num-clients", "4", "--partition", "topic_skew",
                       "--alpha", "0.001", "--bpe-vocab-size", "300", "--client-holdout", "0.2",
                       "--out-dir", str(out), *extra])


@pytest.mark.parametrize("method", [["--clustering", "data"], ["--clustering", "data", "--cluster-features",
                                                                 "topics"],
                                    ["--clustering", "ifca", "--num-clusters", "2"]])
def test_clustering_recovers_planted_client_groups(two_topic_data, tmp_path, method):
    s = clustered(tmp_path, two_topic_data, *method, "--num-rounds", "2", "--local-steps", "4")
    dominant = s["dominant_topic"]
    assert sorted(set(dominant)) == [0, 1] and s["num_clusters"] == 2
    assert s["cluster_purity"] == 1.0, (s["clusters"], dominant)
    assert s["final_personal_val_ppl"] is not None and s["personal_unigram_ppl"] is not None


def test_resume_reproduces_a_clustered_run_exactly(two_topic_data, tmp_path):
    flags = ["--clustering", "ifca", "--num-clusters", "2", "--participation-rate", "0.5", "--algorithm",
             "scaffold", "--local-steps", "3", "--run-name", "r"]
    clustered(tmp_path / "full", two_topic_data, *flags, "--num-rounds", "4")
    clustered(tmp_path / "part", two_topic_data, *flags, "--num-rounds", "2")
    clustered(tmp_path / "part", two_topic_data, *flags, "--num-rounds", "4", "--resume", "--extend")
    read = lambda p: [json.loads(x) for x in (p / "r" / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    full, part = read(tmp_path / "full"), read(tmp_path / "part")
    assert len(full) == len(part) == 4
    for x, y in zip(full, part):
        for key in ("participants", "clusters", "train_loss", "val_loss", "personal_val_loss", "client_divergence"):
            assert x.get(key) == y.get(key), key
    ca = load_checkpoint(tmp_path / "full" / "r" / "checkpoint.pt", "llm_noniid/train")
    cb = load_checkpoint(tmp_path / "part" / "r" / "checkpoint.pt", "llm_noniid/train")
    assert ca["assign"] == cb["assign"]
    for u, v in zip([ca["global"], *ca["clusters"]], [cb["global"], *cb["clusters"]]):  # named tensors per cluster
        assert u.keys() == v.keys() and all(torch.equal(u[n], v[n]) for n in u)


def test_local_steps_are_equal_for_unequal_clients(two_topic_data, tmp_path):
    s = clustered(tmp_path, two_topic_data, "--topic-split", "labels", "--alpha", "0.3", "--min-size", "5",
                  "--local-steps", "5", "--num-rounds", "2")
    assert len(set(s["client_sizes"])) > 1  # unequal clients
    rows = [json.loads(x) for x in the_run(tmp_path).joinpath("metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] == 5 * len(r["participants"]) for r in rows)


def test_ifca_compute_counts_the_starting_models_training(two_topic_data, tmp_path):
    """train_tokens includes IFCA's starting models: C clusters x --ifca-init-rounds passes of --local-steps."""
    s = clustered(tmp_path, two_topic_data, "--clustering", "ifca", "--num-clusters", "2", "--num-rounds", "2",
                  "--local-steps", "4")
    init = s["clustering"]["init_tokens"]
    per_step = (s["train_tokens"] - init) / (2 * 4 * 4)  # 2 rounds x 4 clients x 4 local steps
    assert per_step > 0 and init == 2 * 5 * 4 * per_step
