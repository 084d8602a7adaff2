"""Embedded datasets in their real distribution formats, generated offline and deterministically in seconds.

The real readers are exercised on them: WikiText raw files, AG News CSV, GLUE TSV (SST-2, MRPC, STS-B) and
the CIFAR-100 python pickles. ``ensure(kind)`` generates a dataset once into a cache folder and returns it.

Text comes from ``TextSource``: one first-order Markov chain over pseudo-words per topic (AG News's World,
Sports, Business, Sci/Tech), each row a sparse Zipfian distribution (exponent varying by row) over
``branching`` successors plus sentence punctuation. Its entropy rate is exact, so the optimal perplexity is
known: ``exp(H_t)`` per WORD
of topic t, H_t = sum_i pi_t(i) * H(P_t[i, :]) in nats (pi_t the stationary distribution). That is the
unit of a word-level tokenizer, and of a byte-level BPE whose vocabulary holds every pseudo-word (and
" ," / " .") as one token; a tokenizer that splits words reports a lower per-token number. Chain text
starts each article from pi_t, so a model that knows the topic can reach exp(H_t) on the article bodies;
headings and newlines are extra tokens outside the chain. ``write_wikitext`` stores these in meta.json.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import inspect
import json
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from common.cli import UsageError, check
from common.seed import numpy_rng

TOPICS = ("World", "Sports", "Business", "Sci/Tech")
FORMAT_VERSION = 1      # part of every cache key, with a hash of this file
PUNCT = (".", ",")


# ----------------------------------------------------------------------------- text source
class TextSource:
    """Per-topic Markov chains over a shared pseudo-word vocabulary (word ids; 0 = ".", 1 = ",").

    succ, prob: [T, V, branching + 2] successor ids and probabilities of each row (punctuation first).
    pi: [T, V] stationary distributions. entropy_rate: [T] nats per word. Built in well under a second.
    """

    def __init__(self, num_topics: int = 4, vocab_size: int = 1000, branching: int = 12, zipf: float = 1.1,
                 p_end: float = 0.07, p_comma: float = 0.05, seed: int = 0):
        check(vocab_size >= 50 and 2 <= branching < vocab_size // 2,
              f"text source needs vocab_size >= 50 and 2 <= branching < vocab_size/2, got {vocab_size}, "
              f"{branching}")
        self.config = {"num_topics": num_topics, "vocab_size": vocab_size, "branching": branching,
                       "zipf": zipf, "p_end": p_end, "p_comma": p_comma, "seed": seed}
        self.topics = [TOPICS[t] if t < len(TOPICS) else f"Topic{t}" for t in range(num_topics)]
        rng = numpy_rng(seed, "synthetic", "text-source")
        self.words = list(PUNCT) + _pseudo_words(vocab_size - len(PUNCT), rng)
        self.index = {w: i for i, w in enumerate(self.words)}
        T, V, n_fn = num_topics, vocab_size, 40
        # Topic-specific Zipfian base distribution q_t over words (0 on punctuation): the 40 short
        # "function words" are common everywhere, every topic ranks the content words differently.
        q = np.zeros((T, V))
        q[:, 2:2 + n_fn] = 1.0 / np.arange(1, n_fn + 1) ** 0.8
        for t in range(T):
            q[t, rng.permutation(np.arange(2 + n_fn, V))] = 3.0 / np.arange(1, V - 1 - n_fn) ** 1.0
        q /= q.sum(1, keepdims=True)
        # Successors of each row: `branching` distinct draws from q_t (Gumbel top-k), given Zipfian
        # probabilities in draw order, so frequent words tend to be the likely successors.
        top = np.empty((T, V, branching), dtype=np.int64)
        for t in range(T):
            with np.errstate(divide="ignore"):
                keys = np.log(q[t])[None, :] + rng.gumbel(size=(V, V))                   # [V, V]
            cand = np.argpartition(-keys, branching, axis=1)[:, :branching]
            top[t] = np.take_along_axis(cand, np.argsort(-np.take_along_axis(keys, cand, 1), axis=1), 1)
        # Zipf exponents vary by row around `zipf` so rows (and topics) differ in predictability.
        expo = rng.uniform(0.6 * zipf, 1.4 * zipf, size=(T, V, 1))
        zipf_p = 1.0 / np.arange(1, branching + 1) ** expo
        zipf_p /= zipf_p.sum(2, keepdims=True)
        punct = np.broadcast_to(np.array([p_end, p_comma]), (T, V, 2)).copy()
        punct[:, :2] = 0.0                                       # no "." or "," right after punctuation
        self.succ = np.concatenate([np.broadcast_to(np.arange(2), (T, V, 2)), top], axis=2)
        self.prob = np.concatenate([punct, (1.0 - punct.sum(2, keepdims=True)) * zipf_p], axis=2)
        self.cum = np.cumsum(self.prob, axis=2)
        self.cum[..., -1] = 1.0
        self.pi = np.stack([_stationary(self.dense(t)) for t in range(T)])
        with np.errstate(divide="ignore", invalid="ignore"):
            row_h = -np.where(self.prob > 0, self.prob * np.log(self.prob), 0.0).sum(2)      # [T, V]
            uni_h = -np.where(self.pi > 0, self.pi * np.log(self.pi), 0.0).sum(1)             # [T]
        self.entropy_rate = (self.pi * row_h).sum(1)
        self.unigram_entropy = uni_h
        self.top_content = np.argsort(-self.pi[:, 2 + n_fn:], axis=1)[:, :200] + 2 + n_fn   # for titles

    def dense(self, topic: int) -> np.ndarray:
        """[V, V] transition matrix of one topic."""
        V = len(self.words)
        P = np.zeros((V, V))
        np.add.at(P, (np.arange(V)[:, None], self.succ[topic]), self.prob[topic])
        return P

    def sample(self, topics, lengths, rng: np.random.Generator) -> list[np.ndarray]:
        """Word-id sequences, one per (topic, length), each started from the topic's stationary
        distribution; all sequences advance together, one vectorised step per position."""
        topics, lengths = np.asarray(topics, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
        out = np.zeros((len(topics), int(lengths.max(initial=1))), dtype=np.int64)
        pi_cum = np.cumsum(self.pi[topics], axis=1)
        u = rng.random(len(topics))[:, None] * pi_cum[:, -1:]
        state = np.minimum((pi_cum < u).sum(1), len(self.words) - 1)
        for pos in range(out.shape[1]):
            out[:, pos] = state
            cum = self.cum[topics, state]                                           # [B, branching+2]
            choice = np.minimum((cum <= rng.random(len(topics))[:, None]).sum(1), cum.shape[1] - 1)
            state = self.succ[topics, state, choice]
        return [row[:n] for row, n in zip(out, lengths)]

    def nll(self, words, topic: int) -> float:
        """Exact negative log-likelihood in nats of a word sequence (strings or ids) under topic ``topic``,
        the first word scored under the stationary distribution; inf if a transition is impossible."""
        try:
            ids = np.array([w if isinstance(w, (int, np.integer)) else self.index[w] for w in words],
                           dtype=np.int64)
        except KeyError as e:
            raise UsageError(f"word {e.args[0]!r} is not in the source vocabulary") from None
        if len(ids) == 0:
            return 0.0
        rows_s, rows_p = self.succ[topic, ids[:-1]], self.prob[topic, ids[:-1]]
        p = np.where(rows_s == ids[1:, None], rows_p, 0.0).sum(1)
        with np.errstate(divide="ignore"):
            return float(-np.log(self.pi[topic, ids[0]]) - np.log(p).sum())

    def meta(self) -> dict:
        """JSON-ready: config, topics, vocabulary, entropy rates and optimal perplexities."""
        h = self.entropy_rate
        return {"source": self.config, "topics": self.topics, "vocab": self.words,
                "unit": "per word of chain text (word-level tokens; '.' and ',' are words)",
                "entropy_rate_nats": h.tolist(), "optimal_perplexity": np.exp(h).tolist(),
                "optimal_perplexity_mean": float(np.exp(h.mean())),       # the optimum on topic-balanced text
                "unigram_perplexity": np.exp(self.unigram_entropy).tolist()}


def _pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct lowercase pseudo-words: 40 of one syllable (function words) first, then 2-3 syllables."""
    cons, vows = list("bdfghklmnprstvz"), list("aeiou")
    words: list[str] = []
    seen = set()
    while len(words) < n:
        syl = 1 if len(words) < 40 else int(rng.integers(2, 4))
        w = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(syl))
        w += rng.choice(["", "", "n", "r", "s", "l"]) if syl > 1 or rng.random() < 0.5 else ""
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def _stationary(P: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum 1: one linear solve (all rows reach ".", so the recurrent class is unique)."""
    V = len(P)
    A = P.T - np.eye(V)
    A[-1] = 1.0
    b = np.zeros(V)
    b[-1] = 1.0
    pi = np.clip(np.linalg.solve(A, b), 0.0, None)
    return pi / pi.sum()


def _sentences(source: TextSource, ids: np.ndarray) -> list[list[str]]:
    """Split a chain sample after each "." (the last sentence may be unfinished)."""
    words = [source.words[i] for i in ids]
    out, cur = [], []
    for w in words:
        cur.append(w)
        if w == ".":
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def _prose(sentence: list[str]) -> str:
    """English-looking rendering: capitalised first word, punctuation attached ("Tavo kelin, ruma.")."""
    text = " ".join(sentence).replace(" ,", ",").replace(" .", ".").lstrip(",. ")
    return text[:1].upper() + text[1:]


def _title(source: TextSource, topic: int, n: int, rng: np.random.Generator) -> str:
    picks = rng.choice(source.top_content[topic], n, replace=False)     # frequent content words of the topic
    return " ".join(source.words[i].capitalize() for i in picks)


@functools.lru_cache(maxsize=4)
def default_source(**config) -> TextSource:
    """The shared ``TextSource`` (built once per process and configuration)."""
    return TextSource(**config)


# ----------------------------------------------------------------------------- WikiText raw
def write_wikitext(out_dir, n_train: int = 240, n_valid: int = 24, n_test: int = 24,
                   words_per_article: int = 400, seed: int = 0, source: TextSource | None = None) -> Path:
    """wiki.{train,valid,test}.raw in the raw WikiText layout, one topic per article (topics balanced),
    plus meta.json (source entropy rates, optimal perplexity, vocabulary, each article's topic).

    Article lengths are uniform in [words/2, 3*words/2] chain words; the chain runs on across paragraphs.
    """
    source = source or default_source()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = source.meta()
    meta["article_topics"], meta["chain_words"] = {}, {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        rng = numpy_rng(seed, "wikitext", split)
        topics = rng.permutation(np.arange(n) % len(source.topics))
        lengths = rng.integers(words_per_article // 2, 3 * words_per_article // 2 + 1, size=n)
        lines = []
        for topic, ids in zip(topics, source.sample(topics, lengths, rng)):
            lines += [" ", f" = {_title(source, topic, int(rng.integers(1, 4)), rng)} = ", " "]
            sents, para = _sentences(source, ids), []
            for i, sent in enumerate(sents):
                para += sent
                if len(para) >= rng.integers(40, 120) or i == len(sents) - 1:
                    lines.append(" " + " ".join(para) + " ")
                    para = []
                    if i < len(sents) - 1 and rng.random() < 0.25:       # a section heading now and then
                        heading = _title(source, topic, int(rng.integers(1, 3)), rng)
                        lines += [" ", f" = = {heading} = = ", " "]
        (out / f"wiki.{split}.raw").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta["article_topics"][split] = topics.tolist()
        meta["chain_words"][split] = int(lengths.sum())
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


# ----------------------------------------------------------------------------- AG News CSV
def write_ag_news(out_dir, n_train: int = 2000, n_test: int = 400, seed: int = 0,
                  source: TextSource | None = None) -> Path:
    """train.csv / test.csv exactly as AG News ships them ("class","title","description", every field
    quoted, "" inside fields, no header, classes 1..4 balanced) and classes.txt.

    Descriptions vary in style so length / formality / complexity scores spread: 1-5 sentences, an
    agency prefix ("AP - ") or not, informal endings ("!", " ..."), quoted phrases, "\\" joins as in
    the real files.
    """
    source = source or default_source()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rng = numpy_rng(seed, "ag_news", split)
        topics = rng.permutation(np.arange(n) % 4)
        n_sent = rng.integers(1, 6, size=n)
        chains = source.sample(topics, n_sent * 18 + 8, rng)
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
            for topic, k, ids in zip(topics, n_sent, chains):
                sents = [_prose(s) for s in _sentences(source, ids)[:k] if len(s) > 2]
                sents = sents or [_prose([source.words[i] for i in ids])]
                style = rng.random(4)
                if style[1] < 0.2:
                    sents[-1] = sents[-1].rstrip(".") + rng.choice(["!", " ..."])
                if style[2] < 0.1:
                    words = sents[0].split()
                    cut = max(1, len(words) // 2)
                    sents[0] = " ".join(words[:cut]) + ' "' + " ".join(words[cut:]) + '"'
                desc = ("\\" if style[3] < 0.08 else " ").join(sents)
                if style[0] < 0.4:
                    desc = rng.choice(["AP", "Reuters", "AFP", "SPACE.com", "Sports Network"]) + " - " + desc
                writer.writerow([int(topic) + 1, _title(source, topic, int(rng.integers(3, 10)), rng), desc])
    (out / "classes.txt").write_text("\n".join(TOPICS) + "\n")
    return out


# ----------------------------------------------------------------------------- GLUE TSV
GLUE_TASKS = ("sst2", "mrpc", "stsb")
_POSITIVE = ("good", "great", "charming", "moving", "funny", "brilliant", "touching", "wonderful", "smart",
             "beautiful", "engaging", "fresh", "witty", "delightful", "gripping", "tender")
_NEGATIVE = ("bad", "dull", "boring", "tedious", "flat", "awful", "clumsy", "stale", "lifeless",
             "predictable", "mediocre", "tiresome", "bland", "shallow", "messy", "pointless")


def _sst2_row(words: list[str], rng: np.random.Generator, noise: float) -> tuple[str, int]:
    """Chain filler words with 1-3 sentiment words (each agreeing with the sentence's polarity with
    probability 0.9), some negated ("not dull"); the label is the sign of the summed polarity (ties go
    to the sentence's polarity), flipped with probability ``noise``."""
    words = [w for w in words if w != "."]
    score, polarity = 0.0, rng.random() < 0.5
    for _ in range(int(rng.integers(1, 4))):
        positive = polarity if rng.random() < 0.9 else not polarity
        word = str(rng.choice(_POSITIVE if positive else _NEGATIVE))
        negated = rng.random() < 0.15
        score += (1 if positive else -1) * (-1 if negated else 1)
        pos = int(rng.integers(len(words) + 1))
        words[pos:pos] = ["not", word] if negated else [word]
    label = int(score > 0 or (score == 0 and polarity))
    if rng.random() < noise:
        label = 1 - label
    words = [w for i, w in enumerate(words) if w != "," or 0 < i < len(words) - 1 and words[i + 1] != ","]
    return " ".join(words + (["."] if rng.random() < 0.4 else [])) + " ", label


def _edit(source: TextSource, words: list[str], frac: float, rng: np.random.Generator) -> list[str]:
    """Replace a fraction ``frac`` of the content words by random content words."""
    out = list(words)
    content = [i for i, w in enumerate(out) if w not in PUNCT]
    for i in rng.choice(content, round(frac * len(content)), replace=False) if content else []:
        out[i] = source.words[int(rng.integers(42, len(source.words)))]
    return out


def _pair(words: list[str]) -> list[str]:
    """A chain sample as one sentence: inner full stops dropped, one at the end."""
    words = [w for w in words if w != "."]
    while words and words[-1] == ",":
        words.pop()
    return words + ["."]


def _paraphrase(source: TextSource, words: list[str], rng: np.random.Generator) -> list[str]:
    """Light edits: swap two clauses at a comma, change 0-15% of the words, drop one word."""
    body = words[:-1]
    if "," in body and rng.random() < 0.5:
        i = body.index(",")
        body = body[i + 1:] + [","] + body[:i]
    body = _edit(source, body, rng.uniform(0, 0.15), rng)
    if len(body) > 6 and rng.random() < 0.5:
        del body[int(rng.integers(len(body)))]
    return body + ["."]


def write_glue(out_dir, task: str, n_train: int = 2000, n_dev: int = 300, n_test: int = 300, seed: int = 0,
               noise: float = 0.1, source: TextSource | None = None) -> Path:
    """train.tsv / dev.tsv / test.tsv in the real GLUE layout of ``task``:

    sst2: ``sentence\\tlabel`` (test ``index\\tsentence``), label from sentiment words (``noise`` flipped);
    mrpc: UTF-8 BOM + ``Quality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String`` (test: ``index`` first, no BOM),
    label 1 (about 2/3 of pairs) when sentence 2 is a light edit of sentence 1, 0 when 35-75% of its
    words differ, ``noise`` flipped; strings may hold unbalanced quotes as the real file does;
    stsb: ``index genre filename year old_index source1 source2 sentence1 sentence2 score``
    (test without score), score = 5 * (1 - fraction of words replaced) + N(0, 0.5), clipped to [0, 5].
    """
    check(task in GLUE_TASKS, f"GLUE task {task!r} is not generated; expected one of {', '.join(GLUE_TASKS)}")
    source = source or default_source()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rng = numpy_rng(seed, "glue", task, split)
        test = split == "test"
        lengths = rng.integers(4, 20, size=n) if task == "sst2" else rng.integers(10, 30, size=n)
        samples = source.sample(rng.integers(0, 4, size=n), lengths, rng)
        chains = [[source.words[j] for j in c] for c in samples]
        rows = []
        for i, chain in enumerate(chains):
            if task == "sst2":
                sent, label = _sst2_row(chain, rng, noise)
                rows.append([str(i), sent.rstrip()] if test else [sent, str(label)])
                continue
            s1 = _pair(chain)
            if task == "mrpc":
                label = int(rng.random() < 0.67)
                if label:
                    s2 = _paraphrase(source, s1, rng)
                else:
                    s2 = _edit(source, s1, rng.uniform(0.35, 0.75), rng)
                label = 1 - label if rng.random() < noise else label
                a, b = _prose(s1), _prose(s2)
                if rng.random() < 0.03:
                    b = '"' + b                    # unbalanced quote: readers must use quoting=QUOTE_NONE
                ids = [str(x) for x in rng.integers(100000, 3500000, size=2)]
                rows.append([str(i), *ids, a, b] if test else [str(label), *ids, a, b])
            else:
                frac = rng.random()
                s2 = _edit(source, s1, frac, rng)
                score = float(np.clip(5.0 * (1.0 - frac) + rng.normal(0, 0.5), 0.0, 5.0))
                genre, filename = [("main-captions", "MSRvid"), ("main-news", "headlines"),
                                   ("main-forums", "deft-forum")][int(rng.integers(3))]
                row = [str(i), genre, filename, "2012test", f"{i:04d}", "none", "none",
                       _prose(s1), _prose(s2)]
                rows.append(row if test else row + [f"{score:.3f}"])
        header = {"sst2": ["index", "sentence"] if test else ["sentence", "label"],
                  "mrpc": ["index" if test else "Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                  "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                           "sentence1", "sentence2"] + ([] if test else ["score"])}[task]
        bom = "\ufeff" if task == "mrpc" and not test else ""
        text = bom + "\n".join("\t".join(r) for r in [header, *rows]) + "\n"
        (out / f"{split}.tsv").write_text(text, encoding="utf-8")
    return out


# ----------------------------------------------------------------------------- CIFAR-100 pickles
_CIFAR_COARSE = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
CIFAR100_COARSE_NAMES = sorted(_CIFAR_COARSE)
CIFAR100_FINE_NAMES = sorted(w for ws in _CIFAR_COARSE.values() for w in ws.split())
CIFAR100_FINE_TO_COARSE = [  # fine label id -> coarse label id
    next(c for c, g in enumerate(CIFAR100_COARSE_NAMES) if f in _CIFAR_COARSE[g].split())
    for f in CIFAR100_FINE_NAMES]


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as the real CIFAR pickles hold them, so a reader
    gets b"data" keys with ``encoding="bytes"`` and "data" keys with ``encoding="latin1"``."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _cifar_templates(rng: np.random.Generator) -> np.ndarray:
    """[100, 3, 32, 32] float32 class templates: a colour shared within the superclass, a smooth random
    field (4x4 upsampled) and oriented stripes of class-specific frequency."""
    coarse_rgb = rng.uniform(50, 205, size=(20, 3))
    rgb = coarse_rgb[CIFAR100_FINE_TO_COARSE] + rng.normal(0, 15, size=(100, 3))
    field = np.kron(rng.normal(0, 22, size=(100, 3, 4, 4)), np.ones((8, 8)))
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    theta, freq = rng.uniform(0, np.pi, 100), rng.uniform(1, 4, 100)
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    phase = 2 * np.pi * freq[:, None, None] * (c * xx + s * yy)
    stripes = 18 * np.sin(phase)[:, None] * rng.choice([-1, 1], size=(100, 3))[:, :, None, None]
    return (rgb[:, :, None, None] + field + stripes).astype(np.float32)


def _cifar_images(templates: np.ndarray, fine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, 3072]: templates flipped at random, contrast-scaled, shifted and noised (float32 math)."""
    n = len(fine)
    imgs = templates[fine]                                                            # [n, 3, 32, 32]
    flip = rng.random(n) < 0.5                                      # horizontal flips, as in photos
    imgs[flip] = imgs[flip, :, :, ::-1]
    mean = imgs.mean(axis=(1, 2, 3), keepdims=True)
    imgs = mean + rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32) * (imgs - mean)        # contrast
    shift = rng.integers(-4, 5, size=(n, 2))                        # cyclic shifts of up to 4 pixels
    iy = (np.arange(32)[None] - shift[:, :1]) % 32                                    # [n, 32]
    ix = (np.arange(32)[None] - shift[:, 1:]) % 32
    imgs = imgs[np.arange(n)[:, None, None, None], np.arange(3)[None, :, None, None],
                iy[:, None, :, None], ix[:, None, None, :]]
    imgs += rng.normal(0, 20, (n, 1, 1, 1)).astype(np.float32)                          # brightness
    imgs += 50 * rng.standard_normal((n, 3, 32, 32), dtype=np.float32)                  # pixel noise
    return np.clip(np.rint(imgs), 0, 255).astype(np.uint8).reshape(n, 3072)


def write_cifar100(out_dir, n_train_per_class: int = 20, n_test_per_class: int = 5, seed: int = 0) -> Path:
    """``out_dir/cifar-100-python/{train,test,meta}`` as the real pickles: dicts with b"data" (uint8
    [N, 3072], channel-major R, G, B planes of 32x32), b"fine_labels", b"coarse_labels", b"filenames",
    b"batch_label"; meta with b"fine_label_names", b"coarse_label_names" (the real names and superclasses).

    Image = its class template, flipped at random, contrast-scaled, shifted by up to 4 pixels, with a
    brightness offset and N(0, 50) pixel noise:
    learnable (a nearest class mean beats the 1% chance level by far), not trivially separable.
    Returns ``out_dir`` (what torchvision's ``CIFAR100(root)`` expects as root).
    """
    out = Path(out_dir)
    folder = out / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    templates = _cifar_templates(numpy_rng(seed, "cifar100", "templates"))
    for split, per_class, label in (("train", n_train_per_class, b"training batch 1 of 1"),
                                    ("test", n_test_per_class, b"testing batch 1 of 1")):
        rng = numpy_rng(seed, "cifar100", split)
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        data = np.empty((len(fine), 3072), dtype=np.uint8)
        for lo in range(0, len(fine), 2048):                 # chunks keep the float copies small
            data[lo:lo + 2048] = _cifar_images(templates, fine[lo:lo + 2048], rng)
        names = [f"{CIFAR100_FINE_NAMES[f]}_s_{rng.integers(1000000):06d}.png".encode() for f in fine]
        obj = {b"filenames": names, b"batch_label": label, b"fine_labels": fine.tolist(),
               b"coarse_labels": [CIFAR100_FINE_TO_COARSE[f] for f in fine], b"data": data}
        with open(folder / split, "wb") as f:
            _Py2Pickler(f, protocol=2).dump(obj)
    with open(folder / "meta", "wb") as f:
        _Py2Pickler(f, protocol=2).dump({b"fine_label_names": [n.encode() for n in CIFAR100_FINE_NAMES],
                                         b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES]})
    return out


# ----------------------------------------------------------------------------- cache
KINDS = {"wikitext": write_wikitext, "ag_news": write_ag_news, "cifar100": write_cifar100,
         **{f"glue-{t}": functools.partial(write_glue, task=t) for t in GLUE_TASKS}}


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Hash of this file: an edited generator never serves data cached by an older one."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def default_root() -> Path:
    """$FEDLAB_DATA, else ~/.cache/fedlab/synthetic."""
    return Path(os.environ.get("FEDLAB_DATA") or Path.home() / ".cache" / "fedlab" / "synthetic")


def ensure(kind: str, root=None, **params) -> Path:
    """Generate ``kind`` once into ``root/<kind>-<hash of params and format version>`` and return that folder.

    kinds: wikitext (wiki.*.raw), ag_news (train/test.csv), glue-sst2 / glue-mrpc / glue-stsb (*.tsv),
    cifar100 (the folder holding cifar-100-python/). ``params`` go to the writer (sizes, seed).
    The data are written into a temporary sibling folder and renamed into place, so concurrent
    processes never see a half-written dataset; the loser of a race discards its copy.
    """
    check(kind in KINDS, f"synthetic dataset {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    try:
        inspect.signature(KINDS[kind]).bind("dir", **params)
    except TypeError as e:
        raise UsageError(f"synthetic dataset {kind!r}: bad parameters {sorted(params)} ({e})") from None
    key = json.dumps({"kind": kind, "version": FORMAT_VERSION, "code": _code_digest(), **params},
                     sort_keys=True, default=str)
    root = Path(root) if root is not None else default_root()
    final = root / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (final / ".complete").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{kind}-tmp-"))
    try:
        KINDS[kind](tmp, **params)
        (tmp / ".complete").write_text(key + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / ".complete").is_file():     # a stale partial folder, not a finished rival copy
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
