"""Every plot script on one folder holding quick runs of every subproject plus a small grid of each (made here
by the training scripts' own main with --quick and tiny sizes): figures of the right runs, never a traceback,
one line and exit 2 (nothing written) when there is nothing to draw."""
from __future__ import annotations

import json
import shutil

import pytest

from common import cli
from common import runs as R
from plots import plot_llm_noniid, plot_lora_glue, plot_mamba, plot_vit

# the session's ``mixed`` runs (conftest.py: 15 tiny runs, about 2 min of CPU) count in the first test's time limit
pytestmark = pytest.mark.timeout(1500)


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_plot_mamba_draws_the_grid_and_the_deltas(mixed, tmp_path, capsys):
    res = plot_mamba.main(["--runs", str(mixed), "--out", str(tmp_path / "m")])
    names = sorted(p.rsplit("/", 1)[1] for p in res["figures"])
    quick = next(p.name for p in mixed.iterdir() if p.name.startswith("fedavg_pure_ssm"))
    # the grid's block; the quick run (not a grid name) in its delta figures and the curves of single runs
    assert names == [f"deltas_{quick}.png", "grid_L1_topic.png", "runs.png", f"spectrum_{quick}.png"]
    assert not (tmp_path / "m" / "results.md").exists()  # the grid's tables are README blocks, not a plot's


def test_plot_vit_splits_suites(mixed, tmp_path, capsys):
    res = plot_vit.main(["--runs", str(mixed), "--out", str(tmp_path / "v")])
    out = _lines(capsys)
    assert any(line.startswith("runs with ") and "max_train" in line for line in out)
    assert (tmp_path / "v" / "vit_accuracy_vs_rounds.png").is_file()
    assert (tmp_path / "v" / "vit_accuracy_vs_nc.png").is_file()  # IID and Nc = 2 of the main suite
    assert (tmp_path / "v" / "suite_2" / "vit_accuracy_vs_rounds.png").is_file()
    assert "ignored" in out[0] and len(res["figures"]) >= 3
    (_, first), (other, second) = plot_vit.suites(plot_vit.vit_runs(R.load_roots([mixed])))
    assert sorted(r["meta"]["script"].split("/")[1] for r in first) == \
        ["train_centralized"] + ["train_federated"] * 3 + ["train_federated_sparse"]
    assert (tmp_path / "v" / "vit_strategies.png").is_file()
    assert sum(plot_vit.frozen(r) == 2 for r in first) == 1
    assert other == "max_train=200" and len(second) == 1


def test_plot_llm_groups_by_configuration(mixed, tmp_path, capsys):
    res = plot_llm_noniid.main(["--runs", str(mixed), "--out", str(tmp_path / "l")])
    names = {p.rsplit("/", 1)[1] for p in res["figures"]}
    assert {"val_ppl_curves.png", "final_ppl.png", "partition_iid.png"} <= names
    groups = plot_llm_noniid.grouped(plot_llm_noniid.llm_runs(R.load_roots([mixed], "**/*")),
                                     plot_llm_noniid.default_arm)
    sizes = {k: len(v) for k, v in groups.items()}
    assert sizes == {("iid", "fedavg [num_rounds=2]"): 1, ("iid", "fedavg [num_rounds=3]"): 1,
                     ("topic a=0.1", "fedavg"): 1}
    # a grid's own labels from --arms; runs not named there are left out
    names = [r["name"] for r in plot_llm_noniid.llm_runs(R.load_roots([mixed], "**/*"))]
    arms = tmp_path / "arms.json"
    arms.write_text(json.dumps({names[0]: ["part A", "arm X"]}))
    capsys.readouterr()
    res = plot_llm_noniid.main(["--runs", str(mixed), "--arms", str(arms), "--out", str(tmp_path / "a")])
    assert "partition_part_A.png" in {p.rsplit("/", 1)[1] for p in res["figures"]}


def test_plot_lora_reads_summaries(mixed, tmp_path):
    res = plot_lora_glue.main(["--runs", str(mixed), "--out", str(tmp_path / "g")])
    assert res["baselines"]["sst2"]["accuracy"] > 0 and res["baselines"]["sst2"]["label"] in (0, 1)
    assert {"rounds_sst2.png", "svd_error_vs_rank.png", "summary.png"} == {p.rsplit("/", 1)[1] for p in res["files"]}
    assert not (tmp_path / "g" / "results.md").exists()   # the tables: lora_glue_fl/results.py's blocks
    groups = plot_lora_glue.grouped(plot_lora_glue.lora_runs(R.load_roots([mixed])))
    assert len(groups["sst2", "svd", "iid"]) == 2 and ("sst2", "central", "-") in groups
    fed = json.loads(next(mixed.glob("fedavg_sst2_*_s0")).joinpath("summary.json").read_text())
    errs = fed["svd_error_by_rank"]  # 3 clients of rank 4: the rank-12 merge is exact
    assert len(errs) == 12 and errs[-1] < 1e-4 < errs[0] and fed["num_labels"] == 2


def test_a_run_without_what_a_figure_reads_is_left_out(mixed, tmp_path, capsys):
    """An older summary without the new keys and a metric of the wrong type: drawn without, never a traceback."""
    root = tmp_path / "copy"
    shutil.copytree(mixed, root, ignore=shutil.ignore_patterns("cache", "deltas", "model", "round_*", "*.pt"))
    lora = sorted(p for p in root.glob("fedavg_sst2_*"))
    for p in lora:
        s = json.loads((p / "summary.json").read_text())
        for key in ("majority", "majority_label", "svd_error_by_rank", "num_labels"):
            s.pop(key, None)
        (p / "summary.json").write_text(json.dumps(s))
    llm = next(p for p in R.find_runs(root)
               if json.loads((p / "args.json").read_text())["script"] == "llm_noniid/train")
    s = json.loads((llm / "summary.json").read_text())
    s["final_val_ppl"] = "nan?"
    (llm / "summary.json").write_text(json.dumps(s))
    capsys.readouterr()
    res = plot_lora_glue.main(["--runs", str(root), "--out", str(tmp_path / "g")])
    out = capsys.readouterr().out
    assert res["baselines"]["sst2"]["accuracy"] > 0  # from the centralized run, which still holds it
    assert "svd_error_vs_rank.png" not in {p.rsplit("/", 1)[1] for p in res["files"]}
    assert "left out (no svd_error_by_rank in its summary.json" in out
    plot_llm_noniid.main(["--runs", str(root), "--out", str(tmp_path / "l")])
    assert f"left out of the llm_noniid figures: {llm} (summary.json: final_val_ppl is 'nan?'" in \
        capsys.readouterr().out


@pytest.mark.parametrize("script", [plot_mamba, plot_vit, plot_llm_noniid, plot_lora_glue])
def test_nothing_to_draw_is_one_line_and_writes_nothing(script, tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "figs"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        cli.run(script.main, ["--runs", str(empty), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "nothing to draw" in err[0]
    assert not out.exists() and list(empty.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        cli.run(script.main, ["--runs", str(empty), "--out", str(tmp_path / "file")])
    assert e.value.code == 2 and "is a file" in capsys.readouterr().err


def test_plot_vit_draws_the_masks_of_one_shard():
    def run(sharding, nc):
        return {"args": {"sharding": sharding, "nc": nc}}
    assert plot_vit.panel_nc([run("non_iid", 1), run("non_iid", 2), run("iid", 2)]) == 2
    assert plot_vit.panel_nc([run("non_iid", 5), run("non_iid", 1), run("iid", 2)]) == 1
    assert plot_vit.panel_nc([run("iid", 2)]) == 2


def test_llm_divergence_figure_leaves_out_one_client_runs(tmp_path):
    """A round of one client has no spread between clients: its zeros are not drawn as a divergence curve."""
    def run(name, participants, rate):
        rows = [{"round": r, "step": 8 * len(participants), "val_ppl": 100.0 - r, "participants": participants,
                 "client_divergence_rel": 0.0 if len(participants) == 1 else 1.0 / r} for r in range(1, 4)]
        return {"name": name, "path": tmp_path / name, "meta": {}, "rows": rows,
                "args": {"partition": "iid", "algorithm": "fedavg", "seed": 0, "participation_rate": rate},
                "summary": {"final_val_ppl": 97.0, "unigram_val_ppl": 500.0}}

    drawn = plot_llm_noniid.make_figures([run("one", [3], 0.1)], tmp_path / "a")
    assert drawn and not any(p.name.startswith("client_divergence") for p in drawn)
    drawn = plot_llm_noniid.make_figures([run("one", [3], 0.1), run("all", [0, 1, 2, 3], 1.0)], tmp_path / "b")
    assert any(p.name.startswith("client_divergence") for p in drawn)


def test_plot_vit_finds_a_text_probe_from_its_weights_wherever_the_summary_pointed(tmp_path):
    """A text run that freezes every encoder layer is the head-only probe: the depth comes from --weights (a
    folder, or a packaged name), else from the summary's folder; a record moved to another machine (the summary's
    folder gone) is still recognised, and an unreadable depth leaves the count of frozen layers."""
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text('{"num_hidden_layers": 3}')

    def run(weights, recorded, n=3):
        return {"args": {"arch": "encoder", "freeze_layers": n, "weights": weights},
                "summary": {"weights": recorded}}
    assert plot_vit.frozen(run(str(folder), str(tmp_path / "gone"))) == 2
    assert plot_vit.frozen(run("minilm-not-here", str(folder))) == 2
    assert plot_vit.frozen(run(str(folder), None, n=1)) == 1  # one block frozen: not the probe
    assert plot_vit.frozen(run(str(tmp_path / "gone"), str(tmp_path / "gone"))) == 3


def test_plot_lora_leaves_the_budget_twins_out_of_the_arms():
    """run_grid --budget_check's <task>_central-x2_s<seed> is a plateau check, not a second centralized arm (which
    would drop the centralized reference line); its one-shot twins are no arm either."""
    summary = {"method": "central_lora", "task": "sst2"}
    assert plot_lora_glue.describe({"name": "sst2_central-x2_s0", "summary": summary}) is None
    oneshot = {"aggregation": "svd", "task": "sst2", "shard_mode": "iid"}   # nor a one-shot twin an SVD arm
    assert plot_lora_glue.describe({"name": "sst2_oneshot-x2_iid_s0", "summary": oneshot}) is None
    assert plot_lora_glue.describe({"name": "sst2_oneshot_iid_s0", "summary": oneshot})["method"] == "oneshot"
    assert plot_lora_glue.TWIN.match("sst2_oneshot-naive-x2_dir0.1_s4")
    assert plot_lora_glue.describe({"name": "sst2_central_s0", "summary": summary})["method"] == "central"
