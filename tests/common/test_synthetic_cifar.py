"""CIFAR-100 pickles: read like the real ones (both pickle encodings, the real label tables), learnable."""
from __future__ import annotations

import pickle
from collections import Counter

import numpy as np

CIFAR100_COARSE_OF_FINE = [  # the published fine -> coarse label table of CIFAR-100
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


def test_cifar100_pickles_read_like_the_real_ones(synthetic_data):
    folder = synthetic_data["cifar100"] / "cifar-100-python"
    with open(folder / "train", "rb") as f:
        train = pickle.load(f, encoding="bytes")
    with open(folder / "meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert set(train) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    x = train[b"data"]
    assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == (2000, 3072)
    assert sorted(Counter(train[b"fine_labels"]).values()) == [20] * 100
    fine, coarse = meta[b"fine_label_names"], meta[b"coarse_label_names"]
    assert len(fine) == 100 and len(coarse) == 20 and fine[0] == b"apple" and fine[-1] == b"worm"
    pairs = {(fine[f], coarse[c]) for f, c in zip(train[b"fine_labels"], train[b"coarse_labels"])}
    fine_to_coarse = dict(zip(train[b"fine_labels"], train[b"coarse_labels"]))
    assert [fine_to_coarse[f] for f in range(100)] == CIFAR100_COARSE_OF_FINE
    assert (b"apple", b"fruit_and_vegetables") in pairs and (b"whale", b"aquatic_mammals") in pairs
    assert len(pairs) == 100
    assert all(isinstance(n, bytes) and n.endswith(b".png") for n in train[b"filenames"])
    with open(folder / "test", "rb") as f:               # torchvision's reader: latin1, str keys
        test = pickle.load(f, encoding="latin1")
    assert test["batch_label"] == "testing batch 1 of 1" and test["data"].shape == (500, 3072)


def test_cifar100_is_learnable_by_nearest_class_mean(synthetic_data):
    folder = synthetic_data["cifar100"] / "cifar-100-python"
    with open(folder / "train", "rb") as f:
        train = pickle.load(f, encoding="bytes")
    with open(folder / "test", "rb") as f:
        test = pickle.load(f, encoding="bytes")
    x, y = train[b"data"].astype(np.float64), np.array(train[b"fine_labels"])
    xt, yt = test[b"data"].astype(np.float64), np.array(test[b"fine_labels"])
    means = np.stack([x[y == c].mean(0) for c in range(100)])
    dist = (xt ** 2).sum(1)[:, None] - 2 * xt @ means.T + (means ** 2).sum(1)[None]
    accuracy = (dist.argmin(1) == yt).mean()
    assert 0.3 < accuracy < 0.95                                          # chance: 0.01; not trivial
