"""Every mamba_fl script end to end with --quick on the embedded data, and bad inputs failing in one line."""
from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
from clicases import one_line_error as _fails

from common import cli
from mamba_fl import central, fed_avg, fed_entropy, fed_fisher, fed_momentum

FEDERATED = {"fedavg": fed_avg, "fedmomentum": fed_momentum, "fedentropy": fed_entropy, "fedfisher": fed_fisher}


def _check_run(out_dir, prefix: str, summary: dict) -> dict:
    (run,) = [p for p in out_dir.iterdir() if p.name.startswith(prefix)]
    saved = json.loads((run / "summary.json").read_text())
    assert saved["final_val_ppl"] == summary["final_val_ppl"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["val_ppl"]) and r["val_ppl"] > 1 for r in rows)
    assert abs(math.exp(rows[-1]["val_loss"]) - rows[-1]["val_ppl"]) < 1e-6 * rows[-1]["val_ppl"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]  # it learns
    assert summary["final_val_ppl"] > summary["optimal_ppl_word"]  # a few steps are far from the optimum
    assert summary["best_val_ppl"] <= summary["final_val_ppl"]
    assert summary["optimal_ppl_word"] is not None and 1 < summary["optimal_ppl_word"] < 100
    # reference points: uniform = vocabulary size, unigram between the optimum and uniform
    assert summary["uniform_ppl"] == summary["vocab_size"]
    assert summary["optimal_ppl_word"] < summary["unigram_ppl_word"] < summary["uniform_ppl_word"]
    assert 1 < summary["unigram_ppl"] < summary["uniform_ppl"]
    meta = json.loads((run / "args.json").read_text())
    assert meta["args"]["kernel_path"] == "torch"  # CPU: the PyTorch reference path
    assert meta["args"]["model_config"] == "pure_ssm_1_layer"
    assert (run / "perplexity.png").stat().st_size > 1000
    return {"run": run, "rows": rows, "args": meta["args"]}


@pytest.mark.parametrize("name", list(FEDERATED))
def test_federated_script_quick(name, tiny, out_dir):
    extra = ["--save-deltas"] if name == "fedavg" else []
    summary = FEDERATED[name].main(tiny(*extra))
    info = _check_run(out_dir, name + "_", summary)
    assert summary["rounds_done"] == 2 and [r["round"] for r in info["rows"]] == [1, 2]
    assert summary["bytes_up"] == (2 if name == "fedfisher" else 1) * summary["bytes_down"] > 0
    assert 0 <= summary["overhead_fraction"] < 1
    if name == "fedentropy":
        assert set(info["rows"][-1]["entropy"]) == {"0", "1"}
    if name == "fedavg":  # snapshots of every layer tensor chosen, server and per-client deltas
        z = np.load(info["run"] / "deltas" / "round_00002.npz")
        assert {"server/layer0/mixer.in_proj.weight", "server_delta/layer0/mixer.out_proj.weight",
                "client1_delta/layer0/mixer.in_proj.weight"} <= set(z.files)


def test_central_quick(tiny, out_dir):
    summary = central.main(tiny("--max-steps", "3", "--batch-size", "4"))
    info = _check_run(out_dir, "central_", summary)
    assert [r["step"] for r in info["rows"]] == [1, 2, 3]
    assert all(-1 <= r["grad_cosine"] <= 1 for r in info["rows"][1:])
    assert isinstance(info["rows"][-1]["sample"], str)
    assert summary["train_tokens"] == 3 * 4 * 64


def test_config_alias_and_quick_sizes(tiny, out_dir):
    from common import cli
    from mamba_fl import federated

    args = cli.parse(fed_avg.get_args_parser(), ["--config", "pure_ssm_4_layer", "--quick", "--d_model", "32"])
    federated.finish_args(args)
    assert args.layers == 4 and args.d_model == 32 and args.d_state == 16 and args.sequence_length == 64
    assert args.chunk_size == 64  # min(256, sequence length)
    # the scripts' --quick values ride on their parser (so common.jobs reads a grid job as the script does), the
    # Fisher and entropy samples in every script (any of them takes --aggregator fisher / entropy); the command
    # line still wins over them
    quick = {m: vars(cli.parse(m.get_args_parser(), ["--quick"])) for m in (central, fed_fisher, fed_entropy)}
    assert quick[central]["max_steps"] == 64 and quick[central]["val_freq"] == 16
    assert quick[fed_fisher]["fisher_samples"] == 4 and quick[fed_fisher]["rounds"] == 64
    assert quick[fed_entropy]["entropy_blocks"] == 16 and quick[fed_entropy]["aggregator"] == "entropy"
    assert cli.parse(fed_fisher.get_args_parser(), ["--quick", "--fisher-samples", "2"]).fisher_samples == 2
    # --lr's default follows the optimizer (an AdamW rate leaves plain SGD, SCAFFOLD's optimizer, near its start)
    for argv, lr in (([], 5e-4), (["--quick"], 1e-2), (["--quick", "--algorithm", "scaffold"], 1.0),
                     (["--optimizer", "sgd"], 1.0), (["--quick", "--optimizer", "sgd", "--lr", "0.3"], 0.3)):
        args = cli.parse(fed_avg.get_args_parser(), argv)
        federated.finish_args(args)
        assert args.lr == lr, argv


def test_feddyn_takes_plain_sgd_by_default_and_refuses_adamw_moments_kept_across_rounds(capsys):
    """FedDyn with AdamW and --client-opt-state persist (the default here) diverges (tests/common/
    test_feddyn_fednova.py): --algorithm feddyn alone runs plain SGD, AdamW with persist is refused in one line, a
    fresh AdamW each round runs."""
    from common import cli
    from mamba_fl import federated

    for argv, optimizer in (([], "sgd"), (["--client-opt-state", "reset"], "adamw"),
                            (["--client-opt-state", "persist", "--optimizer", "sgd"], "sgd")):
        args = cli.parse(fed_avg.get_args_parser(), ["--quick", "--algorithm", "feddyn", *argv])
        federated.finish_args(args)
        assert args.optimizer == optimizer, argv
    err = _fails(fed_avg.main, ["--quick", "--algorithm", "feddyn", "--optimizer", "adamw"], capsys)
    assert "--algorithm feddyn with AdamW and --client-opt-state persist diverges" in err
    assert "--client-opt-state reset" in err


def test_bad_inputs_fail_in_one_line(tiny, tmp_path, capsys):
    assert "pure_ssm_3_layer" in _fails(fed_avg.main, tiny("--config", "pure_ssm_3_layer"), capsys)
    assert "--layers" in _fails(fed_avg.main, ["--layers", "3"], capsys)
    assert "--num-clients must be at least 1" in _fails(fed_avg.main, tiny("--num-clients", "0"), capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "wiki.train.raw" in _fails(central.main, tiny("--data-dir", str(empty), "--max-steps", "1"), capsys)
    (empty / "wiki.train.raw").write_text(" = A = \n hello world \n")
    assert "wiki.valid.raw" in _fails(fed_fisher.main, tiny("--data-dir", str(empty)), capsys)
    assert "above the" in _fails(fed_entropy.main, tiny("--sequence-length", "1000000"), capsys)
    assert "--temperature" in _fails(fed_entropy.main, tiny("--temperature", "0"), capsys)


def test_split_wikitext_cuts_at_article_headings(tmp_path, capsys):
    from mamba_fl import split_wikitext

    arts = [f" = Article {i} = \n\n = = Section = = \n\n Text of article {i} .\n\n" for i in range(10)]
    raw = tmp_path / "wiki.test.raw"
    raw.write_text("\n" + "".join(arts), encoding="utf-8")
    info = split_wikitext.main(["--raw", str(raw), "--out-dir", str(tmp_path / "split"), "--valid-fraction", "0.2"])
    train = (tmp_path / "split" / "wiki.train.raw").read_text(encoding="utf-8")
    valid = (tmp_path / "split" / "wiki.valid.raw").read_text(encoding="utf-8")
    assert (info["train_articles"], info["valid_articles"]) == (8, 2)
    assert train + valid == raw.read_text(encoding="utf-8")  # nothing lost, nothing reordered
    assert valid.startswith(" = Article 8 = ") and "Article 7 " in train and "Article 8" not in train
    with pytest.raises(cli.UsageError, match="--overwrite"):  # an existing split is never replaced silently
        split_wikitext.main(["--raw", str(raw), "--out-dir", str(tmp_path / "split")])
    (tmp_path / "one.raw").write_text(arts[0], encoding="utf-8")
    with pytest.raises(cli.UsageError, match="at least 2"):
        split_wikitext.main(["--raw", str(tmp_path / "one.raw"), "--out-dir", str(tmp_path / "x")])
    line = _fails(split_wikitext.main, ["--raw", str(raw), "--out-dir", str(tmp_path / "y"), "--shuffle-seed", "-1"],
                  capsys)
    assert "--shuffle-seed must be in [0, 4294967295], got -1" in line and not (tmp_path / "y").exists()


def test_run_grid_plan_matches_compute_and_skips_finished_runs(tmp_path, capsys):
    """The grid's plan: every arm takes rounds x clients x local steps optimizer steps of the same batch as the
    central run; --dry-run prints the commands and a finished run (summary.json) is not planned again."""
    from mamba_fl import run_grid, studies

    args = run_grid.get_args_parser().parse_args(["--rounds", "16", "--seeds", "0", "--layers", "1"])
    runs = {name: flags for name, _, flags in
            run_grid.plan(args, [*studies.CENTRAL, *studies.FEDERATED_ARMS, *studies.VARIANTS], [1], ["topic"])}
    flag = lambda flags, f: flags[len(flags) - 1 - flags[::-1].index(f) + 1]  # the last value given for f
    central = runs["central_L1_synthetic_s0"]
    assert int(flag(central, "--max-steps")) == 16 * 4 and flag(central, "--batch-size") == "16"
    for name, flags in runs.items():
        if name.startswith("central"):
            continue
        steps = int(flag(flags, "--rounds")) * 4 * int(flag(flags, "--local-updates") if "--local-updates" in flags
                                                       else 1)
        assert steps == 64 and flag(flags, "--batch-size") == "16" and flag(flags, "--shard") == "topic", name
    # the same data in every arm: each client's FedEntropy scoring set is held out of every arm's training blocks
    assert all(flag(flags, "--holdout-fraction") == "0.1" for flags in runs.values())
    assert flag(central, "--holdout-clients") == "4"
    assert flag(runs["fedavg-sgd_L1_topic_s0"], "--lr") == "1.0"  # the SGD arm's own rate wins
    b4 = runs["central-b4_L1_synthetic_s0"]  # FedAvg's 16 sequential updates of 4 clients' batches
    assert (flag(b4, "--max-steps"), flag(b4, "--batch-size"), flag(b4, "--val-freq")) == ("16", "64", "10")
    out = tmp_path / "grid"
    grid = ["--out-dir", str(out), "--rounds", "16", "--seeds", "0", "--layers", "1", "--shards", "topic",
            "--no-variants", "--long-factor", "1", "--dry-run"]
    planned = {j.name: j for j in run_grid.jobs_of(run_grid.plan(args, [*studies.CENTRAL, *studies.FEDERATED_ARMS],
                                                                  [1], ["topic"]), out)}
    for name, flags in (("fedavg_L1_topic_s0", []), ("fedentropy_L1_topic_s0", ["--lr", "0.5"])):
        job = planned[name]   # a finished run as the script records it: args.json and summary.json
        saved = vars(importlib.import_module(job.script).get_args_parser().parse_args([*job.argv, *flags]))
        (out / name).mkdir(parents=True)
        (out / name / "args.json").write_text(json.dumps({"args": saved}))
        (out / name / "summary.json").write_text('{"final_val_ppl": 50.0}')
    run_grid.main(grid)
    printed = capsys.readouterr().out
    assert "7 runs: 1 done before, 5 to run, 1 holding other arguments" in printed
    assert "fedentropy_L1_topic_s0 holds a run with other arguments (--lr saved 0.5, now 0.01)" in printed
    assert "--run-name fedfisher_L1_topic_s0" in printed and "--run-name fedavg_L1_topic_s0" not in printed
    with pytest.raises((SystemExit, cli.UsageError)):
        run_grid.main(["--jobs", "0", "--dry-run", "--out-dir", str(out)])


def test_run_grid_copies_the_finished_runs_records(tmp_path, capsys):
    """--records: every finished run's args.json, summary.json and metrics.jsonl (no checkpoint) copied to the study
    folder once the grid has run; a complete grid prints its figure command and leaves the drawing to it."""
    from mamba_fl import run_grid
    from plots import plot_mamba

    out, records = tmp_path / "grid", tmp_path / "records"
    argv = ["--out-dir", str(out), "--seeds", "0", "--layers", "1", "--shards", "topic", "--no-variants",
            "--long-factor", "1", "--rounds", "16", "--figures", str(tmp_path / "fig")]
    plan = run_grid.jobs_of(run_grid.grid_plan(run_grid.get_args_parser().parse_args(argv)), out)
    for job in plan:  # every run finished, as the scripts record it
        saved = vars(importlib.import_module(job.script).get_args_parser().parse_args(job.argv))
        (out / job.name).mkdir(parents=True)
        (out / job.name / "args.json").write_text(json.dumps({"args": saved}))
        (out / job.name / "summary.json").write_text('{"final_val_ppl": 50.0}')
        (out / job.name / "metrics.jsonl").write_text('{"round": 1, "tokens": 1024, "val_ppl": 50.0}\n')
        (out / job.name / "checkpoint.pt").write_bytes(b"0")
    result = run_grid.main([*argv, "--records", str(records)])
    printed = capsys.readouterr().out
    assert result["records"] == len(plan) == 7 and f"7 finished runs' records in {records}" in printed
    assert sorted(p.name for p in (records / "fedavg_L1_topic_s0").iterdir()) == \
        ["args.json", "metrics.jsonl", "summary.json"]
    figures = f"python plots/plot_mamba.py --runs {out} --out {tmp_path / 'fig'}"
    assert f"next: {figures}" in printed and not (tmp_path / "fig").exists()  # printed, not drawn
    drawn = plot_mamba.main(figures.split()[2:])  # the printed command, in-process
    assert drawn["figures"] and (tmp_path / "fig").is_dir()


@pytest.mark.parametrize("seeds,message", [(["-1"], "--seeds must be in [0, 4294967295], got -1"),
                                           (["4294967296"], "got 4294967296"),
                                           (["1", "1"], "--seeds must be distinct")])
def test_run_grid_refuses_bad_seeds(tmp_path, capsys, seeds, message):
    from mamba_fl import run_grid
    with pytest.raises((SystemExit, cli.UsageError)) as e:
        run_grid.main(["--seeds", *seeds, "--dry-run", "--out-dir", str(tmp_path / "grid")])
    assert message in (str(e.value) + capsys.readouterr().err) and not (tmp_path / "grid").exists()


def test_the_default_grid_plans_each_run_once(tmp_path, capsys):
    """Two depths and two shardings: the deeper model's central run (which has no shards) is planned once."""
    from mamba_fl import run_grid
    run_grid.main(["--dry-run", "--out-dir", str(tmp_path / "grid")])
    printed = capsys.readouterr().out
    assert printed.count("--run-name central_L2_synthetic_s0 ") == 1
    assert printed.count("--run-name fedavg_L2_topic_s2 ") == 1 and "--run-name fedavg_L2_contiguous_s2 " in printed

