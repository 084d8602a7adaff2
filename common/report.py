"""The one line every training script ends with, e.g.

    run directory: runs/fedavg_... | final validation perplexity 41.2 on 32 of 173 blocks (unigram 310.5,
    uniform 2048) | figures: runs/fedavg_.../perplexity.png | model: runs/fedavg_.../model
    (AutoModelForCausalLM.from_pretrained)

The metric names what it was measured on: a --quick run scores a few dozen examples, and a reader comparing two
runs must see that before the digits.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def ending_line(run_path: str | os.PathLike, metric: str, value, baselines: dict | None = None, *,
                figures: str | Sequence[str] | None = None, model: str | os.PathLike | None = None,
                loader: str | None = None, extra: str | None = None, scored: str | None = None) -> str:
    """``run directory: P | <metric> <value> on <scored> (<baseline> <b>, ...) | figures: ... | model: ... (<loader>)``.
    ``scored``: the evaluation set, e.g. "64 of 872 rows"; ``figures``: files in the run directory or a command;
    ``model``: default ``<run>/model`` when it exists."""
    run_path = Path(run_path)
    head = f"{metric} {_fmt(value)}" + (f" on {scored}" if scored else "")
    if baselines:
        head += " (" + ", ".join(f"{k} {_fmt(v)}" for k, v in baselines.items() if v is not None) + ")"
    parts = [f"run directory: {run_path}", head]
    if extra:
        parts.append(extra)
    if figures:
        items = [figures] if isinstance(figures, str) else list(figures)
        shown = [str(run_path / f) if (run_path / f).exists() else f for f in items]
        parts.append("figures: " + ", ".join(shown))
    if model is None and (run_path / "model").is_dir():
        model = run_path / "model"
    if model is not None:
        parts.append(f"model: {model}" + (f" ({loader})" if loader else ""))
    return " | ".join(parts)


def print_ending(*args, **kwargs) -> str:
    """Print ``ending_line(*args, **kwargs)`` on rank 0 (``--quiet`` too: the run's one line); return it."""
    line = ending_line(*args, **kwargs)
    if int(os.environ.get("RANK", "0")) == 0:
        print(line, flush=True)
    return line
