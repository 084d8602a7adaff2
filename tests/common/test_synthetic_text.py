"""The embedded text source (exact entropy rate and likelihood) and the WikiText raw / AG News CSV files
written from it: real layouts (checked against the real samples), determinism, learnability."""
from __future__ import annotations

import csv
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common import synthetic_text as T
from common.cli import UsageError

HEADING = re.compile(r"^ = [^=].* = $")     # an article title line of raw WikiText


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


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# --------------------------------------------------------------------------- text source
def test_source_entropy_rate_matches_a_direct_computation():
    src = T.default_source()
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
    src = T.default_source()
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
def test_wikitext_raw_layout(synthetic_data):
    folder = synthetic_data["wikitext"]
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


def test_wikitext_bigram_near_optimum_and_far_below_unigram(synthetic_data):
    folder = synthetic_data["wikitext"]
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
    a = T.write_wikitext(tmp_path / "a", n_train=8, n_valid=4, n_test=4, seed=3)
    b = T.write_wikitext(tmp_path / "b", n_train=8, n_valid=4, n_test=4, seed=3)
    c = T.write_wikitext(tmp_path / "c", n_train=8, n_valid=4, n_test=4, seed=4)
    for name in ("wiki.train.raw", "wiki.test.raw", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "wiki.train.raw").read_bytes() != (c / "wiki.train.raw").read_bytes()


# --------------------------------------------------------------------------- AG News
def test_ag_news_csv_format(synthetic_data):
    folder = synthetic_data["ag_news"]
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


def test_ag_news_matches_the_real_csv(synthetic_data, shared_data):
    real = shared_data / "ag_news_csv"
    assert (synthetic_data["ag_news"] / "classes.txt").read_bytes() == (real / "classes.txt").read_bytes()
    for path in (synthetic_data["ag_news"] / "test.csv", real / "test.csv"):
        lines = path.read_text(encoding="utf-8").split("\n")
        assert all(re.match(r'^"[1-4]","', l) for l in lines[:-1]) and lines[-1] == ""
        with open(path, newline="", encoding="utf-8") as f:
            assert all(len(r) == 3 and r[0] in "1234" for r in csv.reader(f))


def test_ag_news_is_learnable(synthetic_data):
    def load(split):
        with open(synthetic_data["ag_news"] / f"{split}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return [words(r[1] + " " + r[2]) for r in rows], [r[0] for r in rows]
    accuracy = naive_bayes_accuracy(*load("train"), *load("test"))
    assert accuracy > 0.85                                                # chance: 0.25
