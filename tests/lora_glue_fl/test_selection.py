"""The selection split (selection.tsv beside a GLUE folder's train.tsv / dev.tsv): the training scripts track it
every evaluation and score the validation split only once, at the end; --no_validation never scores it."""
from __future__ import annotations

import json
import shutil

import pytest
from clicases import one_line_error

from common import runs as R
from common import study, synthetic
from lora_glue_fl import fedavg_rounds, glue_tasks, main_glue_lora

QUICK = ["--quick", "--quiet", "--task_name", "sst2", "--max_train_samples", "240", "--max_eval_samples", "64"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The embedded SST-2 folder with a selection.tsv of 40 examples (the header and rows of a train.tsv)."""
    d = tmp_path_factory.mktemp("data") / "sst2"
    shutil.copytree(synthetic.ensure("glue-sst2"), d)
    lines = (d / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (d / "selection.tsv").write_text("".join(lines[:1] + lines[-40:]), encoding="utf-8")
    return d


def rows(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("client") is None]


def test_read_glue_dir_adds_the_selection_split_when_the_folder_has_one(folder):
    splits = glue_tasks.read_glue_dir(folder, "sst2")
    assert set(splits) == {"train", "validation", "selection"} and len(splits["selection"]) == 40
    assert "selection" not in glue_tasks.load_glue("sst2", "synthetic")


def test_centralized_tracks_the_selection_split_and_scores_validation_once(folder, tmp_path):
    summary = main_glue_lora.main(QUICK + ["--data_dir", str(folder), "--num_train_epochs", "1",
                                           "--eval_every_epochs", "0.25", "--out-dir", str(tmp_path),
                                           "--run-name", "c"])
    got = rows(tmp_path / "c")
    assert [r["epoch"] for r in got] == [0.25, 0.5, 0.75, 1.0]
    assert all("selection_accuracy" in r and "selection_eval_loss" in r for r in got)
    assert ["accuracy" in r for r in got] == [False, False, False, True]   # the dev set: after the last step only
    assert summary["selection_examples"] == 40 and "selection_accuracy" in summary["best"]
    assert summary["final"]["accuracy"] == got[-1]["accuracy"]


def test_fedavg_rounds_tracks_the_selection_split_every_round(folder, tmp_path):
    summary = fedavg_rounds.main(QUICK + ["--data_dir", str(folder), "--rounds", "3", "--local_epochs", "1",
                                          "--out-dir", str(tmp_path), "--run-name", "f"])
    got = rows(tmp_path / "f")
    assert [r["round"] for r in got] == [1, 2, 3] and all("selection_accuracy" in r for r in got)
    assert ["accuracy" in r for r in got] == [False, False, True]
    assert summary["final"]["selection_accuracy"] == got[-1]["selection_accuracy"]
    assert summary["best"]["round"] in (1, 2, 3) and summary["selection_examples"] == 40
    # --no_validation (the selection stage of run_grid.py): the validation split is never scored
    summary = fedavg_rounds.main(QUICK + ["--data_dir", str(folder), "--local_epochs", "1", "--out-dir", str(tmp_path),
                                          "--run-name", "s", "--no_validation"])
    assert not any("accuracy" in r for r in rows(tmp_path / "s")) and "accuracy" not in summary["final"]
    assert "selection_accuracy" in summary["final"]


def test_no_validation_without_a_selection_split_is_one_line(tmp_path, capsys):
    err = one_line_error(fedavg_rounds.main, QUICK + ["--no_validation", "--out-dir", str(tmp_path / "runs")], capsys)
    assert "--no_validation" in err and "selection.tsv" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_grid_reading_of_real_runs_curves_plateau_and_chosen_rates(folder, tmp_path):
    """The grid's reading of runs named as run_grid.py names them: each multi-round run's plateau check (its last
    third of rounds over the same run at two thirds) and the rates chosen in selection.json in
    lora_glue_fl/results.py's blocks (read through --records), the curves in rounds_sst2.png."""
    from common import results as RS
    from lora_glue_fl import results as LR
    from plots import plot_lora_glue
    root = tmp_path / "grid"
    for seed in ("0", "1"):
        main_glue_lora.main(QUICK + ["--data_dir", str(folder), "--num_train_epochs", "1.5", "--eval_every_epochs",
                                     "0.5", "--out-dir", str(root), "--run-name", f"sst2_central_s{seed}",
                                     "--seed", seed])
        fedavg_rounds.main(QUICK + ["--data_dir", str(folder), "--rounds", "3", "--local_epochs", "0.5",
                                    "--out-dir", str(root), "--run-name", f"sst2_svd_iid_s{seed}", "--seed", seed])
    g = study.Grid("--learning_rate", (1e-3, 2e-3), "final.selection_accuracy", "max", split="selection")
    study.write_selection(root / "selection.json", "minilm_glue", "best final selection accuracy", {
        "sst2/central": study.choice_record(g, g.choose({1e-3: [0.7], 2e-3: [0.8]})),
        "sst2/multi-round": study.choice_record(g, g.choose({1e-3: [0.9], 2e-3: [0.8]}))}, seeds=[100])
    plot_lora_glue.main(["--runs", str(root), "--out", str(tmp_path / "fig")])
    RS.REDIRECTS[LR.RECORDS] = root
    try:
        table, plateau = LR.dev_table(), LR.plateau_table()
        sst2_iid = LR.runs("svd_iid")
    finally:
        RS.REDIRECTS.clear()
    row = next(line for line in table.splitlines() if line.startswith("| FedAvg, SVD merge, iid shards |"))
    assert "(n=2)" in row and "rate at the low edge of its grid" in row     # multi-round: 1e-3, the smallest
    curves = {s: [r["selection_accuracy"] for r in rows(root / f"sst2_svd_iid_s{s}")] for s in (0, 1)}
    assert set(sst2_iid) == {0, 1}
    gains = " ".join(f"{c[2] - c[1]:+.3f}" for c in curves.values()).replace("-", "\u2212")  # round 3 over round 2
    row = next(line for line in plateau.splitlines() if line.startswith("| FedAvg, SVD merge, iid shards |"))
    assert f"| {gains} |" in row
    assert (tmp_path / "fig" / "rounds_sst2.png").is_file()
    splits = glue_tasks.read_glue_dir(folder, "sst2")   # the selection split's own reference point, in every run
    top = max(set(splits["train"].label), key=list(splits["train"].label).count)
    share = sum(y == top for y in splits["selection"].label) / len(splits["selection"])
    for run in ("sst2_central_s0", "sst2_svd_iid_s1"):
        saved = json.loads((root / run / "summary.json").read_text())["selection_majority"]
        assert saved["accuracy"] == pytest.approx(share)
    groups = plot_lora_glue.grouped(plot_lora_glue.lora_runs(R.load_roots([str(root)])))
    x, ys = plot_lora_glue.epochs_of(groups[("sst2", "svd", "iid")], "selection_accuracy")
    assert x.tolist() == [0.5, 1.0, 1.5] and ys.shape == (2, 3)   # rounds x local epochs: central's axis
    # a panel names only what differs within its own task: another task's longer sequences relabel nothing,
    # while two lengths within one task are two panels
    for name, length in (("mrpc_central_s0", 64), ("sst2_central_s5", 96)):
        shutil.copytree(root / "sst2_central_s0", root / name)
        saved = json.loads((root / name / "args.json").read_text())
        saved["args"]["max_seq_length"] = length
        (root / name / "args.json").write_text(json.dumps(saved))
    panels = {key[0] for key in plot_lora_glue.grouped(plot_lora_glue.lora_runs(R.load_roots([str(root)])))}
    assert "mrpc" in panels and {p for p in panels if p.startswith("sst2")} == {
        "sst2 [max_seq_length=48]", "sst2 [max_seq_length=96]"}, panels
