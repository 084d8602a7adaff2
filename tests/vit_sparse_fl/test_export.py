"""<run>/model/ of vit_sparse_fl runs: a Hugging Face ViT folder that transformers loads to the same logits,
vit.load rebuilds the model with the run's test accuracy; checkpoints load with torch.load(weights_only=True)
and name their tensors."""
from __future__ import annotations

import json

import torch

from vit_sparse_fl import experiment as exp
from vit_sparse_fl import federated, vit
from vit_sparse_fl import train_federated as fed

SMALL = ["--quick", "--quiet", "--num-clients", "10", "--participation-rate", "0.2", "--local-steps", "2",
         "--rounds", "2", "--eval-every", "1", "--max-train", "300", "--max-test", "60", "--batch-size", "16"]


def test_federated_model_dir_reloads_and_checkpoint_is_weights_only(tmp_path):
    summary = fed.main([*SMALL, "--out-dir", str(tmp_path)])
    run = tmp_path / summary["run_dir"].rsplit("/", 1)[1]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == "vit" and config["hidden_size"] == config["fedlab_vit"]["embed_dim"] == 48
    assert (run / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    model = vit.load(run / "model")
    args = fed.get_args_parser().parse_args([*SMALL, "--out-dir", str(tmp_path)])
    federated.finish_args(args)
    ctx = federated.setup(args)
    got = exp.evaluate(model, ctx["test"], args, torch.device("cpu"))
    assert got["accuracy"] == summary["test_accuracy"]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    assert "backbone.cls_token" in ckpt["global"] and "head.weight" in ckpt["global"]
    # another run can start from this model's backbone
    other = vit.ViTClassifier(vit.VIT_TINY)
    vit.load_backbone_weights(other, str(run / "model"))
    torch.testing.assert_close(other.backbone.cls_token, model.backbone.cls_token)
    # transformers reads the folder as a ViTForImageClassification with the same logits, bit for bit
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    hf = AutoModelForImageClassification.from_pretrained(run / "model").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hf(pixel_values=x).logits, model(x))
    assert AutoImageProcessor.from_pretrained(run / "model").size == {"height": 32, "width": 32}


def test_hf_names_round_trip_and_interpolated_positions_match(tmp_path):
    """DINO -> transformers names and back is the identity; at another image size transformers' own
    interpolation of the stored grid (interpolate_pos_encoding=True) gives the model's logits."""
    torch.manual_seed(0)
    model = vit.ViTClassifier(vit.ViTConfig(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2,
                                            num_classes=3)).eval()
    state = vit.hf_state_dict(model)
    assert "vit.encoder.layer.1.attention.attention.key.weight" in state and "classifier.bias" in state
    back = vit.from_hf_state_dict(state)
    want = vit.export_state_dict(model)
    assert back.keys() == want.keys() and all(torch.equal(back[k], want[k]) for k in want)
    from transformers import ViTForImageClassification
    hf = ViTForImageClassification.from_pretrained(vit.save(model, tmp_path, image_size=64)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x, interpolate_pos_encoding=True).logits, model(x),
                                   rtol=0, atol=1e-6)
