"""What makes a figure read at a glance, checked on the Figure object as ``common.runs.savefig`` saves it:
no two texts overlap, no empty panel, no spread claimed that is not drawn, a file name without spaces or
brackets, at least ``MIN_WIDTH_PX`` wide as saved.

    with checked_figures(monkeypatch) as (problems, saved):
        plot_mamba.main([...])
    assert problems == []
"""
from __future__ import annotations

import contextlib
import re
from itertools import combinations
from pathlib import Path

from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread
from matplotlib.text import Text

from common import runs as R

MIN_WIDTH_PX = 1000
# words that say a band or error bar shows a spread over seeds
CLAIMS = re.compile(r"\bbands?\b|±\s*(sample\s+)?sd|error bars|range over seeds", re.IGNORECASE)
UNSAFE = re.compile(r"[\s\[\](){}'\"]")


def texts(fig) -> list[Text]:
    """Every visible, non-empty text drawn on ``fig``: suptitle and figure texts, titles, axis labels, the tick
    labels in view, offset texts, legend texts and titles."""
    found = list(fig.texts)
    legends = list(fig.legends)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        found += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        legends.append(ax.get_legend())
        if ax.axison:
            for axis in (ax.xaxis, ax.yaxis):
                found += [axis.label, axis.offsetText, *_tick_labels(axis)]
    for legend in filter(None, legends):
        found += [*legend.get_texts(), legend.get_title()]
    return [t for t in found if t.get_visible() and t.get_text().strip()]


def _tick_labels(axis) -> list[Text]:
    """The tick labels of the ticks inside the axis' view (the others are not drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
    return [label for tick in axis.get_major_ticks() + axis.get_minor_ticks()
            if lo - tol <= tick.get_loc() <= hi + tol for label in (tick.label1, tick.label2)
            if tick.get_visible() and label.get_visible()]


def overlaps(fig) -> list[str]:
    """Pairs of texts whose drawn boxes intersect (by more than a pixel each way)."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t, t.get_window_extent(renderer)) for t in texts(fig)]
    boxes = [(t, b) for t, b in boxes if b.width > 0 and b.height > 0]
    out = []
    for (t1, b1), (t2, b2) in combinations(boxes, 2):
        w = min(b1.x1, b2.x1) - max(b1.x0, b2.x0)
        h = min(b1.y1, b2.y1) - max(b1.y0, b2.y0)
        if w > 1 and h > 1:
            out.append(f"texts overlap: {t1.get_text()!r} and {t2.get_text()!r}")
    return out


def has_data(ax) -> bool:
    """A panel shows data: a line with points, a filled collection, a bar or an image."""
    lines = any(len(line.get_xdata()) and line.get_visible() for line in ax.lines
                if not _reference_line(line))
    collections = any(len(c.get_paths()) or len(getattr(c, "get_offsets", lambda: ())()) for c in ax.collections)
    return lines or collections or bool(ax.patches) or bool(ax.images)


def _reference_line(line) -> bool:
    """axhline / axvline: a reference, not data."""
    x, y = line.get_xdata(), line.get_ydata()
    return len(x) == 2 and (tuple(x) == (0, 1) or tuple(y) == (0, 1)) and line.get_transform() != line.axes.transData


def empty_panels(fig) -> list[str]:
    return [f"empty panel {ax.get_title()!r}" for ax in fig.axes
            if ax.get_visible() and ax.axison and not _colorbar(ax) and not has_data(ax)]


def _colorbar(ax) -> bool:
    return hasattr(ax, "_colorbar")


def drawn_spread(fig) -> bool:
    """Some band (fill_between) or error bar with a length is on the figure."""
    for ax in fig.axes:
        if any(type(c) is PolyCollection or type(c).__name__ == "FillBetweenPolyCollection" for c in ax.collections):
            return True
        for c in ax.containers:
            if isinstance(c, ErrorbarContainer) and c.lines[2]:
                return True
    return False


def false_spread(fig) -> list[str]:
    claims = [t.get_text() for t in texts(fig) if CLAIMS.search(t.get_text())]
    return [f"claims a spread it does not draw: {claims[0]!r}"] if claims and not drawn_spread(fig) else []


def figure_problems(fig, path) -> list[str]:
    """What is wrong with ``fig`` about to be saved as ``path`` (the name as the caller gave it)."""
    fig.canvas.draw()
    name = Path(path).name
    return [f"{name}: {p}" for p in overlaps(fig) + empty_panels(fig) + false_spread(fig)]


def saved_problems(written: list[Path]) -> list[str]:
    out = []
    for p in written:
        if UNSAFE.search(p.name):
            out.append(f"{p.name}: a file name with spaces, quotes or brackets")
        if p.suffix == ".png" and (width := imread(p).shape[1]) < MIN_WIDTH_PX:
            out.append(f"{p.name}: {width} px wide, under {MIN_WIDTH_PX}")
    return out


@contextlib.contextmanager
def checked_figures(monkeypatch):
    """Checks every figure saved through ``common.runs.savefig`` inside the block; yields (problems found, paths
    written)."""
    problems: list[str] = []
    saved: list[Path] = []
    original = R.savefig

    def savefig(fig, path, *args, **kw):
        fig.tight_layout()
        problems.extend(figure_problems(fig, path))
        written = original(fig, path, *args, **kw)
        problems.extend(saved_problems(written))
        saved.extend(written)
        return written

    monkeypatch.setattr(R, "savefig", savefig)
    try:
        yield problems, saved
    finally:
        monkeypatch.setattr(R, "savefig", original)
