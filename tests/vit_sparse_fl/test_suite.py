"""run_all_experiments: the plan is compute-matched, and finished runs are recognised (and only those)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from clicases import one_line_error

from common import jobs, study
from common.checkpoint import to_jsonable
from common.cli import UsageError
from vit_sparse_fl import federated, report, studies
from vit_sparse_fl import run_all_experiments as suite
from vit_sparse_fl import train_federated as fed


def _plan(*argv, select=False):
    args = suite.get_args_parser().parse_args(list(argv))
    rates = None if select else {name: 0.1 for name, _, _ in studies.settings(args, "base.pt", args.rounds)}
    return suite.plan(args, "base.pt", rates)


def _flag(run, name, default=None):
    argv = run["argv"]
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1] if name in argv else default


def test_default_out_dir_names_the_budget(tmp_path):
    parse = suite.get_args_parser().parse_args
    assert str(suite.out_dir(parse([]))) == "runs/vit_suite_R192"
    assert str(suite.out_dir(parse(["--rounds", "48"]))) == "runs/vit_suite_R48"
    assert suite.out_dir(parse(["--rounds", "48", "--out-dir", str(tmp_path)])) == tmp_path


def test_plan_matches_sample_gradients_and_covers_the_grid():
    runs = _plan("--num-runs", "2", "--rounds", "48")
    assert len({r["name"] for r in runs}) == len(runs)
    assert [r["seed"] for r in runs] == sorted(r["seed"] for r in runs)          # seed-major order
    seed0 = [r for r in runs if r["seed"] == 0]

    def sample_gradients(r):   # per step B images; federated: (R + W) rounds x m clients x J steps
        if r["script"] == "centralized":
            return int(_flag(r, "--total-steps"))
        rounds = int(_flag(r, "--rounds")) + int(_flag(r, "--head-warmup", 0))
        return rounds * studies.M * int(_flag(r, "--local-steps"))

    budgets = {r["setting"]: sample_gradients(r) for r in seed0}
    assert len(set(budgets.values())) == 1, budgets                              # every setting, J sweep included
    assert {r["setting"] for r in seed0} >= {"fedavg_iid_J8", "fedavg_iid_J16", "fedavg_nc2_J8", "fedavg_nc2_J16",
                                             "fedavg_nc1", "fedavg_nc2", "fedavg_nc5", "centralized",
                                             "fedavg_iid_scratch"}
    for j in (8, 16):                                   # the J sweep runs on the shards it names
        assert _flag(next(r for r in seed0 if r["setting"] == f"fedavg_nc2_J{j}"), "--nc") == "2"
        assert _flag(next(r for r in seed0 if r["setting"] == f"fedavg_iid_J{j}"), "--sharding", "iid") == "iid"
    sparse = [r for r in seed0 if r["script"] == "sparse"]
    assert len(sparse) == 2 * 2 * 5 + 1              # IID and Nc = 2, each at 0.9 and 0.5; true Fisher
    probes = {r["setting"]: _flag(r, "--freeze-layers") for r in seed0 if r["setting"].startswith("probe")}
    assert probes == {"probe_iid_head": "2", "probe_iid_last": "1", "probe_nc2_head": "2", "probe_nc2_last": "1"}
    assert all(_flag(r, "--lr") == "0.1" == f"{r['lr']:g}" for r in seed0)
    assert all(_flag(r, "--weights") == "base.pt" for r in seed0 if r["setting"] != "fedavg_iid_scratch")
    assert all(_flag(r, "--head-warmup") for r in seed0 if r["script"] != "centralized")


def test_selection_stage_tries_every_rate_at_a_quarter_of_the_budget_on_its_own_seed():
    runs = _plan("--rounds", "192", "--lr-grid", "0.05", "0.2", select=True)
    reported = _plan("--rounds", "192")
    assert {r["setting"] for r in runs} == {r["setting"] for r in reported}
    assert len(runs) == 2 * len({r["setting"] for r in runs}) and {r["seed"] for r in runs} == {100}
    assert not {r["name"] for r in runs} & {r["name"] for r in reported}
    rounds = {r["setting"]: _flag(r, "--rounds") for r in runs}
    assert rounds["fedavg_iid"] == "48" and rounds["fedavg_nc2_J16"] == "12"
    central = next(r for r in runs if r["setting"] == "centralized")
    assert _flag(central, "--total-steps") == str((48 + studies.WARMUP) * studies.M * studies.J)
    assert {_flag(r, "--lr") for r in runs} == {"0.05", "0.2"}


def test_choose_takes_the_best_validation_accuracy_ties_to_the_smaller_rate(tmp_path):
    args = suite.get_args_parser().parse_args(["--only", "fedavg_iid", "fedavg_nc2", "probe_iid_head"])
    scores = {"fedavg_iid": {0.03: 0.5, 0.1: 0.7, 0.3: 0.6}, "fedavg_nc2": {0.03: 0.4, 0.1: 0.4, 0.3: None},
              "probe_iid_head": {}}                 # no selection run finished: no rate
    for run in suite.plan(args, "base.pt"):
        val = scores[run["setting"]].get(run["lr"])
        if run["lr"] in scores[run["setting"]]:        # rate 1.0 of the default grid: never run
            folder = tmp_path / "selection" / run["name"]
            folder.mkdir(parents=True)
            (folder / "summary.json").write_text(json.dumps({"final_val_accuracy": val} if val is not None else
                                                            {"status": "diverged", "reason": "non-finite loss"}))
    chosen = suite.choose(args, tmp_path, "base.pt")
    assert chosen == {"fedavg_iid": 0.1, "fedavg_nc2": 0.03}
    saved = study.read_selection(tmp_path / "selection.json")        # common.study's one layout
    assert study.chosen(saved) == chosen and saved["runs"] == {"rounds": 48, "seeds": [100], "grid": studies.VIT_GRID}
    assert saved["study"] == "vit_sparse_fl vit_suite_R192" and saved["criterion"] == studies.CRITERION
    nc2 = saved["choices"]["fedavg_nc2"]
    assert nc2["scores"] == {"0.03": 0.4, "0.1": 0.4, "0.3": "diverged"}        # rate 1 never ran
    assert (nc2["flag"], nc2["metric"], nc2["direction"], nc2["split"]) == ("--lr", "final_val_accuracy", "max",
                                                                            "validation")
    assert (nc2["edge"], nc2["beyond"], nc2["extended"]) == ("low", 0.009, [])   # 0.03 is the smallest tried
    assert saved["choices"]["fedavg_iid"]["edge"] is None
    # a second call for one setting keeps the others' choices; a selection run without its summary is "missing"
    (tmp_path / "selection" / "fedavg_iid_lr1_seed100").mkdir()
    only = suite.get_args_parser().parse_args(["--only", "fedavg_iid"])
    assert suite.choose(only, tmp_path, "base.pt") == chosen
    again = study.read_selection(tmp_path / "selection.json")
    assert again["choices"]["fedavg_nc2"] == nc2 and again["choices"]["fedavg_iid"]["scores"]["1"] == "missing"
    assert again["choices"]["fedavg_iid"]["chosen"] == 0.1


def test_only_restricts_the_plan_and_refuses_unknown_settings():
    wanted = ["fedavg_nc2", "sparse_nc2_s0.9_random"]
    runs = _plan("--num-runs", "3", "--rounds", "192", "--only", *wanted)
    assert sorted(r["name"] for r in runs) == sorted(f"{w}_seed{s}" for w in wanted for s in range(3))
    assert all(_flag(r, "--rounds") == "192" for r in runs)
    with pytest.raises(UsageError, match="unknown settings"):
        suite.main(["--table-only", "--only", "fedavg_nc3"])


def test_finished_runs_are_skipped_only_with_the_same_arguments(tmp_path):
    args = suite.get_args_parser().parse_args(["--num-runs", "1"])
    base_job = suite.base_job_of(tmp_path)
    runs = suite.plan(args, str(base_job.output), {name: 0.1 for name, _, _ in studies.settings(args, "", args.rounds)})
    grid = {j.name: j for j in suite.jobs_of(base_job, runs, tmp_path)}
    base = grid["base"]
    assert base.output.name == "base.pt" and jobs.classify(base).kind == "new"
    job = grid["fedavg_nc2_seed0"]
    assert job.after == ("base",) and grid["fedavg_iid_scratch_seed0"].after == ()   # scratch runs need no base
    assert jobs.classify(job).kind == "new"
    parsed = fed.get_args_parser().parse_args(job.argv)
    federated.finish_args(parsed)
    folder = tmp_path / job.name
    folder.mkdir()
    (folder / "args.json").write_text(json.dumps({"args": vars(parsed)}, default=to_jsonable))
    assert jobs.classify(job).kind == "resume"                                  # no summary yet: interrupted
    (folder / "summary.json").write_text(json.dumps({"test_accuracy": 0.5}))
    assert jobs.classify(job).kind == "done"
    changed = jobs.Job(job.name, job.script, [*job.argv, "--rounds", "7"])
    assert jobs.classify(changed).kind == "other" and "--rounds saved 192, now 7" in jobs.classify(changed).detail
    # a flag added to the script after the run was written counts as at its default, not as a change
    saved = {k: v for k, v in vars(parsed).items() if k not in ("overwrite", "report_to")}
    (folder / "args.json").write_text(json.dumps({"args": saved}, default=to_jsonable))
    assert jobs.classify(job).kind == "done"


@pytest.mark.parametrize("flags,message", [(["--sparsities", "1.5"], "--sparsities must be in (0, 1), got 1.5"),
                                           (["--rounds", "6"], "multiple of 4"),
                                           (["--nc-values", "2", "51"], "--nc-values must be in [1, 50], got 51")])
def test_bad_grid_inputs_end_before_any_work(tmp_path, flags, message, capsys):
    err = one_line_error(suite.main, [*flags, "--out-dir", str(tmp_path / "suite")], capsys)
    assert message in err, err
    assert not (tmp_path / "suite").exists()


def test_saved_sessions_keep_every_part_of_a_suite(tmp_path):
    path = tmp_path / "results.json"
    assert suite.saved_sessions(path) == []
    path.write_text(json.dumps({"wall_seconds": 2580.7, "table": {}}))           # written before sessions existed
    old = suite.saved_sessions(path)
    assert [s["wall_seconds"] for s in old] == [2580.7] and old[0]["runs_trained"] is None
    parts = [{"finished_at": "t1", "runs_trained": 12, "only": None, "wall_seconds": 1832.0},
             {"finished_at": "t2", "runs_trained": 9, "only": ["centralized"], "wall_seconds": 1072.0}]
    path.write_text(json.dumps({"sessions": parts, "table": {}}))
    assert suite.saved_sessions(path) == parts


def test_results_table_pairs_by_seed_with_holm_over_each_table(monkeypatch, tmp_path):
    """make_table: cells are mean ± sd over seeds, differences paired by seed against the section's reference,
    and each section's verdicts Holm-corrected together (accuracy and interference differences), with a rate at
    the edge of its grid and compute not matched as the section states said beside the verdict."""
    def runs(acc, inter=None, calibration=0, samples=1000):
        return [{"args": {"seed": s, "lr": 0.1}, "path": f"run{s}", "meta": {"device": "cpu"},
                 "summary": {"test_accuracy": a / 100, "test_images": 500, "sample_gradients": samples,
                             "calibration_sample_gradients": calibration,
                             "interference": (inter[s] if inter else 0.0) / 100}} for s, a in enumerate(acc)]

    groups = {"fedavg_iid": runs([50, 51, 52]), "fedavg_nc2": runs([40, 41, 42], [10, 11, 12]),
              "fedavg_nc5": runs([49.9, 51.1, 52.0], [0.0, 0.1, -0.1], samples=1200),
              "probe_nc2_head": runs([45, 45, 47], [5, 6, 7]),
              "sparse_nc2_s0.9_least_sensitive": runs([46, 47, 48], [4, 5, 6], calibration=200)}
    monkeypatch.setattr(report, "load_settings", lambda args, out, base: groups)
    grid = studies.SELECTION
    study.write_selection(tmp_path / "selection.json", "vit", "best", {"fedavg_nc2": study.choice_record(
        grid, grid.choose({0.03: [0.5], 0.1: [0.6]}))}, seeds=[100], rounds=48)
    text, record = report.make_table(suite.get_args_parser().parse_args([]), tmp_path, "base.pt")
    assert record["fedavg_nc2"]["test_accuracy"] == pytest.approx({0: 40.0, 1: 41.0, 2: 42.0})
    row = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| Nc = 2 |")}
    nc2 = next(iter(row.values()))
    # paired by seed: -10 on every seed, sd 0: a difference whatever the correction; its rate the grid's largest
    assert "| 41.0 ± 1.0 | -10.0 [-10.0, -10.0] (n=3; p_Holm < 0.001 over 4); rate at the high edge of its grid |" \
        in nc2  # n: every seed; the family: accuracy and interference of Nc = 5 and 2

    nc5 = next(line for line in text.splitlines() if line.startswith("| Nc = 5 |"))
    assert "no difference after Holm over 4" in nc5 and "; unmatched compute (equal samples: 1.2e+03 vs 1e+03)" in nc5
    assert "Holm-corrected over each table" in text
    # the mask tables: Δ vs dense and vs the probe, the rate, and the compute with the calibration counted
    table = text.split("**Sparse fine-tuning, Nc = 2 shards, sparsity 0.9**")[1].split("**")[0]
    assert "| Δ vs dense Nc = 2 | Δ vs probe (head) |" in table
    least = next(line for line in table.splitlines() if line.startswith("| least_sensitive (TaLoS"))
    assert "| 0.1 | 3 | 47.0 ± 1.0 | +6.0 [+6.0, +6.0] (n=3" in least and "| 1,200 |" in least
    assert "unmatched" not in least   # the mask tables are matched on client steps, the calibration aside
    probe = next(line for line in table.splitlines() if line.startswith("| probe: head + final norm |"))
    cells = [c.strip() for c in probe.strip("|").split("|")]
    assert cells[4].startswith("+4.7 [") and cells[5] == "–" and cells[7] == "1,000"   # no Δ vs itself
    # dense − probe is probe − dense negated: shown as such, and counted once in the table's Holm family
    dense = next(line for line in table.splitlines() if line.startswith("| dense FedAvg (Nc = 2) |"))
    assert [c.strip() for c in dense.strip("|").split("|")][5] == "= −Δ in row 'probe: head + final norm'"
    family = {int(n) for n in re.findall(r"over (\d+)", table)}
    assert family == {6}  # probe and mask vs dense, mask vs probe; accuracy and interference


def _text_args(tiny, *argv):
    from common import cli
    model_dir, data = tiny
    return cli.parse(suite.get_args_parser(), ["--text", "--weights", str(model_dir), "--data-dir", str(data), *argv])


def test_text_suite_plans_every_arm_on_every_shard_at_equal_compute(tiny):
    """--text: dense, the probe (every encoder layer frozen) and six masks on IID, Nc = 2 and Nc = 1 shards of
    the AG News folder, every arm at the same sample gradients; its presets, out folder and no pretrained base."""
    args = _text_args(tiny)
    assert (args.rounds, args.num_runs) == (24, 5) and str(suite.out_dir(args)) == "runs/text_suite_R24"
    runs = suite.plan(args, args.weights, {name: 0.01 for name, _, _ in studies.settings(args, args.weights, 24)})
    seed0 = [r for r in runs if r["seed"] == 0]
    assert len(runs) == 5 * len(seed0) and len(seed0) == 3 * 8
    assert {_flag(r, "--nc") for r in seed0} == {None, "1", "2"}
    assert all(_flag(r, "--data-dir") == str(tiny[1]) and _flag(r, "--weights") == str(tiny[0]) for r in seed0)
    assert all(_flag(r, "--arch") == "encoder" and _flag(r, "--data") == "ag_news" for r in seed0)
    probes = {_flag(r, "--freeze-layers") for r in seed0 if r["setting"].startswith("probe")}
    assert probes == {"2"}                                                       # the tiny encoder's depth
    masks = {(_flag(r, "--sparsity-ratio"), _flag(r, "--mask-strategy")) for r in seed0 if r["script"] == "sparse"}
    assert masks == {(f"{sp:g}", s) for sp, s in studies.TEXT_MASKS}
    steps = {(int(_flag(r, "--rounds")) + int(_flag(r, "--head-warmup"))) * int(_flag(r, "--local-steps"))
             * round(float(_flag(r, "--participation-rate")) * int(_flag(r, "--num-clients")))
             * int(_flag(r, "--batch-size")) for r in seed0}
    assert steps == {studies.TEXT.sample_gradients(24)}
    assert [j.name for j in suite.jobs_of(None, runs[:2], Path("x"))] == [r["name"] for r in runs[:2]]


def test_text_selection_tries_each_arm_familys_rates_at_half_the_budget(tiny):
    runs = suite.plan(_text_args(tiny), str(tiny[0]))
    grids = {r["setting"].split("_")[0]: set() for r in runs}
    for r in runs:
        grids[r["setting"].split("_")[0]].add(r["lr"])
        assert _flag(r, "--rounds") == "12" and r["seed"] == 100
    assert grids == {family: set(rates) for family, rates in studies.TEXT_GRIDS.items()}
    given = suite.plan(_text_args(tiny, "--lr-grid", "0.5"), str(tiny[0]))
    assert {r["lr"] for r in given} == {0.5}


def _runs(acc, device="cpu (x86_64, 1 threads)"):
    """Finished text runs of seeds 0.. with these test accuracies (%)."""
    return [{"args": {"seed": s, "lr": 0.01}, "path": f"r{s}", "meta": {"device": device},
             "summary": {"test_accuracy": a / 100, "test_images": 1000, "sample_gradients": 4160,
                         "interference": 0.0}} for s, a in enumerate(acc)]


def test_text_table_has_a_section_per_shard_with_probe_and_masks(tiny, monkeypatch):
    groups = {"fedavg_nc1": _runs([60, 62, 61]), "probe_nc1_head": _runs([80, 81, 82]),
              "sparse_nc1_s0.9_random": _runs([70, 72, 71], device="cuda:0 (NVIDIA H200, float32)")}
    monkeypatch.setattr(report, "load_settings", lambda args, out, base: groups)
    text, record = report.make_table(_text_args(tiny), Path("unused"), str(tiny[0]))
    assert "Chance accuracy: 25.0 % (4 classes). Test set: 1000 texts." in text
    assert "Runs measured on: cpu (x86_64, 1 threads); cuda:0 (NVIDIA H200, float32)." in text   # the caption
    assert [line for line in text.splitlines() if line.startswith("**")] == [
        f"**Sparse fine-tuning of {tiny[0]} on AG News, {t} shards**" for t in ("IID", "Nc = 2", "Nc = 1")]
    nc1 = text.split("Nc = 1 shards**")[1]
    random_row = next(line for line in nc1.splitlines() if line.startswith("| random, s = 0.9 |"))
    assert "+10.0 [+10.0, +10.0] (n=3" in random_row and "-10.0 [-12.5, -7.5] (n=3" in random_row
    assert record["probe_nc1_head"]["test_accuracy"] == pytest.approx({0: 80.0, 1: 81.0, 2: 82.0})


def test_text_table_says_what_skew_costs_each_arm_against_its_own_iid_runs(tiny, monkeypatch):
    groups = {"fedavg_iid": _runs([70, 72, 74]), "fedavg_nc1": _runs([60, 62, 61]),
              "probe_iid_head": _runs([81, 82, 83]), "probe_nc1_head": _runs([80, 81, 82]),
              "sparse_nc1_s0.9_random": _runs([70, 72, 71])}          # no IID runs: no row
    monkeypatch.setattr(report, "load_settings", lambda args, out, base: groups)
    text, _ = report.make_table(_text_args(tiny), Path("unused"), str(tiny[0]))
    skew = text.split("**Accuracy lost to skew")[1].splitlines()
    dense = next(line for line in skew if line.startswith("| dense FedAvg |")).split(" | ")
    probe = next(line for line in skew if line.startswith("| probe: head |")).split(" | ")
    assert not any(line.startswith("| random") for line in skew)
    # columns: arm, Nc = 2 loss, Nc = 2 minus dense's, Nc = 1 loss, Nc = 1 minus dense's (no Nc = 2 runs)
    assert dense[1] == dense[2] == probe[1] == probe[2] == "–" and dense[4].startswith("–")
    assert dense[3].startswith("-11.0 [") and probe[3].startswith("-1.0 [-1.0, -1.0] (n=3")
    assert probe[4].startswith("+10.0 [")                           # (-1) - (-10, -10, -13), paired by seed


def test_a_rate_chosen_at_the_grids_edge_gets_the_next_rate_beyond_it(tiny, tmp_path):
    """--text: a setting whose best validation rate is the largest (or smallest) it has tried is given one grid
    step beyond it, a stage of its own, at most ``Design.edge_steps`` (2) times; once that step is tried (here: it
    diverges) the setting is no longer at an edge, and the extra rate's run is read like the grid's."""
    args = _text_args(tiny, "--only", "probe_nc1_head", "fedavg_nc1", "sparse_nc1_s0.9_random")
    vals = {"probe_nc1_head": {0.1: 0.5, 0.3: 0.6, 1.0: 0.7, 3.0: 0.8, 9.0: None},   # best at the top; 9 diverges
            "fedavg_nc1": {0.003: 0.8, 0.01: 0.7, 0.03: 0.6, 0.1: 0.5, 0.0009: 0.9, 0.0003: 0.95},  # always the bottom
            "sparse_nc1_s0.9_random": {0.01: 0.5, 0.03: 0.6, 0.1: 0.8, 0.3: 0.7, 1.0: 0.3, 3.0: 0.2}}

    def finish(name, val):
        folder = tmp_path / "selection" / name
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"final_val_accuracy": val} if val is not None else
                                                        {"status": "diverged", "reason": "non-finite loss"}))

    stages = []

    def train(runs, folder, stage):   # each selection run ends at once with its validation accuracy
        assert folder == tmp_path / "selection" and all(_flag(r, "--rounds") == "12" for r in runs)
        stages.append((stage, sorted(r["name"] for r in runs)))
        for run in runs:
            finish(run["name"], vals[run["setting"]][run["lr"]])

    chosen = suite.select(args, tmp_path, str(tiny[0]), train)
    assert [stage for stage, _ in stages] == ["learning-rate selection", "rates beyond the grid's edge (1)",
                                              "rates beyond the grid's edge (2)"]        # edge_steps: no third
    assert len(stages[0][1]) == 4 + 4 + 6
    assert stages[1][1] == ["fedavg_nc1_lr0.0009_seed100", "probe_nc1_head_lr9_seed100"]
    assert stages[2][1] == ["fedavg_nc1_lr0.0003_seed100"]
    assert chosen == {"probe_nc1_head": 3.0, "fedavg_nc1": 0.0003, "sparse_nc1_s0.9_random": 0.1}
    choices = study.read_selection(tmp_path / "selection.json")["choices"]
    assert choices["probe_nc1_head"]["scores"]["9"] == "diverged" and choices["probe_nc1_head"]["extended"] == [9.0]
    assert choices["probe_nc1_head"]["edge"] is None                 # 9 was tried: 3 is inside the rates tried
    assert (choices["fedavg_nc1"]["edge"], choices["fedavg_nc1"]["beyond"], choices["fedavg_nc1"]["extended"]) == \
        ("low", 0.0001, [0.0003, 0.0009])                            # still at the edge, said so
    assert suite.choose(args, tmp_path, str(tiny[0])) == chosen      # chosen again from the folder alone
    (tmp_path / "selection.json").write_text(json.dumps({"scores": {}, "chosen": {}}))   # the layout before
    with pytest.raises(UsageError, match="selection.json: not a selection record"):
        suite.choose(args, tmp_path, str(tiny[0]))


def test_the_suite_prints_the_command_of_its_figures_and_draws_none(tmp_path, capsys):
    """The figures are plots/plot_vit.py's (tests/vit_sparse_fl/test_scripts.py draws them): the suite ends with the
    command that draws them and starts no figure script."""
    out = tmp_path / "suite"
    suite.main(["--table-only", "--out-dir", str(out)])
    said = capsys.readouterr().out.splitlines()
    assert said[-1] == f"figures: python plots/plot_vit.py --runs-dir {out} --out {out / 'figures'}"
    assert (out / "results.md").is_file() and not (out / "figures").exists()
