"""Embedded datasets: real formats (parsed as the real readers do), determinism, learnability, cache."""
from __future__ import annotations

import csv
import itertools
import json
import pickle
import re
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common import synthetic as S
from common.cli import UsageError

HEADING = re.compile(r"^ = [^=].* = $")     # an article title line of raw WikiText
CIFAR100_COARSE_OF_FINE = [  # the published fine -> coarse label table of CIFAR-100
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Every dataset written once with its default sizes, timed."""
    root = tmp_path_factory.mktemp("synthetic")
    out, seconds = {}, {}
    for kind in S.KINDS:
        t = time.perf_counter()
        out[kind] = S.ensure(kind, root=root)
        seconds[kind] = time.perf_counter() - t
    out["seconds"] = seconds
    return out


def read_tsv(path: Path) -> list[list[str]]:
    """As the GLUE readers do: tab-separated, no quoting, BOM stripped when present."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def wiki_articles(path: Path) -> list[list[str]]:
    """Word lists of each article body (headings and blank lines dropped)."""
    articles = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if HEADING.match(line):
            articles.append([])
        elif line.strip() and not line.startswith(" = "):
            articles[-1].extend(line.split())
    return articles


def naive_bayes_accuracy(train_docs, train_y, test_docs, test_y) -> float:
    """Multinomial naive Bayes on lower-cased word counts (add-one smoothing)."""
    classes = sorted(set(train_y))
    counts = {c: Counter() for c in classes}
    for doc, y in zip(train_docs, train_y):
        counts[y].update(doc)
    vocab = set().union(*counts.values())
    logp = {c: {w: np.log((counts[c][w] + 1) / (sum(counts[c].values()) + len(vocab))) for w in vocab}
            for c in classes}
    pred = [max(classes, key=lambda c: sum(logp[c].get(w, 0.0) for w in doc)) for doc in test_docs]
    return float(np.mean([p == y for p, y in zip(pred, test_y)]))


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


# --------------------------------------------------------------------------- text source
def test_source_entropy_rate_matches_a_direct_computation():
    src = S.default_source()
    for t in range(len(src.topics)):
        P = src.dense(t)
        assert np.allclose(P.sum(1), 1.0)
        pi = np.full(len(P), 1.0 / len(P))
        for _ in range(150):                        # power iteration: an independent route to pi
            pi = pi @ P
        assert np.allclose(pi, src.pi[t], atol=1e-9) and np.allclose(src.pi[t] @ P, src.pi[t], atol=1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.nansum(P * np.log(P), axis=1)
        assert np.isclose(pi @ h, src.entropy_rate[t])
    meta = src.meta()
    assert meta["topics"] == ["World", "Sports", "Business", "Sci/Tech"] and len(meta["vocab"]) == 1000
    assert len(set(meta["vocab"])) == 1000
    for opt, uni in zip(meta["optimal_perplexity"], meta["unigram_perplexity"]):
        assert 4 < opt < 20 and uni > 5 * opt


def test_source_nll_is_exact_and_averages_to_the_entropy_rate():
    src = S.default_source()
    rng = np.random.default_rng(0)
    seqs = src.sample([2] * 20, [2000] * 20, rng)
    P = src.dense(2)
    ids = seqs[0][:50]
    direct = -np.log(src.pi[2, ids[0]]) - sum(np.log(P[a, b]) for a, b in itertools.pairwise(ids))
    assert np.isclose(src.nll([src.words[i] for i in ids], 2), direct)
    per_word = sum(src.nll(s, 2) for s in seqs) / sum(map(len, seqs))
    assert abs(per_word - src.entropy_rate[2]) < 0.03            # 40k words: the law of large numbers
    assert src.nll(seqs[0][:50], 0) > direct + 20                  # the wrong topic explains it far worse
    with pytest.raises(UsageError, match="not in the source vocabulary"):
        src.nll(["definitely-not-a-word"], 0)


# --------------------------------------------------------------------------- WikiText
def test_wikitext_raw_layout(data):
    folder = data["wikitext"]
    meta = json.loads((folder / "meta.json").read_text())
    for split in ("train", "valid", "test"):
        lines = (folder / f"wiki.{split}.raw").read_text(encoding="utf-8").split("\n")
        assert lines[0] == " " and lines[-1] == ""                       # like the real file: " \n" first
        kinds = Counter("blank" if l == " " else "title" if HEADING.match(l) else
                        "section" if re.match(r"^ = = [^=].* = = $", l) else
                        "para" if l.startswith(" ") and l.endswith(" ") and len(l) > 2 else "other"
                        for l in lines[:-1])
        assert kinds["other"] == 0 and kinds["title"] == len(meta["article_topics"][split])
        assert kinds["para"] > kinds["title"] and kinds["section"] > 0
    assert Counter(meta["article_topics"]["train"]) == {t: 60 for t in range(4)}    # topics balanced
    assert (folder / "wiki.train.raw").stat().st_size < 5_000_000


def test_wikitext_reader_finds_articles_in_the_real_file(shared_data):
    real = (shared_data / "wikitext2_raw" / "wiki.test.raw").read_text(encoding="utf-8").split("\n")
    assert real[0] == " " and sum(bool(HEADING.match(l)) for l in real) > 10
    assert all(l == "" or l.startswith(" ") for l in real)           # the layout our files follow


def test_wikitext_bigram_near_optimum_and_far_below_unigram(data):
    folder = data["wikitext"]
    meta = json.loads((folder / "meta.json").read_text())
    vocab = {w: i for i, w in enumerate(meta["vocab"])}
    train, valid = wiki_articles(folder / "wiki.train.raw"), wiki_articles(folder / "wiki.valid.raw")
    assert sum(map(len, train)) == meta["chain_words"]["train"]
    nll = {"uni": 0.0, "bi": 0.0}
    n = 0
    for t in range(4):
        uni, big = np.full(len(vocab), 0.1), np.zeros((len(vocab), len(vocab)))
        for art, topic in zip(train, meta["article_topics"]["train"]):
            if topic == t:
                ids = np.array([vocab[w] for w in art])
                np.add.at(uni, ids, 1)
                np.add.at(big, (ids[:-1], ids[1:]), 1)
        pu = uni / uni.sum()
        for art, topic in zip(valid, meta["article_topics"]["valid"]):
            if topic == t:
                ids = np.array([vocab[w] for w in art])
                rows = big[ids[:-1]]
                total, types = rows.sum(1), (rows > 0).sum(1)
                lam = total / (total + types + 1e-12)                     # Witten-Bell interpolation
                seen = rows[np.arange(len(ids) - 1), ids[1:]] / np.maximum(total, 1)
                p = lam * seen + (1 - lam) * pu[ids[1:]]
                nll["bi"] -= np.log(p).sum()
                nll["uni"] -= np.log(pu[ids[1:]]).sum()
                n += len(ids) - 1
    opt = meta["optimal_perplexity_mean"]
    bigram, unigram = np.exp(nll["bi"] / n), np.exp(nll["uni"] / n)
    assert opt < bigram < 1.6 * opt
    assert unigram > 6 * bigram


def test_wikitext_deterministic(tmp_path):
    a = S.write_wikitext(tmp_path / "a", n_train=8, n_valid=4, n_test=4, seed=3)
    b = S.write_wikitext(tmp_path / "b", n_train=8, n_valid=4, n_test=4, seed=3)
    c = S.write_wikitext(tmp_path / "c", n_train=8, n_valid=4, n_test=4, seed=4)
    for name in ("wiki.train.raw", "wiki.test.raw", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "wiki.train.raw").read_bytes() != (c / "wiki.train.raw").read_bytes()


@pytest.mark.parametrize("kind, params, name", [
    ("ag_news", {"n_train": 40, "n_test": 8}, "train.csv"),
    ("glue-mrpc", {"n_train": 30, "n_dev": 5, "n_test": 5}, "train.tsv"),
    ("glue-stsb", {"n_train": 30, "n_dev": 5, "n_test": 5}, "dev.tsv"),
    ("cifar100", {"n_train_per_class": 1, "n_test_per_class": 1}, "cifar-100-python/train"),
])
def test_every_kind_is_deterministic_for_a_seed(tmp_path, kind, params, name):
    a = S.ensure(kind, root=tmp_path / "a", seed=1, **params) / name
    b = S.ensure(kind, root=tmp_path / "b", seed=1, **params) / name
    c = S.ensure(kind, root=tmp_path / "c", seed=2, **params) / name
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


# --------------------------------------------------------------------------- AG News
def test_ag_news_csv_format(data):
    folder = data["ag_news"]
    assert (folder / "classes.txt").read_text() == "World\nSports\nBusiness\nSci/Tech\n"
    raw = (folder / "train.csv").read_text(encoding="utf-8").split("\n")
    assert all(re.match(r'^"[1-4]","', l) for l in raw[:-1]) and raw[-1] == ""   # every field quoted
    with open(folder / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert all(len(r) == 3 and r[0] in "1234" and r[1] and r[2] for r in rows)
    assert len(rows) == 2000 and Counter(r[0] for r in rows) == {c: 500 for c in "1234"}
    descs = [r[2] for r in rows]
    lengths = np.array([len(d.split()) for d in descs])
    assert lengths.std() > 0.3 * lengths.mean()                          # style: length varies
    assert any(" - " in d[:20] for d in descs) and any(d.endswith("!") for d in descs)
    assert any('"' in d for d in descs) and any("\\" in d for d in descs)


def test_ag_news_matches_the_real_csv(data, shared_data):
    real = shared_data / "ag_news_csv"
    assert (data["ag_news"] / "classes.txt").read_bytes() == (real / "classes.txt").read_bytes()
    for path in (data["ag_news"] / "test.csv", real / "test.csv"):
        lines = path.read_text(encoding="utf-8").split("\n")
        assert all(re.match(r'^"[1-4]","', l) for l in lines[:-1]) and lines[-1] == ""
        with open(path, newline="", encoding="utf-8") as f:
            assert all(len(r) == 3 and r[0] in "1234" for r in csv.reader(f))


def test_ag_news_is_learnable(data):
    def load(split):
        with open(data["ag_news"] / f"{split}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return [words(r[1] + " " + r[2]) for r in rows], [r[0] for r in rows]
    accuracy = naive_bayes_accuracy(*load("train"), *load("test"))
    assert accuracy > 0.85                                                # chance: 0.25


# --------------------------------------------------------------------------- GLUE
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
def test_glue_tsv_layout(data, task):
    head, test_head, bom = GLUE_HEADERS[task]
    for split in ("train", "dev", "test"):
        path = data[f"glue-{task}"] / f"{split}.tsv"
        rows = read_tsv(path)
        expected = test_head if split == "test" else head
        assert rows[0] == expected and {len(r) for r in rows} == {len(expected)}
        assert (path.read_bytes()[:3] == b"\xef\xbb\xbf") == (bom and split != "test")
    assert len(read_tsv(data[f"glue-{task}"] / "train.tsv")) == 2001
    if task == "sst2":                          # sentences end with a space before the tab, as in SST-2
        dev = read_tsv(data["glue-sst2"] / "dev.tsv")[1:]
        assert all(r[0].endswith(" ") and r[1] in ("0", "1") for r in dev)


def test_glue_layout_is_the_real_one(shared_data):
    for task, real in (("sst2", "glue_sst2"), ("mrpc", "glue_mrpc")):
        head, test_head, bom = GLUE_HEADERS[task]
        for split in ("train", "dev", "test"):
            path = shared_data / real / f"{split}.tsv"
            assert read_tsv(path)[0] == (test_head if split == "test" else head)
            assert (path.read_bytes()[:3] == b"\xef\xbb\xbf") == (bom and split != "test")


def test_glue_labels_are_learnable_but_noisy(data):
    sst = {s: read_tsv(data["glue-sst2"] / f"{s}.tsv")[1:] for s in ("train", "dev")}
    acc = logistic_accuracy([unigrams_bigrams(r[0]) for r in sst["train"]], [int(r[1]) for r in sst["train"]],
                            [unigrams_bigrams(r[0]) for r in sst["dev"]], [int(r[1]) for r in sst["dev"]])
    assert 0.75 < acc < 0.95                                              # learnable; 10% label noise

    def jaccard(a, b):
        a, b = set(words(a)), set(words(b))
        return len(a & b) / len(a | b)
    mrpc = {s: read_tsv(data["glue-mrpc"] / f"{s}.tsv")[1:] for s in ("train", "dev")}
    feats = {s: (np.array([jaccard(r[3], r[4]) for r in rows]), np.array([int(r[0]) for r in rows]))
             for s, rows in mrpc.items()}
    x, y = feats["train"]
    assert 0.55 < y.mean() < 0.75                                         # mostly paraphrases, like MRPC
    best = max(np.linspace(0.1, 0.9, 33), key=lambda th: ((x > th) == y).mean())
    dev_acc = ((feats["dev"][0] > best) == feats["dev"][1]).mean()
    assert 0.75 < dev_acc < 0.97
    assert any(r[4].startswith('"') for r in mrpc["train"])               # unbalanced quotes, as in MRPC

    rows = read_tsv(data["glue-stsb"] / "train.tsv")[1:]
    score = np.array([float(r[9]) for r in rows])
    assert all(re.fullmatch(r"\d\.\d{3}", r[9]) for r in rows) and score.min() >= 0 and score.max() <= 5
    sim = np.array([jaccard(r[7], r[8]) for r in rows])
    assert np.corrcoef(sim, score)[0, 1] > 0.7


def test_glue_unknown_task(tmp_path):
    with pytest.raises(UsageError, match="expected one of sst2, mrpc, stsb"):
        S.write_glue(tmp_path, "cola")


# --------------------------------------------------------------------------- CIFAR-100
def test_cifar100_pickles_read_like_the_real_ones(data):
    folder = data["cifar100"] / "cifar-100-python"
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


def test_cifar100_is_learnable_by_nearest_class_mean(data):
    folder = data["cifar100"] / "cifar-100-python"
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


# --------------------------------------------------------------------------- cache
def test_generation_is_fast(data):
    assert max(data["seconds"].values()) < 15.0, data["seconds"]         # 2 shared cores; ~1-2 s alone


def test_ensure_caches_and_keys_by_params(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLAB_DATA", str(tmp_path))
    a = S.ensure("glue-sst2", n_train=20, n_dev=5, n_test=5)
    assert a.parent == tmp_path and (a / "train.tsv").is_file()
    stamp = (a / "train.tsv").stat().st_mtime_ns
    assert S.ensure("glue-sst2", n_train=20, n_dev=5, n_test=5) == a
    assert (a / "train.tsv").stat().st_mtime_ns == stamp                 # not regenerated
    b = S.ensure("glue-sst2", n_train=21, n_dev=5, n_test=5)
    assert b != a and len(read_tsv(b / "train.tsv")) == 22
    with pytest.raises(UsageError, match="unknown"):
        S.ensure("imagenet")
    with pytest.raises(UsageError, match="bad parameters"):
        S.ensure("ag_news", n_rows=3)


def test_ensure_concurrent_callers_get_one_complete_copy(tmp_path):
    results, errors = [], []

    def worker():
        try:
            results.append(S.ensure("ag_news", root=tmp_path, n_train=40, n_test=8))
        except Exception as e:            # noqa: BLE001 -- surfaced below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]      # no temp folders left behind
    with open(results[0] / "train.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 40
