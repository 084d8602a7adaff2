"""common.evaluate: evaluation loops against per-token Python references, metrics against hand-computed values."""
from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from common import evaluate as ev


class TinyLM(nn.Module):
    """Bigram LM: logits [B, T, V_out] from the current token; V_out > vocab pads the vocabulary."""

    def __init__(self, vocab: int = 11, dim: int = 8, out: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, out or vocab)
        self.seen_inference_mode = []

    def forward(self, input_ids, attention_mask=None):
        self.seen_inference_mode.append(torch.is_inference_mode_enabled())
        return SimpleNamespace(logits=self.head(self.drop(self.emb(input_ids))))


def lm_batches(vocab=11, seed=0):
    """Batches of different sizes and lengths, with -100 labels, so token weighting matters."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b, t in [(3, 7), (1, 5), (2, 9)]:
        ids = torch.randint(0, vocab, (b, t), generator=g)
        labels = ids.clone()
        labels[0, -2:] = -100  # a padded tail
        out.append({"input_ids": ids, "labels": labels})
    return out


def reference_nll(model, batches, vocab_size=None):
    """Per-token Python loop: position t predicts labels[t + 1]. -> (total nll, tokens, total entropy)."""
    nll, tokens, ent = 0.0, 0, 0.0
    with torch.no_grad():
        for batch in batches:
            logits = model(batch["input_ids"]).logits
            if vocab_size:
                logits = logits[..., :vocab_size]
            for b in range(logits.shape[0]):
                for t in range(logits.shape[1] - 1):
                    y = int(batch["labels"][b, t + 1])
                    if y == -100:
                        continue
                    logp = torch.log_softmax(logits[b, t].double(), -1)
                    nll -= float(logp[y])
                    ent -= float((logp.exp() * logp).sum())
                    tokens += 1
    return nll, tokens, ent


def test_perplexity_matches_token_loop_and_is_token_weighted():
    torch.manual_seed(0)
    model = TinyLM()
    batches = lm_batches()
    nll, tokens, _ = reference_nll(model, batches)
    model.seen_inference_mode.clear()
    out = ev.perplexity(model, batches)
    assert model.seen_inference_mode and all(model.seen_inference_mode)
    assert out["tokens"] == tokens == (3 * 6 - 2) + (1 * 4 - 2) + (2 * 8 - 2)
    assert out["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    per_batch = [ev.perplexity(model, [b])["loss"] for b in batches]
    assert abs(np.mean(per_batch) - out["loss"]) > 1e-4  # the naive batch mean would differ


def test_chunked_scoring_gives_the_same_numbers(monkeypatch):
    torch.manual_seed(6)
    model = TinyLM()
    batches = lm_batches()
    nll, tokens, ent = reference_nll(model, batches)
    monkeypatch.setattr(ev, "CHUNK_ROWS", 5)  # 16 + 2 + 14 scored rows split into uneven chunks
    assert ev.perplexity(model, batches)["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert ev.mean_entropy(model, batches) == pytest.approx(ent / tokens, rel=1e-5)


def test_perplexity_of_empty_and_diverged_models():
    model = TinyLM()
    all_ignored = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": torch.full((1, 4), -100)}
    out = ev.perplexity(model, [all_ignored])
    assert out["tokens"] == 0 and math.isnan(out["loss"]) and math.isnan(out["ppl"])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.arange(11.0) * 1e4)  # every label but 10 is ~1e4 nats away
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert ev.perplexity(model, [ids])["ppl"] == math.inf


def test_perplexity_batch_forms_and_custom_forward():
    torch.manual_seed(1)
    model = TinyLM()
    ids = torch.randint(0, 11, (2, 6))
    as_dict = ev.perplexity(model, [{"input_ids": ids, "labels": ids}])
    as_tuple = ev.perplexity(model, [(ids, ids)])
    as_tensor = ev.perplexity(model, [ids])
    via_forward = ev.perplexity(model, [{"input_ids": ids}], forward=lambda m, inp: m(inp["input_ids"]).logits)
    for other in (as_tuple, as_tensor, via_forward):
        assert other == pytest.approx(as_dict)
    # attention_mask == 0 positions are not scored when labels come from input_ids
    mask = torch.ones_like(ids)
    mask[:, -2:] = 0
    masked = ev.perplexity(model, [{"input_ids": ids, "attention_mask": mask}])
    assert masked["tokens"] == 2 * 3


def test_uniform_model_has_perplexity_vocab_and_entropy_log_vocab_over_real_vocab():
    vocab, padded = 7, 16
    model = TinyLM(vocab=vocab, out=padded)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[vocab:] = 30.0  # padded entries would dominate if they were counted
    batches = lm_batches(vocab)
    out = ev.perplexity(model, batches, vocab_size=vocab)
    assert out["ppl"] == pytest.approx(vocab, rel=1e-6)
    assert ev.mean_entropy(model, batches, vocab_size=vocab) == pytest.approx(math.log(vocab), rel=1e-6)
    # without vocab_size the 9 equal padded logits take all the mass
    assert ev.mean_entropy(model, batches) == pytest.approx(math.log(padded - vocab), rel=1e-6)


def test_mean_entropy_matches_reference_on_scored_positions():
    torch.manual_seed(2)
    model = TinyLM(out=13)
    batches = lm_batches()
    _, tokens, ent = reference_nll(model, batches, vocab_size=11)
    assert ev.mean_entropy(model, batches, vocab_size=11) == pytest.approx(ent / tokens, rel=1e-5)


def test_eval_restores_each_module_mode_and_disables_dropout():
    torch.manual_seed(3)
    model = TinyLM(dropout=0.5)
    model.train()
    model.head.eval()  # a mixed state must come back exactly
    batches = lm_batches()
    first = ev.perplexity(model, batches)
    assert first == ev.perplexity(model, batches)  # dropout off: deterministic
    assert model.training and model.drop.training and not model.head.training
    ev.mean_entropy(model, batches)
    assert model.training and model.drop.training and not model.head.training


def test_evaluation_restores_mode_after_an_exception():
    model = TinyLM()
    model.train()

    def broken(m, inputs):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        ev.perplexity(model, lm_batches(), forward=broken)
    assert model.training


def test_autocast_is_bf16_on_cuda_only(monkeypatch):
    with ev.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with warnings.catch_warnings():  # without CUDA torch warns that the context will be disabled
        warnings.simplefilter("ignore", UserWarning)
        ctx = ev.autocast(torch.device("cuda", 0))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
    monkeypatch.setenv("FEDLAB_PRECISION", "float32")              # CUDA kept in float32: no autocast at all
    assert not isinstance(ev.autocast(torch.device("cuda", 0)), torch.autocast)


# ----------------------------------------------------------------------------------------------------------
# metrics on known values

def test_accuracy_and_binary_f1_known_values():
    assert ev.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert ev.accuracy(torch.tensor([2, 2]), np.array([2, 2])) == 1.0
    # tp=2, fp=1, fn=1 -> 2*2 / (2*2 + 1 + 1)
    assert ev.f1_score([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(4 / 6)
    assert ev.f1_score([0, 0, 0], [0, 0, 0]) == 0.0
    assert ev.f1_score([1, 1, 1], [0, 0, 0]) == 0.0
    assert ev.f1_score([0, 1], [0, 1]) == 1.0
    with pytest.raises(ValueError):
        ev.accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        ev.accuracy([], [])


def test_matthews_known_values():
    # tp=2, tn=1, fp=1, fn=1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert ev.matthews_corrcoef([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(1 / 6)
    assert ev.matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert ev.matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)
    assert ev.matthews_corrcoef([1, 1, 1, 1], [0, 1, 1, 0]) == 0.0  # constant prediction
    # three classes: c=3, s=4, t=[1,2,1], p=[1,1,2] -> (12 - 5) / sqrt((16 - 6) * (16 - 6)) = 0.7
    assert ev.matthews_corrcoef([0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx(0.7)


def test_matthews_general_form_equals_binary_formula_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, t = rng.integers(0, 2, 30), rng.integers(0, 2, 30)
        tp, tn = np.sum((p == 1) & (t == 1)), np.sum((p == 0) & (t == 0))
        fp, fn = np.sum((p == 1) & (t == 0)), np.sum((p == 0) & (t == 1))
        denom = math.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
        expected = (tp * tn - fp * fn) / denom if denom else 0.0
        assert ev.matthews_corrcoef(p, t) == pytest.approx(expected, abs=1e-12)


def test_pearson_and_spearman_known_values():
    # dx=[-2,-1,0,1,2], dy=[-2,0,1,0,1]: 6 / sqrt(10 * 6)
    assert ev.pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(6 / math.sqrt(60))
    assert ev.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(ev.pearson([1, 1, 1], [1, 2, 3]))
    # ties: ranks x=[1, 2.5, 2.5, 4], y=[1, 3, 2, 4] -> 4.5 / sqrt(4.5 * 5)
    assert ev.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    np.testing.assert_array_equal(ev.rankdata([10, 20, 20, 30, 20]), [1, 3, 3, 5, 3])
    x = np.linspace(0.1, 3, 17)
    assert ev.spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, nonlinear
    assert ev.pearson(x, np.exp(x)) < 0.99


def _naive_ranks(x):
    """Average ranks by counting: rank = #smaller + (#equal + 1) / 2."""
    return np.array([np.sum(x < v) + (np.sum(x == v) + 1) / 2 for v in x])


def test_spearman_against_naive_ranks_and_scipy_if_present():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, 40).astype(float)  # many ties
    y = x + rng.normal(0, 2, 40)
    np.testing.assert_allclose(ev.rankdata(x), _naive_ranks(x))
    rx, ry = _naive_ranks(x), _naive_ranks(y)
    expected = np.corrcoef(rx, ry)[0, 1]
    assert ev.spearman(x, y) == pytest.approx(expected, rel=1e-12)
    assert ev.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    try:
        from scipy import stats
    except ImportError:
        return
    assert ev.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-10)


def test_unigram_reference_against_hand_counts():
    train = torch.tensor([[0, 1, 1, 2], [2, 2, -100, -100]])   # counts 1, 2, 3, 0 over a vocabulary of 4
    valid = torch.tensor([[3, 1, 2, 0], [1, 2, -100, -100]])   # scored targets: 1, 2, 0 and 2 (t >= 1)
    ref = ev.unigram_perplexity(train, valid, vocab_size=4)     # add-one: p = (2, 3, 4, 1) / 10
    p = {0: 0.2, 1: 0.3, 2: 0.4}
    loss = -(math.log(p[1]) + math.log(p[2]) + math.log(p[0]) + math.log(p[2])) / 4
    assert ref["tokens"] == 4 and ref["uniform_ppl"] == 4.0
    assert ref["unigram_loss"] == pytest.approx(loss) and ref["unigram_ppl"] == pytest.approx(math.exp(loss))
