"""<run>/model of llm_noniid runs: AutoModelForCausalLM.from_pretrained (and PeftModel.from_pretrained for a LoRA
run) reproduces the run's final validation loss; --report-to tensorboard writes the metrics rows (with the
tracking extra); checkpoints load with torch.load(weights_only=True)."""
from __future__ import annotations

import importlib.util
import json

import pytest
import tbevents
import torch
from clicases import LLM_SMOKE

from common import evaluate, export
from llm_noniid import data as D
from llm_noniid import train


def _val_loss(model, run) -> float:
    from transformers import AutoTokenizer

    a = json.loads((run / "args.json").read_text())["args"]
    tok = AutoTokenizer.from_pretrained(run / "model")
    valid = D.subsample(D.load_splits(a["data"], a["data_dir"], a["cache_dir"])[1], a["max_eval_examples"],
                        a["seed"] + 1)
    x, y = D.encode(tok, valid.texts, a["seq_len"])
    batches = [{"input_ids": x[i:i + 32], "labels": y[i:i + 32]} for i in range(0, x.shape[0], 32)]
    return evaluate.perplexity(model.eval(), batches, device="cpu")["loss"]


@pytest.mark.parametrize("lora_r", [0, 2])
def test_model_dir_reproduces_the_validation_loss(lora_r, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    tracked = importlib.util.find_spec("tensorboard") is not None  # the tracking extra; CI installs it
    s = train.main(["--quick", *LLM_SMOKE, "--out-dir", str(tmp_path), "--run-name", "r", "--rounds", "2", "--lora-r",
                    str(lora_r), "--report-to", "tensorboard" if tracked else "none"])
    run = tmp_path / "r"
    assert abs(_val_loss(AutoModelForCausalLM.from_pretrained(run / "model"), run) - s["final_val_loss"]) \
        < 1e-5 * s["final_val_loss"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"run directory: {run} | final validation perplexity") and "unigram" in last
    assert not tracked or "val_loss" in tbevents.read_scalars(run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    assert isinstance(state["global"], dict)
    if lora_r:
        from peft import PeftModel

        adapter = run / "adapter"
        base = export.resolve_base(adapter, json.loads((adapter / "adapter_config.json").read_text())
                                   ["base_model_name_or_path"])
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        assert abs(_val_loss(peft_model, run) - s["final_val_loss"]) < 1e-5 * s["final_val_loss"]
    else:
        assert not (run / "adapter").exists()
