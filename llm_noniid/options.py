"""The names llm_noniid's flags list, torch-free like its parsers (``common.cli``: --help answers before torch
loads); tests/test_help.py holds them equal to the run's own.
"""
from __future__ import annotations

SOURCE_ALGORITHMS = ("fedavgm", "fedadam")  # the source's names for FedAvg with a server optimizer
# the architectures --lora-targets has defaults for (llm_noniid.model.LORA_TARGETS)
LORA_ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt")
VALIDATION_FRACTION = 0.1  # shakespeare.py --eval-split validation: each role's training samples held out
