"""A run's learning curve with its reference points: the PNG every language-model script leaves in its run."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib.pyplot as plt
    return plt


def reference_lines(ax, refs: dict | None) -> None:
    """Horizontal lines at a language model's reference points (uniform, unigram, the optimum per word)."""
    styles = (("uniform_ppl", "uniform guess", ":", "0.5"), ("unigram_ppl", "unigram (train)", "-.", "0.35"),
              ("optimal_ppl_word", "optimum per word", "--", "k"))
    for key, name, ls, color in styles:
        if refs and refs.get(key):
            ax.axhline(refs[key], color=color, ls=ls, lw=1, label=f"{name} {refs[key]:.1f}")


def perplexity_curve(rows: list[dict], path, title: str = "", refs: dict | None = None) -> Path:
    """One run's validation perplexity per evaluation with its reference points (cheap: drawn after every run)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    x_key = "round" if rows and "round" in rows[0] else "step"
    evals = [r for r in rows if "val_ppl" in r]
    xs = [r[x_key] for r in evals]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(xs, [r["val_ppl"] for r in evals], marker="o", ms=4, label="model, per token")
    if evals and "val_ppl_word" in evals[0]:
        ax.plot(xs, [r["val_ppl_word"] for r in evals], marker="s", ms=4, ls="--", label="model, per word")
    reference_lines(ax, refs)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x_key)
    ax.set_ylabel("validation perplexity (log)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    from common import runs as R  # the one place figures are saved (150 dpi, at least 1,000 px wide)

    return R.savefig(fig, path, own_run=True)[0]
