"""LoRA adapters as plain tensors: read from / write to peft's format, load into a model, and merge.

An ``Adapter`` holds, per LoRA module, the factors ``A [r, in]`` and ``B [out, r]`` (update ``dW = s * B @ A``,
peft's scaling ``s = alpha / r``, ``alpha / sqrt(r)`` for rsLoRA) and the classifier head (``modules_to_save``),
which the server averages with the same weights as the updates.

Merges (weights w_k = shard sizes, normalised; the math in ``common.lora_merge``): ``svd`` the rank-r truncated
SVD of dW_bar = sum_k w_k s_k B_k A_k (Eckart-Young optimal; exact when r >= sum_k r_k) at the fused scaling
alpha_f / r; ``naive`` A and B averaged separately (the source's ``--skip_svd``; not the mean dW); ``exact`` the
stacked factors, product = dW_bar, rank sum_k r_k (capped at min(out, in), where a full-rank SVD is lossless).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common import aggregate, checkpoint, cli, export, lora_merge, pretrained


@dataclass
class Adapter:
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]   # module -> (A [r, in], B [out, r])
    head: dict[str, torch.Tensor]                           # peft key -> tensor (classifier)
    r: int
    alpha: float
    target_modules: list[str]
    use_rslora: bool = False
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)               # config fields kept on save (base model path)
    head_modules: list[str] = field(default_factory=lambda: ["classifier"])  # peft modules_to_save
    embeddings: list[str] = field(default_factory=list)     # modules of ``factors`` that are nn.Embedding: peft
    # keys lora_embedding_A [r, vocab] / lora_embedding_B [dim, r], merged as a layer with in = vocab, out = dim

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def delta(self) -> dict[str, torch.Tensor]:
        """module -> dW = s * B @ A  [out, in], float32."""
        return {m: self.scale * (B.float() @ A.float()) for m, (A, B) in self.factors.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """peft's saved key layout (no adapter name)."""
        sd = {}
        for m, (A, B) in self.factors.items():
            a, b = ("embedding_A", "embedding_B") if m in self.embeddings else ("A.weight", "B.weight")
            sd[f"{m}.lora_{a}"], sd[f"{m}.lora_{b}"] = A, B
        sd.update(self.head)
        return sd


def from_state_dict(sd: dict[str, torch.Tensor], r: int, alpha: float, target_modules, use_rslora=False,
                    dropout: float = 0.0, extra: dict | None = None, head_modules=None) -> Adapter:
    """Split a peft state dict (saved key layout) into LoRA factors and head tensors."""
    factors, head, embeddings = {}, {}, []
    for key, t in sd.items():
        m, lora, kind = key.partition(".lora_")
        if kind in ("A.weight", "embedding_A"):  # embedding_A: LoRA on an nn.Embedding
            factors[m] = (t.detach().clone(), sd[f"{m}.lora_{kind.replace('A', 'B')}"].detach().clone())
            if kind == "embedding_A":
                embeddings.append(m)
        elif not lora:
            head[key] = t.detach().clone()
    return Adapter(factors, head, int(r), float(alpha), sorted(target_modules), bool(use_rslora), dropout,
                   extra or {}, sorted(head_modules or ["classifier"]), embeddings)


def from_model(model) -> Adapter:
    """The active ("default") adapter and head of a ``PeftModel``, detached copies."""
    from peft import get_peft_model_state_dict
    cfg = model.peft_config["default"]
    return from_state_dict(get_peft_model_state_dict(model), cfg.r, cfg.lora_alpha, cfg.target_modules,
                           cfg.use_rslora, cfg.lora_dropout, head_modules=_names(cfg.modules_to_save))


def _names(modules) -> list[str]:
    """peft's modules_to_save or target_modules (a list, a set, a string or None) as a sorted list."""
    return sorted(set([modules] if isinstance(modules, str) else (modules or [])))


def load_into(model, adapter: Adapter) -> None:
    """Copy the adapter's factors and head into a ``PeftModel`` of the same rank, in place."""
    from peft import set_peft_model_state_dict
    cfg = model.peft_config["default"]
    cli.check(int(cfg.r) == adapter.r, f"model LoRA rank {cfg.r} differs from the adapter's {adapter.r}")
    cli.check((float(cfg.lora_alpha), bool(cfg.use_rslora)) == (adapter.alpha, adapter.use_rslora),
              f"model LoRA alpha {cfg.lora_alpha} (rsLoRA {cfg.use_rslora}) differs from the adapter's {adapter.alpha} "
              f"(rsLoRA {adapter.use_rslora}): its update would be scaled differently")
    res = set_peft_model_state_dict(model, adapter.state_dict())
    unexpected = [k for k in res.unexpected_keys if "lora_" in k or any(h in k for h in adapter.head_modules)]
    if unexpected:
        raise ValueError(f"adapter tensors the model has no place for: {unexpected[:3]}")


def save(adapter: Adapter, directory, base_model_name_or_path: str | None = None) -> Path:
    """adapter_config.json + adapter_model.safetensors (peft's format)."""
    from peft import LoraConfig, TaskType
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # a local base folder is recorded relative to the adapter folder: moving the run directory keeps it valid
    base = export.relative_base(directory, base_model_name_or_path or adapter.extra.get("base_model_name_or_path"))
    LoraConfig(task_type=TaskType.SEQ_CLS, r=int(adapter.r), lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
               target_modules=list(adapter.target_modules), use_rslora=adapter.use_rslora, bias="none",
               modules_to_save=list(adapter.head_modules), base_model_name_or_path=base).save_pretrained(str(directory))
    cfg_path = directory / "adapter_config.json"  # peft keeps target_modules as a set: written in a fixed order
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        checkpoint.atomic_write_json(cfg_path, cfg)
    with checkpoint.atomic_path(directory / "adapter_model.safetensors") as tmp:  # usual permissions, not 0600
        save_file({k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}, str(tmp))
    checkpoint.give_usual_permissions(directory)  # adapter_config.json from save_pretrained
    return directory


def load(directory) -> Adapter:
    """Read an adapter folder written by peft (or ``save``); one line for a missing or foreign folder."""
    directory = Path(directory)
    cfg_path, w_path = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    cli.check(cfg_path.is_file() and w_path.is_file(), f"{directory} is not a peft adapter folder; expected "
                                                       f"adapter_config.json and adapter_model.safetensors")
    pretrained.check_folder(directory)  # JSON objects, no code named, safetensors headers that fit their files
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    with pretrained.loading(w_path):
        sd = load_file(str(w_path))
    cli.check(cfg.get("peft_type", "LORA") == "LORA", f"{directory}: {cfg.get('peft_type')} adapter; expected LORA")
    cli.check(not cfg.get("rank_pattern") and not cfg.get("alpha_pattern"),
              f"{directory}: per-module rank_pattern/alpha_pattern adapters are not supported")
    cli.check(not cfg.get("use_dora") and cfg.get("bias", "none") == "none",
              f"{directory}: a DoRA adapter or one with trained biases (use_dora {cfg.get('use_dora')}, bias "
              f"{cfg.get('bias')!r}); only plain LoRA factors are merged here, so they are not supported")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    cli.check(isinstance(r, int) and not isinstance(r, bool) and r >= 1,
              f"{cfg_path}: 'r' must be a positive integer, got {r!r}")
    cli.check(isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0,
              f"{cfg_path}: 'lora_alpha' must be a positive number, got {alpha!r}")
    extra = {"base_model_name_or_path": export.resolve_base(directory, cfg.get("base_model_name_or_path"))}
    adapter = from_state_dict(sd, r, alpha, _names(cfg.get("target_modules")), cfg.get("use_rslora", False),
                              cfg.get("lora_dropout", 0.0), extra, _names(cfg.get("modules_to_save")))
    cli.check(bool(adapter.factors), f"{w_path} holds no LoRA factors (lora_A / lora_B); nothing to merge")
    return adapter


METHODS = ("svd", "naive", "exact")


def check_compatible(adapters: list[Adapter], names: list[str] | None = None) -> None:
    """Same LoRA modules, layer shapes and head tensors in every adapter."""
    names = names or [f"adapter {i + 1}" for i in range(len(adapters))]
    ref = adapters[0]
    for a, name in zip(adapters[1:], names[1:]):
        if set(a.factors) != set(ref.factors) or a.target_modules != ref.target_modules:
            raise cli.UsageError(f"{name} adapts modules {a.target_modules} ({len(a.factors)} layers), "
                                 f"{names[0]} adapts {ref.target_modules} ({len(ref.factors)} layers); "
                                 f"adapters must have the same target modules")
        for m, (A, B) in a.factors.items():
            A0, B0 = ref.factors[m]
            cli.check(A.shape[1] == A0.shape[1] and B.shape[0] == B0.shape[0],
                      f"{name}: module {m} has shape {tuple(B.shape[:1]) + tuple(A.shape[1:])}, "
                      f"{names[0]} {tuple(B0.shape[:1]) + tuple(A0.shape[1:])}; adapters of different base models")
        cli.check(set(a.head) == set(ref.head) and all(a.head[k].shape == ref.head[k].shape for k in a.head),
                  f"{name}: classifier head differs from {names[0]}'s (tasks with different numbers of labels?)")


@torch.no_grad()
def merge(adapters: list[Adapter], weights, method: str = "svd", rank: int | None = None,
          alpha: float | None = None, names: list[str] | None = None) -> Adapter:
    """Fuse client adapters (see the module docstring). ``rank``: the SVD rank (default: the clients' rank);
    ``alpha``: the fused lora_alpha (default: the fused rank; naive keeps the clients' alpha)."""
    cli.check(method in METHODS, f"aggregation {method!r} unknown; expected one of {', '.join(METHODS)}")
    cli.check(len(adapters) >= 1, "no adapters to merge")
    cli.check(len(weights) == len(adapters), f"{len(weights)} weights for {len(adapters)} adapters")
    cli.check(all(w >= 0 for w in weights) and sum(weights) > 0, f"weights must be >= 0 with a positive sum: {weights}")
    check_compatible(adapters, names)
    total = float(sum(weights))
    w = [float(x) / total for x in weights]
    scales = [a.scale for a in adapters]
    ref = adapters[0]
    dims = {m: min(A.shape[1], B.shape[0]) for m, (A, B) in ref.factors.items()}
    if method == "naive":
        cli.check(len({(a.r, a.alpha, a.use_rslora) for a in adapters}) == 1,
                  "naive A/B averaging needs adapters of one rank and alpha; use svd or exact")
        fused_r = ref.r
    elif method == "svd":
        fused_r = int(rank if rank is not None else ref.r)
        cli.check(fused_r >= 1, f"--svd_rank must be at least 1, got {fused_r}")
    else:
        fused_r = min(sum(a.r for a in adapters), max(dims.values()))
    fused_alpha = ref.alpha if method == "naive" else float(alpha) if alpha is not None else float(fused_r)
    s_f = fused_alpha / fused_r

    factors = {}
    for m in ref.factors:
        As = [a.factors[m][0].float() for a in adapters]
        Bs = [a.factors[m][1].float() for a in adapters]
        if method == "naive":
            A, B = lora_merge.lora_naive_merge(As, Bs, w)
        elif method == "exact" and sum(a.r for a in adapters) <= dims[m]:
            A, B = lora_merge.lora_exact_merge(As, Bs, w, scales, out_scale=s_f)
        else:  # svd; or exact beyond full rank, where the SVD of rank >= min(out, in) is lossless
            A, B = lora_merge.lora_svd_merge(As, Bs, w, scales, fused_r, out_scale=s_f)
        pad = fused_r - A.shape[0]  # zero rows of A / columns of B up to the fused rank (the product is unchanged)
        if pad > 0:
            A, B = torch.cat([A, A.new_zeros(pad, A.shape[1])]), torch.cat([B, B.new_zeros(B.shape[0], pad)], dim=1)
        dtype = ref.factors[m][0].dtype
        factors[m] = (A.to(dtype).contiguous(), B.to(dtype).contiguous())

    head = {}
    if ref.head:
        keys = sorted(ref.head)
        mean = aggregate.WeightedMean([ref.head[k].float() for k in keys])
        for a, wk in zip(adapters, w):
            mean.add([a.head[k].float() for k in keys], wk)
        head = {k: t.to(ref.head[k].dtype) for k, t in zip(keys, mean.result())}
    rslora = ref.use_rslora and method == "naive"  # naive keeps the clients' r, alpha and scaling; the others set s_f
    return Adapter(factors, head, fused_r, fused_alpha, list(ref.target_modules), rslora, ref.dropout, dict(ref.extra),
                   list(ref.head_modules), list(ref.embeddings))


@torch.no_grad()
def merge_rel_error(clients: list[Adapter], weights, fused: Adapter) -> float:
    """||dW_bar - dW_fused||_F / ||dW_bar||_F over all modules, dW_bar the weighted mean update (dense)."""
    total = float(sum(weights))
    fd, num, den = fused.delta(), 0.0, 0.0
    for m in fd:
        mean = lora_merge.lora_delta([a.factors[m][0] for a in clients], [a.factors[m][1] for a in clients],
                                    [w / total for w in weights], [a.scale for a in clients])
        num += float((mean - fd[m]).pow(2).sum())
        den += float(mean.pow(2).sum())
    return math.sqrt(num / den) if den > 0 else 0.0


@torch.no_grad()
def error_by_rank(clients: list[Adapter], weights) -> list[float]:
    """``merge_rel_error`` of the SVD merge of ``clients`` at rank 1, 2, ... up to the sum of the client ranks or
    the widest module's min(out, in), whichever is smaller (lossless there): the curve a run's summary keeps for
    the plots. One pass: per module the singular values s of dW_bar (``lora_merge.lora_singular_values``, float64),
    the rank-r merge dropping s[r:], so error(r)^2 = sum_m sum s_m[r:]^2 / sum_m sum s_m^2."""
    check_compatible(clients)
    total = float(sum(weights))
    w, scales = [float(x) / total for x in weights], [c.scale for c in clients]
    dims = {m: min(A.shape[1], B.shape[0]) for m, (A, B) in clients[0].factors.items()}
    top = min(sum(c.r for c in clients), max(dims.values()))
    tail = torch.zeros(top + 1, dtype=torch.float64)  # tail[r]: sum over modules of the squares beyond rank r
    for m in dims:
        s2 = lora_merge.lora_singular_values([c.factors[m][0] for c in clients], [c.factors[m][1] for c in clients],
                                             w, scales, compute_dtype=torch.float64).pow(2)
        after = s2.flip(0).cumsum(0).flip(0)  # after[i] = sum s2[i:]
        tail[:after.numel()] += after
    den = float(tail[0])
    return [math.sqrt(float(tail[r]) / den) if den > 0 else 0.0 for r in range(1, top + 1)]
