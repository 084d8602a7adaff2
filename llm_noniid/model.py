"""Causal LMs with LoRA adapters for llm_noniid: ``--model`` is a short name (``HUB_NAMES``), a hub name or local
folder (``pretrain.py`` makes one), or ``tiny-gpt2`` (random, for ``--quick``, the tests and from-scratch runs).
LoRA targets follow the architecture (``LORA_TARGETS``). A model that is not causal is refused.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from common import memory, pretrained
from common.errors import UsageError, check
from common.evaluate import eval_mode

HUB_NAMES = {"distilgpt2": "distilgpt2", "gpt2": "gpt2", "qwen-0.5b": "Qwen/Qwen2.5-0.5B",
             "tinyllama": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"}
# per model_type: the attention and MLP projections that get adapters (the last part of a module's name, as peft)
_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"], "llama": _LLAMA, "qwen2": _LLAMA, "mistral": _LLAMA,
                "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
                "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}


def hub_name(model: str) -> str:
    return HUB_NAMES.get(model, model)


TINY = {"n_embd": 64, "n_layer": 2, "n_head": 2}  # tiny-gpt2's shape


def check_memory(args, vocab: int, device, examples: int, base: nn.Module | None = None) -> None:
    """``base`` (None: tiny-gpt2, before it is built) and one training step at --seq-len and --batch-size fit in
    ``device``'s memory (``common.memory``); LoRA's adapters are left out (the estimate stays a lower bound)."""
    memory.check_model(TINY if base is None else base.config, seq=("--seq-len", args.seq_len),
                       batch=("--batch-size", args.batch_size), vocab=vocab, device=device,
                       params=None if base is None else sum(p.numel() for p in base.parameters()),
                       trainable_all=args.lora_r == 0, examples=examples,
                       what=f"--model {args.model} (vocabulary {vocab})")


def tiny_gpt2(vocab_size: int, seq_len: int, eos_id: int | None) -> nn.Module:
    """A random 2-layer GPT-2 (n_embd 64, n_head 2) with tied embeddings and no dropout (a model this small,
    trained for a few hundred steps, does not overfit; dropout only slowed it down)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_positions=max(seq_len, 8), **TINY,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos_id, eos_token_id=eos_id)
    return GPT2LMHeadModel(cfg)


def load_base(model: str, *, vocab_size: int, seq_len: int, eos_id: int | None, cache_dir: str | None) -> nn.Module:
    """The base causal LM (seeded before the call for ``tiny-gpt2``)."""
    if model == "tiny-gpt2":
        return tiny_gpt2(vocab_size, seq_len, eos_id)
    from transformers import AutoModelForCausalLM

    name = hub_name(model)
    try:
        with pretrained.quiet_loading():
            base = pretrained.load(AutoModelForCausalLM, name, cache_dir=cache_dir)
    except pretrained.NotLoaded as e:
        first = e.reason
        if Path(name).exists():
            raise UsageError(f"folder {name!r} holds no causal LM that AutoModelForCausalLM loads ({first}); expected "
                             f"a save_pretrained folder (config.json and weights)") from None
        raise UsageError(f"hub model {name!r} could not be loaded from the hub or its cache ({first}); "
                         f"download it once online, give a local folder, or use --model tiny-gpt2") from None
    positions, embeddings = max_positions(base), base.get_input_embeddings().weight.shape[0]
    check(positions is None or seq_len <= positions, f"--seq-len {seq_len} exceeds the {positions} positions model "
                                                     f"{name} was built for; use at most {positions}")
    check(embeddings >= vocab_size, f"model {name} has {embeddings} token embeddings, the tokenizer {vocab_size}; "
                                    "use the model's own tokenizer (--tokenizer auto)")
    check_causal(base, name)
    return base


@torch.no_grad()
def check_causal(base: nn.Module, name: str) -> None:
    """Refuse a model whose logits at a position change with a later token (e.g. a BERT folder, which
    ``AutoModelForCausalLM`` loads with a warning)."""
    vocab = base.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, 6), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % vocab
    with eval_mode(base):
        a, b = (base(input_ids=x).logits[0, :-1].float() for x in (ids, changed))
    check(torch.allclose(a, b, atol=1e-4, rtol=1e-4), f"model {name} ({getattr(base.config, 'model_type', '?')}) "
          "is not a causal LM: its predictions depend on later tokens; give a decoder-only model")


def max_positions(base: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings cover (None: not limited or not known)."""
    cfg = getattr(base, "config", None)
    return next((v for key in ("n_positions", "max_position_embeddings")
                 if isinstance(v := getattr(cfg, key, None), int) and v > 0), None)


def _matrices(base: nn.Module) -> dict[str, list]:
    """The model's 2-D weight layers (nn.Linear, GPT-2's Conv1D) by the last part of their names."""
    out: dict[str, list] = {}
    for name, m in base.named_modules():
        w = getattr(m, "weight", None)
        if name and isinstance(w, torch.Tensor) and w.dim() == 2 and not isinstance(m, nn.Embedding):
            out.setdefault(name.split(".")[-1], []).append(m)
    return out


def max_lora_rank(base: nn.Module, targets: list[str]) -> int:
    """The largest useful LoRA rank: the smallest side of any adapted layer (a rank above it adds parameters
    and compute, never expressiveness: the update B @ A cannot have a higher rank than that side)."""
    layers = _matrices(base)
    widths = [min(m.weight.shape) for t in targets for m in layers.get(t, [])]
    check(bool(widths), f"the model has none of the LoRA target layers {', '.join(targets)}")
    return min(widths)


def lora_targets(base: nn.Module, given: list[str] | None = None) -> list[str]:
    """``given`` (--lora-targets), else the architecture's (``LORA_TARGETS``); each must name a weight layer."""
    mtype = getattr(base.config, "model_type", "")
    check(bool(given) or mtype in LORA_TARGETS, f"no LoRA targets known for model type {mtype!r} (known: "
          f"{', '.join(LORA_TARGETS)}); name its linear layers with --lora-targets")
    targets = list(given or LORA_TARGETS[mtype])
    layers = _matrices(base)
    missing = [t for t in targets if t not in layers]
    check(not missing, f"{'--lora-targets' if given else f'the {mtype} targets'} {' '.join(missing)} name no linear "
                       f"layer of this {mtype} model; its linear layers: {' '.join(sorted(layers))}")
    return targets


def add_lora(base: nn.Module, r: int, alpha: float, dropout: float, targets: list[str] | None = None) -> nn.Module:
    """Wrap with LoRA adapters on ``targets`` (default: the architecture's; only adapters trainable); r = 0:
    full fine-tuning, every parameter trainable (used to train the tiny model from scratch)."""
    if r == 0:
        return base.requires_grad_(True)
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(base, targets)
    limit = max_lora_rank(base, targets)  # refused before the adapters are built: a huge rank trains for minutes
    check(r <= limit, f"--lora-r {r} exceeds the width {limit} of the model's adapted layers ({', '.join(targets)}); "
                      f"use at most {limit}")
    conv1d = any(type(m).__name__ == "Conv1D" for t in targets for m in _matrices(base)[t])
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     fan_in_fan_out=conv1d, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing: not the user's
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(base, cfg)


def lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the non -100 targets; 0 (with a graph) when a batch has none."""
    logits = model(input_ids=input_ids).logits[:, :-1]
    target = labels[:, 1:]
    total = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                        ignore_index=-100, reduction="sum")
    return total / (target != -100).sum().clamp(min=1)
