"""The embedded text source and the WikiText raw / AG News CSV files written from it (and, through
``common.synthetic_glue``, the GLUE sentences).

``TextSource``: one first-order Markov chain over pseudo-words per topic (AG News's World, Sports, Business,
Sci/Tech), each row a sparse Zipfian distribution (exponent varying by row) over ``branching`` successors plus
punctuation. Its entropy rate is exact, so the optimal perplexity is known: ``exp(H_t)`` per WORD of topic t,
H_t = sum_i pi_t(i) H(P_t[i, :]) in nats (pi_t stationary): the unit of a word-level tokenizer, or of a BPE
holding every pseudo-word (and " ," / " .") as one token. Articles start from pi_t, so a model that knows the
topic can reach exp(H_t) on their bodies (headings and newlines are extra tokens); ``write_wikitext`` stores
these numbers in meta.json.
"""
from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np

from common.cli import UsageError, check
from common.seed import numpy_rng

TOPICS = ("World", "Sports", "Business", "Sci/Tech")
PUNCT = (".", ",")


# ----------------------------------------------------------------------------- text source
class TextSource:
    """Per-topic Markov chains over a shared pseudo-word vocabulary (word ids; 0 = ".", 1 = ","). succ, prob:
    [T, V, branching + 2] each row's successors and probabilities (punctuation first); pi: [T, V] stationary
    distributions; entropy_rate: [T] nats per word."""

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
        zipf_p = 1.0 / np.arange(1, branching + 1) ** rng.uniform(0.6 * zipf, 1.4 * zipf, size=(T, V, 1))
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
            self.unigram_entropy = -np.where(self.pi > 0, self.pi * np.log(self.pi), 0.0).sum(1)  # [T]
        self.entropy_rate = (self.pi * row_h).sum(1)
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
    words: dict[str, None] = {}  # an insertion-ordered set
    while len(words) < n:
        syl = 1 if len(words) < 40 else int(rng.integers(2, 4))
        w = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(syl))
        w += rng.choice(["", "", "n", "r", "s", "l"]) if syl > 1 or rng.random() < 0.5 else ""
        words[w] = None
    return list(words)


def _stationary(P: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum 1: one linear solve (all rows reach ".", so the recurrent class is unique)."""
    V = len(P)
    A = P.T - np.eye(V)
    A[-1] = 1.0
    pi = np.clip(np.linalg.solve(A, np.eye(V)[-1]), 0.0, None)
    return pi / pi.sum()


def _sentences(source: TextSource, ids: np.ndarray) -> list[list[str]]:
    """Split a chain sample after each "." (the last sentence may be unfinished)."""
    words = [source.words[i] for i in ids]
    ends = [i + 1 for i, w in enumerate(words) if w == "."]
    return [words[a:b] for a, b in zip([0] + ends, ends + [len(words)]) if b > a]


def prose(sentence: list[str]) -> str:
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
    """wiki.{train,valid,test}.raw in the raw WikiText layout, one topic per article (balanced), articles of
    [words/2, 3*words/2] chain words running on across paragraphs; meta.json (``TextSource.meta``, topics)."""
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
                        lines += [" ", f" = = {_title(source, topic, int(rng.integers(1, 3)), rng)} = = ", " "]
        (out / f"wiki.{split}.raw").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta["article_topics"][split] = topics.tolist()
        meta["chain_words"][split] = int(lengths.sum())
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


# ----------------------------------------------------------------------------- AG News CSV
def write_ag_news(out_dir, n_train: int = 2000, n_test: int = 400, seed: int = 0,
                  source: TextSource | None = None) -> Path:
    """train.csv / test.csv as AG News ships them ("class","title","description", all quoted, no header,
    classes 1..4 balanced) and classes.txt. Descriptions vary in style (1-5 sentences, "AP - " prefixes,
    "!" / " ..." endings, quoted phrases, "\\" joins) so length / formality / complexity scores spread.
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
                sents = [prose(s) for s in _sentences(source, ids)[:k] if len(s) > 2]
                sents = sents or [prose([source.words[i] for i in ids])]
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

