"""mamba_fl/real_grid.py: the plan of the real-text grid (selection on validation, plateau and equal-compute runs)
and the choice it makes from the selection runs, without training."""
from __future__ import annotations

import json

import pytest

from common import cli, jobs, study
from common.errors import UsageError
from mamba_fl import lmdata, real_grid, studies


def _flag(argv, name):
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]


def test_plan_matches_compute_tests_only_reported_runs_and_chooses_on_validation(mamba_cache, tmp_path, capsys):
    folder, _ = lmdata._synthetic_dir(mamba_cache)
    out = tmp_path / "grid"
    argv = ["--data", str(folder / "wiki.train.raw"), str(folder / "wiki.valid.raw"), "--out-dir", str(out)]
    args = cli.parse(real_grid.get_args_parser(), argv)
    real_grid.main(argv + ["--dry-run"])
    info = json.loads((out / "split" / "split.json").read_text())
    assert info["test_articles"] > 0 and info["shuffle_seed"] == 0
    with pytest.raises(UsageError, match="was cut from other files than --data"):  # never silently another split
        real_grid.main(["--data", str(folder / "wiki.valid.raw"), str(folder / "wiki.train.raw"), "--out-dir",
                        str(out), "--dry-run"])
    blocks = real_grid.train_blocks(args, out)
    sel = real_grid.selection_plan(args, out, blocks, studies.PHASES[0], {})
    assert len(sel) == 6 and all(_flag(j.argv, "--seed") == "100" and "--test" not in j.argv for j in sel)
    assert {_flag(j.argv, "--lr") for j in sel} == {"0.003", "0.01", "0.03"}
    # each chosen where it is reported: to the plateau rule of the reported runs, capped alike
    assert all(_flag(j.argv, "--patience") == "5" for j in sel)
    assert _flag(sel[0].argv, "--max-steps") == str(real_grid.steps_for(args.max_epochs, blocks, args.batch_size))
    budget = real_grid.selection_plan(cli.parse(real_grid.get_args_parser(), argv + ["--select-at", "budget"]), out,
                                      blocks, studies.PHASES[0], {})
    assert all("--patience" not in j.argv for j in budget)  # a fixed budget of --select-epochs passes
    assert _flag(budget[0].argv, "--max-steps") == str(real_grid.steps_for(args.select_epochs, blocks,
                                                                           args.batch_size))

    # the selection: lowest best validation perplexity among runs that finished below their unigram
    scores = {"select_central_lr0.003": (80.0, "complete"), "select_central_lr0.01": (70.0, "complete"),
              "select_central_lr0.03": (60.0, "diverged"), "select_fedavg_lr0.003": (90.0, "complete"),
              "select_fedavg_lr0.01": (5000.0, "complete"), "select_fedavg_lr0.03": (95.0, "complete")}
    for name, (ppl, status) in scores.items():
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / "summary.json").write_text(json.dumps(
            {"best_val_ppl": ppl, "unigram_ppl": 1000.0, "status": status}))
    picked = real_grid.choose(sel)
    chosen = real_grid.chosen_flags(picked)
    assert chosen == {"central": {"--lr": 0.01}, "fedavg": {"--lr": 0.003}}
    # not candidates, each saying why: diverged, or learned less than token frequencies
    assert picked["central"]["scores"]["0.03"] == "diverged"
    assert picked["fedavg"]["scores"]["0.01"] == "at or above the unigram"
    assert picked["fedavg"]["edge"] == "low" and picked["fedavg"]["beyond"] == 0.0009  # no extension here
    assert studies.BEST_OTHER not in picked  # the second phase's
    second = real_grid.selection_plan(args, out, blocks, studies.PHASES[1], chosen)
    assert all(_flag(j.argv, "--lr") == "0.003" for j in second)  # the second phase at FedAvg's rate
    assert len(second) == 7 and sum("--fisher-method" in j.argv for j in second) == 1
    for j, ppl in zip(second, [70.0, 60.0, 65.0, 62.0, 61.0, 64.0, 59.0]):  # fedentropy x3, fedavgm x3, local
        (out / "runs" / j.name).mkdir(parents=True)
        (out / "runs" / j.name / "summary.json").write_text(json.dumps({"best_val_ppl": ppl, "unigram_ppl": 1e3}))
    found = real_grid.choose(second)
    assert real_grid.chosen_flags(found)["fedentropy"] == {"--temperature": 1.0}
    assert found[studies.BEST_OTHER]["chosen"] == real_grid.best_other(found) == "fedfisher-local"
    assert found[studies.BEST_OTHER]["scores"] == {"fedentropy": 60.0, "fedavgm": 61.0, "fedfisher-local": 59.0}
    assert real_grid.beyond_edge([0.1, 0.3, 1.0], 1.0) == [0.1, 0.3, 1.0, 3.33]
    assert real_grid.beyond_edge([3e-3, 1e-2, 3e-2], 3e-3) == [9e-4, 3e-3, 1e-2, 3e-2]
    assert real_grid.beyond_edge([0.1, 1.0, 10.0], 1.0) == [0.1, 1.0, 10.0]  # inside: unchanged
    assert real_grid.beyond_edge(["local"], "local") == ["local"]
    chosen, other = chosen | real_grid.chosen_flags(found), real_grid.best_other(found)

    plan = {j.name: j.argv for j in real_grid.reported_plan(args, out, blocks, chosen, other)}
    assert all("--test" in a and _flag(a, "--patience") == "5" for a in plan.values())
    assert {n.split("_")[0] for n in plan} == {"central", "central-b4", "fedavg", "fedfisher", "fedfisher-local"}
    assert sum(n.startswith("fedfisher_L1_contiguous_k4m4_plateau") for n in plan) == 5  # the paired seeds
    assert sum(n.startswith("central_L1_contiguous_k4m4_plateau") for n in plan) == 3
    c, b4 = plan["central_L1_contiguous_k4m4_plateau_s0"], plan["central-b4_L1_contiguous_k4m4_plateau_s0"]
    fa = plan["fedavg_L1_contiguous_k4m4_plateau_s0"]
    # equal compute: every arm's evaluations and its budget point come after exactly the same training blocks
    runs = {"c": c, "b4": b4, "fa": fa}
    per = {k: int(_flag(a, "--batch-size")) * (4 if k == "fa" else 1) for k, a in runs.items()}
    every = {k: int(_flag(a, "--eval-every" if k == "fa" else "--val-freq")) for k, a in runs.items()}
    budget = {k: int(_flag(a, "--budget-at")) for k, a in runs.items()}
    assert len({per[k] * every[k] for k in per}) == 1 and len({per[k] * budget[k] for k in per}) == 1
    evals = args.budget_epochs / args.eval_epochs  # each evaluation rounds up by less than one round's blocks
    assert 0 <= per["c"] * budget["c"] - args.budget_epochs * blocks < per["fa"] * evals
    assert budget["b4"] == budget["fa"] == budget["c"] // 4  # equal sequential updates
    assert _flag(c, "--lr") == "0.01" and _flag(fa, "--lr") == "0.003"
    assert all(_flag(a, "--holdout-fraction") == "0.1" for n, a in plan.items() if not n.startswith("central"))
    everything = real_grid.reported_plan(cli.parse(real_grid.get_args_parser(), argv + ["--block", "all"]), out,
                                         blocks, chosen, other)
    names = [j.name for j in everything]
    assert {"fedentropy", "fedavgm", "fedfisher-local"} <= {n.split("_")[0] for n in names}
    assert len(names) == len(set(names)) and any("_topic_" in n for n in names) and any("k16m4" in n for n in names)
    l4 = [j.name for j in everything if "_L4_" in j.name]  # every arm of the depth comparison, the grid's seeds
    assert sorted(l4) == sorted(f"{a}_L4_contiguous_k4m4_plateau_s{s}"
                                for a in ("central", "central-b4", "fedavg", "fedfisher") for s in (0, 1, 2))
    only = real_grid.reported_plan(cli.parse(real_grid.get_args_parser(), argv + ["--only", "*_L2_*", "central_*"]),
                                   out, blocks, chosen, other)  # a part of the grid: the same runs, fewer of them
    assert [j.name for j in only] == [n for n in plan if "_L2_" in n or n.startswith("central_")]
    assert all(j.argv == plan[j.name] for j in only) and any(n.startswith("central_L1") for n in plan)
    data = tmp_path / "wiki.txt"
    data.write_text(" = A = \n")
    # a typo is refused before anything is written
    with pytest.raises(UsageError, match="--only \\*_L3_\\*: no run of this grid"):
        real_grid.main(["--data", str(data), "--out-dir", str(tmp_path / "typo"), "--only", "*_L2_*", "*_L3_*"])
    assert not (tmp_path / "typo").exists()


def test_report_of_real_runs(tiny, split_dir, tmp_path, capsys, monkeypatch):
    """Runs named as real_grid.py names them (tiny, --quick) in a grid's out-dir give results_real.md's tables
    through mamba_fl/results.py's block (``--show ... --records``) and a curve figure through plot_mamba."""
    from common import results
    from mamba_fl import central, fed_avg, fed_fisher
    from plots import plot_mamba

    grid = tmp_path / "grid"
    runs = grid / "runs"
    common = ["--data-dir", str(split_dir), "--patience", "2", "--test", "--out-dir", str(runs), "--lr", "2e-2",
              "--budget-at", "2"]
    central.main(tiny(*common, "--max-steps", "3", "--run-name", "central_L1_contiguous_k2m2_plateau_s0"))
    for name, script in (("fedavg", fed_avg), ("fedfisher", fed_fisher)):
        script.main(tiny(*common, "--rounds", "3", "--eval-every", "1",
                         "--run-name", f"{name}_L1_contiguous_k2m2_plateau_s0"))
    # the selection beside runs/: central's rate at the top of its candidates, FedAvg's inside
    scores = {"central": {0.006: [90.0], 0.02: [80.0]}, "fedavg": {0.006: [90.0], 0.02: [80.0], 0.06: [85.0]}}
    study.write_selection(grid / "selection.json", "mamba_fl real", "test", {
        arm: study.choice_record(studies.grid_of(arm), studies.grid_of(arm).choose(s))
        for arm, s in scores.items()})
    monkeypatch.setattr(results, "REDIRECTS", {})  # what --records sets, for this test only
    capsys.readouterr()
    assert results.main(["--show", "mamba_fl.real-report", "--records", f"mamba_fl/results/real={grid}"]) == 0
    text = capsys.readouterr().out
    assert "## 1 layer, 2 clients, contiguous shards: at the plateau" in text
    assert "## 1 layer, 2 clients, contiguous shards: at equal compute" in text
    plateau, budget = text.split("at equal compute\n")
    lines = {line.split(" | ")[0].lstrip("| "): line for line in plateau.splitlines() if line.startswith("| ")}
    assert set(lines) == {"arm", "central (AdamW, batch 16)", "FedAvg (client AdamW, moments kept; the reference)",
                          "FedFisher (per-example Fisher)"}
    fisher, first = lines["FedFisher (per-example Fisher)"], lines["central (AdamW, batch 16)"]
    # one seed: no interval to state, so a comparison says so (or that the arm learned less than the unigram)
    assert "1 seed" in fisher or "not compared" in fisher
    assert "met the rule; best at rounds" in fisher and "best at steps" in first
    assert ("lr at the high edge of its grid" in first) != ("not compared" in first)  # the selection's edge
    assert "floor decides" in fisher  # its Fisher's floor share, from metrics.jsonl
    assert "unigram (fitted on the training articles)" in plateau
    assert "FedFisher (per-example Fisher)" in budget and "2 rounds" in budget and "2 steps" in budget
    assert not (grid / "results_real.md").exists()  # tables are the block's, not a file in the out-dir

    out = plot_mamba.main(["--runs", str(runs), "--out", str(tmp_path / "fig")])
    assert [p for p in out["figures"] if p.endswith("real_L1_contiguous_k2m2_plateau.png")]
    assert not list((tmp_path / "fig").glob("*.md"))  # figures only: no report, no synthetic-grid one


def test_selection_extends_a_choice_at_the_edge_of_its_grid(mamba_cache, tmp_path):
    """A winner at the largest (smallest) candidate runs the next value beyond it, until one inside wins or
    --extend extensions were made; the finished runs are not run again."""
    folder, _ = lmdata._synthetic_dir(mamba_cache)
    out = tmp_path / "grid"
    argv = ["--data", str(folder / "wiki.train.raw"), str(folder / "wiki.valid.raw"), "--out-dir", str(out)]
    args = cli.parse(real_grid.get_args_parser(), argv)
    real_grid.main(argv + ["--dry-run"])  # the split
    blocks = real_grid.train_blocks(args, out)
    ppl = {"central": {3e-3: 80.0, 1e-2: 70.0, 3e-2: 75.0}, "fedavg": {3e-3: 90.0, 1e-2: 85.0, 3e-2: 80.0,
                                                                    9e-2: 78.0, 0.27: 79.0}}
    ran = []

    def run(plan, title):  # stands in for jobs.run_plan: "trains" each run by writing its summary
        for j in plan:
            arm, setting = j.name.split("_")[1:3]
            value = float(setting[2:])
            path = out / "runs" / j.name / "summary.json"
            if not path.is_file():
                ran.append(j.name)
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps({"best_val_ppl": ppl[arm][value], "unigram_ppl": 1e3}))
        return jobs.Outcome(status={j.name: "finished" for j in plan}, messages={}, seconds=0.0)

    found = real_grid.select(args, out, blocks, ("central", "fedavg"), {}, run)
    assert real_grid.chosen_flags(found) == {"central": {"--lr": 0.01}, "fedavg": {"--lr": 0.09}}
    assert ran.count("select_fedavg_lr0.09") == 1 and ran.count("select_fedavg_lr0.27") == 1  # 0.09 at the edge
    assert len(ran) == len(set(ran)) == 8 and not any("central_lr0.1" in n or "0.001" in n for n in ran)
    assert found["fedavg"]["scores"]["0.27"] == 79.0 and found["fedavg"]["extended"] == [0.09, 0.27]
    assert found["fedavg"]["edge"] is None and found["central"]["extended"] == []
    args.extend, ran[:] = 0, []  # no extension: the grid's own best, at its edge
    found = real_grid.select(args, out, blocks, ("central", "fedavg"), {}, run)
    assert real_grid.chosen_flags(found)["fedavg"] == {"--lr": 0.03} and ran == []
    assert (found["fedavg"]["edge"], found["fedavg"]["beyond"], found["fedavg"]["extended"]) == ("high", 0.09, [])


def test_every_planned_command_passes_its_scripts_checks(mamba_cache, tmp_path):
    """Each selection and plateau command of the whole grid parses with its script's parser and passes the
    script's own refusals (FedFisher --fisher-method local needs 2 local steps: its clients take 2 of half the
    batch), and every federated arm trains on the same blocks a round."""
    import importlib

    folder, _ = lmdata._synthetic_dir(mamba_cache)
    out = tmp_path / "grid"
    argv = ["--data", str(folder / "wiki.train.raw"), str(folder / "wiki.valid.raw"), "--out-dir", str(out),
            "--block", "all"]
    args = cli.parse(real_grid.get_args_parser(), argv)
    real_grid.main(argv + ["--dry-run"])
    blocks = real_grid.train_blocks(args, out)
    chosen = {"central": {"--lr": 0.01}, "fedavg": {"--lr": 0.03}, "fedentropy": {"--temperature": 1.0},
              "fedavgm": {"--server-lr": 0.3}}
    plan = [*(j for arms in studies.PHASES for j in real_grid.selection_plan(args, out, blocks, arms, chosen)),
            *real_grid.reported_plan(args, out, blocks, chosen, "fedfisher-local")]
    per_round = set()
    for j in plan:
        script = importlib.import_module(j.script)
        parsed = cli.parse(script.get_args_parser(), j.argv)
        getattr(script, "check_args", lambda a: None)(parsed)
        if j.name.startswith("fed") and "_k4m4_" in j.name:
            per_round.add(parsed.local_updates * parsed.batch_size)
    assert per_round == {args.batch_size}
    local = [j for j in plan if j.name.startswith(("fedfisher-local", "select_fedfisher-local"))]
    assert local and all(_flag(j.argv, "--local-updates") == "2" for j in local)


def test_the_sources_arms_run_between_the_two_selection_phases(mamba_cache, tmp_path, monkeypatch):
    """central, central-b4, FedAvg and FedFisher need only the first phase's rates: main runs them before the
    second phase's selection, and the best other arm after it; the whole grid then counts as complete, and its
    last plan's next step names the figure and table commands (the grid draws nothing itself)."""
    folder, _ = lmdata._synthetic_dir(mamba_cache)
    out = tmp_path / "grid"
    order, steps = [], []

    def run_plan(plan, **kw):  # stands in for jobs.run_plan: "trains" each run by writing its summary
        steps.append(kw.get("next_step", ""))
        for j in plan:
            path = out / "runs" / j.name / "summary.json"
            if not path.is_file():
                order.append(j.name)
                path.parent.mkdir(parents=True)
                ppl = 50.0 + len(order) % 7 if j.name.startswith("select_") else 60.0
                path.write_text(json.dumps({"best_val_ppl": ppl, "unigram_ppl": 1e3}))
        return jobs.Outcome(status={j.name: "finished" for j in plan}, messages={}, seconds=0.0)

    monkeypatch.setattr(real_grid.jobs, "run_plan", run_plan)
    done = real_grid.main(["--data", str(folder / "wiki.train.raw"), str(folder / "wiki.valid.raw"),
                           "--out-dir", str(out)])
    assert done["complete"] and done[studies.BEST_OTHER] in studies.OTHERS
    record = study.read_selection(out / "selection.json")  # every arm's choice and the best other arm, with why
    assert set(record["choices"]) == {*studies.CHOICES, studies.BEST_OTHER}
    assert record["choices"][studies.BEST_OTHER]["chosen"] == done[studies.BEST_OTHER]
    assert record["runs"]["seeds"] == [studies.SELECTION_SEED] and "plateau rule" in record["criterion"]
    first = lambda prefix: next(i for i, n in enumerate(order) if n.startswith(prefix))  # noqa: E731
    last = lambda prefix: max(i for i, n in enumerate(order) if n.startswith(prefix))  # noqa: E731
    assert last("select_fedavg_") < first("central_L1") and last("fedfisher_L2") < first("select_fedentropy")
    assert last("select_fedfisher-local") < first(f"{done[studies.BEST_OTHER]}_L1")
    assert len(order) == len(set(order))
    assert steps[-1] == (f"python plots/plot_mamba.py --runs {out / 'runs'} --out mamba_fl/results/real; python -m "
                         f"common.results --show mamba_fl.real-report --records mamba_fl/results/real={out}")


def test_selection_file_stands_in_for_the_phases_it_chose(mamba_cache, tmp_path, monkeypatch):
    """--selection: an earlier grid's choices are used, and the phases they cover are not selected again; --only
    naming no run of the second phase's arms skips that phase's selection too."""
    folder, _ = lmdata._synthetic_dir(mamba_cache)
    ran = {}

    def run_plan(plan, **kw):  # stands in for jobs.run_plan: "trains" each run by writing its summary
        for j in plan:
            path = j.run_dir / "summary.json"
            if not path.is_file():
                ran[j.name] = j.argv
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps({"best_val_ppl": 50.0 + len(ran) % 7, "unigram_ppl": 1e3}))
        return jobs.Outcome(status={j.name: "finished" for j in plan}, messages={}, seconds=0.0)

    monkeypatch.setattr(real_grid.jobs, "run_plan", run_plan)
    earlier = tmp_path / "selection.json"
    given = {arm: study.choice_record(studies.grid_of(arm), studies.grid_of(arm).choose({lr: [50.0]}))
             for arm, lr in (("central", 0.02), ("fedavg", 0.05))}
    study.write_selection(earlier, "mamba_fl real", "an earlier grid's", given, seeds=[100])
    argv = ["--data", str(folder / "wiki.train.raw"), str(folder / "wiki.valid.raw"), "--selection", str(earlier)]
    done = real_grid.main([*argv, "--out-dir", str(tmp_path / "a"), "--only", "fedfisher_L1_*", "central_L1_*"])
    assert not [n for n in ran if n.startswith("select_")]
    assert done["chosen"] == {"central": {"--lr": 0.02}, "fedavg": {"--lr": 0.05}}
    copied = study.read_selection(tmp_path / "a" / "selection.json")  # the grid's own record says where they came from
    assert copied["choices"] == given and copied["runs"]["copied_from"] == str(earlier)
    assert {_flag(a, "--lr") for n, a in ran.items() if n.startswith("fedfisher")} == {"0.05"}
    assert {_flag(a, "--lr") for n, a in ran.items() if n.startswith("central")} == {"0.02"}
    ran.clear()  # a run of the second phase's arm needs its selection, at the earlier first-phase choices
    done = real_grid.main([*argv, "--out-dir", str(tmp_path / "b"), "--only", "fedentropy_L1_*"])
    assert {n.split("_")[1] for n in ran if n.startswith("select_")} == set(studies.OTHERS)
    assert all(_flag(a, "--lr") == "0.05" for n, a in ran.items() if n.startswith("select_fedentropy"))
    # refused in one line before anything is written: not a record, the old layout, another study's setting
    for bad, why in (("[1, 2]", "not a selection record"), ('{"chosen": {"central": {"--lr": 0.02}}}',
                                                            "not a selection record"),
                     (earlier.read_text().replace('"fedavg"', '"sst2/central"'), "no arm this grid chooses for")):
        earlier.write_text(bad)
        with pytest.raises(UsageError, match=f"--selection .*{why}"):
            real_grid.main([*argv, "--out-dir", str(tmp_path / "c")])
    earlier.unlink()
    with pytest.raises(UsageError, match="--selection .*: no such file"):
        real_grid.main([*argv, "--out-dir", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


def test_source_size_runs_the_sources_model_on_the_gpt2_tokenizer(tmp_path):
    """--size source: every planned command builds the source's d_model-512 model (the scripts' defaults) on
    256-token blocks of the given tokenizer, and writes its 1.5 GB checkpoint once a pass (5 evaluations)."""
    import importlib

    args = cli.parse(real_grid.get_args_parser(), ["--size", "source", "--tokenizer", str(tmp_path / "gpt2"),
                                                   "--out-dir", str(tmp_path / "grid")])
    chosen = {"central": {"--lr": 0.01}, "fedavg": {"--lr": 0.03}}
    plan = [*real_grid.selection_plan(args, tmp_path, 1000, studies.PHASES[0], {}),
            *real_grid.reported_plan(args, tmp_path, 1000, chosen)]
    assert len(plan) == 6 + 2 * (3 + 3 + 5 + 5 + 3)  # 1 and 2 layers: central, 4x batch, FedAvg, FedFisher, other
    for j in plan:
        parsed = cli.parse(importlib.import_module(j.script).get_args_parser(), j.argv)
        assert (parsed.d_model, parsed.d_state, parsed.head_dim) == (512, 128, 64)
        assert (parsed.sequence_length, parsed.checkpoint_every) == (256, 5)
        assert parsed.tokenizer == str(tmp_path / "gpt2") and "--vocab-size" not in j.argv
    small = cli.parse(real_grid.get_args_parser(), ["--out-dir", str(tmp_path / "grid")])
    assert real_grid.model_flags(small)[:2] == ["--d-model", "32"] and "--checkpoint-every" not in \
        real_grid.model_flags(small)
