"""The Mamba2 language model: ``transformers.Mamba2ForCausalLM`` built from flags, trained from scratch.

Source configs ``pure_ssm_{1,2,4}_layer``: d_model 512, mixer-only Mamba2 blocks, d_state 128, head dim 64, expand
2, conv width 4, RMSNorm, tied embeddings. On CUDA with ``mamba_ssm`` importable transformers uses the fused
kernels, elsewhere (or with ``--kernels torch``) its PyTorch reference path (``select_kernels``).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

import torch

from common import cli, evaluate, flags, memory
from common.early_stop import EarlyStop
from mamba_fl.options import CONFIGS, config_legacy


def make_stopper(args: argparse.Namespace):
    """The plateau rule (``common.early_stop``) if --patience, --test or --budget-at needs a kept model, else None."""
    return EarlyStop(args.patience, args.min_improvement, args.budget_at) \
        if args.patience or args.test or args.budget_at else None


def resolve_model_args(args: argparse.Namespace) -> None:
    """Fill ``args.layers`` from ``--model-config`` and check the shapes (each size is positive by its flag)."""
    if config_legacy(getattr(args, "config", None)):  # parsed without common.config: --config pure_ssm_N_layer
        args.model_config, args.config = args.model_config or args.config, None
    if args.model_config is not None:
        cli.check(args.model_config in CONFIGS,
                  f"--model-config {args.model_config!r} is unknown; expected one of {', '.join(CONFIGS)}")
        cli.check(args.layers in (None, CONFIGS[args.model_config]),
                  f"--model-config {args.model_config} has {CONFIGS[args.model_config]} layers but --layers "
                  f"{args.layers} was given")
        args.layers = CONFIGS[args.model_config]
    args.layers = args.layers or 1
    args.model_config = f"pure_ssm_{args.layers}_layer"
    args.chunk_size = args.chunk_size or min(256, args.sequence_length)
    inner = args.expand * args.d_model
    cli.check(inner % args.head_dim == 0, f"expand * d_model = {inner} is not a multiple of --head-dim {args.head_dim}")
    cli.check((inner // args.head_dim) % args.n_groups == 0,
              f"the {inner // args.head_dim} heads do not split into --n-groups {args.n_groups}")
    flags.refuse_unused(args, [
        ("delta_tensors", args.save_deltas, "without --save-deltas"),
        ("prompt", args.sample_tokens > 0, "with --sample-tokens 0 (no sample is drawn)"),
        ("min_improvement", args.patience > 0, "without --patience (no plateau rule)")])


def check_memory(args: argparse.Namespace, vocab: int, device, blocks: int) -> None:
    """The model and one training step fit in ``device``'s memory (``common.memory``), before anything is built;
    a batch takes at most the ``blocks`` there are."""
    def estimate(size: dict) -> dict:
        d, inner = size["--d-model"], args.expand * size["--d-model"]
        heads, bc = inner // args.head_dim, 2 * args.n_groups * args.d_state
        layer = d * (2 * inner + bc + heads) + (inner + bc) * args.d_conv + inner * d + 2 * d
        params = vocab * d * (1 if not args.no_tie_embeddings else 2) + args.layers * layer
        return memory.transformer(params=params, batch=min(size["--batch-size"], blocks), seq=size["--sequence-length"],
                                  width=d, layers=args.layers, heads=0, vocab=vocab, inner=2 * inner + bc)

    memory.check_fits(estimate, {"--sequence-length": args.sequence_length, "--batch-size": args.batch_size,
                                 "--d-model": args.d_model}, device, what=f"this Mamba2 (vocabulary {vocab})")


def make_optimizer(args: argparse.Namespace, plist) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(plist, lr=args.lr)
    return torch.optim.AdamW(plist, lr=args.lr, weight_decay=args.weight_decay)


def build_model(args: argparse.Namespace, vocab_size: int, pad_id: int, eos_id: int):
    """A randomly initialised ``Mamba2ForCausalLM`` (seed the global RNG first for a reproducible init)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    inner = args.expand * args.d_model
    config = Mamba2Config(
        vocab_size=vocab_size, hidden_size=args.d_model, state_size=args.d_state, head_dim=args.head_dim,
        num_heads=inner // args.head_dim, expand=args.expand, conv_kernel=args.d_conv, n_groups=args.n_groups,
        num_hidden_layers=args.layers, chunk_size=args.chunk_size, tie_word_embeddings=not args.no_tie_embeddings,
        pad_token_id=pad_id, bos_token_id=eos_id, eos_token_id=eos_id, use_cache=True,
    )
    model = Mamba2ForCausalLM(config)
    if config.tie_word_embeddings:  # one tensor, so params.trainable() and the aggregators see it once
        assert model.lm_head.weight is model.backbone.embeddings.weight
    return model


KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d")
_MODELING = "transformers.models.mamba2.modeling_mamba2"
_bound: list[str] = []  # the path this process's transformers bound, once it has imported its Mamba2 module


def kernel_path(device: torch.device, kernels: str = "auto") -> str:
    """'mamba-ssm' when transformers will use the fused CUDA kernels, else 'torch' (reference path)."""
    if device.type == "cuda" and kernels == "auto" and importlib.util.find_spec("mamba_ssm") is not None:
        return "mamba-ssm"
    return "torch"


def select_kernels(device: torch.device, kernels: str = "auto") -> str:
    """Make transformers bind the path ``kernel_path`` names, and return it. Call before building a model.

    transformers binds mamba-ssm and causal-conv1d once, at its Mamba2 module's first import, and then calls them
    whatever the device (a CPU model would fail inside causal-conv1d). For the reference path the packages are
    hidden from that import for the whole process; a CPU model after the kernels were bound is refused."""
    path = kernel_path(device, kernels)
    if not _bound and _MODELING in sys.modules:  # imported before anyone chose: it bound what was installed
        _bound.append(kernel_path(torch.device("cuda")))
    if _bound:
        cli.check(_bound[0] == path, f"this process already runs Mamba2 on the {_bound[0]} path; the {path} path "
                                     f"needs a new process (device {device}, --kernels {kernels})")
        return path
    if path == "torch":
        for name in KERNEL_PACKAGES:
            if name not in sys.modules and importlib.util.find_spec(name) is not None:
                sys.modules[name] = None  # makes `import name` raise ImportError: transformers falls back
    _bound.append(path)
    return path


def quiet_kernel_warnings() -> None:
    """The reference-path fallback warns once per function; the run records the path in args.json instead."""
    logging.getLogger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)


@torch.no_grad()
def greedy_sample(model, tokenizer, prompt: str, max_new_tokens: int, device: torch.device) -> str:
    """Greedy continuation of ``prompt`` using the recurrent state cache (one step per new token)."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    if ids.numel() == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]], device=device)
    with evaluate.eval_mode(model):
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())
