"""GLUE TSV files: the layouts GLUE distributes (checked against the real samples), learnable but noisy
labels, unknown tasks refused."""
from __future__ import annotations

import csv
import itertools
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common import synthetic_glue as G
from common.cli import UsageError


def read_tsv(path: Path) -> list[list[str]]:
    """As the GLUE readers do: tab-separated, no quoting, BOM stripped when present."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def unigrams_bigrams(text: str) -> list[str]:
    ws = text.split()
    return ws + [a + "_" + b for a, b in itertools.pairwise(ws)]


def logistic_accuracy(train_docs, train_y, test_docs, test_y, steps: int = 100) -> float:
    """Binary logistic regression on counts of features seen 3+ times, full-batch gradient descent, L2."""
    counts = Counter(f for d in train_docs for f in d)
    index = {f: i for i, f in enumerate(sorted(f for f, c in counts.items() if c >= 3))}   # keeps it small
    def matrix(docs):
        x = np.zeros((len(docs), len(index)), dtype=np.float32)
        for r, doc in enumerate(docs):
            for f in doc:
                if f in index:
                    x[r, index[f]] += 1
        return x
    x, y, xt = matrix(train_docs), np.array(train_y, np.float32), matrix(test_docs)
    w, b = np.zeros(x.shape[1], dtype=np.float32), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w -= 0.5 * (x.T @ (p - y) / len(y) + 1e-3 * w)
        b -= 0.5 * (p - y).mean()
    return float((((xt @ w + b) > 0) == np.array(test_y)).mean())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


GLUE_HEADERS = {  # (train/dev header, test header, BOM on train/dev) as GLUE distributes them
    "sst2": (["sentence", "label"], ["index", "sentence"], False),
    "mrpc": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], True),
    "stsb": (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
              "sentence2", "score"],
             ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
              "sentence2"],
             False),
}


@pytest.mark.parametrize("task", sorted(GLUE_HEADERS))
def test_glue_tsv_layout(synthetic_data, task):
    head, test_head, bom = GLUE_HEADERS[task]
    for split in ("train", "dev", "test"):
        path = synthetic_data[f"glue-{task}"] / f"{split}.tsv"
        rows = read_tsv(path)
        expected = test_head if split == "test" else head
        assert rows[0] == expected and {len(r) for r in rows} == {len(expected)}
        assert (path.read_bytes()[:3] == b"\xef\xbb\xbf") == (bom and split != "test")
    assert len(read_tsv(synthetic_data[f"glue-{task}"] / "train.tsv")) == 2001
    if task == "sst2":                          # sentences end with a space before the tab, as in SST-2
        dev = read_tsv(synthetic_data["glue-sst2"] / "dev.tsv")[1:]
        assert all(r[0].endswith(" ") and r[1] in ("0", "1") for r in dev)


def test_glue_layout_is_the_real_one(shared_data):
    for task, real in (("sst2", "glue_sst2"), ("mrpc", "glue_mrpc")):
        head, test_head, bom = GLUE_HEADERS[task]
        for split in ("train", "dev", "test"):
            path = shared_data / real / f"{split}.tsv"
            assert read_tsv(path)[0] == (test_head if split == "test" else head)
            assert (path.read_bytes()[:3] == b"\xef\xbb\xbf") == (bom and split != "test")


def test_glue_labels_are_learnable_but_noisy(synthetic_data):
    sst = {s: read_tsv(synthetic_data["glue-sst2"] / f"{s}.tsv")[1:] for s in ("train", "dev")}
    acc = logistic_accuracy([unigrams_bigrams(r[0]) for r in sst["train"]], [int(r[1]) for r in sst["train"]],
                            [unigrams_bigrams(r[0]) for r in sst["dev"]], [int(r[1]) for r in sst["dev"]])
    assert 0.75 < acc < 0.95                                              # learnable; 10% label noise

    def jaccard(a, b):
        a, b = set(words(a)), set(words(b))
        return len(a & b) / len(a | b)
    mrpc = {s: read_tsv(synthetic_data["glue-mrpc"] / f"{s}.tsv")[1:] for s in ("train", "dev")}
    feats = {s: (np.array([jaccard(r[3], r[4]) for r in rows]), np.array([int(r[0]) for r in rows]))
             for s, rows in mrpc.items()}
    x, y = feats["train"]
    assert 0.55 < y.mean() < 0.75                                         # mostly paraphrases, like MRPC
    best = max(np.linspace(0.1, 0.9, 33), key=lambda th: ((x > th) == y).mean())
    dev_acc = ((feats["dev"][0] > best) == feats["dev"][1]).mean()
    assert 0.75 < dev_acc < 0.97
    assert any(r[4].startswith('"') for r in mrpc["train"])               # unbalanced quotes, as in MRPC

    rows = read_tsv(synthetic_data["glue-stsb"] / "train.tsv")[1:]
    score = np.array([float(r[9]) for r in rows])
    assert all(re.fullmatch(r"\d\.\d{3}", r[9]) for r in rows) and score.min() >= 0 and score.max() <= 5
    sim = np.array([jaccard(r[7], r[8]) for r in rows])
    assert np.corrcoef(sim, score)[0, 1] > 0.7


def test_glue_unknown_task(tmp_path):
    with pytest.raises(UsageError, match="expected one of sst2, mrpc, stsb"):
        G.write_glue(tmp_path, "cola")
