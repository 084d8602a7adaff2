"""The ViT keeps DINO's parameter layout, loads weights strictly, and interpolates positions."""
from __future__ import annotations

import pytest
import torch

from common import cli
from vit_sparse_fl import vit


def dino_vits16_keys() -> list[str]:
    """The state_dict keys of facebookresearch/dino's vit_small (patch 16), written out by hand."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(12):
        for mod in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys += [f"blocks.{i}.{mod}.weight", f"blocks.{i}.{mod}.bias"]
    return keys + ["norm.weight", "norm.bias"]


@pytest.fixture(scope="module")
def vits_state():
    torch.manual_seed(0)
    return vit.VisionTransformer(vit.VIT_SMALL).state_dict()


@pytest.fixture(scope="module")
def vits_file(vits_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "dino_deitsmall16_pretrain.pth"
    torch.save(vits_state, path)
    return path


@pytest.fixture(scope="module")
def classifier():
    """One ViT-S classifier shared by the tests (building it is the slow part); each test loads into it."""
    torch.manual_seed(1)
    return vit.ViTClassifier(vit.VIT_SMALL)


def test_dino_key_layout_and_shapes(vits_state):
    assert list(vits_state) == dino_vits16_keys()
    assert vits_state["pos_embed"].shape == (1, 197, 384)
    assert vits_state["patch_embed.proj.weight"].shape == (384, 3, 16, 16)
    assert vits_state["blocks.11.attn.qkv.weight"].shape == (1152, 384)
    assert vits_state["blocks.0.mlp.fc1.weight"].shape == (1536, 384)
    assert sum(t.numel() for t in vits_state.values()) == 21_665_664   # DINO ViT-S/16 backbone size


def test_state_dict_round_trips_strictly(tmp_path, vits_state, vits_file, classifier):
    assert not torch.equal(classifier.backbone.pos_embed, vits_state["pos_embed"])
    assert vit.load_backbone_weights(classifier, str(vits_file)) == str(vits_file)
    for k, v in classifier.backbone.state_dict().items():
        assert torch.equal(v, vits_state[k])
    # a DINO training checkpoint (teacher with module./backbone. prefixes and a projection head) loads too
    small = {k: v * 2 for k, v in vits_state.items()}
    teacher = {f"module.backbone.{k}": v for k, v in small.items()}
    teacher["module.head.last_layer.weight"] = torch.ones(1)
    torch.save({"teacher": teacher}, tmp_path / "full.pth")
    vit.load_backbone_weights(classifier, str(tmp_path / "full.pth"))
    assert torch.equal(classifier.backbone.pos_embed, small["pos_embed"])


def test_hub_download_path(monkeypatch, vits_state, classifier):
    calls = []

    def fake_download(url, **kw):
        calls.append(url)
        return vits_state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with torch.no_grad():
        classifier.backbone.cls_token.zero_()
    assert vit.load_backbone_weights(classifier, "dino") == vit.DINO_VITS16_URL
    assert calls == [vit.DINO_VITS16_URL]
    assert torch.equal(classifier.backbone.cls_token, vits_state["cls_token"])

    def offline(url, **kw):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(cli.UsageError, match="--weights PATH"):
        vit.load_backbone_weights(classifier, "dino")


def test_wrong_weights_fail_clearly(tmp_path, classifier):
    tiny = vit.VisionTransformer(vit.VIT_TINY).state_dict()
    torch.save(tiny, tmp_path / "tiny.pth")
    with pytest.raises(cli.UsageError, match="does not match"):
        vit.load_backbone_weights(classifier, str(tmp_path / "tiny.pth"))
    with pytest.raises(cli.UsageError, match="no such file"):
        vit.load_backbone_weights(vit.ViTClassifier(vit.VIT_TINY), str(tmp_path / "absent.pth"))


def test_position_interpolation_for_other_image_sizes():
    cfg = vit.ViTConfig(img_size=224, patch_size=16, embed_dim=24, depth=1, num_heads=2, num_classes=5)
    model = vit.ViTClassifier(cfg).eval()
    for size, tokens in ((224, 197), (160, 101), (32, 5)):
        pos = model.backbone.interpolate_pos_encoding(size, size)
        assert pos.shape == (1, tokens, 24)
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert model.backbone.interpolate_pos_encoding(224, 224) is model.backbone.pos_embed
    # the class token's position is never interpolated
    assert torch.equal(model.backbone.interpolate_pos_encoding(32, 32)[:, 0], model.backbone.pos_embed[:, 0])


def test_freeze_layers():
    model = vit.ViTClassifier(vit.VIT_TINY)
    model.freeze_layers(1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "backbone.blocks.0.attn.qkv.weight" in frozen and "backbone.patch_embed.proj.weight" in frozen
    assert "backbone.blocks.1.attn.qkv.weight" not in frozen and "head.weight" not in frozen
