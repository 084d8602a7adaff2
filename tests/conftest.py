"""Shared test fixtures: a fresh home folder, small thread counts, the optional real-data folder, a run-directory
root."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDLAB_SHARED_DATA", REPO.parent / "shared" / "data"))

# Under pytest-xdist (the full suite: ``-n 2``) the workers share the cores: one torch thread each.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))

# The environment a user has, on a fresh machine: a new empty home folder per test session, so the scripts' own
# default folders (~/.cache/fedlab, <out-dir>/cache) are the ones exercised, cold, and nothing of the real home
# (its caches, matplotlib's and W&B's settings) is read or written. No FEDLAB_CACHE / FEDLAB_DATA is set: a test
# of user-facing behaviour sees what a user's run sees; one session shares ~/.cache/fedlab as a user's runs do.
HOME = Path(tempfile.mkdtemp(prefix="fedlab-test-home-"))
atexit.register(shutil.rmtree, HOME, ignore_errors=True)
os.environ["HOME"] = str(HOME)
for _name in ("FEDLAB_CACHE", "FEDLAB_DATA", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR"):
    os.environ.pop(_name, None)  # what a user's shell does not set, or what would move a folder out of HOME
# Child processes (scripts run as a user runs them) take one thread each, beside the test process's: with
# OMP_NUM_THREADS set they also print no load hint (common.threads), so their output does not depend on the load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No hub is reachable from the test machines: fail fast instead of waiting on connection timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real dataset samples); tests using it skip when it is absent, as in a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """Parent folder for run directories written by a test."""
    d = tmp_path / "runs"
    d.mkdir()
    return d


# ---- the quick subset: `python -m pytest -m quick` (the README's test command; CI runs the whole suite) ----------
# Chosen in this one table rather than by markers spread over the files, so what the subset covers reads in one
# place. Budget: under 2 minutes on 2 idle cores, collection included. It holds the core's tests against references
# (the math every subproject shares: aggregation, server optimizers, the round engine, SCAFFOLD, LoRA merging,
# Fisher, partitions, statistics, metrics) and the --quick path of every subproject end to end: its federated runs
# (the README's first command, FedFisher, among them), a centralized one, the summary, the model folder and the plots
# they feed. Left to the full suite: resume, bad inputs, torchrun, --compile, grids, the
# README commands and the longer learning checks, which take most of its 10 minutes.
# A file alone: all its tests; "file": [names]: those tests (a name with [id]: that parametrization alone).
QUICK = {
    "tests/test_import_graph.py": None,
    "tests/common/test_names.py": None,
    "tests/common/test_threads.py": None,
    "tests/common/test_aggregate.py": None,
    "tests/common/test_server_opt.py": None,
    "tests/common/test_engine.py": None,
    "tests/common/test_privacy.py": None,
    "tests/common/test_scaffold.py": None,
    "tests/common/test_client_store.py": None,
    "tests/common/test_lora_merge.py": None,
    "tests/common/test_fisher.py": None,
    "tests/common/test_shard.py": None,
    "tests/common/test_stats.py": None,
    "tests/common/test_evaluate.py": None,
    "tests/common/test_seed.py": None,
    "tests/common/test_params.py": None,
    "tests/common/test_shakespeare.py": None,
    # --help: the parsers in-process (a second), the torch-free check in a child for each subproject's main script,
    # the README's plot script and the benchmarks' runner (about a second each idle; the full suite checks every
    # user-facing script)
    "tests/test_help.py": ["test_help_shows_the_algorithm_choices", "test_every_metavar_is_named_after_its_flag",
                           "test_help_lists_each_flag_once_and_a_short_usage", "test_the_examples_parse",
                           "test_the_flag_names_equal_the_runs_own",
                           *(f"test_help_imports_no_heavy_package[{s}]" for s in (
                               "mamba_fl/fed_fisher.py", "vit_sparse_fl/train_federated.py",
                               "lora_glue_fl/fedavg_rounds.py", "llm_noniid/train.py", "plots/plot_mamba.py",
                               "benchmarks/run_all.py"))],
    "tests/mamba_fl/test_scripts.py": ["test_federated_script_quick", "test_central_quick"],
    "tests/vit_sparse_fl/test_scripts.py": ["test_federated_quick_run", "test_sparse_run_writes_mask_density",
                                            "test_plots_read_the_run_directories"],
    "tests/lora_glue_fl/test_scripts.py": ["test_fedavg_rounds_quick_learns", "test_fedavg_rounds_quick_outputs",
                                           "test_final_adapter_loads_with_peft_and_reproduces_metrics",
                                           "test_centralized_scripts_quick"],
    "tests/llm_noniid/test_train.py": ["test_quick_run_writes_every_metric"],
}
# inside the files above, left out: 13 s on idle cores for one convergence check
QUICK_SKIP = {"tests/common/test_fisher.py": ["test_local_step_fisher_pairs_by_hand_and_converges_to_the_per_example_"
                                              "fisher"]}


def _relpath(item) -> str:
    return Path(str(item.path)).resolve().relative_to(REPO).as_posix()


def _listed(table: dict, path: str, item) -> bool:
    """Whether ``table`` names ``item`` of the file ``path`` (a file mapped to None: every test in it)."""
    names = table.get(path, ())
    return names is None or getattr(item, "originalname", item.name) in names or item.name in names


def pytest_ignore_collect(collection_path, config):
    """With exactly `-m quick`, files outside QUICK are not even imported (importing them costs seconds)."""
    if (config.getoption("markexpr") or "").strip() == "quick" and collection_path.suffix == ".py" \
            and collection_path.name.startswith("test_"):
        return collection_path.resolve().relative_to(REPO).as_posix() not in QUICK or None
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks
def pytest_collection_modifyitems(config, items):
    """Mark QUICK's tests `quick`; an entry naming a test its file no longer defines is an error."""
    modules = {}
    for item in items:
        path = _relpath(item)
        modules.setdefault(path, getattr(item, "module", None))
        if _listed(QUICK, path, item) and not _listed(QUICK_SKIP, path, item):
            item.add_marker(pytest.mark.quick)
    missing = [f"{path}::{name}" for table in (QUICK, QUICK_SKIP) for path, names in table.items()
               if modules.get(path) is not None for name in names or ()
               if not hasattr(modules[path], name.split("[")[0])]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py QUICK names tests that do not exist: {', '.join(missing)}")
