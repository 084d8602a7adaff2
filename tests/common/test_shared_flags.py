"""One flag vocabulary: every training script takes --rounds, --out-dir and --report-to tensorboard (event
files holding the rows of metrics.jsonl), the shared names beside the source names, and --config FILE.yaml
through common.config."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import tbevents

from common import cli, config, runlog
from lora_glue_fl import baseline_run, fedavg_rounds, main_glue_lora, make_shards
from mamba_fl import central, fed_avg, fed_fisher
from vit_sparse_fl import train_centralized, train_federated, train_federated_sparse

MAMBA = ["--quick", "--layers", "1", "--quiet", "--eval-blocks", "4", "--sample-tokens", "0", "--lr", "3e-3"]
VIT = ["--quick", "--quiet", "--max-train", "120", "--max-test", "40", "--batch-size", "16"]
VIT_FED = [*VIT, "--num-clients", "6", "--local-steps", "1", "--eval-every", "1"]
LORA = ["--quick", "--quiet"]


def _scripts(cache: Path) -> dict:
    mamba = [*MAMBA, "--cache-dir", str(cache)]
    return {
        "mamba_fl/fed_avg": (fed_avg.main, [*mamba, "--num-clients", "2", "--local-steps", "1", "--partition", "iid",
                                            "--clients-per-round", "1", "--val-freq", "1"]),
        "mamba_fl/fed_fisher": (fed_fisher.main, [*mamba, "--num-clients", "2", "--val-freq", "1"]),
        "mamba_fl/central": (central.main, [*mamba, "--batch-size", "4", "--val-freq", "1"]),
        "vit_sparse_fl/train_federated": (train_federated.main, [*VIT_FED, "--partition", "non_iid",
                                                                 "--clients-per-round", "2"]),
        "vit_sparse_fl/train_federated_sparse": (train_federated_sparse.main,
                                                 [*VIT_FED, "--mask-strategy", "random", "--calibration-rounds", "1"]),
        "vit_sparse_fl/train_centralized": (train_centralized.main, [*VIT, "--warmup-epochs", "0"]),
        "lora_glue_fl/main_glue_lora": (main_glue_lora.main, LORA),
        "lora_glue_fl/baseline_run": (baseline_run.main, LORA),
        "lora_glue_fl/fedavg_rounds": (fedavg_rounds.main, [*LORA, "--partition", "iid", "--num-clients", "2",
                                                            "--local-steps", "2"]),
    }


SCRIPTS = list(_scripts(Path(".")))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="--report-to tensorboard needs the tracking extra (pip install -e .[tracking])")
@pytest.mark.parametrize("script", SCRIPTS)
def test_rounds_out_dir_report_to(script, tmp_path, capsys):
    main, argv = _scripts(tmp_path / "cache")[script]
    out = tmp_path / "runs"
    rounds = "1" if "centralized" in script or "lora_glue_fl/" in script and "fedavg" not in script else "2"
    assert "--quiet" in argv  # the ending line is printed with --quiet too
    main([*argv, "--rounds", rounds, "--out-dir", str(out), "--report-to", "tensorboard", "--run-name", "r"])
    run = out / "r"
    # one ending line: the run directory, the headline metric with its baseline, the figures and the model
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"run directory: {run} | ") and " | figures: " in last, last
    assert f"model: {run / 'model'}" in last and ("chance" in last or "majority" in last or "unigram" in last)
    # the metric names what it was scored on: "on 4 of 20 blocks", "on 64 of 300 validation rows", "on 40 test images"
    assert re.search(r" on \d+ (of \d+ )?(blocks|validation rows|test images) \(", last), last
    rows = runlog.read_rows(run / runlog.METRICS_FILE)
    assert rows and tbevents.event_files(run), script
    scalars = tbevents.read_scalars(run)
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric <= set(scalars), sorted(numeric - set(scalars))
    key = sorted(numeric)[0]
    assert [v for _, v in scalars[key]] == pytest.approx([float(r[key]) for r in rows if key in r])
    assert json.loads((run / "args.json").read_text())["args"]["report_to"] == ["tensorboard"]


def test_shared_names_beside_the_source_names():
    p = fed_avg.get_args_parser()
    a = cli.parse(p, ["--local-steps", "3", "--partition", "topic", "--clients-per-round", "2"])
    assert (a.local_updates, a.shard, a.clients_per_round) == (3, "topic", 2)
    assert cli.parse(fed_avg.get_args_parser(), ["--local_updates", "5", "--shard", "iid"]).local_updates == 5
    assert cli.parse(central.get_args_parser(), ["--rounds", "7"]).max_steps == 7
    v = cli.parse(train_federated.get_args_parser(), ["--partition", "non_iid", "--local_steps", "2"])
    assert (v.sharding, v.local_steps) == ("non_iid", 2)
    assert cli.parse(train_centralized.get_args_parser(), ["--rounds", "3"]).epochs == 3
    assert cli.parse(main_glue_lora.get_args_parser(), ["--rounds", "2", "--output_dir", "x"]).num_train_epochs == 2
    f = cli.parse(fedavg_rounds.get_args_parser(), ["--output_root", "o", "--local-steps", "4"])
    assert (f.out_dir, f.local_steps) == ("o", 4)
    assert cli.parse(make_shards.get_args_parser(), ["--partition", "dirichlet", "--num-clients", "4"]).mode \
        == "dirichlet"
    from plots import plot_vit

    assert cli.parse(plot_vit.get_args_parser(), ["--runs", "r"]).runs_dir == ["r"]  # several folders


def test_yaml_config_in_every_training_script(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 3\nlocal-steps: 2\nreport_to: [tensorboard]\nout_dir: somewhere\n")
    a = cli.parse(fed_avg.get_args_parser(), ["--config", str(cfg), "--rounds", "5"])  # the command line wins
    assert (a.rounds, a.local_updates, a.report_to, a.out_dir, a.config) == (5, 2, ["tensorboard"], "somewhere",
                                                                               str(cfg))
    for script in (train_federated, fedavg_rounds):
        b = cli.parse(script.get_args_parser(), ["--config", str(cfg)])
        assert b.rounds == 3 and b.local_steps == 2
    # mamba_fl's model config name moved to --model-config; the old --config spelling still works
    m = cli.parse(fed_avg.get_args_parser(), ["--config", "pure_ssm_2_layer"])
    assert (m.model_config, m.config) == ("pure_ssm_2_layer", None)
    assert cli.parse(fed_avg.get_args_parser(), ["--model-config", "pure_ssm_4_layer"]).model_config \
        == "pure_ssm_4_layer"
    bad = tmp_path / "bad.yaml"
    bad.write_text("roundz: 3\n")
    with pytest.raises(cli.UsageError, match="unknown key 'roundz'"):
        cli.parse(train_centralized.get_args_parser(), ["--config", str(bad)])
    cfg.write_text("rounds: 2\nout-dir: somewhere\n")
    assert config.read_config(cfg, main_glue_lora.get_args_parser()) == {"num_train_epochs": 2, "out_dir": "somewhere"}
