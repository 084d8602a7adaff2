"""Grid drivers check their inputs before any run starts: JSON inputs read strictly (no NaN / Infinity, no
nesting beyond reason, the shape each expects), and every planned run's arguments, the later stages' at each
candidate, by its script's own checks (``common.jobs.check_plan``): one line, exit 2, no run directory made."""
from __future__ import annotations

import json
import shutil

import pytest
from clicases import one_line_error

from common import jobs, synthetic
from common.errors import UsageError, read_json
from lora_glue_fl import run_grid as lora_grid
from mamba_fl import real_grid
from vit_sparse_fl import compare_budgets

BAD_JSON = {"nan": '{"chosen": {"fedavg": {"--lr": NaN}}}', "infinity": '{"chosen": {"fedavg": {"--lr": Infinity}}}',
            "deep": "[" * 100_000 + "]" * 100_000, "not-json": "{chosen", "array": "[1, 2]"}


@pytest.mark.parametrize("kind", list(BAD_JSON))
def test_read_json_refuses_nan_infinity_and_deep_nesting(tmp_path, kind):
    path = tmp_path / "x.json"
    path.write_text(BAD_JSON[kind])
    if kind == "array":
        assert read_json(path) == [1, 2]
        return
    with pytest.raises(UsageError, match="not JSON|nested too deeply"):
        read_json(path)


def _selection(**choices) -> str:
    """A selection.json of common.study's layout holding ``choices`` {setting: (flag, chosen, scores)}."""
    return json.dumps({"study": "mamba_fl real", "criterion": "", "runs": {"seeds": [100]}, "choices": {
        setting: {"flag": flag, "split": "validation", "metric": "best_val_ppl", "direction": "min", "scores": scores,
                  "chosen": chosen, "edge": None, "beyond": None, "extended": []}
        for setting, (flag, chosen, scores) in choices.items()}})


# real_grid.py --selection: each a bad input of the selection record's layout, and the words of its refusal
SELECTIONS = {**{k: (BAD_JSON[k], "nested too deeply" if k == "deep" else "not JSON") for k in ("deep", "not-json")},
              "array": (BAD_JSON["array"], "not a selection record"),
              "nan": (_selection(fedavg=("--lr", 0.01, {"0.01": float("nan")})), "NaN is not a JSON number"),
              "infinity": (_selection(fedavg=("--lr", float("inf"), {"inf": 50.0})), "Infinity is not a JSON number"),
              "old-layout": ('{"chosen": {"fedavg": {"--lr": 0.01}}, "scores": {"fedavg": {"0.01": 50.0}}}',
                             "not a selection record"),
              "unknown-arm": (_selection(fedprox=("--lr", 0.01, {"0.01": 50.0})), "'fedprox' is no arm"),
              "other-flag": (_selection(fedavg=("--out-dir", "/tmp", {"/tmp": 50.0})), "fedavg chooses --lr only"),
              "string-rate": (_selection(fedavg=("--lr", "nan", {"nan": 50.0})), "--lr only, as a number"),
              "best-other": (_selection(best_other=("arm", "central", {"central": 50.0})), "'central' is not one of"),
              "scores": (_selection(fedavg=("--lr", 0.01, 3)), "not a selection record")}


@pytest.mark.parametrize("kind", list(SELECTIONS))
def test_real_grid_refuses_a_bad_selection_file_before_any_work(tmp_path, capsys, kind):
    data = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for f in data:
        f.write_text(" = A = \n text \n")
    selection = tmp_path / "selection.json"
    text, why = SELECTIONS[kind]
    selection.write_text(text)
    err = one_line_error(real_grid.main, ["--data", *map(str, data), "--selection", str(selection), "--out-dir",
                                          str(tmp_path / "grid")], capsys)
    assert f"--selection {selection}" in err and why in err, err
    assert not (tmp_path / "grid").exists()


def test_a_plan_with_one_bad_run_is_refused_before_any_runs(tmp_path, capsys):
    out = tmp_path / "runs"
    ok = ["--quick", "--out-dir", str(out), "--quiet"]
    plan = [jobs.Job("good", "mamba_fl.fed_avg", [*ok, "--run-name", "good"]),
            jobs.Job("bad", "mamba_fl.fed_avg", [*ok, "--run-name", "bad", "--lr", "inf"]),
            jobs.Job("combo", "mamba_fl.fed_entropy", [*ok, "--run-name", "combo", "--holdout-fraction", "0"])]
    err = one_line_error(lambda argv: jobs.run_plan(plan, log_dir=out / "logs"), [], capsys)
    assert "run bad (mamba_fl.fed_avg)" in err and "--lr" in err and "finite" in err, err
    assert not out.exists()
    err = one_line_error(lambda argv: jobs.run_plan(plan[2:], log_dir=out / "logs"), [], capsys)
    assert "run combo" in err and "--holdout-fraction must be > 0" in err, err  # the script's check_args
    assert not out.exists()


def test_lora_grid_refuses_a_setting_of_its_reported_cells_before_the_selection_trains(tmp_path, capsys):
    real = tmp_path / "real"
    shutil.copytree(synthetic.ensure("glue-sst2"), real / "glue_sst2")
    out = tmp_path / "grid"
    err = one_line_error(lora_grid.main, ["--out-dir", str(out), "--real_data_dir", str(real), "--train_samples",
                                          "200", "--selection_samples", "50", "--min_per_label", "1000",
                                          "--seeds", "0"], capsys)
    assert "--min_per_label 1000" in err, err  # a dir0.1 cell's shards: only the reported cells have them
    assert not (out / "selection").exists() and not (out / "logs").exists()  # no selection run, no log
    assert not list(out.glob("**/args.json"))


def test_compare_budgets_refuses_a_malformed_results_file(tmp_path, capsys):
    suites = []
    for name, text in (("a", json.dumps({"rounds": "x", "table": {}})), ("b", "[" * 50_000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
        suites.append(str(tmp_path / name))
    err = one_line_error(compare_budgets.main, [suites[0], suites[0], "--out", str(tmp_path / "o")], capsys)
    assert "'rounds' 'x' is not a positive integer" in err, err
    err = one_line_error(compare_budgets.main, [suites[1], suites[0], "--out", str(tmp_path / "o")], capsys)
    assert "nested too deeply" in err, err
    assert not (tmp_path / "o").exists()
