"""Refuse, before anything is allocated, sizes that cannot fit in memory: a sequence length, width, depth,
vocabulary or batch size whose model and activations need more than the device has would otherwise end in an
allocator traceback or a native abort after the work started.

Each subproject estimates its model where it builds it (``transformer``: parameters with their gradients and
AdamW state, the largest activations of one training step: per layer batch x seq x width and batch x heads x
seq^2, the logits batch x seq x vocab) and calls ``check_fits``, which compares the estimate with the memory
available (``available``) and, when it is over, says which single size would fit. The estimate is a lower
bound of what a step really takes (float32, no allocator slack, no framework buffers), so a refusal is certain
and nothing that fits is refused.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from common.errors import UsageError

FLOAT = 4          # bytes of a float32
ADAM_STATES = 2    # AdamW's two moments per trainable parameter


def available(device: torch.device | str = "cpu") -> int:
    """Bytes free for this process: the CUDA device's free memory, else the machine's available memory
    (psutil, else /proc/meminfo's MemAvailable; unknown: no limit)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


def transformer(*, params: int, trainable: int | None = None, batch: int, seq: int, width: int, layers: int,
                heads: int, vocab: int, inner: int | None = None) -> dict[str, int]:
    """A lower bound of one training step's memory (bytes) of a layered sequence model: every parameter, the
    trainable ones' gradients and AdamW moments, and the activations autograd keeps: per layer the width-sized
    tensors of every position (``inner``: a wider inner projection, e.g. the MLP's or Mamba's), the attention
    scores (``heads`` 0: none), and the logits with their gradient."""
    trainable = params if trainable is None else trainable
    inner = inner or width
    tokens = batch * seq
    return {"parameters, gradients and optimizer state": FLOAT * (params + trainable * (1 + ADAM_STATES)),
            "activations": FLOAT * layers * (tokens * (2 * width + inner) + batch * heads * seq * seq),
            "logits": FLOAT * 2 * tokens * vocab}


def config_dims(config) -> tuple[int, int, int] | None:
    """(width, layers, heads) of a transformers config or a dict (GPT-2's names or the usual ones); None if absent."""
    get = config.get if isinstance(config, dict) else lambda n, d=None: getattr(config, n, d)
    names = (("n_embd", "hidden_size", "d_model"), ("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"))
    dims = [next((get(n) for n in group if isinstance(get(n), int)), None) for group in names]
    return None if None in dims else tuple(dims)


def check_model(config, *, seq: tuple[str, int], batch: tuple[str, int], vocab: int, device, what: str,
                params: int | None = None, trainable_all: bool = True, examples: int | None = None,
                longest: int | None = None, outputs: int | None = None) -> None:
    """``check_fits`` for a transformer of ``config`` (``config_dims``; ``params``: the built model's count, else
    estimated as embeddings and positions plus 12 width^2 a layer); ``seq`` and ``batch``: (flag, value);
    ``trainable_all`` False: adapters only train (left out, a lower bound); ``examples``: a batch takes at most
    this many (the scripts' batches stop at the data); ``longest``: a sequence at most this long (batches trimmed
    to their longest example); ``outputs``: the width of the head's output (default ``vocab``: an LM's logits)."""
    dims = config_dims(config)
    if dims is None:
        return
    width, layers, heads = dims

    def estimate(size: dict) -> dict:
        n = params or (vocab + size[seq[0]]) * width + layers * 12 * width * width
        b, t = min(size[batch[0]], examples or size[batch[0]]), min(size[seq[0]], longest or size[seq[0]])
        return transformer(params=n, trainable=n if trainable_all else 0, batch=b, seq=t, width=width, layers=layers,
                           heads=heads, vocab=outputs or vocab, inner=4 * width)

    check_fits(estimate, dict((seq, batch)), device, what=what)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n < 2**50 else f"{n / 2**40:.3g} TiB"


def _largest(estimate: Callable[[dict], dict], sizes: dict[str, int], flag: str, limit: int) -> int:
    """The largest value of ``flag`` (the others as given) whose estimate is within ``limit``; 0 if none."""
    lo, hi = 0, sizes[flag]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(estimate({**sizes, flag: mid}).values()) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_fits(estimate: Callable[[dict], dict], sizes: dict[str, int], device: torch.device | str = "cpu",
               what: str = "the run") -> None:
    """``estimate(sizes)``: {part: bytes} for the sizes ``{"--seq-len": 128, ...}`` the flags give. Over the
    memory ``available`` on ``device``: one line with the estimate, what is available and, for each size, the
    largest value that would fit with the others as given."""
    parts = estimate(sizes)
    need, have = sum(parts.values()), available(device)
    if need <= have:
        return
    fits = [f"{flag} {n}" for flag in sizes if (n := _largest(estimate, sizes, flag, have)) >= 1]
    detail = ", ".join(f"{part} {_gib(b)}" for part, b in parts.items())
    raise UsageError(f"{what} needs at least {_gib(need)} ({detail}) but {_gib(have)} is available on "
                     f"{torch.device(device).type}; " + (f"what fits, one size at a time: {' or '.join(fits)}"
                                                         if fits else "no size given here fits; a smaller model"))
