"""Causal LMs with LoRA adapters for llm_noniid: ``--model`` is a short name (``HUB_NAMES``), any hub name or
local folder (from the HF cache; offline and not cached -> one-line error), or ``tiny-gpt2`` (``tiny_gpt2``,
for ``--quick``, the tests and from-scratch runs). LoRA targets follow the architecture (``LORA_TARGETS``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.cli import UsageError

HUB_NAMES = {
    "distilgpt2": "distilgpt2",
    "gpt2": "gpt2",
    "tinyllama": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    "qwen-0.5b": "Qwen/Qwen2.5-0.5B",
}
# per model_type: the linear layers that get adapters (attention and MLP projections)
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def hub_name(model: str) -> str:
    return HUB_NAMES.get(model, model)


def tiny_gpt2(vocab_size: int, seq_len: int, eos_id: int | None) -> nn.Module:
    """A random 2-layer GPT-2 (n_embd 64, n_head 2) with tied embeddings and no dropout (a model this small,
    trained for a few hundred steps, does not overfit; dropout only slowed it down)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_positions=max(seq_len, 8), n_embd=64, n_layer=2, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos_id, eos_token_id=eos_id)
    return GPT2LMHeadModel(cfg)


def load_base(model: str, *, vocab_size: int, seq_len: int, eos_id: int | None, cache_dir: str | None) -> nn.Module:
    """The base causal LM (seeded before the call for ``tiny-gpt2``)."""
    if model == "tiny-gpt2":
        return tiny_gpt2(vocab_size, seq_len, eos_id)
    from transformers import AutoModelForCausalLM

    name = hub_name(model)
    try:
        base = AutoModelForCausalLM.from_pretrained(name, cache_dir=cache_dir)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = "folder" if Path(name).exists() else "hub model"
        raise UsageError(f"{where} {name!r} could not be loaded from the hub or its cache ({first[:160]}); "
                         f"download it once online, give a local folder, or use --model tiny-gpt2") from None
    positions = max_positions(base)
    if positions is not None and seq_len > positions:
        raise UsageError(f"--seq-len {seq_len} exceeds the {positions} positions model {name} was built for; "
                         f"use at most {positions}")
    if base.get_input_embeddings().weight.shape[0] < vocab_size:
        raise UsageError(f"model {name} has {base.get_input_embeddings().weight.shape[0]} token embeddings, "
                         f"the tokenizer {vocab_size}; use the model's own tokenizer (--tokenizer auto)")
    return base


def max_positions(base: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings cover (None: not limited or not known)."""
    cfg = getattr(base, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def max_lora_rank(base: nn.Module, targets: list[str]) -> int:
    """The largest useful LoRA rank: the smallest side of any adapted layer (a rank above it adds parameters
    and compute, never expressiveness: the update B @ A cannot have a higher rank than that side)."""
    widths = [min(m.weight.shape) for name, m in base.named_modules()
              if name.split(".")[-1] in targets and getattr(m, "weight", None) is not None and m.weight.dim() == 2]
    if not widths:
        raise UsageError(f"the model has none of the LoRA target layers {', '.join(targets)}")
    return min(widths)


def add_lora(base: nn.Module, r: int, alpha: float, dropout: float) -> nn.Module:
    """Wrap with LoRA adapters on the architecture's targets (only adapters trainable); r = 0: full
    fine-tuning, every parameter trainable (used to train the tiny model from scratch)."""
    if r == 0:
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    from peft import LoraConfig, get_peft_model

    mtype = getattr(base.config, "model_type", "")
    if mtype not in LORA_TARGETS:
        raise UsageError(f"no LoRA targets known for model type {mtype!r}; known: {', '.join(LORA_TARGETS)}")
    limit = max_lora_rank(base, LORA_TARGETS[mtype])
    if r > limit:  # refused before the adapters are built: a huge rank would otherwise train on for minutes
        raise UsageError(f"--lora-r {r} exceeds the width {limit} of the model's adapted layers "
                         f"({', '.join(LORA_TARGETS[mtype])}); use at most {limit}")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS[mtype],
                     fan_in_fan_out=(mtype == "gpt2"), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, cfg)


def lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the non -100 targets; 0 (with a graph) when a batch has none."""
    logits = model(input_ids=input_ids).logits[:, :-1]
    target = labels[:, 1:]
    n = (target != -100).sum()
    total = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                        ignore_index=-100, reduction="sum")
    return total / n.clamp(min=1)
