"""run_all_experiments: the plan is compute-matched, and finished runs are recognised (and only those)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import jobs
from common.checkpoint import to_jsonable
from common.cli import UsageError
from vit_sparse_fl import run_all_experiments as suite
from vit_sparse_fl import train_federated as fed


def _plan(*argv):
    return suite.plan(suite.get_args_parser().parse_args(list(argv)), "base.pt")


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
        return rounds * suite.M * int(_flag(r, "--local-steps"))

    budgets = {r["setting"]: sample_gradients(r) for r in seed0}
    assert len(set(budgets.values())) == 1, budgets                              # every setting, J sweep included
    assert {r["setting"] for r in seed0} >= {"fedavg_iid_J8", "fedavg_iid_J16", "fedavg_nc2_J8", "fedavg_nc2_J16",
                                             "fedavg_nc1", "fedavg_nc2", "fedavg_nc5", "centralized",
                                             "fedavg_iid_scratch"}
    for j in (8, 16):                                   # the J sweep runs on the shards it names
        assert _flag(next(r for r in seed0 if r["setting"] == f"fedavg_nc2_J{j}"), "--nc") == "2"
        assert _flag(next(r for r in seed0 if r["setting"] == f"fedavg_iid_J{j}"), "--sharding", "iid") == "iid"
    sparse = [r for r in seed0 if r["script"] == "sparse"]
    assert len(sparse) == 5 + 2 * 5 + 1              # IID at 0.9; Nc = 2 at 0.9 and 0.5; true Fisher
    assert all(_flag(r, "--weights") == "base.pt" for r in seed0 if r["setting"] != "fedavg_iid_scratch")
    assert all(_flag(r, "--head-warmup") for r in seed0 if r["script"] != "centralized")


def test_only_restricts_the_plan_and_refuses_unknown_settings():
    wanted = ["fedavg_nc2", "sparse_nc2_s0.9_random"]
    runs = _plan("--num-runs", "3", "--rounds", "192", "--only", *wanted)
    assert sorted(r["name"] for r in runs) == sorted(f"{w}_seed{s}" for w in wanted for s in range(3))
    assert all(_flag(r, "--rounds") == "192" for r in runs)
    with pytest.raises(UsageError, match="unknown settings"):
        suite.main(["--table-only", "--only", "fedavg_nc3"])


def test_finished_runs_are_skipped_only_with_the_same_arguments(tmp_path):
    args = suite.get_args_parser().parse_args(["--num-runs", "1"])
    grid = {j.name: j for j in suite.jobs_of(args, tmp_path)}
    base = grid["base"]
    assert base.output.name == "base.pt" and jobs.classify(base).kind == "new"
    job = grid["fedavg_nc2_seed0"]
    assert job.after == ("base",) and grid["fedavg_iid_scratch_seed0"].after == ()   # scratch runs need no base
    assert jobs.classify(job).kind == "new"
    parsed = fed.get_args_parser().parse_args(job.argv)
    fed.finish_args(parsed)
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


@pytest.mark.parametrize("flags,message", [(["--sparsities", "1.5"], "--sparsities must be in"),
                                           (["--rounds", "6"], "multiple of 4"),
                                           (["--nc-values", "2", "51"], "--nc-values must be in")])
def test_bad_grid_inputs_end_before_any_work(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        suite.main([*flags, "--out-dir", str(tmp_path / "suite")])
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


def test_results_table_pairs_by_seed_with_holm_over_each_table(monkeypatch):
    """make_table: cells are mean ± sd over seeds, differences paired by seed against the section's reference,
    and each section's verdicts Holm-corrected together (accuracy and interference differences)."""
    def runs(acc, inter=None):
        return [{"args": {"seed": s}, "summary": {"test_accuracy": a / 100, "test_images": 500,
                                                  "interference": (inter[s] if inter else 0.0) / 100},
                 "path": f"run{s}"} for s, a in enumerate(acc)]

    groups = {"fedavg_iid": runs([50, 51, 52]), "fedavg_nc2": runs([40, 41, 42], [10, 11, 12]),
              "fedavg_nc5": runs([49.9, 51.1, 52.0], [0.0, 0.1, -0.1])}
    monkeypatch.setattr(suite, "load_settings", lambda out, plan: groups)
    text, record = suite.make_table(suite.get_args_parser().parse_args([]), Path("unused"), "base.pt")
    assert record["fedavg_nc2"]["test_accuracy"] == pytest.approx({0: 40.0, 1: 41.0, 2: 42.0})
    row = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| Nc = 2 |")}
    nc2 = next(iter(row.values()))
    # paired by seed: -10 on every seed, sd 0: a difference whatever the correction
    assert "41.0 ± 1.0 (n=3)" in nc2 and "-10.0 [-10.0, -10.0] (n=3)" in nc2 and "p_Holm" in nc2
    nc5 = next(line for line in text.splitlines() if line.startswith("| Nc = 5 |"))
    assert "no difference after Holm" in nc5
    assert "Holm-corrected over each table" in text
