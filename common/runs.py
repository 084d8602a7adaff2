"""Reading run directories: the plot scripts and the grid scripts' reports (plots read run directories and never
train; they and the subprojects share this module, so no subproject imports ``plots/``).

    runs = [load_run(p) for p in find_runs("runs", "fedfisher_*")]
    for config, group in group_runs(runs):              # one group per configuration, seeds pooled
        x, mean, std = mean_std(group, "ppl")           # aligned on "round"
        ax.plot(x, mean, label=label(config, varying_keys([c for c, _ in groups])))
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    savefig(fig, "figures/mamba_ppl.png", pdf=True)
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: works on headless machines, and before pyplot is first imported

import numpy as np

from common import stats
from common.errors import UsageError, check_out_dir
from common.runlog import ARGS_FILE, METRICS_FILE, SUMMARY_FILE, read_rows

# Arguments that do not define a configuration: runs differing only in these are pooled.
DEFAULT_GROUP_IGNORE = ("seed", "run_name", "out_dir", "resume", "quiet", "device", "num_workers",
                        "data_dir", "cache_dir")


def find_runs(root: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Run directories under ``root`` whose name matches the glob ``pattern`` and that hold args.json.

    ``pattern`` is relative to ``root`` and may contain ``**`` to search nested folders. Sorted by path.
    """
    root = Path(root)
    return sorted(p for p in root.glob(pattern) if p.is_dir() and (p / ARGS_FILE).is_file())


def load_run(path: str | os.PathLike) -> dict:
    """{"path", "name", "args", "meta", "rows", "summary"} of one run directory.

    "summary" is None for a run that has not finished (no summary.json yet); a torn final metrics row is
    skipped, as after a crash.
    """
    path = Path(path)
    meta = _read_json(path / ARGS_FILE)
    summary_path = path / SUMMARY_FILE
    summary = _read_json(summary_path) if summary_path.is_file() else None
    try:
        rows = read_rows(path / METRICS_FILE)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise UsageError(f"{e}; repair or remove the run directory {path}") from None
    bad = next((r for r in rows if not isinstance(r, dict)), None)
    if bad is not None:
        raise UsageError(f"{path / METRICS_FILE}: a row is not a JSON object ({bad!r:.40}); repair or remove {path}")
    if not isinstance(meta.get("args", {}), dict) or (summary is not None and not isinstance(summary, dict)):
        raise UsageError(f"{path}: args.json or summary.json does not have the run-directory layout; repair or "
                         "remove it")
    return {"path": path, "name": path.name, "args": meta.get("args", {}), "meta": meta,
            "rows": rows, "summary": summary}


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``UsageError`` (one line, exit 2) for a corrupt or foreign file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not valid JSON ({type(e).__name__}: {e}); repair or remove the run directory "
                         f"{path.parent}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path} does not hold a JSON object; repair or remove the run directory {path.parent}")
    return value


def load_runs(root: str | os.PathLike, pattern: str = "*") -> list[dict]:
    """``load_run`` of every ``find_runs(root, pattern)``."""
    return [load_run(p) for p in find_runs(root, pattern)]


def config_of(run: dict, ignore: Sequence[str] = DEFAULT_GROUP_IGNORE) -> dict:
    """The run's arguments without the ``ignore``d ones (by default the seed and run bookkeeping)."""
    return {k: v for k, v in run["args"].items() if k not in ignore}


def group_runs(runs: Iterable[dict], ignore: Sequence[str] = DEFAULT_GROUP_IGNORE) -> list[tuple[dict, list[dict]]]:
    """Group runs whose arguments agree except for ``ignore`` (the seed): [(config, runs)], in the order
    each configuration first appears."""
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for run in runs:
        config = config_of(run, ignore)
        key = json.dumps(config, sort_keys=True)
        groups.setdefault(key, (config, []))[1].append(run)
    return list(groups.values())


def varying_keys(configs: Sequence[dict]) -> list[str]:
    """Argument names whose values differ between ``configs`` (what a legend needs to show), sorted."""
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def label(config: dict, keys: Sequence[str]) -> str:
    """A legend label such as "method=fisher, num_clients=4" from the given keys of ``config``."""
    return ", ".join(f"{k}={config.get(k)}" for k in keys)


def series(run: dict, key: str, x: str = "round") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one run: the rows that have both ``x`` and ``key``; a repeated x keeps its last value."""
    points = {r[x]: r[key] for r in run["rows"] if x in r and key in r and r[key] is not None}
    xs = np.array(sorted(points), dtype=np.float64)
    return xs, np.array([points[v] for v in sorted(points)], dtype=np.float64)


def mean_std(runs: Sequence[dict], key: str, x: str = "round",
             ddof: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation of metric ``key`` over runs (seeds), aligned on ``x``.

    Only x values that every run reached are kept, so a mean never mixes different numbers of seeds.
    ``ddof=1`` (default) is the sample sd, as in every table (``common.stats``); one run gives sd 0 here
    (a band of zero width), and legends should say n. Returns (x [P], mean [P], std [P]).
    """
    if not runs:
        raise ValueError(f"no runs to average for {key!r}")
    lookups = [dict(zip(*(a.tolist() for a in series(r, key, x)))) for r in runs]
    common = sorted(set.intersection(*(set(d) for d in lookups)))
    xs = np.array(common, dtype=np.float64)
    if xs.size == 0:
        return xs, np.zeros(0), np.zeros(0)
    ys = np.array([[d[v] for v in common] for d in lookups], dtype=np.float64)  # [runs, P]
    std = ys.std(axis=0, ddof=ddof) if len(runs) > ddof else np.zeros(xs.size)
    return xs, ys.mean(axis=0), std


def summary_stats(runs: Sequence[dict], key: str, ddof: int = 1) -> tuple[float, float, int]:
    """(mean, std, n) of ``summary[key]`` over the finished runs that report it (sample sd by default;
    nan for a single run: format with ``common.stats.fmt``, which shows "n=1" instead of ± 0)."""
    values = np.array([r["summary"][key] for r in runs if r.get("summary") and r["summary"].get(key) is not None],
                      dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), 0
    std = float(values.std(ddof=ddof)) if values.size > ddof else float("nan")
    return float(values.mean()), std, int(values.size)


def by_seed(runs: Sequence[dict], key: str) -> dict:
    """{seed: summary[key]} over the finished runs that report it; a repeated seed is an error (two runs of
    one configuration and seed would be silently overwritten in a paired comparison)."""
    out: dict = {}
    for r in runs:
        value = (r.get("summary") or {}).get(key)
        if value is None:
            continue
        seed = r["args"].get("seed")
        if seed in out:
            raise ValueError(f"two runs with seed {seed} in one group ({r['path']}); paired statistics need one each")
        out[seed] = float(value)
    return out


def seed_summary(runs: Sequence[dict], key: str) -> stats.Summary:
    """``common.stats.summarize`` of ``summary[key]`` over the runs (seeds)."""
    return stats.summarize(by_seed(runs, key).values())


def seed_paired(runs_a: Sequence[dict], runs_b: Sequence[dict], key: str) -> stats.Paired:
    """``common.stats.paired``: ``summary[key]`` of a minus b, matched by seed."""
    return stats.paired(by_seed(runs_a, key), by_seed(runs_b, key))


def savefig(fig: Any, path: str | os.PathLike, pdf: bool = False, dpi: int = 150, close: bool = True) -> list[Path]:
    """Save ``fig`` as PNG (and PDF with ``pdf=True``) with a tight layout, creating parent folders.

    ``path``'s suffix is replaced by .png / .pdf. Returns the written paths.
    """
    path = Path(path)
    check_out_dir(path.parent, "--out")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    written = []
    for suffix in (".png", ".pdf") if pdf else (".png",):
        out = path.with_suffix(suffix)
        fig.savefig(out, dpi=dpi, bbox_inches="tight")
        written.append(out)
    if close:
        import matplotlib.pyplot as plt
        plt.close(fig)
    return written
