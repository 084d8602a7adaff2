"""<run>/model/ of mamba_fl runs: AutoModelForCausalLM.from_pretrained reproduces the run's validation loss;
checkpoints load with torch.load(weights_only=True) and name their tensors."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from common import evaluate
from mamba_fl import central, fed_avg, lmdata


def _reload_loss(run) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "model", trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(run / "model", trust_remote_code=False)
    args = argparse.Namespace(**json.loads((run / "args.json").read_text())["args"])
    data = lmdata.load_lm_data(args)
    assert tok.get_vocab() == data.tokenizer.get_vocab()  # the run's own tokenizer travels with the model
    valid = data.valid[: args.eval_blocks] if args.eval_blocks > 0 else data.valid
    batches = lmdata.iterate(valid, max(args.batch_size, 8), tok.pad_token_id, "cpu")
    return evaluate.perplexity(model, batches, device="cpu")["loss"]


@pytest.mark.parametrize("script", ["fedavg", "central"])
def test_model_dir_reproduces_validation_loss(script, tiny, out_dir):
    if script == "fedavg":
        summary = fed_avg.main(tiny("--save-deltas"))
    else:
        summary = central.main(tiny("--max-steps", "2", "--batch-size", "4"))
    (run,) = [p for p in out_dir.iterdir() if p.name.startswith(script)]
    assert abs(_reload_loss(run) - summary["final_val_loss"]) < 1e-5 * summary["final_val_loss"]
    card = json.loads((run / "model" / "fedlab.json").read_text())
    assert card["final_val_loss"] == summary["final_val_loss"] and card["run"] == run.name
    state = torch.load(run / "checkpoint.pt", weights_only=True)["state"]  # no pickled code needed
    if script == "fedavg":
        assert isinstance(state["global"], dict) and "backbone.embeddings.weight" in state["global"]
