"""The masked-LM stage of the tiny model: it lowers the held-out masked-LM loss, is cached by its settings
and reused (not retrained) by later runs, and its encoder is what the fine-tuned model starts from."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from common import cli
from lora_glue_fl import glue_tasks, main_glue_lora, mlm, modeling


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(tokenizer, texts): 300 embedded SST-2-like sentences and a 600-token BPE trained on them."""
    texts = glue_tasks.load_glue("sst2", "synthetic")["train"].subset(range(300))
    ns = type("A", (), {"tokenizer": "bpe", "model_size": "tiny", "model_name_or_path": None, "cache_dir": None,
                        "tokenizer_vocab_size": 600})()
    tok = modeling.build_tokenizer(ns, texts, tmp_path_factory.mktemp("tok"))
    return tok, texts


def test_masking_follows_roberta(corpus):
    tok, texts = corpus
    data = modeling.encode(tok, texts, 32)
    gen = torch.Generator().manual_seed(0)
    inputs, targets = mlm.mask_tokens(data.input_ids, data.lengths, tok, gen)
    scored = targets != -100
    frac = scored.sum() / (data.input_ids != tok.pad_token_id).sum()
    assert 0.08 < float(frac) < 0.16                      # 15 % of the non-special tokens
    assert torch.equal(targets[scored], data.input_ids[scored])
    ids = data.input_ids
    special = (ids == tok.bos_token_id) | (ids == tok.eos_token_id) | (ids == tok.pad_token_id)
    assert not (scored & special).any()
    masked = (inputs == tok.mask_token_id) & scored
    assert 0.7 < float(masked.sum() / scored.sum()) < 0.9  # 80 % of them replaced by <mask>
    assert torch.equal(inputs[~scored], data.input_ids[~scored])


def test_pretraining_lowers_the_loss_and_is_cached(corpus, tmp_path, monkeypatch):
    tok, texts = corpus
    kw = dict(max_seq_length=24, steps=16, lr=1e-2, batch_size=16, seed=0)
    path = mlm.pretrained_base(tok, texts, tmp_path, **kw)
    rec = json.loads((path / "mlm.json").read_text())
    assert rec["held_out_loss_before"] > rec["chance_loss"] - 1.0     # a random model is near chance
    assert rec["held_out_loss_after"] < rec["held_out_loss_before"] - 0.5
    assert rec["train_loss_last"] < rec["train_loss_first"]

    def fail(*a, **k):
        raise AssertionError("the cached base was retrained")
    monkeypatch.setattr(mlm, "pretrain", fail)
    assert mlm.pretrained_base(tok, texts, tmp_path, **kw) == path        # same settings: reused
    with pytest.raises(AssertionError, match="retrained"):                # other settings: a new base
        mlm.pretrained_base(tok, texts, tmp_path, **{**kw, "steps": 17})


def test_script_fine_tunes_the_cached_base(tmp_path):
    """main_glue_lora --quick --pretrain_mlm_steps: the run's base model is the cached encoder (+ a new head),
    and a pretrained roberta refuses the flag."""
    argv = ["--quick", "--quiet", "--task_name", "sst2", "--pretrain_mlm_steps", "3", "--pretrain_mlm_batch_size",
            "8", "--out-dir", str(tmp_path)]
    summary = main_glue_lora.main(argv + ["--run-name", "a", "--seed", "1"])
    assert summary["method"] == "central_lora" and 0.0 <= summary["final"]["accuracy"] <= 1.0
    bases = [p for p in (tmp_path / "mlm_cache").iterdir() if p.is_dir()]
    assert len(bases) == 1 and json.loads((bases[0] / "mlm.json").read_text())["steps"] == 3
    cached = load_file(bases[0] / "model.safetensors")
    run_base = load_file(tmp_path / "a" / "base_model" / "model.safetensors")
    for name in ("roberta.embeddings.word_embeddings.weight", "roberta.encoder.layer.1.attention.self.query.weight"):
        assert torch.equal(cached[name], run_base[name])
    with pytest.raises(cli.UsageError, match="tiny model"):
        modeling.build_model(type("A", (), {"pretrain_mlm_steps": 5, "model_name_or_path": "/nonexistent",
                                            "model_size": "base"})(), None, 2, 0)
