"""Reading run directories, for the plot scripts and the grid scripts' reports (so no subproject imports
``plots/``).

    runs = [load_run(p) for p in find_runs("runs", "fedfisher_*")]
    for config, group in group_runs(runs):              # one group per configuration, seeds pooled
        x, ys = aligned(group, "ppl")                   # [P], [seeds, P]: the rounds every seed reached
        draw_seeds(ax, x, ys.T, label(config, varying_keys([c for c, _ in groups])))  # mean line, ± sd band
    savefig(fig, "figures/mamba_ppl.png", pdf=True)
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UsageError, check, check_out_dir
from common.runlog import ARGS_FILE, METRICS_FILE, SUMMARY_FILE, portable, read_rows

# figures as files only, on headless machines too: the backend matplotlib takes when it first loads (an environment
# variable, so a script's --help, which draws nothing, does not load matplotlib), or now if it is loaded already
os.environ["MPLBACKEND"] = "Agg"
if "matplotlib" in sys.modules:
    sys.modules["matplotlib"].use("Agg")

# Arguments that do not define a configuration: runs differing only in these are pooled.
DEFAULT_GROUP_IGNORE = ("seed", "run_name", "out_dir", "resume", "quiet", "device", "num_workers",
                        "data_dir", "cache_dir", "checkpoint_every")
# ... and for a figure also the options that change how a run is logged or executed, not what it computes
DRAW_IGNORE = DEFAULT_GROUP_IGNORE + ("report_to", "overwrite", "extend", "config", "compile", "compile_mode",
                                      "compile_backend", "eval_batch_size", "per_device_eval_batch_size")


def find_runs(root: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Run directories (holding args.json) matching the glob ``pattern`` (``**``: nested) under ``root``, sorted."""
    return sorted(p for p in Path(root).glob(pattern) if p.is_dir() and (p / ARGS_FILE).is_file())


def load_run(path: str | os.PathLike) -> dict:
    """{"path", "name", "args", "meta", "rows", "summary"} of one run directory ("summary": None if unfinished)."""
    path = Path(path)
    meta = _read_json(path / ARGS_FILE)
    summary = _read_json(path / SUMMARY_FILE) if (path / SUMMARY_FILE).is_file() else None
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


def shown(path: str | os.PathLike | None) -> str | None:
    """``path`` relative to the working directory, as records keep paths (reports name no machine's folders)."""
    return portable(str(Path(path).resolve())) if path else path


def load_runs(root: str | os.PathLike, pattern: str = "*") -> list[dict]:
    return [load_run(p) for p in find_runs(root, pattern)]


def load_roots(roots: Sequence[str | os.PathLike], pattern: str = "*") -> list[dict]:
    """``load_runs`` of every folder in ``roots`` (``--runs A B ...``), each run once, unfinished runs left out."""
    out, seen = [], set()
    for root in roots:
        check(Path(root).is_dir(), f"--runs {root}: no such folder; expected a folder holding run directories")
        for run in load_runs(root, pattern):
            if run["path"].resolve() in seen:
                continue
            seen.add(run["path"].resolve())
            if run["summary"] is None:
                print(f"left out {run['path']}: unfinished (no summary.json)")
                continue
            out.append(run)
    return out


NUMBER = (int, float)


def with_keys(runs: Iterable[dict], what: str, args: dict | None = None, summary: dict | None = None) -> list[dict]:
    """The runs whose args.json / summary.json hold every key of ``args`` / ``summary`` with a value of the
    given type(s) (``NUMBER``: a number); each other run is left out with one line naming the key."""
    kept = []
    for run in runs:
        problem = _missing(run["args"], args or {}, "args.json") or \
            _missing(run.get("summary") or {}, summary or {}, "summary.json")
        if problem:
            print(f"left out of {what}: {run['path']} ({problem})")
        else:
            kept.append(run)
    return kept


def _missing(values: dict, wanted: dict, where: str) -> str | None:
    """What is wrong with ``values`` against ``{key: type(s)}``: None when nothing."""
    for key, types in wanted.items():
        value = values.get(key)
        if value is None:
            return f"{where} has no {key}"
        types = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"{where}: {key} is {value!r:.30}, not {'/'.join(t.__name__ for t in types)}"
    return None


def split_by(runs: Sequence[dict], keys: Sequence[str]) -> list[tuple[str, list[dict]]]:
    """Runs partitioned by their values of ``keys``: [(label, runs)] in first-seen order, the label naming the
    keys whose values differ between the parts ("" for one part): a figure's separate panels or tables."""
    return _labelled(group_runs(runs, keys=keys))


def split_configs(groups: dict[tuple, list[dict]], ignore: Sequence[str] = DEFAULT_GROUP_IGNORE
                  ) -> dict[tuple, list[dict]]:
    """Every group of ``{(..., name): runs}`` split by configuration (arguments equal except ``ignore``), the last
    key element extended by the arguments that differ ("FedAvg [num_rounds=2]"): seeds of different runs are
    never averaged."""
    out: dict[tuple, list[dict]] = {}
    for key, runs in groups.items():
        for extra, members in _labelled(group_runs(runs, ignore)):  # extra is "" for a single configuration
            out[key[:-1] + (f"{key[-1]} [{extra}]",) if extra else key] = members
    return out


def group_runs(runs: Iterable[dict], ignore: Sequence[str] = DEFAULT_GROUP_IGNORE,
               keys: Sequence[str] | None = None) -> list[tuple[dict, list[dict]]]:
    """[(config, runs)]: runs whose arguments agree but ``ignore`` (or on ``keys``, from args.json or summary.json).
    An argument a run does not record (its script predates the flag) takes the value every run that records it
    agrees on: a new flag's default keeps the old behaviour. Where those runs disagree it stays a difference."""
    runs = list(runs)
    configs = [{k: v for k, v in run["args"].items() if k not in ignore} if keys is None else
               {k: run["args"][k] if k in run["args"] else (run.get("summary") or {}).get(k) for k in keys}
               for run in runs]
    if keys is None:
        for key in {k for c in configs for k in c}:
            values = {json.dumps(c[key], sort_keys=True, default=str) for c in configs if key in c}
            if len(values) == 1:
                agreed = next(c[key] for c in configs if key in c)
                for c in configs:
                    c.setdefault(key, agreed)
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for config, run in zip(configs, runs):
        groups.setdefault(json.dumps(config, sort_keys=True, default=str), (config, []))[1].append(run)
    return list(groups.values())


def _labelled(parts: list[tuple[dict, list[dict]]]) -> list[tuple[str, list[dict]]]:
    shown = varying_keys([config for config, _ in parts])
    return [(label(config, shown), members) for config, members in parts]


def varying_keys(configs: Sequence[dict]) -> list[str]:
    """Argument names whose values differ between ``configs`` (what a legend needs to show), sorted."""
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def label(config: dict, keys: Sequence[str]) -> str:
    """A legend label such as "method=fisher, num_clients=4" from the given keys of ``config``."""
    return ", ".join(f"{k}={config.get(k)}" for k in keys)


def series(run: dict, key: str, x: str = "round") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one run: the rows that have both ``x`` and ``key``; a repeated x keeps its last value."""
    points = {r[x]: r[key] for r in run["rows"] if _number(r.get(x)) and _number(r.get(key))}  # others: not drawn
    xs = sorted(points)
    return np.array(xs, dtype=np.float64), np.array([points[v] for v in xs], dtype=np.float64)


def _number(v) -> bool:
    return isinstance(v, NUMBER) and not isinstance(v, bool)


def aligned(runs: Sequence[dict], key: str, x: str = "round") -> tuple[np.ndarray, np.ndarray]:
    """(x [P], values [runs, P]) of metric ``key`` at the x values every run reached."""
    if not runs:
        raise ValueError(f"no runs to align for {key!r}")
    lookups = [dict(zip(*(a.tolist() for a in series(r, key, x)))) for r in runs]
    common = sorted(set.intersection(*(set(d) for d in lookups)))
    return np.array(common, dtype=np.float64), np.array([[d[v] for v in common] for d in lookups], dtype=np.float64)


def by_seed(runs: Sequence[dict], key: str) -> dict:
    """{seed: summary[key]} over the finished runs that report it; a repeated seed is an error."""
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


def draw_seeds(ax: Any, at: Sequence[float], values: Iterable[Sequence[float]], label: str | None = None,
               kind: str = "band", spread: str = "sd", horizontal: bool = False, width: float = 0.8, **kw) -> Any:
    """The mean over seeds of each ``values[i]`` at ``at[i]`` with its spread: sample sd (ddof=1) or, with
    ``spread="range"``, min to max; none for one seed. ``kind``: "band" (line and band), "points" (markers with
    error bars), "bars" (of ``width``; ``horizontal``: along x). ``label`` gets n, the seeds per position."""
    vals = [np.asarray(v, dtype=np.float64) for v in values]
    ns = [v.size for v in vals if v.size]
    mean = np.array([v.mean() if v.size else np.nan for v in vals])
    if spread == "range":
        lo, hi = (np.array([f(v) if v.size else np.nan for v in vals]) for f in (np.min, np.max))
    else:
        sd = np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in vals])
        lo, hi = mean - sd, mean + sd
    if label is not None and ns:
        label += f" (n={min(ns)})" if min(ns) == max(ns) else f" (n={min(ns)}-{max(ns)})"
    if kind == "band":
        line, = ax.plot(at, mean, label=label, **kw)
        if max(ns, default=0) > 1:
            ax.fill_between(at, lo, hi, alpha=0.15, color=line.get_color())
        return line
    err = {"xerr" if horizontal else "yerr": [mean - lo, hi - mean] if max(ns, default=0) > 1 else None}
    kw = {"capsize": 3, "label": label, **err, **kw}
    if kind == "bars":
        return (ax.barh if horizontal else ax.bar)(at, mean, width, **kw)
    return ax.errorbar(*((mean, at) if horizontal else (at, mean)), **kw)


def figure_legend(fig: Any, axes: Iterable[Any], ncol: int = 4, fontsize: int = 8) -> None:
    """One legend below all panels (every label once), so no legend covers bars or curves."""
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(ncol, len(handles)),
                   fontsize=fontsize, bbox_to_anchor=(0.5, 0.0), frameon=False)


MIN_WIDTH_PX = 1000  # every saved figure at least this wide: it reads on a screen without zooming
DPI = 150


def file_name(stem: str) -> str:
    """``stem`` as a file name without spaces, brackets or other shell-unfriendly characters:
    'rounds_sst2 [max_eval_samples=300]' -> 'rounds_sst2_max_eval_samples-300'."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem.replace("=", "-")).strip("_")
    return re.sub(r"_+", "_", name) or "figure"


def spread_note(groups: Iterable[Sequence], spread: str) -> str:
    """``spread`` (what a band or error bar shows, e.g. "bands: ± sample sd over seeds") when some group has two
    or more seeds, else "one seed each: no spread drawn"; a figure never claims a spread it does not draw."""
    return spread if any(len(g) > 1 for g in groups) else "one seed each: no spread drawn"


def savefig(fig: Any, path: str | os.PathLike, pdf: bool = False, own_run: bool = False) -> list[Path]:
    """Save ``fig`` (tight, 150 dpi, more where that leaves it under MIN_WIDTH_PX wide) as ``path`` with suffix
    .png (and .pdf), its name made safe by ``file_name``, then close it; the written paths. The one place every
    figure is saved: tests check each figure's layout here. ``own_run``: a run's own figure, written into its run
    directory (elsewhere --out never may be inside one)."""
    path = Path(path)
    path = path.with_name(file_name(path.stem) + path.suffix)
    if not own_run:
        check_out_dir(path.parent, "--out")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    width = fig.get_tightbbox(fig.canvas.get_renderer()).width  # inches, as bbox_inches="tight" saves it
    dpi = max(DPI, int(np.ceil(MIN_WIDTH_PX / max(width, 1e-3))) + 1)
    written = [path.with_suffix(suffix) for suffix in ((".png", ".pdf") if pdf else (".png",))]
    for out in written:
        fig.savefig(out, dpi=dpi, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return written
