"""The shared aggregators, server optimizers and client algorithms run in every federated script whose task serves
them (common/README.md's table): one quick round each through mamba_fl/fed_avg.py, vit_sparse_fl/train_federated.py
and llm_noniid/train.py, in-process, the run named after the setting and its model finite; FedFisher's and
FedEntropy's statistics reach the log (the task computed them), llm_noniid's --client-opt-state persist keeps each
client's AdamW moments (the client store its checkpoint names)."""
from __future__ import annotations

import importlib
import json
import math

import pytest
from clicases import the_run

from common.checkpoint import load_checkpoint
from common.client_store import committed_rows
from common.engine import STORE_DIR

# (module, flags for one short round, plain-SGD flags), each script's quick run cut to its first round
SCRIPTS = {"mamba_fl": ("mamba_fl.fed_avg", ["--rounds", "1", "--eval-every", "1"], []),
           "vit_sparse_fl": ("vit_sparse_fl.train_federated", ["--rounds", "1", "--eval-every", "1"],
                             ["--momentum", "0"]),
           "llm_noniid": ("llm_noniid.train", ["--num-rounds", "1"], [])}
SETTINGS = {"fisher": (["--aggregator", "fisher"], "fisher_eps_share"),
            "entropy": (["--aggregator", "entropy"], "entropy_weight"),
            "median": (["--aggregator", "median"], None),
            "fedyogi": (["--server-opt", "fedyogi"], None),
            "feddyn": (["--algorithm", "feddyn"], None),
            "fednova": (["--algorithm", "fednova"], None)}


def run(subproject: str, flags: list[str], out) -> dict:
    module, short, plain = SCRIPTS[subproject]
    plain = plain if "fednova" in flags else []
    return importlib.import_module(module).main(["--quick", *short, *plain, *flags, "--out-dir", str(out), "--quiet"])


# the statistics each task computes (new in vit_sparse_fl and llm_noniid; mamba_fl's: tests/mamba_fl), and one
# script each for the other settings (all three run them: common/README.md's table, from the same checks)
CASES = [("vit_sparse_fl", "fisher"), ("vit_sparse_fl", "entropy"), ("llm_noniid", "fisher"), ("llm_noniid", "entropy"),
         ("llm_noniid", "median"), ("vit_sparse_fl", "fedyogi"), ("llm_noniid", "feddyn"), ("vit_sparse_fl", "fednova"),
         ("mamba_fl", "fednova")]


@pytest.mark.parametrize(("subproject", "setting"), CASES)
def test_the_shared_setting_runs(subproject, setting, tmp_path):
    flags, logged = SETTINGS[setting]
    summary = run(subproject, flags, tmp_path)
    folder = the_run(tmp_path)
    assert setting in folder.name  # two settings' runs never share a name
    row = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(row["val_loss"]) and summary["bytes_up"] > 0
    if logged is not None:  # the aggregator's own metric: the task computed its statistic
        value = row[logged]
        assert math.isfinite(value) if isinstance(value, float) else value


def test_llm_persist_keeps_each_clients_adamw_moments(tmp_path):
    flags = ["--num-rounds", "2", "--max-local-steps", "2", "--local-optimizer", "adamw", "--learning-rate", "0.01"]
    reset = run("llm_noniid", [*flags], tmp_path / "reset")
    kept = run("llm_noniid", [*flags, "--client-opt-state", "persist"], tmp_path / "persist")
    assert kept["final_val_loss"] != reset["final_val_loss"]  # the moments carried into round 2 changed it
    folder = the_run(tmp_path / "persist")
    ckpt = load_checkpoint(folder / "checkpoint.pt", "llm_noniid/train")
    rows = committed_rows(folder / STORE_DIR, ckpt["client_store"], "client_opt")  # each client's AdamW state
    assert sorted(rows) == [0, 1, 2, 3] and all(any(bool(t.abs().sum()) for t in row) for row in rows.values())
