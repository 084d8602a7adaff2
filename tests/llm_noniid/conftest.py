"""Fixtures of the llm_noniid tests: tiny random causal LM folders of every architecture, in the format
``save_pretrained`` writes, with a byte-level BPE tokenizer beside the weights."""
from __future__ import annotations

import pytest

from common.text import load_tokenizer

VOCAB = 320
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=64)


def _config(arch: str, vocab: int):
    import transformers as T

    ids = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "gpt2":
        return T.GPT2Config(n_positions=64, n_embd=32, n_layer=1, n_head=2, **ids)
    if arch == "llama":
        return T.LlamaConfig(num_key_value_heads=2, **SMALL, **ids)
    if arch == "qwen2":
        return T.Qwen2Config(num_key_value_heads=2, **SMALL, **ids)
    if arch == "mistral":
        return T.MistralConfig(num_key_value_heads=2, sliding_window=None, **SMALL, **ids)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(**SMALL, **ids)
    if arch == "opt":
        return T.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                           max_position_embeddings=64, word_embed_proj_dim=32, **ids)
    if arch == "bert":  # a bidirectional encoder: AutoModelForCausalLM loads it, but it is not causal
        return T.BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=64, pad_token_id=0)
    raise AssertionError(arch)


def make_tiny_folder(tmp_path, arch: str, vocab: int = VOCAB):
    """A random ``arch`` causal LM saved with save_pretrained, with a byte-level BPE tokenizer beside it."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    text = tmp_path / "text.txt"
    text.write_text("the market rose as the team won the match and the new chip shipped\n" * 50)
    tok = load_tokenizer("bpe", train_files=[text], vocab_size=VOCAB, cache_dir=tmp_path / "tok")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch, vocab))
    folder = tmp_path / f"tiny-{arch}"
    hf_logging.disable_progress_bar()  # its bars on stderr are not the script's output
    try:
        model.save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()
    tok.save_pretrained(folder)
    return folder



@pytest.fixture
def tiny_folder(tmp_path):
    """``tiny_folder(arch, vocab=320)`` -> the folder of a random ``arch`` causal LM under tmp_path."""
    return lambda arch, vocab=VOCAB: make_tiny_folder(tmp_path, arch, vocab)
