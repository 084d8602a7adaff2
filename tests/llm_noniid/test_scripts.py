"""run_experiments.py (grid, skip, analyze report) and plots/plot_llm_noniid.py end to end with --quick,
and train.py on the real AG News split."""
from __future__ import annotations

import json

from llm_noniid import run_experiments, train
from plots import plot_llm_noniid


def test_grid_skips_done_runs_and_analyze_writes_report(tmp_path, capsys):
    root = tmp_path / "grid"
    argv = ["--mode", "quick", "--out-dir", str(root), "--rounds", "1", "--algorithms", "fedavg,scaffold",
            "--partitions", "token_skew", "--", "--quick"]
    s = run_experiments.main(argv)
    assert s == {"runs": 2, "complete": 2, "diverged": 0}
    capsys.readouterr()
    run_experiments.main(argv)
    assert capsys.readouterr().out.count("done, skipped") == 2
    s = run_experiments.main(["--mode", "failure", "--out-dir", str(root), "--rounds", "1",
                              "--failure-local-steps", "3", "--", "--quick"])
    assert s["runs"] == 2
    args = json.loads(next((root / "failure").glob("fedavg_topic*/args.json")).read_text())["args"]
    assert ((args["alpha"], args["participation_rate"], args["learning_rate"], args["local_epochs"])
            == (0.01, 0.1, 1e-3, 5))
    run_experiments.main(["--mode", "analyze", "--out-dir", str(root)])
    report = (root / "report.md").read_text()
    assert "| 1 | token_skew (frequency) | scaffold | 1 | 1 |" in report
    assert "### failure grid" in report and "topic_skew a=0.01" in report
    for line in report.splitlines():
        if line.startswith("!["):
            assert (root / line.split("(")[1].rstrip(")")).is_file(), line
    figs = plot_llm_noniid.main(["--runs", str(root / "quick"), "--out", str(tmp_path / "figs")])["figures"]
    names = {p.rsplit("/", 1)[1] for p in figs}
    assert {"val_ppl_curves_p1.png", "client_divergence_rel_curves_p1.png", "final_ppl.png"} <= names


def test_train_on_the_real_ag_news_split(shared_data, tmp_path):
    from llm_noniid.data import split_ag_news_csv

    d = split_ag_news_csv(shared_data / "ag_news_csv" / "test.csv", tmp_path / "ag", 0.1, 0)
    s = train.main(["--quick", "--quiet", "--data", "ag_news", "--data-dir", str(d), "--num-rounds", "1",
                    "--partition", "style_skew", "--style-criterion", "complexity", "--out-dir", str(tmp_path / "r")])
    assert s["status"] == "complete" and s["final_val_ppl"] < s["vocab_size"]
