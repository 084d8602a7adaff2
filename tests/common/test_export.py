"""common.export: <run>/model (save_pretrained + tokenizer), peft adapters with a relocatable base, named
checkpoint tensors."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from common import export


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))


def test_model_dir_loads_with_auto_class(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _tiny_gpt2().eval()
    out = export.save_model_dir(tmp_path / "run", model, info={"final_val_loss": 1.5})
    ids = torch.arange(10).unsqueeze(0)
    again = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    torch.testing.assert_close(again(ids).logits, model(ids).logits)
    assert json.loads((out / export.CARD_FILE).read_text())["final_val_loss"] == 1.5


def test_adapter_dir_with_a_base_built_in_code_survives_a_move(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = _tiny_gpt2()
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=2, target_modules=["c_attn"], init_lora_weights=False))
    peft_model.eval()
    ids = torch.arange(10).unsqueeze(0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text("{}")  # a run directory: its base_model moves with it
    want = peft_model(ids).logits
    base_only = copy.deepcopy(peft_model).unload()  # the base without the adapters
    adapter = export.save_adapter_dir(tmp_path / "run", peft_model, base_model=base_only)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "../base_model"
    merged_dir = export.save_model_dir(tmp_path / "run", export.merged(peft_model))
    shutil.move(str(tmp_path / "run"), str(tmp_path / "moved"))
    moved = tmp_path / "moved" / "adapter"
    base_path = export.resolve_base(moved, "../base_model")
    assert base_path == str((tmp_path / "moved" / "base_model").resolve())
    base = AutoModelForCausalLM.from_pretrained(base_path, trust_remote_code=False)
    again = PeftModel.from_pretrained(base, moved).eval()
    torch.testing.assert_close(again(ids).logits, want)
    flat = AutoModelForCausalLM.from_pretrained(tmp_path / "moved" / merged_dir.name, trust_remote_code=False).eval()
    torch.testing.assert_close(flat(ids).logits, want, atol=1e-5, rtol=1e-5)


def test_named_state_round_trip_and_weights_only(tmp_path):
    tensors = [torch.randn(2, 3), torch.randn(4)]
    state = export.named_state(["a.weight", "b.bias"], tensors)
    torch.save({"global": state}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)["global"]
    assert [t.tolist() for t in export.tensors_from_state(back, ["a.weight", "b.bias"])] == \
        [t.tolist() for t in tensors]
    assert export.tensors_from_state(tensors) == tensors  # checkpoints of unnamed lists still read
    with pytest.raises(KeyError):
        export.tensors_from_state(back, ["c"])
    assert export.relative_base(tmp_path / "x", "gpt2") == "gpt2"  # hub names stay as they are
    (tmp_path / "elsewhere").mkdir()
    assert export.relative_base(tmp_path / "x", str(tmp_path / "elsewhere")) == str((tmp_path / "elsewhere")
                                                                                     .resolve())  # not in a run
