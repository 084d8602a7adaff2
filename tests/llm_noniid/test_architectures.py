"""Any causal LM folder fine-tunes with LoRA: a tiny random folder of each architecture with known targets runs
``train.py --quick --model <folder>``, exports its adapter, and ``PeftModel.from_pretrained`` loads it; bad model
folders, mismatched tokenizers and unknown ``--lora-targets`` fail in one line with nothing written."""
from __future__ import annotations

import json

import pytest
from clicases import LLM_SMOKE

from common import export
from llm_noniid import train
from llm_noniid.model import LORA_TARGETS


@pytest.mark.parametrize("arch", sorted(LORA_TARGETS))
def test_every_architecture_fine_tunes_with_lora_and_exports_its_adapter(arch, tmp_path, tiny_folder):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = tiny_folder(arch)
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


def test_lora_targets_flag_overrides_the_architecture(tmp_path, tiny_folder):
    folder = tiny_folder("llama")
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
def test_bad_model_folders_fail_in_one_line_and_write_nothing(case, tmp_path, capsys, tiny_folder):
    from clicases import one_line_error

    spec, extra, expected = BAD[case]
    folder = tiny_folder(**(spec or dict(arch="gpt2")))
    if spec is None:
        for f in ("config.json", "model.safetensors"):
            (folder / f).unlink()
    line = one_line_error(train.main, ["--quick", *LLM_SMOKE, "--model", str(folder), "--lora-r", "2", *extra,
                                       "--out-dir", str(tmp_path / "runs")], capsys)
    assert expected in line, line
    assert not (tmp_path / "runs").exists()
