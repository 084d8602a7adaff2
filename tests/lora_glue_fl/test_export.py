"""<run>/model/ of lora_glue_fl runs: AutoModelForSequenceClassification.from_pretrained reproduces the run's
final validation loss; adapters name a local base relative to themselves, so a moved run directory still loads."""
from __future__ import annotations

import json
import shutil

import pytest
from clicases import narrow_files, umask

from lora_glue_fl import adapters, baseline_run, fedavg_rounds, glue_tasks, main_glue_lora, modeling

QUICK = ["--quick", "--quiet"]


def _reload_eval(model_dir, args: dict) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    dev = glue_tasks.load_glue(args["task_name"], "synthetic")["validation"].subset(range(args["max_eval_samples"]))
    enc = modeling.encode(tok, dev, args["max_seq_length"], modeling.uses_token_types(model))
    return modeling.evaluate(args["task_name"], model, {"validation": enc}, "cpu")


@pytest.mark.parametrize("script", ["baseline", "central_lora"])
def test_model_dir_reproduces_validation_loss(script, tmp_path):
    main = baseline_run.main if script == "baseline" else main_glue_lora.main
    with umask(0o022):
        summary = main(QUICK + ["--out-dir", str(tmp_path), "--run-name", "r"])
    run = tmp_path / "r"
    assert (run / "model" / "model.safetensors").is_file() and narrow_files(run) == []  # 0644 as promised
    args = json.loads((run / "args.json").read_text())["args"]
    got = _reload_eval(run / "model", args)
    assert abs(got["eval_loss"] - summary["final"]["eval_loss"]) < 1e-5
    assert got["accuracy"] == summary["final"]["accuracy"]
    assert json.loads((run / "model" / "fedlab.json").read_text())["final"] == summary["final"]


def test_fedavg_rounds_model_dir_and_moved_adapter(tmp_path):
    summary = fedavg_rounds.main(QUICK + ["--task_name", "sst2", "--local_epochs", "1", "--max_train_samples", "240",
                                          "--out-dir", str(tmp_path), "--run-name", "f"])
    run = tmp_path / "f"
    args = json.loads((run / "args.json").read_text())["args"]
    got = _reload_eval(run / "model", args)
    assert abs(got["eval_loss"] - summary["final"]["eval_loss"]) < 1e-5
    adapter = run / "round_2" / "fused_r4" / "adapter"
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == "../../../base_model"  # relative to the adapter folder
    moved = tmp_path / "elsewhere" / "f"
    shutil.move(str(run), str(moved))
    base = adapters.load(moved / "round_2" / "fused_r4" / "adapter").extra["base_model_name_or_path"]
    assert base == str((moved / "base_model").resolve())
