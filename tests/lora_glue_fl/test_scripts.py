"""Every script end to end with --quick (embedded single-sentence, pair and regression tasks), the round
structure of fedavg_rounds.py, its resume, and one-line errors for bad inputs."""
from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
from clicases import one_line_error, the_run

from common import checkpoint, cli, export, jobs, runlog, study
from common.config import parse_with_config
from lora_glue_fl import (
    adapters,
    baseline_run,
    fedavg_merge,
    fedavg_rounds,
    main_glue_lora,
    make_shards,
    modeling,
)

QUICK = ["--quick", "--quiet"]
SMALL = ["--local_epochs", "1", "--max_train_samples", "240", "--max_eval_samples", "64"]  # mechanics: a cheap run


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    """fedavg_rounds.py --quick on the embedded SST-2-like task, cut to its mechanics (2 rounds of 1 local epoch
    over 240 examples): 3 iid clients, SVD merge, LoRA on query, value and the word embeddings."""
    out = tmp_path_factory.mktemp("runs")
    summary = fedavg_rounds.main(QUICK + SMALL + ["--task_name", "sst2", "--learning_rate", "3e-3", "--eval_each_round",
                                                  "--save_client_adapters", "all", "--out-dir", str(out), "--run-name",
                                                  "ref"])
    return out / "ref", summary


def test_fedavg_rounds_quick_learns(tmp_path):
    """The --quick run as given (1,000 examples, 2 rounds of 3 local epochs) ends well above the majority baseline
    of its 300 validation examples (measured: 0.68 against 0.49)."""
    summary = fedavg_rounds.main(QUICK + ["--out-dir", str(tmp_path), "--save_client_adapters", "none"])
    assert summary["rounds_done"] == 2 and "smoke_test" not in summary
    assert summary["final"]["accuracy"] > summary["majority"]["accuracy"] + 0.1


def test_fedavg_rounds_quick_outputs(sst2_run):
    run, summary = sst2_run
    assert summary["rounds_done"] == 2 and summary["num_clients"] == 3 and summary["fused_rank"] == 4
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0 and summary["bytes_up"] > 0
    assert "accuracy" in summary["majority"] and "smoke_test" not in summary
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    fused_rows = [r for r in rows if r["client"] is None]
    assert [r["round"] for r in fused_rows] == [1, 2] and all("accuracy" in r for r in fused_rows)
    for k in (1, 2):
        for i in (1, 2, 3):
            assert (run / f"round_{k}/client_{i}/adapter/adapter_model.safetensors").is_file()
        assert (run / f"round_{k}/fused_r4/adapter/adapter_config.json").is_file()
    assert json.loads((run / "args.json").read_text())["args"]["aggregation"] == "svd"
    for f in (run / "base_model").iterdir():  # safetensors writes through a 0600 temp file; the run's files are not
        assert f.stat().st_mode & 0o777 == checkpoint.usual_mode(), f
    # <run>/adapter: the final fused adapter in peft format, its base recorded relative to it, modules sorted
    final, fused = adapters.load(run / "adapter"), adapters.load(run / "round_2/fused_r4/adapter")
    assert all(torch.equal(final.state_dict()[k], v) for k, v in fused.state_dict().items())
    cfg = json.loads((run / "adapter/adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "../base_model" and cfg["target_modules"] == sorted(cfg["target_modules"])
    # the word embeddings' LoRA factors (peft's lora_embedding_A / _B) are merged, saved and reloaded with the rest
    assert fused.embeddings == ["base_model.model.roberta.embeddings.word_embeddings"]
    assert "base_model.model.roberta.embeddings.word_embeddings.lora_embedding_A" in fused.state_dict()


def test_round_two_clients_train_the_fused_adapter(sst2_run):
    """Round-2 clients start from round 1's fused adapter and head, and their LoRA factors move."""
    run, _ = sst2_run
    start = adapters.load(run / "round_1/fused_r4/adapter")
    for i in (1, 2, 3):
        client = adapters.load(run / f"round_2/client_{i}/adapter")
        assert client.r == start.r
        for m, (A0, B0) in start.factors.items():
            A, B = client.factors[m]
            assert not torch.allclose(A, A0) and not torch.allclose(B, B0)
            # a small step away from the fused start, not a fresh initialisation
            assert (A - A0).norm() < 0.5 * A0.norm()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["adapter_change"] > 0 for r in rows if r["client"] is not None and r["round"] == 2)


def test_final_adapter_loads_with_peft_and_reproduces_metrics(sst2_run):
    """PeftModel.from_pretrained(base, fused adapter) gives the logits of the script's own evaluation."""
    from peft import PeftModel
    from transformers import AutoTokenizer, RobertaForSequenceClassification

    from lora_glue_fl import glue_tasks
    run, summary = sst2_run
    base_dir = run / "base_model"
    base = RobertaForSequenceClassification.from_pretrained(base_dir, trust_remote_code=False)
    model = PeftModel.from_pretrained(base, summary["final_adapter"]).eval()
    tok = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    args = json.loads((run / "args.json").read_text())["args"]
    dev = glue_tasks.load_glue("sst2", "synthetic")["validation"].subset(range(args["max_eval_samples"]))
    enc = modeling.encode(tok, dev, args["max_seq_length"])
    metrics = modeling.evaluate("sst2", model, {"validation": enc}, "cpu")
    assert metrics["accuracy"] == pytest.approx(summary["final"]["accuracy"])
    assert metrics["eval_loss"] == pytest.approx(summary["final"]["eval_loss"], rel=1e-4)


def test_fedavg_merge_end_to_end(sst2_run, tmp_path):
    run, _ = sst2_run
    clients = [str(run / f"round_1/client_{i}/adapter") for i in (1, 2, 3)]
    out = tmp_path / "fused"
    manifest = fedavg_merge.main(["--adapters", *clients, "--weights", "2", "1", "1", "--svd_rank", "12",
                                  "--save_adapter", str(out)])
    assert (out / "fuse_manifest.json").is_file() and manifest["svd_rank"] == 12 and manifest["heads_averaged"]
    assert manifest["merge_rel_error"] < 1e-5       # rank 12 = 3 clients x rank 4: lossless
    fused, loaded = adapters.load(out), [adapters.load(c) for c in clients]
    key = next(iter(fused.head))
    torch.testing.assert_close(fused.head[key],
                               (2 * loaded[0].head[key] + loaded[1].head[key] + loaded[2].head[key]) / 4)
    # an adapter folder without LoRA factors (heads only) is refused in one line, not a ValueError
    from safetensors.torch import load_file, save_file
    heads = tmp_path / "heads_only"
    shutil.copytree(clients[0], heads)
    weights = heads / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if ".lora_" not in k}, str(weights))
    with pytest.raises(cli.UsageError, match="holds no LoRA factors"):
        fedavg_merge.main(["--adapters", str(heads), *clients[1:], "--save_adapter", str(tmp_path / "f2")])


def test_fedavg_rounds_resume_reproduces_uninterrupted_run(sst2_run, tmp_path, monkeypatch):
    ref_run, ref_summary = sst2_run
    argv = QUICK + SMALL + ["--task_name", "sst2", "--learning_rate", "3e-3", "--eval_each_round",
                            "--out-dir", str(tmp_path), "--run-name", "cut"]
    real_train = modeling.train_local

    def crash_in_round_two(*a, **kw):
        if kw["round_idx"] == 2 and kw["client"] == 0:
            raise KeyboardInterrupt
        return real_train(*a, **kw)

    monkeypatch.setattr(modeling, "train_local", crash_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        fedavg_rounds.main(argv)
    monkeypatch.setattr(modeling, "train_local", real_train)
    summary = fedavg_rounds.main(argv + ["--resume"])
    assert summary["final"] == ref_summary["final"]
    ref_rows = (ref_run / "metrics.jsonl").read_text().splitlines()
    assert (tmp_path / "cut/metrics.jsonl").read_text().splitlines() == ref_rows
    got = adapters.load(tmp_path / "cut/round_2/fused_r4/adapter").state_dict()
    want = adapters.load(ref_run / "round_2/fused_r4/adapter").state_dict()
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("task,extra", [("mrpc", ["--aggregation", "exact"]), ("stsb", ["--skip_svd"])])
def test_fedavg_rounds_pair_and_regression_tasks(tmp_path, task, extra):
    s = fedavg_rounds.main(QUICK + SMALL + ["--task_name", task, "--rounds", "1", "--out-dir", str(tmp_path), *extra])
    metric = {"mrpc": "f1", "stsb": "pearson"}[task]
    assert s["main_metric"] == metric and metric in s["final"]
    if task == "mrpc":   # exact: fused rank = 3 clients x rank 4, no merge error
        assert s["fused_rank"] == 12 and s["final"]["merge_rel_error"] < 1e-5
    else:
        assert s["aggregation"] == "naive" and s["fused_rank"] == 4


def test_make_shards_then_fedavg_rounds_with_shard_dir(tmp_path):
    shards = tmp_path / "shards"
    res = make_shards.main(["--quick", "--task_name", "mrpc", "--k", "4", "--mode", "category",
                            "--category_key", "label", "--out_dir", str(shards)])
    assert len(res["size_per_client"]) == 4 and min(res["size_per_client"]) > 0
    assert (shards / "label_histograms.png").is_file() and (shards / "client_4.json").is_file()
    summary = json.loads((shards / "summary.json").read_text())
    assert summary["mode"] == "category" and summary["meta"]["category_key"] == "label"


def test_partial_participation_merges_only_the_round_s_clients(tmp_path, capsys):
    """--clients-per-round 2 of 6: each round trains the engine's sample, merges those two adapters weighted by their
    shard sizes, writes them as client_<k> (--save_client_adapters last) and the error curve covers their 8 ranks."""
    from common import engine
    s = fedavg_rounds.main(QUICK + SMALL + ["--num-clients", "6", "--clients-per-round", "2", "--rounds", "2",
                                            "--save_client_adapters", "last", "--out-dir", str(tmp_path),
                                            "--run-name", "p"])
    run = tmp_path / "p"
    assert (s["num_clients"], s["clients_per_round"]) == (6, 2) and len(s["svd_error_by_rank"]) == 8
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in (1, 2):
        want = [k + 1 for k in engine.sample_clients(42, r - 1, 6, 2)]
        assert [row["client"] for row in rows if row["round"] == r and row["client"] is not None] == want
    assert not list((run / "round_1").glob("client_*"))
    saved = sorted((run / "round_2").glob("client_*"))
    assert [p.name for p in saved] == [f"client_{k}" for k in want]
    fused = adapters.merge([adapters.load(p / "adapter") for p in saved], [s["client_sizes"][k - 1] for k in want],
                           "svd", rank=4)
    got = adapters.load(run / "round_2/fused_r4/adapter").state_dict()
    for key, t in fused.state_dict().items():
        torch.testing.assert_close(got[key], t, rtol=1e-5, atol=1e-6)
    # the rate as a fraction: 0.5 of 6 clients is 3 a round
    s = fedavg_rounds.main(QUICK + SMALL + ["--num-clients", "6", "--participation-rate", "0.5", "--rounds", "1",
                                            "--out-dir", str(tmp_path), "--run-name", "half"])
    assert s["clients_per_round"] == 3 and len(s["svd_error_by_rank"]) == 12
    shards = tmp_path / "shards"
    make_shards.main(["--quick", "--task_name", "sst2", "--k", "4", "--mode", "iid", "--out_dir", str(shards),
                      "--no_plot"])
    for flags_, message in [(["--clients-per-round", "5"], "--clients-per-round 5 exceeds the 4 clients"),
                            (["--participation-rate", "0.02"], "less than a tenth of one"),
                            (["--num-clients", "4"], "--num-clients changes nothing with --shard_dir")]:
        err = one_line_error(fedavg_rounds.main, QUICK + ["--shard_dir", str(shards), "--out-dir", str(tmp_path),
                                                          *flags_], capsys)
        assert message in err, err


@pytest.mark.parametrize("script,task", [(main_glue_lora, "sst2"), (baseline_run, "stsb")])
def test_centralized_scripts_quick(tmp_path, script, task):
    s = script.main(QUICK + ["--task_name", task, "--out-dir", str(tmp_path)])
    assert s["main_metric"] in s["final"] and s["train_examples"] == 240
    run = the_run(tmp_path)
    # asked again by a grid, without --do_train / --do_eval (both, as args.json records): the run is done
    again = jobs.Job(run.name, script.__name__, QUICK + ["--task_name", task, "--out-dir", str(tmp_path)])
    assert jobs.classify(again).kind == "done"
    if script is main_glue_lora:
        assert s["trainable_params"] < 0.2 * s["total_params"]
        assert adapters.load(run / "adapter").r == 4
    else:
        assert s["trainable_params"] == s["total_params"] and (run / "model/config.json").is_file()


@pytest.mark.parametrize("stop_in", ["save_model_dir", "write_summary"])
def test_central_lora_stopped_at_its_end_resumes_to_the_same_run(tmp_path, monkeypatch, stop_in):
    """Stopped while exporting its model (it starts over) or before its summary (the last checkpoint holds it):
    --resume ends with the uninterrupted run's rows, summary and model, no row twice."""
    argv = QUICK + ["--task_name", "sst2", "--num_train_epochs", "2", "--eval_every_epochs", "1"]
    ref = main_glue_lora.main(argv + ["--out-dir", str(tmp_path / "ref")])
    target = (export, "save_model_dir") if stop_in == "save_model_dir" else (runlog.RunDir,
                                                                                              "write_summary")

    def stop(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(*target, stop)
        with pytest.raises(KeyboardInterrupt):
            main_glue_lora.main(argv + ["--out-dir", str(tmp_path / "cut")])
    runlog.release_all()
    got = main_glue_lora.main(argv + ["--out-dir", str(tmp_path / "cut"), "--resume"])
    (a,), (b,) = (list(p.iterdir()) for p in (tmp_path / "ref", tmp_path / "cut"))
    assert [json.loads(r) for r in (b / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(r) for r in (a / "metrics.jsonl").read_text().splitlines()]  # 2 rows, not 4
    untimed = lambda s: {k: v for k, v in s.items() if k not in runlog.TIMING_KEYS}  # noqa: E731
    assert untimed(got) == untimed(ref)
    assert (b / "model" / "config.json").is_file()


def test_bad_inputs_fail_with_one_line(tmp_path, capsys):
    assert "unknown GLUE task 'sst3'" in one_line_error(fedavg_rounds.main, QUICK + ["--task_name", "sst3"], capsys)
    (tmp_path / "empty").mkdir()
    err = one_line_error(fedavg_rounds.main, QUICK + ["--shard_dir", str(tmp_path / "empty"), "--out-dir",
                                                      str(tmp_path)], capsys)
    assert "no client_<i>.json manifests" in err
    assert "--svd_rank must be at least 1" in one_line_error(fedavg_rounds.main, QUICK + ["--svd_rank", "0"], capsys)
    err = one_line_error(make_shards.main, ["--quick", "--mode", "overlap", "--overlap_ratio", "1.0",
                                            "--out_dir", str(tmp_path / "s")], capsys)
    assert "--overlap_ratio must be in [0, 1)" in err and not (tmp_path / "s").exists()
    # adapters with different target modules
    g = torch.Generator().manual_seed(0)
    for name, mods in (("qv", ("query", "value")), ("qk", ("query", "key"))):
        f = {f"base_model.model.l0.{m}": (torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)) for m in mods}
        adapters.save(adapters.Adapter(f, {}, 2, 2.0, sorted(mods)), tmp_path / name)
    err = one_line_error(fedavg_merge.main, ["--adapters", str(tmp_path / "qv"), str(tmp_path / "qk"),
                                             "--save_adapter", str(tmp_path / "fused")], capsys)
    assert "same target modules" in err and not (tmp_path / "fused").exists()


def test_uncached_pretrained_model_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    args = argparse.Namespace(model_size="base", model_name_or_path=None, cache_dir=str(tmp_path), max_seq_length=128)
    with pytest.raises(cli.UsageError, match="download_roberta_models.py"):
        modeling.build_model(args, None, 2, seed=0)


def test_plot_script_reads_run_directories(sst2_run, tmp_path):
    from lora_glue_fl import glue_tasks
    from plots import plot_lora_glue
    run, summary = sst2_run
    res = plot_lora_glue.main(["--runs", str(run.parent), "--out", str(tmp_path / "fig"), "--max_rank", "3"])
    for name in ("rounds_sst2.png", "svd_error_vs_rank.png", "summary.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 0
    # the majority-class baseline: the most frequent training label, scored on the same validation examples
    splits = glue_tasks.load_glue("sst2", "synthetic")
    majority = int(np.bincount(splits["train"].label).argmax())
    y = np.asarray(splits["validation"].label)[:64]
    assert res["baselines"]["sst2"]["accuracy"] == pytest.approx(float(np.mean(y == majority)))
    assert res["baselines"]["sst2"]["label"] == majority


def test_download_script_offline_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from lora_glue_fl import download_roberta_models
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))   # restored after the test (the script sets it)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    err = one_line_error(download_roberta_models.main, ["--hf_home", str(tmp_path / "hf"), "--models", "roberta-base"],
                         capsys)
    assert "cannot download roberta-base@main" in err


def test_run_grid_cells_and_subsets(tmp_path):
    """The grid's plan (runs are ordinary script invocations, tested above): compute matched between arms, the
    one-shot cells, the data subsets and the shards, on embedded data laid out as the real GLUE folders."""
    import shutil

    from common import synthetic
    from lora_glue_fl import glue_tasks, run_grid, studies
    real = tmp_path / "real"
    for task in ("sst2", "mrpc"):
        shutil.copytree(synthetic.ensure(f"glue-{task}"), real / f"glue_{task}")
    args = run_grid.get_args_parser().parse_args(["--out-dir", str(tmp_path / "grid"), "--real_data_dir", str(real),
                                                  "--seeds", "0", "1", "--train_samples", "200",
                                                  "--mrpc_train_samples", "120", "--rounds", "4",
                                                  "--local_epochs", "0.5", "--tasks", "sst2", "mrpc",
                                                  "--mrpc_design", "small", "--min_per_label", "2",
                                                  "--sst2_design", "full", "--selection_samples", "50"])
    rates = {"sst2": {"central": 1e-3, "multi-round": 2e-3, "one-shot": 5e-3, "exact": 7e-4},
             "mrpc": {"central": 3e-3, "multi-round": 4e-3, "one-shot": 6e-3}}
    jobs = run_grid.cells(args, rates)
    full, small = len(studies.FULL), len(studies.SMALL)
    assert len(jobs) == 2 * (full + small)
    # task by task, cell by cell in the design's order, the seeds of a cell together
    assert [(name.split("_")[0], int(name.rsplit("_s", 1)[1])) for name, _ in jobs] == (
        [("sst2", 0), ("sst2", 1)] * full + [("mrpc", 0), ("mrpc", 1)] * small)
    assert [name for name, _ in jobs[:3]] == ["sst2_central_s0", "sst2_central_s1", "sst2_svd_iid_s0"]
    by_name = dict(jobs)
    assert {"sst2_central_s0", "sst2_exact_iid_s1", "sst2_svd_dir0.1_s0", "sst2_svd_category_s1",
            "sst2_oneshot_iid_s0", "mrpc_naive_iid_s1"} <= set(by_name)

    def flag(argv, name):
        return argv[argv.index(name) + 1]
    (script, central), = by_name["sst2_central_s0"]
    assert script == "main_glue_lora" and float(flag(central, "--num_train_epochs")) == 2.0
    assert "--do_eval" in central and flag(central, "--eval_every_epochs") == "0.5"  # one point per round's worth
    for name, steps in jobs:   # every arm: the same examples, epochs in total and batch size as centralized
        script, argv = steps[0]
        family = studies.FAMILY[name.split("_")[1]]   # each arm family at the rate chosen for it
        assert float(flag(argv, "--learning_rate")) == rates[name.split("_")[0]][family]
        assert "--no_validation" not in argv   # reported runs score the dev set (once, at the end)
        assert ("--train_pooler" in argv) == name.startswith("mrpc")   # --train_pooler's default: MRPC only
        if script == "fedavg_rounds":
            assert int(flag(argv, "--rounds")) * float(flag(argv, "--local_epochs")) == 2.0
            assert flag(argv, "--batch_size") == flag(central, "--per_device_train_batch_size")
            assert flag(argv, "--data_dir") == flag(by_name[name.split("_")[0] + "_central_s0"][0][1], "--data_dir")
    (train, train_argv), (merge, merge_argv) = by_name["sst2_oneshot_dir0.1_s1"]
    assert train == "fedavg_rounds" and flag(train_argv, "--rounds") == "1" and merge == "fedavg_merge"
    assert flag(merge_argv, "--aggregation") == "naive" and "--do_eval" in merge_argv
    assert merge_argv[merge_argv.index("--adapters") + 1].endswith("sst2_oneshot_dir0.1_s1/round_1/client_1/adapter")
    grid = {j.name: j for j in run_grid.jobs_of(jobs)}   # the runner's jobs: a merge waits for its training run
    merge = grid["sst2_oneshot-naive_dir0.1_s1"]
    assert merge.after == ("sst2_oneshot_dir0.1_s1",) and merge.output.name == "fuse_manifest.json"
    assert merge.again == ("--overwrite",) and grid["sst2_central_s0"].run_dir == tmp_path / "grid" / "sst2_central_s0"
    assert len(grid) == len(jobs) + sum(name.split("_")[1] == "oneshot" for name, _ in jobs)
    sub = glue_tasks.read_glue_dir(tmp_path / "grid" / "data" / "sst2_200_sel50", "sst2")
    full = glue_tasks.load_glue("sst2", "synthetic")
    assert len(sub["train"]) == 200 and len(sub["validation"]) == len(full["validation"])
    assert len(sub["selection"]) == 50   # carved from the training file: no example in two parts
    position = {t: i for i, t in enumerate(full["train"].text_a)}
    train_rows, select_rows = ({position[t] for t in sub[k].text_a} for k in ("train", "selection"))
    assert len(train_rows) == 200 and len(select_rows) == 50 and not train_rows & select_rows
    assert not set(sub["selection"].text_a) & set(full["validation"].text_a)
    assert len(glue_tasks.read_glue_dir(tmp_path / "grid" / "data" / "mrpc_120_sel50", "mrpc")["train"]) == 120
    # the selection stage: every family x rate x selection seed on iid shards, no model scored on the dev set
    args.lr_grid, args.exact_lr_grid, args.select_seeds = [1e-3, 3e-3], [3e-4, 1e-3], [7]
    chooser = dict(run_grid.selection_cells(args))
    assert sorted(chooser) == sorted(
        [f"{t}_{f}_lr{lr:g}_s7" for t, fams in (("sst2", ("central", "multi-round", "one-shot")),
                                                ("mrpc", ("central", "multi-round"))) for f in fams
         for lr in (1e-3, 3e-3)] + [f"sst2_exact_lr{lr:g}_s7" for lr in (3e-4, 1e-3)])  # exact: its own grid
    assert flag(chooser["sst2_exact_lr0.0003_s7"][0][1], "--aggregation") == "exact"
    for (script, argv), in chooser.values():   # one step each: no one-shot naive merge of the dev set
        assert flag(argv, "--out-dir") == str(tmp_path / "grid" / "selection") and flag(argv, "--seed") == "7"
        assert ("--do_eval" not in argv) if script == "main_glue_lora" else ("--no_validation" in argv)
        assert "_s7" in flag(argv, "--shard_dir") if script == "fedavg_rounds" else True
    # the choice: the best final selection metric per family (ties: the smaller rate), recorded
    scores = {"central": (0.80, 0.82), "multi-round": (0.85, 0.85), "one-shot": (0.70, 0.60), "exact": (0.9, 0.8)}
    for family, pair in scores.items():
        for task in ("sst2", "mrpc"):
            for lr, v in zip((3e-4, 1e-3) if family == "exact" else (1e-3, 3e-3), pair):
                d = tmp_path / "grid" / "selection" / f"{task}_{family}_lr{lr:g}_s7"
                d.mkdir(parents=True, exist_ok=True)
                key = "selection_" + glue_tasks.get_task(task).main_metric
                (d / "summary.json").write_text(json.dumps({"final": {key: v}}))
    chosen = run_grid.choose(args)
    assert chosen["sst2"] == {"central": 3e-3, "multi-round": 1e-3, "one-shot": 1e-3, "exact": 3e-4}
    assert chosen["mrpc"] == {"central": 3e-3, "multi-round": 1e-3}
    record = study.read_selection(tmp_path / "grid" / "selection.json")
    assert record["choices"]["mrpc/central"]["scores"] == {"0.001": 0.80, "0.003": 0.82}
    assert record["runs"]["seeds"] == [7]
    args.tasks = ["mrpc"]   # a later invocation for one task keeps the other task's choice in selection.json
    assert run_grid.choose(args) == {"mrpc": chosen["mrpc"]}
    record = study.read_selection(tmp_path / "grid" / "selection.json")
    assert {k.split("/")[0] for k in record["choices"]} == {"sst2", "mrpc"}
    assert study.chosen(record, "sst2/") == chosen["sst2"]
    hist = json.loads((tmp_path / "grid/shards/sst2_dir0.1_k4_s1/summary.json").read_text())["label_histograms"]
    assert len(hist) == 4 and all(len(h) == 2 and min(h.values()) >= args.min_per_label for h in hist)
    cat = json.loads((tmp_path / "grid/shards/sst2_category_k4_s0/summary.json").read_text())["label_histograms"]
    assert all(len(h) == 1 for h in cat)


def test_fedavg_rounds_compiled_forward_gives_the_same_run(sst2_run, tmp_path):
    """--compile (aot_eager backend: inductor's graphs without code generation, fast on a CPU): the clients
    train and the fused adapter is evaluated through the compiled PeftModel, with the eager run's results."""
    ref_run, ref_summary = sst2_run
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    summary = fedavg_rounds.main(QUICK + SMALL + ["--task_name", "sst2", "--learning_rate", "3e-3", "--eval_each_round",
                                                  "--out-dir", str(tmp_path), "--compile", "--compile-backend",
                                                  "aot_eager"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert summary["final"]["eval_loss"] == pytest.approx(ref_summary["final"]["eval_loss"], rel=1e-4)
    assert summary["final"]["accuracy"] == ref_summary["final"]["accuracy"]
    run = the_run(tmp_path)
    got = adapters.load(run / "round_2/fused_r4/adapter").state_dict()
    want = adapters.load(ref_run / "round_2/fused_r4/adapter").state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flags,message", [(["--rounds", "0"], "--rounds must be at least 1"),
                                           (["--local_epochs", "0"], "--local_epochs must be > 0"),
                                           (["--num_clients", "1"], "--num_clients must be at least 2"),
                                           (["--train_samples", "3"], "at least --num_clients"),
                                           (["--jobs", "0"], "--jobs must be at least 1"),
                                           (["--seeds", "1", "1"], "--seeds and --select_seeds must be distinct"),
                                           (["--select_seeds", "2", "2"], "must be distinct")])
def test_run_grid_bad_counts_end_before_anything_is_written(tmp_path, flags, message, capsys):
    from lora_glue_fl import run_grid
    err = one_line_error(run_grid.main, [*flags, "--out-dir", str(tmp_path / "grid"), "--real_data_dir",
                                         str(tmp_path)], capsys)
    assert message in err, err
    assert not (tmp_path / "grid").exists()


def test_quick_is_a_preset_that_the_command_line_and_yaml_override(tmp_path):
    """defaults < --quick < YAML < command line: --quick --rounds 5 runs 5 rounds (it used to cap them at 2)."""
    assert fedavg_rounds.parse_args(["--quick"]).rounds == 2
    assert fedavg_rounds.parse_args(["--quick", "--rounds", "5"]).rounds == 5
    (tmp_path / "c.yaml").write_text("rounds: 3\nlora_r: 2\n")
    a = fedavg_rounds.parse_args(["--quick", "--config", str(tmp_path / "c.yaml")])
    assert (a.rounds, a.lora_r, a.svd_rank) == (3, 2, 4)
    a = parse_with_config(main_glue_lora.get_args_parser(), ["--quick", "--model_name_or_path", "X"],
                          presets={"quick": main_glue_lora.QUICK_LORA})
    assert a.model_name_or_path == "X" and a.max_seq_length == 48


def test_fedprox_rounds_and_the_scaffold_refusal(tmp_path, capsys):
    s = fedavg_rounds.main(QUICK + SMALL + ["--algorithm", "fedprox", "--mu", "0.01", "--rounds", "1", "--out-dir",
                                    str(tmp_path), "--save_client_adapters", "none"])
    assert s["rounds_done"] == 1 and "fedprox_mu0.01" in s["final_adapter"]
    err = one_line_error(fedavg_rounds.main, QUICK + ["--algorithm", "scaffold"], capsys)
    assert "--algorithm scaffold is refused here" in err and "re-factorises" in err
    err = one_line_error(fedavg_rounds.main, QUICK + ["--clustering", "ifca"], capsys)
    assert "'ifca' is refused here: the run keeps one fused adapter" in err
    err = one_line_error(fedavg_rounds.main, QUICK + ["--client-opt-state", "persist"], capsys)
    assert "'persist' is refused here: the clients' local optimizer keeps no state" in err
    err = one_line_error(fedavg_rounds.main, QUICK + ["--server-opt", "fedadam"], capsys)
    assert "has no meaning" in err


def test_fedavg_merge_scores_the_selection_split_when_the_data_has_one(sst2_run, tmp_path):
    """--do_eval on a GLUE folder holding selection.tsv also scores that split (``final.selection_*``: what
    run_grid.py's --budget_check twins of a one-shot naive merge are judged on); without the file, only validation."""
    from common import synthetic
    run, _ = sst2_run
    data = tmp_path / "glue_sst2"
    shutil.copytree(synthetic.ensure("glue-sst2"), data)
    clients = [str(run / f"round_1/client_{i}/adapter") for i in (1, 2, 3)]
    argv = ["--adapters", *clients, "--aggregation", "naive", "--do_eval", "--task_name", "sst2", "--data", "dir",
            "--data_dir", str(data), "--max_seq_length", "32", "--max_eval_samples", "40"]
    plain = fedavg_merge.main([*argv, "--save_adapter", str(tmp_path / "a")])["final"]
    assert "accuracy" in plain and not any(k.startswith("selection_") for k in plain)
    rows = (data / "train.tsv").read_text(encoding="utf-8").splitlines()
    (data / "selection.tsv").write_text("\n".join(rows[:1] + rows[1:51]) + "\n", encoding="utf-8")
    final = fedavg_merge.main([*argv, "--save_adapter", str(tmp_path / "b")])["final"]
    assert {k: v for k, v in final.items() if not k.startswith("selection_")} == plain   # validation as before
    assert 0 <= final["selection_accuracy"] <= 1 and final["selection_eval_loss"] > 0
