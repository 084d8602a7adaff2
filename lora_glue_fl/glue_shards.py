"""Client shards of a GLUE training split, and their JSON manifests in the source project's layout.

Modes (``make_client_splits``; lora_glue_fl/README.md): ``iid`` (stratified by label; MNLI label|genre, STS-B
score bins of 0.2), ``overlap`` (``common.shard.overlap``), ``category`` (``common.shard.category`` on
``category_key``), ``category_overlap`` (``category`` on all but a shared pool, plus the pool) and ``dirichlet``
(label skew, Hsu et al. 2019: per label, client proportions ~ Dir(``alpha``), redrawn until every client holds
``min_per_label`` of every label). Manifests: ``client_<i>.json`` (i from 1) = {"dataset", "indices"} and
``summary.json`` (the source's keys plus ``label_histograms``).
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from common import checkpoint, cli, shard
from common.seed import numpy_rng, stream_seed
from lora_glue_fl.glue_tasks import TASKS, Examples, get_task

MODES = ("iid", "overlap", "category", "category_overlap", "dirichlet")
DIRICHLET_TRIES = 10000


def bin_scores(values, bin_width: float = 0.2) -> list[int]:
    """STS-B scores in [0, 5] -> bin ids: [0, 0.2) -> 0, [0.2, 0.4) -> 1, ... (5.0 joins the top bin)."""
    top = math.floor(5.0 / bin_width) - 1
    # rounded first: the readers' float32 holds 1.4 as 1.3999999, under bin 7's edge (scores have 3 decimals)
    return [min(math.floor(round(float(v) / bin_width, 4)), top) for v in values]


def strata(train: Examples, task_name: str, bin_stsb: bool = True) -> list:
    """The stratification key of every example for ``--mode iid``."""
    if task_name == "mnli" and train.genre is not None:
        return [f"{y}|{g}" for y, g in zip(train.label.tolist(), train.genre)]
    return category_values(train, task_name, "label", bin_stsb)


def category_values(train: Examples, task_name: str, key: str, bin_stsb: bool = True) -> list:
    """The category of every example for ``--category_key`` (``label`` or ``labels``, ``genre``)."""
    if key in ("label", "labels"):
        return bin_scores(train.label) if task_name == "stsb" and bin_stsb else train.label.tolist()
    return train.column(key)


def stratified_iid(keys: list, num_clients: int, seed: int) -> list[np.ndarray]:
    """Each stratum shuffled and dealt round-robin, continuing where the previous one stopped (client sizes
    differ by at most one)."""
    rng = numpy_rng(seed, "glue-iid")
    buckets = defaultdict(list)
    for i, k in enumerate(keys):
        buckets[k].append(i)
    dealt = np.concatenate([np.asarray(buckets[k], dtype=np.int64)[rng.permutation(len(buckets[k]))]
                            for k in sorted(buckets, key=str)])  # example j of the deal goes to client j % K
    return [np.sort(dealt[c::num_clients]) for c in range(num_clients)]


def _codes(values: list) -> np.ndarray:
    """Category values (str, int, float) -> integer codes for common.shard.category."""
    uniq = {v: i for i, v in enumerate(sorted(set(values), key=str))}
    return np.asarray([uniq[v] for v in values], dtype=np.int64)


def dirichlet_min_per_label(labels: list, k: int, alpha: float, seed: int, min_per_label: int) -> list[np.ndarray]:
    """``common.shard.dirichlet`` draws (a stream per attempt) until every client holds ``min_per_label``
    examples of every label; one line when ``DIRICHLET_TRIES`` draws all fail."""
    codes = _codes(labels)
    n_labels, rarest = int(codes.max()) + 1, int(np.bincount(codes).min())
    cli.check(min_per_label * k <= rarest, f"--min_per_label {min_per_label} x {k} clients exceeds the rarest label's "
                                           f"{rarest} examples")
    for attempt in range(DIRICHLET_TRIES):
        shards = shard.dirichlet(codes, k, alpha, seed=stream_seed(seed, "glue-dirichlet", attempt))
        if min(np.bincount(codes[s], minlength=n_labels).min() for s in shards) >= min_per_label:
            return shards
    raise cli.UsageError(f"dirichlet alpha={alpha}: no draw in {DIRICHLET_TRIES} left every client "
                         f"{min_per_label} examples of every label; raise --alpha or lower --min_per_label")


def make_client_splits(train: Examples, task_name: str, k: int, mode: str = "iid", seed: int = 42,
                       overlap_ratio: float = 0.0, category_key: str | None = None,
                       bin_stsb: bool = True, alpha: float = 1.0, min_per_label: int = 1) -> dict:
    """Partition ``train`` over ``k`` clients -> the source's shard record (see the module docstring)."""
    task_name = task_name.lower()
    get_task(task_name)
    cli.check(k >= 1, f"--k (number of clients) must be at least 1, got {k}")
    cli.check(mode in MODES, f"--mode {mode!r} unknown; expected one of {', '.join(MODES)}")
    cli.check(0.0 <= overlap_ratio < 1.0, f"--overlap_ratio must be in [0, 1), got {overlap_ratio}")
    n = len(train)
    cli.check(n >= k, f"{n} training examples cannot fill {k} clients")
    cli.check(category_key is not None or mode not in ("category", "category_overlap"),
              f"--mode {mode} needs --category_key (label or genre)")

    if mode == "iid":
        shards = stratified_iid(strata(train, task_name, bin_stsb), k, seed)
    elif mode == "dirichlet":
        cli.check(alpha > 0, f"--alpha must be positive, got {alpha}")
        cli.check(min_per_label >= 0, f"--min_per_label must be >= 0, got {min_per_label}")
        shards = dirichlet_min_per_label(category_values(train, task_name, "label", bin_stsb), k, alpha, seed,
                                         min_per_label)
    elif mode == "overlap":
        shards = shard.overlap(n, k, overlap_ratio, seed)
    elif mode == "category":
        shards = shard.category(_codes(category_values(train, task_name, category_key, bin_stsb)), k, seed)
    else:
        perm = numpy_rng(seed, "glue-pool").permutation(n)
        n_pool = shard.overlap_pool_size(n, k, overlap_ratio)
        cli.check(n - n_pool >= k,
                  f"--overlap_ratio {overlap_ratio} leaves {n - n_pool} private examples for {k} clients")
        pool, rest = np.sort(perm[:n_pool]), np.sort(perm[n_pool:])
        cats = _codes(category_values(train.subset(rest), task_name, category_key, bin_stsb))
        own = shard.category(cats, k, seed)
        shards = [np.union1d(rest[o], pool) for o in own]
    shards = [np.asarray(s, dtype=np.int64) for s in shards]
    return {"client_indices": [s.tolist() for s in shards], "size_per_client": [int(s.size) for s in shards],
            "total_train": n, "task": task_name, "mode": mode,
            "meta": {"seed": seed, "overlap_ratio": overlap_ratio, "category_key": category_key, "bin_stsb": bin_stsb,
                     **({"alpha": alpha, "min_per_label": min_per_label} if mode == "dirichlet" else {})},
            "label_histograms": label_histograms(shards, train, task_name)}


def label_histograms(shards, train: Examples, task_name: str) -> list[dict]:
    """Per client: label (STS-B: score bin) -> count, keys as strings (JSON)."""
    y = category_values(train, task_name, "label")
    return [{str(c): n for c, n in sorted(Counter(y[i] for i in s).items())} for s in shards]


def save_shard_manifests(out_dir, info: dict) -> None:
    """client_1.json .. client_K.json and summary.json, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("client_*.json"):  # a previous, larger K must not leave stale clients behind
        if re.fullmatch(r"client_\d+\.json", old.name) and int(old.stem.split("_")[1]) > len(info["client_indices"]):
            old.unlink()
    for i, idx in enumerate(info["client_indices"], start=1):
        checkpoint.atomic_write_json(out_dir / f"client_{i}.json", {"dataset": info["task"], "indices": idx})
    checkpoint.atomic_write_json(out_dir / "summary.json", info)


def read_shard_manifests(shard_dir) -> tuple[list[np.ndarray], dict]:
    """(per-client index arrays in client order, summary or {} with "task" the manifests' dataset); one line
    when there is none, a manifest is malformed, or the files name different datasets."""
    shard_dir = Path(shard_dir)
    cli.check(shard_dir.is_dir(), f"--shard_dir {shard_dir} does not exist; create it with make_shards.py")
    files = [f for f in shard_dir.iterdir() if re.fullmatch(r"client_\d+\.json", f.name)]
    cli.check(bool(files), f"--shard_dir {shard_dir} holds no client_<i>.json manifests; create them with "
                           f"make_shards.py")
    files.sort(key=lambda f: int(f.stem.split("_")[1]))
    manifests = [_read_client(f) for f in files]
    summary_path = shard_dir / "summary.json"
    summary = cli.read_json(summary_path) if summary_path.is_file() else {}
    cli.check(isinstance(summary, dict), f"{summary_path} must hold a JSON object; rewrite it with make_shards.py")
    named = {f.name: m["dataset"] for f, m in zip(files, manifests) if "dataset" in m}
    if summary.get("task") is not None:
        named["summary.json"] = summary["task"]
    datasets = sorted(set(named.values()), key=str)
    cli.check(len(datasets) <= 1, f"--shard_dir {shard_dir} mixes manifests of different datasets ("
              + ", ".join(f"{n}: {d!r}" for n, d in named.items()) + "); rewrite it with make_shards.py")
    if datasets:
        summary = {**summary, "task": datasets[0]}
    return [m["indices"] for m in manifests], summary


def _read_client(path: Path) -> dict:
    """One client manifest: {"indices": int64 array, "dataset": str (when the file names one)}."""
    data = cli.read_json(path)
    cli.check(isinstance(data, dict) and "indices" in data,
              f"{path} is not a client manifest; expected JSON with an 'indices' list")
    out = {"indices": shard.manifest_indices(data["indices"], str(path))}
    if "dataset" in data:
        dataset = data["dataset"]
        cli.check(isinstance(dataset, str) and dataset.lower() in TASKS,
                  f"{path}: 'dataset' is {dataset!r}; expected a GLUE task name ({', '.join(TASKS)})")
        out["dataset"] = dataset.lower()
    return out


def read_manifest(path, task: str | None = None) -> np.ndarray:
    """The index array of one client manifest; with ``task``, one made for another dataset is refused."""
    m = _read_client(Path(path))
    if task is not None and "dataset" in m:
        cli.check(m["dataset"] == task.lower(), f"{path} was made for {m['dataset']!r}, not {task.lower()!r}")
    return m["indices"]
