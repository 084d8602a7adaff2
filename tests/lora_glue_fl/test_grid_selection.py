"""run_grid.py's choice on synthetic selection runs (lora_glue_fl commits none): the mean over the selection seeds
decides, a tie goes to the smaller rate, each family on its own grid; the same choices whatever implementation
chooses."""
from __future__ import annotations

import json

from common import study
from lora_glue_fl import glue_tasks, run_grid


def test_the_mean_over_selection_seeds_picks_each_familys_rate(tmp_path):
    args = run_grid.get_args_parser().parse_args(["--out-dir", str(tmp_path), "--tasks", "sst2", "mrpc",
                                                  "--sst2_design", "merges", "--select_seeds", "100", "101",
                                                  "--lr_grid", "1e-3", "2e-3", "5e-3",
                                                  "--exact_lr_grid", "2e-4", "5e-4", "1e-3"])
    # per family: {rate: (seed 100, seed 101)}; seed 100 alone would choose otherwise in every family
    scores = {"central": {1e-3: (0.90, 0.70), 2e-3: (0.85, 0.84), 5e-3: (0.70, 0.70)},
              "multi-round": {1e-3: (0.80, 0.80), 2e-3: (0.70, 0.90), 5e-3: (0.60, 0.60)},   # a tie: 1e-3
              "one-shot": {1e-3: (0.50, 0.50), 2e-3: (0.55, 0.60), 5e-3: (0.60, 0.50)},
              "exact": {2e-4: (0.70, 0.72), 5e-4: (0.60, 0.90), 1e-3: (0.72, 0.60)}}
    for task in args.tasks:
        key = "selection_" + glue_tasks.get_task(task).main_metric
        for family in run_grid.families_of(args, task):
            for lr, by_seed in scores[family].items():
                for seed, v in zip(args.select_seeds, by_seed):
                    folder = tmp_path / "selection" / f"{task}_{family}_lr{lr:g}_s{seed}"
                    folder.mkdir(parents=True)
                    (folder / "summary.json").write_text(json.dumps({"final": {key: v}}))
    chosen = run_grid.choose(args)
    assert chosen == {"sst2": {"central": 2e-3, "multi-round": 1e-3, "one-shot": 2e-3, "exact": 5e-4},
                      "mrpc": {"central": 2e-3, "multi-round": 1e-3}}
    record = study.read_selection(tmp_path / "selection.json")   # common.study's record, a setting per task/family
    assert {study.chosen(record, f"{task}/") == chosen[task] for task in args.tasks} == {True}
    assert record["runs"]["seeds"] == [100, 101] and record["study"] == "minilm_glue"
    choices = record["choices"]
    assert choices["sst2/exact"]["scores"]["0.0005"] == 0.75 and choices["mrpc/central"]["chosen"] == 2e-3
    assert choices["sst2/central"]["metric"] == "final.selection_accuracy" and choices["mrpc/central"]["split"] == \
        "selection"
    # the multi-round rate is the smallest tried: selection.json says so (the grid does not extend)
    assert choices["sst2/multi-round"]["edge"] == "low" and choices["sst2/central"]["edge"] is None


def test_a_rate_at_the_edge_is_extended_past_it_and_chosen_again(tmp_path, monkeypatch):
    """--extend 1: a family whose best rate is the smallest of its grid runs the rate below (at the ratio of the
    edge to its neighbour) and chooses again; once the extension is spent an edge is recorded, not extended again,
    and rerunning the command replays the same choice from the finished runs."""
    import shutil

    from common import jobs, synthetic
    real = tmp_path / "real"
    shutil.copytree(synthetic.ensure("glue-mrpc"), real / "glue_mrpc")
    ran = []

    def fake_plan(plan, **_):   # each selection run "scores" higher the lower its rate; reported runs just end
        status = {}
        for job in plan:
            if job.run_dir is not None and "selection" in job.run_dir.parts:
                lr = float(job.argv[job.argv.index("--learning_rate") + 1])
                job.run_dir.mkdir(parents=True, exist_ok=True)
                if not (job.run_dir / "summary.json").is_file():
                    ran.append(job.name)
                    (job.run_dir / "summary.json").write_text(json.dumps({"final": {"selection_f1": 1 - lr}}))
            status[job.name] = "finished"
        return jobs.Outcome(status, {}, 0.0)

    monkeypatch.setattr(run_grid.jobs, "run_plan", fake_plan)
    argv = ["--out-dir", str(tmp_path / "grid"), "--real_data_dir", str(real), "--tasks", "mrpc",
            "--mrpc_design", "central", "--lr_grid", "1e-3", "2e-3", "--mrpc_train_samples", "100",
            "--selection_samples", "20", "--seeds", "0"]
    result = run_grid.main(argv)
    assert ran == ["mrpc_central_lr0.001_s100", "mrpc_central_lr0.002_s100", "mrpc_central_lr0.0005_s100"]
    assert result["rates"] == {"mrpc": {"central": 5e-4}}
    record = study.read_selection(tmp_path / "grid" / "selection.json")["choices"]["mrpc/central"]
    assert record["extended"] == [5e-4] and record["edge"] == "low" and record["chosen"] == 5e-4
    assert sorted(record["scores"]) == ["0.0005", "0.001", "0.002"]
    assert run_grid.tried(run_grid.get_args_parser().parse_args(argv)) == {("mrpc", "central"): [5e-4, 1e-3, 2e-3]}
    ran.clear()
    assert run_grid.main(argv)["rates"] == {"mrpc": {"central": 5e-4}} and ran == []   # replayed, not extended
    assert run_grid.main([*argv, "--extend", "0"])["rates"] == {"mrpc": {"central": 1e-3}}   # the edge reported


def test_a_task_chosen_again_replaces_its_settings_and_a_diverged_rate_is_named(tmp_path):
    """selection.json keeps the other tasks' choices and replaces the re-chosen task's whole (a family its new design
    lacks is not left behind); a rate whose run ended at nan is "diverged", not a score; the old layout is refused
    in one line naming the file."""
    import pytest

    from common.errors import UsageError

    def summaries(task, family, scores):
        key = "selection_" + glue_tasks.get_task(task).main_metric
        for lr, v in scores.items():
            folder = tmp_path / "selection" / f"{task}_{family}_lr{lr:g}_s100"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "summary.json").write_text(json.dumps({"final": {key: v}}))

    argv = ["--out-dir", str(tmp_path), "--lr_grid", "1e-3", "2e-3", "5e-3", "--tasks"]
    for family in ("central", "multi-round", "one-shot", "exact"):
        summaries("sst2", family, {1e-3: 0.8, 2e-3: 0.9, 5e-3: float("nan")} if family == "central" else
                  {2e-4: 0.7, 5e-4: 0.8, 1e-3: 0.7, 2e-3: 0.7, 5e-3: 0.7} if family == "exact" else
                  {1e-3: 0.7, 2e-3: 0.8, 5e-3: 0.7})
    summaries("mrpc", "central", {1e-3: 0.7, 2e-3: 0.8, 5e-3: 0.7})
    summaries("mrpc", "multi-round", {1e-3: 0.7, 2e-3: 0.8, 5e-3: 0.7})
    run_grid.choose(run_grid.get_args_parser().parse_args([*argv, "sst2", "--sst2_design", "merges"]))
    run_grid.choose(run_grid.get_args_parser().parse_args([*argv, "mrpc"]))
    record = study.read_selection(tmp_path / "selection.json")
    assert sorted(record["choices"]) == ["mrpc/central", "mrpc/multi-round", "sst2/central", "sst2/exact",
                                         "sst2/multi-round", "sst2/one-shot"]
    assert record["choices"]["sst2/central"]["scores"] == {"0.001": 0.8, "0.002": 0.9, "0.005": "diverged"}
    assert run_grid.choose(run_grid.get_args_parser().parse_args([*argv, "sst2", "--sst2_design", "small"])) == \
        {"sst2": {"central": 2e-3, "multi-round": 2e-3}}
    record = study.read_selection(tmp_path / "selection.json")
    assert sorted(record["choices"]) == ["mrpc/central", "mrpc/multi-round", "sst2/central", "sst2/multi-round"]
    (tmp_path / "selection.json").write_text(json.dumps({"criterion": "", "tasks": {}}))   # the layout before
    with pytest.raises(UsageError, match="selection.json: not a selection record"):
        run_grid.tried(run_grid.get_args_parser().parse_args([*argv, "sst2"]))


def test_budget_check_plans_each_centralized_and_one_shot_run_again_at_twice_the_epochs(tmp_path, capsys):
    """--budget_check: after the design's cells (unchanged), per task and seed the centralized run at twice the epochs
    (``<task>_central-x2_s<seed>``: the same flags, rate and evaluation interval, only the epochs and the name
    differ) and each one-shot cell with its clients at twice the local epochs (``<task>_oneshot-x2_<shard>_s<seed>``,
    then its naive merge ``<task>_oneshot-naive-x2_<shard>_s<seed>`` of that run's clients), planned by --dry_run and
    copied by --records like every cell; without the flag, no twin."""
    import shutil

    import pytest

    from common import synthetic
    from common.errors import UsageError
    real = tmp_path / "real"
    for task in ("sst2", "mrpc"):
        shutil.copytree(synthetic.ensure(f"glue-{task}"), real / f"glue_{task}")
    argv = ["--out-dir", str(tmp_path / "grid"), "--real_data_dir", str(real), "--tasks", "sst2", "mrpc",
            "--sst2_design", "headline", "--train_samples", "100", "--mrpc_train_samples", "100",
            "--selection_samples", "20", "--seeds", "0", "1", "--rounds", "4", "--local_epochs", "0.5",
            "--min_per_label", "2"]
    rates = {"sst2": {"central": 1e-3, "multi-round": 2e-3, "one-shot": 5e-3}, "mrpc": {"central": 3e-3,
                                                                                      "multi-round": 4e-3}}
    plain = run_grid.cells(run_grid.get_args_parser().parse_args(argv), rates, write=False)
    assert not any("-x2" in name for name, _ in plain)
    args = run_grid.get_args_parser().parse_args([*argv, "--budget_check"])
    checked = run_grid.cells(args, rates, write=False)
    assert checked[:len(plain)] == plain   # the design's cells first, as without the flag
    twins = dict(checked[len(plain):])
    assert list(twins) == ["sst2_central-x2_s0", "sst2_central-x2_s1", "sst2_oneshot-x2_iid_s0",
                           "sst2_oneshot-x2_iid_s1", "sst2_oneshot-x2_dir0.1_s0", "sst2_oneshot-x2_dir0.1_s1",
                           "mrpc_central-x2_s0", "mrpc_central-x2_s1"]

    def flag(argv, name):
        return argv[argv.index(name) + 1]

    def without(argv, *names):   # the argv less these flags and their values
        return [a for i, a in enumerate(argv) if a not in names and (i == 0 or argv[i - 1] not in names)]

    for name, steps in twins.items():
        cell = dict(plain)[name.replace("-x2", "")]
        if "central" in name:
            ((script, twin),), ((_, central),) = steps, cell
            assert script == "main_glue_lora" and flag(twin, "--run-name") == name
            assert float(flag(twin, "--num_train_epochs")) == 2 * float(flag(central, "--num_train_epochs")) == 4.0
            assert flag(twin, "--eval_every_epochs") == flag(central, "--eval_every_epochs") == "0.5"
            assert float(flag(twin, "--learning_rate")) == rates[name.split("_")[0]]["central"]
            assert without(twin, "--num_train_epochs", "--run-name") == without(central, "--num_train_epochs",
                                                                                    "--run-name")
            continue
        (script, twin), (merge, fused) = steps
        (_, oneshot), (_, naive) = cell
        assert script == "fedavg_rounds" and merge == "fedavg_merge" and flag(twin, "--run-name") == name
        assert flag(twin, "--rounds") == flag(oneshot, "--rounds") == "1"
        assert float(flag(twin, "--local_epochs")) == 2 * float(flag(oneshot, "--local_epochs")) == 4.0
        assert float(flag(twin, "--learning_rate")) == rates["sst2"]["one-shot"]
        assert without(twin, "--local_epochs", "--run-name") == without(oneshot, "--local_epochs", "--run-name")
        # its naive merge reads the twin's clients and writes beside it, named as the one-shot naive merge's twin
        assert flag(fused, "--save_adapter").endswith(name.replace("oneshot", "oneshot-naive") + "/adapter")
        assert all(f"/{name}/round_1/client_" in a for a in fused[fused.index("--adapters") + 1:][:2])
        after = lambda argv: without(argv[argv.index("--shard_manifests"):], "--save_adapter")  # noqa: E731
        assert after(fused) == after(naive)   # the same merge, the same shards
    with pytest.raises(UsageError, match="centralized or one-shot run's"):   # the multiplier is theirs only
        run_grid.cell_steps(args, "sst2", "svd", "iid", 0, 1e-3, "x", write=False, epochs=2)
    # --records copies a twin's record like every cell's
    out, records = tmp_path / "grid", tmp_path / "records"
    for name in ("sst2_central_s0", "sst2_central-x2_s0"):
        (out / name).mkdir(parents=True, exist_ok=True)
        for f in ("args.json", "summary.json", "metrics.jsonl"):
            (out / name / f).write_text("{}\n")
    run_grid.copy_records(out, records, checked, [])
    assert (records / "sst2_central-x2_s0" / "summary.json").is_file()
    # --dry_run prints the twins after the design's runs
    capsys.readouterr()
    result = run_grid.main([*argv, "--tasks", "mrpc", "--mrpc_design", "central", "--learning_rate", "1e-3",
                            "--budget_check", "--dry_run"])
    printed = [line for line in capsys.readouterr().out.splitlines() if "--run-name" in line]
    assert result["cells"] == 4 and [flag(line.split(), "--run-name") for line in printed] == [
        "mrpc_central_s0", "mrpc_central_s1", "mrpc_central-x2_s0", "mrpc_central-x2_s1"]
    assert [flag(line.split(), "--num_train_epochs") for line in printed] == ["2.0", "2.0", "4.0", "4.0"]


def test_copying_records_keeps_the_earlier_invocations_of_grid_json(tmp_path):
    """A grid continued in a fresh out-dir (its records copied in, a second budget added) appends its invocations
    to the committed grid.json instead of replacing the history the wall-time block reads; copying twice adds
    nothing."""
    out, records = tmp_path / "out", tmp_path / "records"
    out.mkdir(), records.mkdir()
    earlier = {"argv": ["--tasks", "sst2"], "wall_seconds": 5099}
    later = {"argv": ["--budget_check"], "wall_seconds": 9}
    (records / "grid.json").write_text(json.dumps([earlier]))
    (out / "grid.json").write_text(json.dumps([later]))
    for _ in range(2):
        run_grid.copy_records(out, records, [], [])
        assert json.loads((records / "grid.json").read_text()) == [earlier, later]
