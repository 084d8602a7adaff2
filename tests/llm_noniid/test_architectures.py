"""Any causal LM folder fine-tunes with LoRA: a tiny random folder of each architecture with known targets runs
``train.py --quick --model <folder>``, exports its adapter, and ``PeftModel.from_pretrained`` loads it; bad model
folders, mismatched tokenizers and unknown ``--lora-targets`` fail in one line with nothing written."""
from __future__ import annotations

import json

import pytest
from clicases import LLM_SMOKE

from common import export
from common.text import load_tokenizer
from llm_noniid import train
from llm_noniid.model import LORA_TARGETS

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


def tiny_folder(tmp_path, arch: str, vocab: int = VOCAB):
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


@pytest.mark.parametrize("arch", sorted(LORA_TARGETS))
def test_every_architecture_fine_tunes_with_lora_and_exports_its_adapter(arch, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = tiny_folder(tmp_path, arch)
    s = train.main(["--quick", *LLM_SMOKE, "--num-rounds", "2", "--model", str(folder), "--lora-r", "4",
                    "--out-dir", str(tmp_path / "runs"), "--run-name", "r"])
    assert s["status"] == "complete" and s["final_val_ppl"] < s["uniform_ppl"]
    adapter = tmp_path / "runs" / "r" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == set(LORA_TARGETS[arch])  # attention and MLP projections
    base = export.resolve_base(adapter, cfg["base_model_name_or_path"])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    lora = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert lora and {n.split(".lora_A")[0].split(".")[-1] for n in lora} == set(LORA_TARGETS[arch])


def test_lora_targets_flag_overrides_the_architecture(tmp_path):
    folder = tiny_folder(tmp_path, "llama")
    train.main(["--quick", *LLM_SMOKE, "--num-rounds", "1", "--model", str(folder), "--lora-r", "2",
                "--lora-targets", "q_proj", "v_proj", "--out-dir", str(tmp_path / "runs"), "--run-name", "r"])
    cfg = json.loads((tmp_path / "runs" / "r" / "adapter" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "v_proj"}


BAD = {
    "not a causal LM": (dict(arch="bert"), [], "is not a causal LM"),
    "vocabulary mismatch": (dict(arch="gpt2", vocab=256), [], "token embeddings, the tokenizer"),  # 256 bytes + eos
    "targets naming no module": (dict(arch="gpt2"), ["--lora-targets", "q_proj"],
                                 "--lora-targets q_proj name no linear layer"),
    "a folder of tokenizer files only": (None, [], "holds no causal LM"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_folders_fail_in_one_line_and_write_nothing(case, tmp_path, capsys):
    from clicases import one_line_error

    spec, extra, expected = BAD[case]
    folder = tiny_folder(tmp_path, **(spec or dict(arch="gpt2")))
    if spec is None:
        for f in ("config.json", "model.safetensors"):
            (folder / f).unlink()
    line = one_line_error(train.main, ["--quick", *LLM_SMOKE, "--model", str(folder), "--lora-r", "2", *extra,
                                       "--out-dir", str(tmp_path / "runs")], capsys)
    assert expected in line, line
    assert not (tmp_path / "runs").exists()
