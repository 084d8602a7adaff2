"""<run>/model/ of vit_sparse_fl runs: DINO-named tensors + config.json, vit.load rebuilds the model with the
run's test accuracy; checkpoints load with torch.load(weights_only=True) and name their tensors."""
from __future__ import annotations

import json

import torch

from vit_sparse_fl import experiment as exp
from vit_sparse_fl import train_federated as fed
from vit_sparse_fl import vit

SMALL = ["--quick", "--quiet", "--num-clients", "10", "--participation-rate", "0.2", "--local-steps", "2",
         "--rounds", "2", "--eval-every", "1", "--max-train", "300", "--max-test", "60", "--batch-size", "16"]


def test_federated_model_dir_reloads_and_checkpoint_is_weights_only(tmp_path):
    summary = fed.main([*SMALL, "--out-dir", str(tmp_path)])
    run = tmp_path / summary["run_dir"].rsplit("/", 1)[1]
    state = torch.load(run / "model" / "model.pt", weights_only=True)
    assert "cls_token" in state and "blocks.0.attn.qkv.weight" in state and "head.weight" in state
    assert json.loads((run / "model" / "config.json").read_text())["embed_dim"] == 48
    model = vit.load(run / "model")
    args = fed.get_args_parser().parse_args([*SMALL, "--out-dir", str(tmp_path)])
    fed.finish_args(args)
    ctx = fed.setup(args)
    got = exp.evaluate(model, ctx["test"], args, torch.device("cpu"))
    assert got["accuracy"] == summary["test_accuracy"]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    assert "backbone.cls_token" in ckpt["global"] and "head.weight" in ckpt["global"]
    # another run can start from this model's backbone
    other = vit.ViTClassifier(vit.VIT_TINY)
    vit.load_backbone_weights(other, str(run / "model" / "model.pt"))
    torch.testing.assert_close(other.backbone.cls_token, model.backbone.cls_token)
