"""--help at once (common.cli): each main script, and each benchmark a README names, answers `python <script> --help`
without importing torch, transformers, peft, datasets, numpy or matplotlib (checked in the child's `-X importtime`
record, so the check does not depend on how busy the machine is); its help lists --algorithm's choices, names every
metavar after its flag and ends with examples that its own parser accepts. The torch-free names the parsers list equal
the run's own."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from procs import run

from common import cli

REPO = Path(__file__).resolve().parents[1]
# the main script of each subproject and the other scripts whose --help is as light (module name: path)
SCRIPTS = {m: m.replace(".", "/") + ".py" for m in (
    "mamba_fl.fed_avg", "mamba_fl.fed_fisher", "mamba_fl.fed_entropy", "mamba_fl.fed_momentum", "mamba_fl.central",
    "vit_sparse_fl.train_federated", "lora_glue_fl.fedavg_rounds", "llm_noniid.train", "llm_noniid.shakespeare",
    "llm_noniid.pretrain")}
FEDERATED = [m for m in SCRIPTS if m not in ("mamba_fl.central", "llm_noniid.pretrain")]
# the other user-facing scripts: centralized and helper scripts, grids and plots (these two read numbers with NumPy)
OTHERS = ("mamba_fl/split_wikitext.py", "mamba_fl/run_grid.py", "mamba_fl/real_grid.py",
          "vit_sparse_fl/train_centralized.py", "vit_sparse_fl/train_federated_sparse.py", "vit_sparse_fl/pretrain.py",
          "vit_sparse_fl/run_all_experiments.py", "vit_sparse_fl/compare_budgets.py", "lora_glue_fl/main_glue_lora.py",
          "lora_glue_fl/baseline_run.py", "lora_glue_fl/make_shards.py", "lora_glue_fl/fedavg_merge.py",
          "lora_glue_fl/download_roberta_models.py", "lora_glue_fl/run_grid.py", "llm_noniid/run_experiments.py",
          "llm_noniid/detector_study.py", "llm_noniid/mcmahan_study.py", "llm_noniid/privacy_study.py",
          "plots/plot_mamba.py", "plots/plot_vit.py", "plots/plot_lora_glue.py", "plots/plot_llm_noniid.py")
# the benchmarks the READMEs name (benchmarks/ is no package: a benchmark imports benchlib from its own folder)
BENCH = REPO / "benchmarks"
BENCHMARKS = tuple(f"benchmarks/{name}.py" for name in (
    "run_all", "bench_aggregate", "bench_cross_device", "bench_gpu", "bench_llm_round", "bench_lora_merge",
    "bench_mamba_round", "bench_scale", "bench_vit", "check_mamba_kernels"))
HEAVY = ("torch", "transformers", "peft", "datasets", "numpy", "matplotlib", "scipy", "sklearn", "safetensors",
         "tokenizers", "tqdm")


def imported(importtime: str) -> set[str]:
    """Top-level packages a `python -X importtime` child imported (its stderr)."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in importtime.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.parametrize("script", [*SCRIPTS.values(), *OTHERS, *BENCHMARKS])
def test_help_imports_no_heavy_package(script):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = run([sys.executable, "-X", "importtime", script, "--help"], f"{script} --help", 120, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "examples:" in done.stdout and f"python {script}" in done.stdout
    loaded = imported(done.stderr)
    assert "argparse" in loaded  # the record is read right
    heavy = set(HEAVY) - ({"numpy"} if script in OTHERS else set())
    assert not loaded & heavy, f"{script} --help imported {sorted(loaded & heavy)}"


def parser(module: str):
    """The parser of a subproject's script (its module's name) or of a benchmark (its path)."""
    return benchmark_parser(module) if module in BENCHMARKS else importlib.import_module(module).get_args_parser()


def benchmark_parser(script: str):
    """A benchmark's parser, its file loaded with benchmarks/ on the path; the path and the modules loaded from
    benchmarks/ are put back as they were."""
    path, modules = list(sys.path), set(sys.modules)
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"help_{Path(script).stem}", REPO / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_args_parser()
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if Path(getattr(sys.modules[name], "__file__", None) or "/").parent == BENCH:
                del sys.modules[name]


@pytest.mark.parametrize("module", FEDERATED)
def test_help_shows_the_algorithm_choices(module):
    text = parser(module).format_help()
    assert re.search(r"--algorithm \{fedavg,fedprox,scaffold,feddyn,fednova[,}]", text)
    assert "--aggregator {mean,fisher,entropy," in text and "--server-opt {fedavg,fedavgm," in text


@pytest.mark.parametrize("module", [*SCRIPTS, *BENCHMARKS])
def test_every_metavar_is_named_after_its_flag(module):
    for action in parser(module)._actions:
        if not action.option_strings or action.nargs == 0 or action.choices is not None \
                or isinstance(action.metavar, tuple):  # a choice list shows the choices; FIRST LAST: two values
            continue
        first = next(o for o in action.option_strings if o.startswith("--"))
        assert action.metavar == first[2:].replace("-", "_").upper(), (first, action.metavar)


@pytest.mark.parametrize("module", [*SCRIPTS, *BENCHMARKS])
def test_help_lists_each_flag_once_and_a_short_usage(module):
    text, examples = parser(module).format_help().split("\nexamples:\n")
    assert text.splitlines()[0] == f"usage: {parser(module).prog} [options]"
    assert "--num_clients" not in text and "--local_steps" not in text  # the other spelling is said once, below
    assert cli.SPELLINGS in examples


@pytest.mark.parametrize("module", [*SCRIPTS, *BENCHMARKS])
def test_the_examples_parse(module, monkeypatch):
    """Every example command of the script's --help is accepted by its parser (flags, values, the YAML it names)."""
    monkeypatch.chdir(REPO)
    commands = [shlex.split(c.replace("\\\n", " ").split("#")[0])
                for c in re.findall(r"^  (python (?:.*\\\n)*.*)", parser(module).epilog, re.M)]
    own = [c[2:] for c in commands if c[1] == SCRIPTS.get(module, module)]
    assert len(own) >= 2, commands
    for argv in own:
        cli.parse(parser(module), argv)


def test_the_flag_names_equal_the_runs_own():
    """What the torch-free option modules list for choices and help equals what the runs use."""
    from llm_noniid import model as llm_model
    from llm_noniid import options as llm_options
    from lora_glue_fl import adapters, glue_shards, glue_tasks
    from lora_glue_fl import options as lora_options
    from vit_sparse_fl import experiment, sparse
    from vit_sparse_fl import options as vit_options

    assert vit_options.ARCHS == tuple(experiment.ARCHS) and vit_options.MASK_STRATEGIES == sparse.STRATEGIES
    assert lora_options.TASKS == tuple(glue_tasks.TASKS)
    assert lora_options.SHARD_MODES == glue_shards.MODES and lora_options.MERGES == adapters.METHODS
    assert llm_options.LORA_ARCHITECTURES == tuple(llm_model.LORA_TARGETS)
