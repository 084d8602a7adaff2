"""run_experiments.py (grids, skip, analyze report) and plots/plot_llm_noniid.py end to end on tiny settings,
and train.py on the real AG News split."""
from __future__ import annotations

import contextlib
import json

import pytest

from llm_noniid import run_experiments as E
from llm_noniid import train
from plots import plot_llm_noniid


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


TINY = ["--max-train-examples", "160", "--max-eval-examples", "32", "--bpe-vocab-size", "300", "--num-clients", "4",
        "--local-steps", "2", "--seq-len", "24", "--eval-every", "1"]


@pytest.mark.parametrize("mode", ["failure", "main", "calibrate", "quick"])
def test_every_arm_is_labelled_back_from_its_arguments(mode):
    """The report finds an arm's runs by arm_of(args.json): every grid arm must map back to its own label, and
    the arms of one partition must differ from FedAvg's in one setting group only."""
    seen = set()
    for part, arm, flags in E.arms(mode):
        args = train.parse_with_config(train.get_args_parser(), [*E.STUDY, *flags], {"quick": train.QUICK})
        assert E.arm_of(vars(args)) == (part, arm)
        assert (part, arm) not in seen
        seen.add((part, arm))
        assert args.local_steps == 8 and args.num_clients == 10  # equal local work in every arm


def test_failure_grid_has_every_algorithm_and_averaging_arms():
    labels = [arm for part, arm, _ in E.arms("failure") if part == "topic a=0.01"]
    for want in ("FedAvg", "FedProx mu=0.001", "FedProx mu=0.01", "FedProx mu=0.1", "FedProx mu=1", "SCAFFOLD",
                 "FedAvg, 2 of 10 clients/round", "FedAvg, 2 of 10 clients/round, 200 rounds",
                 "FedAvg + data clusters", "FedAvg + IFCA (4)", "FedAvg, 42 rounds"):
        assert want in labels
    for part in ("iid", "topic a=0.1", "style (length)", "token (frequency)"):  # the mu sweep in every grid
        assert sum(arm.startswith("FedProx") for p, arm, _ in E.arms("main") if p == part) == 4
    for _part, arm, flags in E.arms("failure"):
        args = train.parse_with_config(train.get_args_parser(), [*E.STUDY, *flags], {})
        m = max(1, round(args.participation_rate * args.num_clients))
        assert m >= 2 or arm.endswith("1 client/round")  # averaging claimed only with >= 2 clients


def test_equal_compute_arms_train_as_many_tokens():
    """The equal-compute references really match: IFCA's starting models cost IFCA_EXTRA_ROUNDS full rounds of
    local steps; 2 of 10 clients for 5x the rounds take as many local steps as FedAvg, with as many evaluations."""
    arms = {(p, a): train.parse_with_config(train.get_args_parser(), [*E.STUDY, *f], {})
            for p, a, f in E.arms("failure")}
    steps = lambda x: x.num_rounds * max(1, round(x.participation_rate * x.num_clients)) * x.local_steps  # noqa
    for part, arm, ref in E.equal_compute():
        a, r = arms[(part, arm)], arms[(part, ref)]
        extra = a.num_clusters * a.ifca_init_rounds * a.local_steps if a.clustering == "ifca" else 0
        assert steps(a) + extra == steps(r), (part, arm)
        if not extra:  # as many evaluation points
            assert a.num_rounds // a.eval_every == r.num_rounds // r.eval_every


def test_grid_skips_done_runs_and_analyze_writes_report(tmp_path, capsys):
    root = tmp_path / "grid"
    argv = ["--mode", "calibrate", "--out-dir", str(root), "--rounds", "2", "--seeds", "0,1", "--", *TINY]
    s = E.main([*argv[:-len(TINY) - 1], "--jobs", "2", "--", *TINY])  # 2 worker processes of 1 thread
    assert s["runs"] == 4
    capsys.readouterr()
    E.main([*argv[:-len(TINY) - 1], "--jobs", "1", "--", *TINY])
    assert capsys.readouterr().out.count("done, skipped") == 4
    # the same runs one after another in this process, at the workers' thread count: the same numbers
    with torch_threads(1):
        E.main(["--mode", "calibrate", "--out-dir", str(tmp_path / "serial"), "--rounds", "2", "--seeds", "0,1",
                "--jobs", "1", "--", *TINY])
    for run in (root / "runs").iterdir():
        a, b = (json.loads((d / run.name / "summary.json").read_text()) for d in (root / "runs", tmp_path / "serial"
                                                                                    / "runs"))
        assert a["final_val_ppl"] == b["final_val_ppl"] or a["status"] == b["status"] == "diverged", run.name
    E.main(["--mode", "analyze", "--out-dir", str(root)])
    report = (root / "report.md").read_text()
    assert "### calibrate grid" in report and "| topic a=0.01 | FedAvg, 1 client/round | 2 |" in report
    assert "unigram" in report and "### Failure detectors" in report
    for line in report.splitlines():
        if line.startswith("!["):
            assert (root / line.split("(")[1].rstrip(")")).is_file(), line
    figs = plot_llm_noniid.main(["--runs", str(root / "runs"), "--out", str(tmp_path / "figs")])["figures"]
    names = {p.rsplit("/", 1)[1] for p in figs}
    assert {"val_ppl_curves.png", "personal_val_ppl_curves.png", "final_ppl.png"} <= names


def test_train_on_the_real_ag_news_split(shared_data, tmp_path):
    from llm_noniid.data import split_ag_news_csv

    d = split_ag_news_csv(shared_data / "ag_news_csv" / "test.csv", tmp_path / "ag", 0.1, 0)
    s = train.main(["--quick", "--quiet", "--data", "ag_news", "--data-dir", str(d), "--num-rounds", "1",
                    "--partition", "style_skew", "--style-criterion", "complexity", "--out-dir", str(tmp_path / "r")])
    assert s["status"] == "complete" and s["final_val_ppl"] < s["vocab_size"]
    assert s["unigram_val_ppl"] < s["uniform_ppl"] == s["vocab_size"]
    json.loads((tmp_path / "r" / next((tmp_path / "r").iterdir()).name / "partition.json").read_text())


def test_equal_compute_arm_gets_its_own_run_directory(tmp_path, monkeypatch):
    """Run names leave the rounds out (so --extend can continue a run): an arm that only runs more rounds must not
    extend the plain arm's run, it gets a directory of its own."""
    monkeypatch.setattr(E, "arms", lambda mode, rounds=E.ROUNDS: [
        ("iid", "FedAvg", E.IID + E.FEDAVG), ("iid", f"FedAvg, {rounds + 1} rounds",
                                              E.IID + E.FEDAVG + E.rounds_flags(rounds + 1))])
    root = tmp_path / "grid"
    s = E.main(["--mode", "calibrate", "--out-dir", str(root), "--rounds", "1", "--seeds", "0", "--jobs", "1",
                "--", *TINY])
    assert s["runs"] == 2
    rounds = sorted(json.loads(p.read_text())["num_rounds"] for p in (root / "runs").glob("*/summary.json"))
    assert rounds == [1, 2]
