"""Vision Transformer with DINO's parameter names, plus a classification head.

The backbone's ``state_dict`` keys are those of facebookresearch/dino ``vision_transformer.py``, so the official
``dino_deitsmall16_pretrain.pth`` loads with ``strict=True``; as in DINO the positional embedding is stored for
the pre-training grid and bicubically interpolated at forward time for other image sizes.

A run's trained model is ``<run>/model/``, a Hugging Face ``ViTForImageClassification`` folder (``config.json``
with this project's ``ViTConfig`` under ``fedlab_vit``, ``model.safetensors`` with q/k/v split out of DINO's
``qkv``, ``preprocessor_config.json``): ``AutoModelForImageClassification.from_pretrained`` gives the same
logits (``interpolate_pos_encoding=True`` for other image sizes), ``load`` rebuilds the ``ViTClassifier`` and
``--weights <run>/model`` starts another run from its backbone.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import cli, export, pretrained
from vit_sparse_fl.data import IMAGENET_MEAN, IMAGENET_STD

DINO_VITS16_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"


@dataclass
class ViTConfig:
    """``img_size``: the grid the positional embedding is stored for."""
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 100
    head_dropout: float = 0.1


VIT_SMALL = ViTConfig()                                     # DINO ViT-S/16: 21.7 M backbone parameters
VIT_TINY = ViTConfig(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)   # --quick


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.fused = True                                   # F.scaled_dot_product_attention (flash on GPU)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)       # DINO uses qkv_bias=True for ViT-S
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, D]"""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                              # [B, heads, N, D/heads]
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:  # plain math: what torch.func.vmap batches well (per-example Fisher); same result
            attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """DINO's ViT backbone: returns the final-norm [CLS] feature [B, D]."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        # [B, 3, H, W] -> [B, D, (H/p)(W/p)]
        self.patch_embed = nn.Sequential(OrderedDict(
            proj=nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size), flat=nn.Flatten(2)))
        num_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding [1, 1 + (h/p)(w/p), D] for an h x w image (bicubic, as DINO)."""
        n_stored = self.pos_embed.shape[1] - 1
        gh, gw = h // self.patch_size, w // self.patch_size
        if gh * gw == n_stored and gh == gw:
            return self.pos_embed
        side = int(math.sqrt(n_stored))
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False).to(patch_pos.dtype)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] float -> [B, D]"""
        B, _, H, W = x.shape
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), self.patch_embed(x).transpose(1, 2)], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(H, W)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 0]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class ViTClassifier(nn.Module):
    """``backbone`` (DINO names) -> dropout -> ``head`` (Linear D -> classes). The head is never masked."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = VisionTransformer(cfg)
        self.dropout = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised float -> logits [B, classes]"""
        return self.head(self.dropout(self.backbone(x)))

    def freeze_layers(self, n: int) -> None:
        """Freeze the patch embedding, cls/pos tokens and the first ``n`` blocks (n=0: nothing frozen)."""
        if n <= 0:
            return
        b = self.backbone
        for part in (b.patch_embed, *b.blocks[:n], b.cls_token, b.pos_embed):
            part.requires_grad_(False)

    def set_fused_attention(self, fused: bool) -> None:
        """Fused SDPA (fast for training) or the math form (vmap-friendly, for per-example gradients)."""
        for blk in self.backbone.blocks:
            blk.attn.fused = fused

    def config(self) -> dict:
        return asdict(self.cfg)


def export_state_dict(model: ViTClassifier) -> dict[str, torch.Tensor]:
    """The model's tensors with DINO's backbone names (no ``backbone.`` prefix) plus ``head.*``."""
    return {k.removeprefix("backbone."): v for k, v in model.state_dict().items()}


# DINO name prefix -> the classic Hugging Face ViT one ({}: a block index); DINO's fused qkv is split in three
_QKV = ("query", "key", "value")
_HF_NAMES = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
             "patch_embed.proj.": "vit.embeddings.patch_embeddings.projection.", "norm.": "vit.layernorm.",
             "head.": "classifier.",
             **{f"blocks.{{}}.{dino}.": f"vit.encoder.layer.{{}}.{hf}." for dino, hf in (
                 ("attn.proj", "attention.output.dense"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
                 *((f"attn.{n}", f"attention.attention.{n}") for n in _QKV))}}


def _renamed(name: str, prefixes: dict[str, str]) -> str:
    """``name`` with its prefix in ``prefixes`` replaced by that prefix's value (``{}``: the same block index)."""
    for old, new in prefixes.items():
        if m := re.match(re.escape(old).replace(r"\{\}", r"(\d+)"), name):
            return new.format(*m.groups()) + name[m.end():]
    raise KeyError(name)


def hf_state_dict(model: ViTClassifier) -> dict[str, torch.Tensor]:
    """The weights under ``transformers``' ViT names (DINO's fused ``qkv`` split into query, key, value)."""
    out = {}
    for name, t in export_state_dict(model).items():
        if ".attn.qkv." in name:
            out |= {_renamed(name.replace(".qkv.", f".{n}."), _HF_NAMES): c for n, c in zip(_QKV, t.chunk(3))}
        else:
            out[_renamed(name, _HF_NAMES)] = t
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``hf_state_dict``'s inverse."""
    back = {hf: dino for dino, hf in _HF_NAMES.items()}
    out = {_renamed(name, back): t for name, t in state.items()}
    for query in [k for k in out if ".attn.query." in k]:
        out[query.replace(".query.", ".qkv.")] = torch.cat([out.pop(query.replace(".query.", f".{n}.")) for n in _QKV])
    return out


def save(model: ViTClassifier, run_path, *, image_size: int, info: dict | None = None, name: str = "model") -> Path:
    """``<run_path>/<name>/``: the Hugging Face folder of the module doc (dropout 0: the head dropout is under
    ``fedlab_vit``; resize to the run's image size, bilinear, and normalisation as in training); returns it."""
    cfg = model.cfg
    config = {"model_type": "vit", "architectures": ["ViTForImageClassification"], "image_size": cfg.img_size,
              "patch_size": cfg.patch_size, "num_channels": 3, "hidden_size": cfg.embed_dim,
              "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
              "intermediate_size": int(cfg.embed_dim * cfg.mlp_ratio), "hidden_act": "gelu",
              "layer_norm_eps": 1e-6, "qkv_bias": True, "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0, "num_labels": cfg.num_classes,
              "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)},
              "label2id": {f"LABEL_{i}": i for i in range(cfg.num_classes)}, "fedlab_vit": asdict(cfg)}
    preprocessor = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "resample": 2,
                    "size": {"height": image_size, "width": image_size}, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(IMAGENET_MEAN),
                    "image_std": list(IMAGENET_STD)}
    return export.save_tensors_dir(run_path, hf_state_dict(model), config, info=info, name=name,
                                   extra={"preprocessor_config.json": preprocessor})


def load(folder, map_location: str | torch.device = "cpu") -> ViTClassifier:
    """The ``ViTClassifier`` that ``save`` wrote into ``folder``, in eval mode."""
    state, config = export.load_tensors_dir(folder)
    model = ViTClassifier(ViTConfig(**config["fedlab_vit"]))
    model.load_state_dict({k if k.startswith("head.") else f"backbone.{k}": v
                           for k, v in from_hf_state_dict(state).items()}, strict=True)
    return model.to(map_location).eval()


def load_backbone_weights(model: ViTClassifier, weights: str | None) -> str:
    """Load ``weights`` into ``model.backbone`` with ``strict=True``; returns where they came from.

    ``weights``: ``"dino"`` (torch hub cache / ``DINO_VITS16_URL``), ``None``/``"none"`` (random initialisation),
    a DINO checkpoint, a run's model folder, or this project's checkpoint (``train_centralized``, ``pretrain``),
    whose head loads too when it has this model's number of classes."""
    if weights in (None, "", "none", "random"):
        return "random"
    if weights == "dino":
        source = DINO_VITS16_URL
        try:
            state = torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=False, check_hash=False)
        except Exception as e:  # no network: say what to do instead
            raise cli.UsageError(f"could not fetch DINO weights from {source} ({type(e).__name__}); "
                                 "download dino_deitsmall16_pretrain.pth and pass --weights PATH") from None
    else:
        path = Path(weights)
        if path.is_dir() and (path / "model.safetensors").is_file():  # a run's <run>/model folder
            path = path / "model.safetensors"
        cli.check(path.is_file(), f"--weights {weights}: no such file; expected "
                                  "dino_deitsmall16_pretrain.pth, a run's model folder or 'dino' to use the "
                                  "torch hub cache")
        if path.suffix == ".safetensors":
            pretrained.check_safetensors(path)  # a header that does not fit the file: one line naming it
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = from_hf_state_dict(load_file(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise cli.UsageError(f"--weights {weights}: not a torch checkpoint ({type(e).__name__})") from None
        source = str(path)
    if isinstance(state, dict) and "model" in state and "config" in state:   # this project's checkpoint
        return _load_project_checkpoint(model, state, source)
    if isinstance(state, dict) and "head.weight" in state and "cls_token" in state:   # a run's model folder
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if isinstance(state, dict) and "teacher" in state:        # a full DINO training checkpoint
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state["teacher"].items()
                 if not k.removeprefix("module.").startswith("head")}
    try:
        model.backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise cli.UsageError(f"--weights {weights}: does not match the ViT config "
                             f"({first[1].strip() if len(first) > 1 else first[0]}); "
                             "expected a DINO ViT-S/16 state dict") from None
    return source


def _load_project_checkpoint(model: ViTClassifier, state: dict, source: str) -> str:
    """Backbone of a project checkpoint with ``strict=True``; the head as well if its shape matches (else the
    model keeps its fresh head)."""
    weights = state["model"]
    backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(backbone, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise cli.UsageError(f"--weights {source}: a checkpoint of another ViT (its config {state['config']}; "
                             f"{lines[1].strip() if len(lines) > 1 else lines[0]})") from None
    head = {k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")}
    if head and head["weight"].shape == model.head.weight.shape:
        model.head.load_state_dict(head, strict=True)
        return f"{source} (backbone and head)"
    return f"{source} (backbone; new {model.head.out_features}-class head)"
