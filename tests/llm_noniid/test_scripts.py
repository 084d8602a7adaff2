"""run_experiments.py (grids, skip, analyze report) and plots/plot_llm_noniid.py end to end on tiny settings,
and train.py on the real AG News split."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil

import procs
import pytest
from clicases import LLM_SMOKE, one_line_error, the_run

from common import cli, study
from common import stats as S
from common.config import parse_with_config
from llm_noniid import data as llm_data
from llm_noniid import report as RP
from llm_noniid import run_experiments as E
from llm_noniid import studies as ST
from llm_noniid import train


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
    for part, arm, flags in ST.arms(mode):
        args = parse_with_config(train.get_args_parser(), [*ST.STUDY, *flags], {"quick": train.QUICK})
        assert RP.arm_of(vars(args)) == (part, arm)
        assert (part, arm) not in seen
        seen.add((part, arm))
        # equal local work in every arm but calibrate's drifting one (8x the steps, an eighth of the rounds)
        assert args.local_steps == (64 if ", 64 local steps" in arm else 8) and args.num_clients == 10


def test_failure_grid_has_every_algorithm_and_averaging_arms():
    labels = [arm for part, arm, _ in ST.arms("failure") if part == "topic a=0.01"]
    for want in ("FedAvg", "FedProx mu=0.001", "FedProx mu=0.01", "FedProx mu=0.1", "FedProx mu=1", "SCAFFOLD",
                 "FedAvg, 2 of 10 clients/round", "FedAvg, 2 of 10 clients/round, 200 rounds",
                 "FedAvg + data clusters", "FedAvg + IFCA (4)", "FedAvg, 42 rounds"):
        assert want in labels
    for part in ("iid", "topic a=0.1", "style (length)", "token (frequency)"):  # the mu sweep in every grid
        assert sum(arm.startswith("FedProx") for p, arm, _ in ST.arms("main") if p == part) == 4
    for _part, arm, flags in ST.arms("failure"):
        args = parse_with_config(train.get_args_parser(), [*ST.STUDY, *flags], {})
        m = max(1, round(args.participation_rate * args.num_clients))
        assert m >= 2 or arm.endswith("1 client/round")  # averaging claimed only with >= 2 clients


def test_the_budget_check_twins_every_headline_arm_and_the_main_grids_other_splits_once_a_mu_is_chosen():
    """--mode headline runs each headline arm again at twice the rounds (FedProx only at a chosen mu); --mode main
    does the same for its splits outside the headline once a selection chose (the pretrained regime), else none."""
    mus = {p: "0.001" for p, _ in ST.SELECT_PARTS}
    head = {(p, a) for p, _, arms in ST.twins("headline", mus) for a, _ in arms}
    assert head == {(p, a) for p in ("iid", "topic a=0.01")
                    for a in ("FedAvg", "FedProx mu=0.001", "SCAFFOLD", "FedAvg + IFCA (4)")}
    assert not any(a.startswith("FedProx") for _, _, arms in ST.twins("headline", None) for a, _ in arms)
    main = {(p, a) for p, _, arms in ST.twins("main", mus) for a, _ in arms}
    assert main == {(p, a) for p in ("topic a=0.1", "style (length)", "token (frequency)")
                    for a in ("FedAvg", "FedProx mu=0.001", "SCAFFOLD")}
    assert ST.twins("main", None) == [] and ST.twins("failure", mus) == []


def test_from_scratch_headline_is_the_headline_arms_at_every_mu_all_shared_with_its_grids(tmp_path):
    """Without a selection (the from-scratch regime) the headline trains FedProx at every mu, so the side by side
    finds the mu the pretrained regime chose; every run is one the failure or main grid trains (same directory)."""
    args = E.get_args_parser().parse_args(["--mode", "headline", "--out-dir", str(tmp_path)])
    args.split_csv, args.regime = None, "scratch"
    names = {j.name for j in E.plan("headline", args, [])}
    shared = {j.name for mode in ("failure", "main") for j in E.plan(mode, args, [])}
    labels = [(p, a) for p, a, _ in ST.arms("headline")]
    assert len(labels) == 14 and ("iid", "FedProx mu=0.001") in labels and ("topic a=0.01", "FedProx mu=1") in labels
    # + FedAvg, SCAFFOLD and IFCA at twice the rounds on both splits, every seed (the plateau's second budget; no
    # FedProx twin without a chosen mu)
    assert len(names) == 14 * 3 + 3 * 2 * 3 and len(names - shared) == 3 * 2 * 3
    assert all(n.endswith(f"_R{2 * ST.ROUNDS}") for n in names - shared)
    mus = {"iid": "0.01", "topic a=0.01": "0.1"}  # a selection's mu per partition: that mu only
    assert [a for p, a, _ in ST.arms("headline", mus=mus) if a.startswith("FedProx")] == \
        ["FedProx mu=0.01", "FedProx mu=0.1"]


def test_a_selection_puts_fedprox_at_its_mu_except_in_the_failure_grids_sweep():
    """With the pretrained regime's choice of mu per partition, the main grid and the failure grid's iid contrast
    train FedProx at that mu only; the failure grid keeps the whole sweep on topic a=0.01; a partition the
    selection did not cover gets the sweep."""
    mus = {"iid": "0.001", "topic a=0.1": "0.01", "style (length)": "1"}
    prox = lambda mode: [(p, a) for p, a, _ in ST.arms(mode, mus=mus) if a.startswith("FedProx")]  # noqa: E731
    assert [a for p, a in prox("main") if p != "token (frequency)"] == \
        ["FedProx mu=0.001", "FedProx mu=0.01", "FedProx mu=1"]
    assert [a for p, a in prox("main") if p == "token (frequency)"] == [f"FedProx mu={m}" for m in ST.MUS]
    assert [a for p, a in prox("failure") if p == "iid"] == ["FedProx mu=0.001"]
    assert [a for p, a in prox("failure") if p == "topic a=0.01"] == [f"FedProx mu={m}" for m in ST.MUS]
    assert {p for p, _ in ST.SELECT_PARTS} == {p for p, _ in (*ST.HEADLINE_PARTS, *ST.MAIN_PARTS)}


def test_equal_compute_arms_train_as_many_tokens():
    """The equal-compute references really match: IFCA's starting models cost IFCA_EXTRA_ROUNDS full rounds of
    local steps; 2 of 10 clients for 5x the rounds take as many local steps as FedAvg, with as many evaluations."""
    arms = {(p, a): parse_with_config(train.get_args_parser(), [*ST.STUDY, *f], {})
            for p, a, f in ST.arms("failure")}
    steps = lambda x: x.num_rounds * max(1, round(x.participation_rate * x.num_clients)) * x.local_steps  # noqa
    for part, arm, ref in ST.equal_compute():
        a, r = arms[(part, arm)], arms[(part, ref)]
        extra = a.num_clusters * a.ifca_init_rounds * a.local_steps if a.clustering == "ifca" else 0
        assert steps(a) + extra == steps(r), (part, arm)
        if not extra:  # as many evaluation points
            assert a.num_rounds // a.eval_every == r.num_rounds // r.eval_every


def test_grid_skips_done_runs_and_analyze_writes_report(tmp_path, capsys):
    root = tmp_path / "grid"
    argv = ["--mode", "calibrate", "--out-dir", str(root), "--rounds", "2", "--seeds", "0"]
    s = E.main([*argv, "--jobs", "2", "--", *TINY])  # 2 processes of 1 thread
    assert s["runs"] == 5
    assert "calibrate grid summary: 5 runs: " in capsys.readouterr().out
    s = E.main([*argv, "--jobs", "1", "--", *TINY])
    printed = capsys.readouterr().out
    assert s["runs"] == 5 and "5 runs: 5 done before, 0 to run" in printed
    assert f"next: python llm_noniid/run_experiments.py --mode analyze --out-dir {root}" in printed
    # a run removed and run again, alone: only it runs, with the same numbers (they depend on the thread count
    # only, not on --jobs)
    again = sorted(p for p in (root / "runs").iterdir() if (p / "args.json").is_file())[0]  # not the shared cache
    before = json.loads((again / "summary.json").read_text())
    shutil.rmtree(again)
    E.main([*argv, "--jobs", "1", "--", *TINY])
    assert "5 runs: 4 done before, 1 to run" in capsys.readouterr().out
    after = json.loads((again / "summary.json").read_text())
    assert before["final_val_ppl"] == after["final_val_ppl"] or before["status"] == after["status"] == "diverged"
    capsys.readouterr()
    s = E.main(["--mode", "analyze", "--out-dir", str(root)])
    figures = (f"python plots/plot_llm_noniid.py --runs {root / 'runs'} --out {root / 'figures'} "
               f"--arms {root / 'arms.json'}")
    assert capsys.readouterr().out.rstrip().endswith(f"report: {root / 'report.md'}\nfigures: {figures}")
    assert s["figures"] == figures and not (root / "figures").exists()  # printed, not drawn: plots/ draws them
    report = (root / "report.md").read_text()
    assert "### calibrate grid" in report and "| topic a=0.01 | FedAvg, 1 client/round | 1 |" in report
    assert "unigram" in report and "### Failure detectors" in report and "plots/plot_llm_noniid.py" in report
    # what drift costs: the drifting arm against FedAvg, which the calibrate grid alone does not train
    assert "| iid | FedAvg, 64 local steps, 1 rounds | FedAvg | not run |" in report
    # the figures label runs as the tables do
    assert ["topic a=0.01", "FedAvg, 1 client/round"] in json.loads((root / "arms.json").read_text()).values()
    assert f"--arms {root / 'arms.json'}" in report
    # the figures, drawn by the command analyze printed (plots/plot_llm_noniid.py, the one the report names)
    from plots import plot_llm_noniid

    plot_llm_noniid.main(shlex.split(figures)[2:])
    names = {p.name for p in (root / "figures").glob("*.png")}
    assert {"val_ppl_curves.png", "personal_val_ppl_curves.png", "final_ppl.png"} <= names


def fake_runs(values: dict) -> list[dict]:
    """Finished runs of failure-grid arms, {(partition, arm): final ppl per seed} (inf: diverged); the
    personalised perplexity is the global one minus 1, the best of any round the global one minus 0.5."""
    flags = {(p, a): f for p, a, f in ST.arms("failure")}
    runs = []
    for key, ppls in values.items():
        args = vars(parse_with_config(train.get_args_parser(), [*ST.STUDY, *flags[key]], {}))
        runs += [{"args": {**args, "seed": seed}, "rows": [], "summary": {
            "final_val_ppl": v, "final_personal_val_ppl": v - 1, "best_val_ppl": v - 0.5, "train_tokens": 100,
            "status": "complete" if math.isfinite(v) else "diverged"}} for seed, v in enumerate(ppls)]
    return runs


def test_tables_correct_verdicts_with_holm_and_show_diverged_arms():
    """Every Δ cell of a table is Holm-corrected over the table's comparisons (both perplexities, all
    partitions); an arm whose every seed diverged is 'diverged', never 'no difference'."""
    inf, fedavg = float("inf"), [50.0, 52.0, 51.0]
    finite = {("iid", "SCAFFOLD"): [40.0, 41.5, 40.5], ("iid", "FedProx mu=0.1"): [50.2, 51.8, 51.3],
              ("iid", "FedAvg + IFCA (4)"): [45.0, 46.0, 47.0], ("iid", "FedAvg, 42 rounds"): [46.0, 45.5, 47.5],
              ("topic a=0.01", "SCAFFOLD"): [60.0, 61.0, inf]}
    runs = fake_runs({("iid", "FedAvg"): fedavg, ("topic a=0.01", "FedAvg"): fedavg, **finite,
                      ("iid", "FedAvg, 1 client/round"): [inf] * 3,
                      ("iid", f"FedAvg, 2 of 10 clients/round, {5 * ST.ROUNDS} rounds"): [inf] * 3})
    lines = RP.table(runs, "failure")
    row = lambda arm, part="iid": next(line.split(" | ") for line in lines if f"| {part} | {arm} |" in line)
    # the family: every arm with finite values against FedAvg, in both perplexities (same shift: same p)
    diffs = {(*k, i): S.paired({s: v for s, v in enumerate(ppls) if math.isfinite(v)}, dict(enumerate(fedavg)))
             for k, ppls in finite.items() for i in (0, 1)}
    holm = S.holm(diffs)
    assert holm[("iid", "SCAFFOLD", 0)].significant and not holm[("iid", "FedProx mu=0.1", 0)].significant
    m = len(diffs)   # the family: "over m"; what a null rules out: the simultaneous interval over m comparisons
    assert row("SCAFFOLD")[4].endswith(f"(n=3; p_Holm = {S.fmt_p(holm[('iid', 'SCAFFOLD', 0)].p_holm)} over {m})")
    assert row("FedProx mu=0.1")[4].endswith(f"(n=3; no difference after Holm over {m}; rules out > "
                                             f"{S.ruled_out(diffs[('iid', 'FedProx mu=0.1', 0)], m):.1f})")
    assert row("SCAFFOLD", "topic a=0.01")[3] == "60.5 ± 0.7 (n=2), 1 diverged"   # n: not all 3 seeds
    topic = S.ruled_out(diffs[("topic a=0.01", "SCAFFOLD", 0)], m)   # its two finite seeds, said beside it
    cell = row("SCAFFOLD", "topic a=0.01")[4]
    assert cell.startswith("+9.5 [") and cell.endswith(f"(n=2; no difference after Holm over {m}; rules out > "
                                                       f"{topic:.1f}); 2 seeds")
    assert row("FedAvg, 1 client/round")[4] == row("FedAvg, 1 client/round")[6] == "diverged"
    assert row("FedAvg, 1 client/round")[3] == "–, 3 diverged"
    assert row("FedProx mu=0.001", "topic a=0.01")[2:4] == ["0", "–"]   # not run
    assert row("FedAvg")[3] == "51.0 ± 1.0" and row("FedAvg")[4] == "–"
    assert row("FedAvg")[7] == "50.5 ± 1.0"  # the best round's perplexity beside the final one
    assert not any("no difference" in line for line in lines if "| diverged |" in line)
    equal = RP.equal_compute_table(runs, ST.ROUNDS)
    assert row(f"FedAvg, 2 of 10 clients/round, {5 * ST.ROUNDS} rounds")[4] == "diverged"
    assert any(line.endswith("| 1.00x | diverged | diverged |") for line in equal)
    ifca = next(line for line in equal if "| iid | FedAvg + IFCA (4) |" in line)
    assert ifca.count("after Holm") + ifca.count("p_Holm") == 2


def test_equal_compute_table_says_when_the_tokens_are_not_matched():
    """The equal-compute pairs are matched on training tokens: a pair more than 1 % apart says so beside its
    verdict, a matched one does not."""
    runs = fake_runs({(p, a): ppl for p in ("iid", "topic a=0.01") for a, ppl in (
        ("FedAvg + IFCA (4)", [45.0, 46.0, 47.0]), ("FedAvg, 42 rounds", [46.0, 45.5, 47.5]))})
    for r in runs:
        if r["args"]["partition"] == "iid" and r["args"]["clustering"] == "ifca":
            r["summary"]["train_tokens"] = 110
    equal = RP.equal_compute_table(runs, ST.ROUNDS)
    iid, topic = (next(line for line in equal if line.startswith(f"| {p} | FedAvg + IFCA (4) |"))
                  for p in ("iid", "topic a=0.01"))
    assert "| 1.10x |" in iid and iid.count("; unmatched compute (equal samples: 110 vs 100)") == 2
    assert "| 1.00x |" in topic and "unmatched" not in topic


def test_split_table_pairs_each_arm_with_itself_on_iid():
    """'Does the split hurt': an arm on a skewed partition minus the same arm on iid, by seed, Holm over the
    table; an arm never run on iid has no row."""
    runs = fake_runs({("iid", "FedAvg"): [50.0, 52.0, 51.0], ("topic a=0.01", "FedAvg"): [55.0, 57.5, 56.0],
                      ("iid", "SCAFFOLD"): [40.0, 41.0, 42.0], ("topic a=0.01", "SCAFFOLD"): [40.5, 40.5, 42.5],
                      ("topic a=0.01", "FedProx mu=1"): [90.0, 91.0, 92.0]})
    lines = RP.split_table(RP.by_arm(runs))
    row = lambda arm: next(line.split(" | ") for line in lines if f"| {arm} |" in line)
    holm = S.holm({"FedAvg": S.paired({0: 55.0, 1: 57.5, 2: 56.0}, {0: 50.0, 1: 52.0, 2: 51.0}),
                   "SCAFFOLD": S.paired({0: 40.5, 1: 40.5, 2: 42.5}, {0: 40.0, 1: 41.0, 2: 42.0})})
    assert holm["FedAvg"].significant and not holm["SCAFFOLD"].significant
    assert row("FedAvg")[4].startswith("+5.2 [") and f"p_Holm = {S.fmt_p(holm['FedAvg'].p_holm)} over 2" in \
        row("FedAvg")[4]
    assert row("FedAvg")[2:4] == ["56.2 ± 1.3", "51.0 ± 1.0"]   # the arm, and the same arm on iid
    assert "no difference after Holm" in row("SCAFFOLD")[4]
    assert not any("FedProx mu=1" in line for line in lines)


@pytest.mark.parametrize("extra,message", [
    (["--mode", "quick", "--rounds", "0"], "--rounds must be at least 1"),
    (["--mode", "quick", "--seeds", "a,b"], "expected comma-separated integers"),
    (["--mode", "quick", "--seeds", "1,1"], "distinct"),
    (["--mode", "quick", "--jobs", "0"], "--jobs must be at least 1"),
    (["--mode", "quick", "--threads", "0"], "--threads must be at least 1"),
])
def test_grid_bad_inputs_end_before_any_work(tmp_path, extra, message, capsys):
    err = one_line_error(E.main, [*extra, "--out-dir", str(tmp_path / "g")], capsys)
    assert message in err, err
    assert not (tmp_path / "g").exists()


def test_split_csv_is_read_by_the_training_reader_and_never_replaced(tmp_path):
    binary = tmp_path / "x.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(cli.UsageError, match="not UTF-8"):
        E.main(["--mode", "quick", "--split-csv", str(binary), "--out-dir", str(tmp_path / "g")])
    rows = [f'"{1 + i % 4}","title {i}","text {i}"' for i in range(40)]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "b.csv").write_text("\n".join(rows[:-4]) + "\n")
    folder = E.split_data(str(tmp_path / "a.csv"), tmp_path / "g")
    before = (folder / "train.csv").read_bytes()
    assert E.split_data(str(tmp_path / "a.csv"), tmp_path / "g") == folder      # the same split: reused
    with pytest.raises(cli.UsageError, match="another CSV"):
        E.split_data(str(tmp_path / "b.csv"), tmp_path / "g")
    assert (folder / "train.csv").read_bytes() == before and sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "data"]
    args = E.get_args_parser().parse_args(["--mode", "failure", "--out-dir", str(tmp_path / "g")])
    args.regime = "scratch"  # a grid resumed without --split-csv trains on the split it holds, not on synthetic data
    assert all(j.argv[j.argv.index("--data-dir") + 1] == str(folder) for j in E.plan("failure", args, []))


def test_train_on_the_real_ag_news_split(shared_data, tmp_path):
    from llm_noniid.data import split_ag_news_csv

    d = split_ag_news_csv(shared_data / "ag_news_csv" / "test.csv", tmp_path / "ag", 0.1, 0)
    s = train.main(["--quick", *LLM_SMOKE, "--quiet", "--data", "ag_news", "--data-dir", str(d), "--num-rounds", "1",
                    "--partition", "style_skew", "--style-criterion", "complexity", "--out-dir", str(tmp_path / "r")])
    assert s["status"] == "complete" and s["final_val_ppl"] < s["vocab_size"]
    assert s["unigram_val_ppl"] < s["uniform_ppl"] == s["vocab_size"]
    json.loads((the_run(tmp_path / "r") / "partition.json").read_text())


def test_equal_compute_arm_gets_its_own_run_directory(tmp_path, monkeypatch):
    """Run names leave the rounds out (so --extend can continue a run): an arm that only runs more rounds must not
    extend the plain arm's run, it gets a directory of its own."""
    procs.jobs_in_this_process(monkeypatch)  # what the runner names the runs; test_grid_skips_...: their processes
    monkeypatch.setattr(ST, "arms", lambda mode, rounds=ST.ROUNDS, mus=None, lr=1.0: [
        ("iid", "FedAvg", ST.IID + ST.FEDAVG), ("iid", f"FedAvg, {rounds + 1} rounds",
                                              ST.IID + ST.FEDAVG + ST.rounds_flags(rounds + 1))])
    root = tmp_path / "grid"
    s = E.main(["--mode", "calibrate", "--out-dir", str(root), "--rounds", "1", "--seeds", "0", "--jobs", "1",
                "--", *TINY])
    assert s["runs"] == 2
    rounds = sorted(json.loads(p.read_text())["num_rounds"] for p in (root / "runs").glob("*/summary.json"))
    assert rounds == [1, 2]


def test_the_quick_grid_has_a_folder_of_its_own(monkeypatch, tmp_path):
    """Its runs share the study's names at other evaluation points: in the study's folder they would stand where
    the study's runs go, as runs with other arguments."""
    monkeypatch.chdir(tmp_path)
    folders = []
    monkeypatch.setattr(E, "run_grid", lambda mode, args, passthrough: folders.append(args.out_dir) or [])
    for mode in ("quick", "failure"):
        E.main(["--mode", mode])
    E.main(["--mode", "quick", "--out-dir", "mine"])
    assert folders == ["runs/llm_noniid_quick", "runs/llm_noniid", "mine"]


def test_selection_stops_when_a_run_failed(tmp_path, monkeypatch):
    """A selection run that failed (no summary; a diverged one has a summary and scores inf) stops the selection
    before anything is chosen: selection.json is not written, so the same command retries it."""
    monkeypatch.setattr(E, "base_folder", lambda args: "base")
    monkeypatch.setattr(E, "split_data", lambda csv, out: out)
    monkeypatch.setattr(llm_data, "split_ag_news_csv", lambda *a, **kw: tmp_path / "select" / "data")
    monkeypatch.setattr(E.jobs, "run_plan", lambda plan, **kw: None)
    monkeypatch.setattr(E.jobs, "summary_of", lambda job: None if f"_lr{ST.LR_GRID[1]}_" in job.name else
                        {"status": "complete", "final_val_ppl": 50.0})
    args = argparse.Namespace(out_dir=str(tmp_path), regime="pretrained", rounds=None, split_csv="x.csv", jobs=1,
                              threads=1)
    with pytest.raises(cli.UsageError, match=f"selection: .*_lr{ST.LR_GRID[1]}_.* did not finish"):
        E.select(args, [])
    assert not (tmp_path / "selection.json").exists()


def test_a_selection_json_of_another_layout_is_refused_in_one_line(tmp_path, monkeypatch):
    """A selection.json not in ``common.study``'s layout (the one written before it) is refused naming the file,
    never read as a choice; removing it selects again."""
    monkeypatch.setattr(E, "base_folder", lambda args: "base")
    (tmp_path / "selection.json").write_text(json.dumps({"base": "base", "rounds": 30, "seed": 100,
                                                         "learning_rate": 0.01, "mu": {"iid": "0.001"}}))
    args = argparse.Namespace(out_dir=str(tmp_path), regime="pretrained", rounds=None, split_csv="x.csv", jobs=1,
                              threads=1)
    with pytest.raises(cli.UsageError, match="selection.json: not a selection record .*remove it to select again"):
        E.select(args, [])


def test_a_diverged_selection_run_is_recorded_as_diverged(tmp_path, monkeypatch):
    """A diverged selection run scores the word "diverged" in selection.json (valid JSON, no Infinity) and is never
    chosen; the rate and mus are written as the grids take them."""
    monkeypatch.setattr(E, "base_folder", lambda args: "base")
    monkeypatch.setattr(E, "split_data", lambda csv, out: out)
    monkeypatch.setattr(llm_data, "split_ag_news_csv", lambda *a, **kw: tmp_path / "select" / "data")
    monkeypatch.setattr(E.jobs, "run_plan", lambda plan, **kw: None)
    def summary_of(job):  # FedAvg diverges at the largest rate; FedProx is best at the largest mu
        flag = lambda name: job.argv[job.argv.index(name) + 1] if name in job.argv else None  # noqa: E731
        if flag("--mu") is None:
            return {"status": "diverged", "final_val_ppl": math.inf} if flag("--learning-rate") == ST.LR_GRID[-1] \
                else {"status": "complete", "final_val_ppl": 60.0 - ST.LR_GRID.index(flag("--learning-rate"))}
        return {"status": "complete", "final_val_ppl": 50.0 - ST.MUS.index(flag("--mu"))}

    monkeypatch.setattr(E.jobs, "summary_of", summary_of)
    args = argparse.Namespace(out_dir=str(tmp_path), regime="pretrained", rounds=None, split_csv="x.csv", jobs=1,
                              threads=1)
    setting = E.select(args, [])
    text = (tmp_path / "selection.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    record = study.read_selection(tmp_path / "selection.json")
    assert record["choices"]["learning_rate"]["scores"][ST.LR_GRID[-1]] == "diverged"
    assert record["runs"] == {"base": "base", "rounds": ST.PRETRAINED_ROUNDS // 2, "seeds": [ST.SELECT_SEED]}
    assert record["choices"]["learning_rate"]["chosen"] == float(ST.LR_GRID[-2])  # the best that did not diverge
    assert record["choices"]["mu/iid"]["edge"] == "high"
    assert setting == {"learning_rate": float(ST.LR_GRID[-2]), "mu": {p: ST.MUS[-1] for p, _ in ST.SELECT_PARTS}}


def test_a_shorter_run_is_extended_only_under_a_constant_learning_rate(tmp_path):
    """A cosine schedule is laid out over the run's length: a shorter run of the arm is not extended (train.py
    would refuse --extend), the runner reports it as another run instead."""
    arms_ = [("iid", "FedAvg", ST.IID + ST.FEDAVG + sched, 1) for sched in ([], ["--lr-schedule", "cosine"])]
    constant, cosine = E.jobs_for(arms_, [0], TINY, tmp_path)
    assert constant.extend and not cosine.extend


def test_pretrained_regime_selects_on_its_own_split_then_runs_the_headline(tmp_path, monkeypatch, capsys,
                                                                          tiny_folder):
    """--regime pretrained: the rate and FedProx's mu are chosen on a split of the training texts (never the
    reported validation texts), recorded in selection.json, and the headline grid trains LoRA on the base at
    them; the report names the choices, the base's zero-shot perplexity and the plateau column."""
    import csv

    from common import synthetic

    procs.jobs_in_this_process(monkeypatch)  # what the grid chooses and reports; test_grid_skips_...: the processes
    monkeypatch.setattr(ST, "LR_GRID", ("0.05", "0.5"))
    monkeypatch.setattr(ST, "MUS", ("0.01", "1"))
    monkeypatch.setattr(ST, "SELECT_PARTS", ST.HEADLINE_PARTS)  # (all the grids' partitions: 3 more to choose)
    base = tiny_folder("gpt2")
    root = tmp_path / "grid"
    argv = ["--regime", "pretrained", "--base", str(base), "--out-dir", str(root), "--rounds", "4", "--seeds", "0",
            "--jobs", "2", "--split-csv", str(synthetic.ensure("ag_news") / "test.csv"), "--",
            "--max-train-examples", "160", "--max-eval-examples", "32", "--num-clients", "4", "--local-steps", "2",
            "--seq-len", "24"]
    E.main(["--mode", "headline", *argv])
    record = study.read_selection(root / "selection.json")  # common.study's record
    chosen = ST.setting_of(record)
    assert record["runs"]["rounds"] == 2 and chosen["learning_rate"] in (0.05, 0.5)
    assert record["runs"]["base"] == os.path.relpath(base)  # records keep paths relative to the working directory
    assert list(record["choices"]) == ["learning_rate", "mu/iid", "mu/topic a=0.01"]
    assert list(record["choices"]["learning_rate"]["scores"]) == ["0.05", "0.5"]
    assert set(chosen["mu"]) == {"iid", "topic a=0.01"} and all(m in ("0.01", "1") for m in chosen["mu"].values())
    texts = lambda f: {tuple(r) for r in csv.reader(open(f, encoding="utf-8"))}  # noqa: E731
    assert not texts(root / "select" / "data" / "train.csv") & texts(root / "data" / "test.csv")
    assert not texts(root / "select" / "data" / "test.csv") & texts(root / "data" / "test.csv")
    runs = [json.loads(p.read_text())["args"] for p in (root / "runs").glob("*/args.json")]
    # 4 arms x 2 partitions, and the budget check: each of them (FedProx at its chosen mu) at twice the rounds
    assert sorted(a["num_rounds"] for a in runs) == [4] * 8 + [8] * 8
    assert {a["model"] for a in runs} == {os.path.relpath(base)}
    assert {a["lora_r"] for a in runs} == {8} and {(a["local_optimizer"], a["lr_schedule"]) for a in runs} == {
        ("adamw", "cosine")}
    assert {(a["partition"], a["algorithm"]) for a in runs if a["num_rounds"] == 8} == {
        (p, algo) for p in ("iid", "topic_skew") for algo in ("fedavg", "fedprox", "scaffold")}
    assert {a["learning_rate"] for a in runs} == {chosen["learning_rate"]}
    assert {a["mu"] for a in runs if a["algorithm"] == "fedprox"} == {float(m) for m in chosen["mu"].values()}
    capsys.readouterr()
    E.main(["--mode", "analyze", "--out-dir", str(root)])
    report = (root / "report.md").read_text()
    assert "### headline grid" in report and f"FedProx mu={chosen['mu']['topic a=0.01']}" in report
    assert "the model before training" in report and "at plateau" in report and "FedAvg's rate" in report
    assert "| iid | FedAvg + IFCA (4) | 1 |" in report
    fedavg = {a["num_rounds"]: json.loads((p.parent / "summary.json").read_text())["final_val_ppl"]
              for p in (root / "runs").glob("*/args.json") for a in [json.loads(p.read_text())["args"]]
              if (a["partition"], a["algorithm"], a["clustering"]) == ("iid", "fedavg", "none")}
    short, long = fedavg[4], fedavg[8]
    assert "Budget check" in report and \
        f"| iid | FedAvg | 0 | {short:.1f} | {long:.1f} | {100 * (1 - long / short):.1f} %" in report
    # side by side with another regime's grid (here a copy of these runs standing in for the from-scratch grid):
    # each arm's change is its final perplexity over FedAvg's on the same partition and seed, in percent
    scratch = tmp_path / "scratch"
    shutil.copytree(root / "runs", scratch / "runs")
    study.write_selection(scratch / "selection.json", "stand-in", "its rate", {
        "learning_rate": record["choices"]["learning_rate"]}, **record["runs"])
    E.main(["--mode", "analyze", "--out-dir", str(root), "--compare-dir", str(scratch)])
    report = (root / "report.md").read_text()
    assert "### Side by side" in report and (root / "figures" / "side_by_side.png").is_file()
    final = {(a["partition"], a["algorithm"], a["clustering"]): json.loads((p.parent / "summary.json").read_text())[
        "final_val_ppl"] for p in (root / "runs").glob("*/args.json") for a in [json.loads(p.read_text())["args"]]
        if a["num_rounds"] == 4}   # the grid's runs, not their twice-the-rounds twins
    change = 100 * (final[("iid", "scaffold", "none")] / final[("iid", "fedavg", "none")] - 1)
    scaffold = final[("iid", "scaffold", "none")]
    # and a topic-skewed arm's change vs the same arm on iid shards
    topic = final[("topic_skew", "scaffold", "none")]
    split = 100 * (topic / scaffold - 1)
    for regime in ("from scratch", "pretrained + LoRA"):
        assert f"| {regime} | iid | SCAFFOLD | 1 | {scaffold:.1f} | {change:+.1f}" in report   # n: the grid's 1 seed
        row = next(line for line in report.splitlines() if line.startswith(f"| {regime} | topic a=0.01 | SCAFFOLD |"))
        assert row.split(" | ")[6].startswith(f"{split:+.1f}")


def test_calibrate_diverging_arm_is_eight_times_the_grids_rate():
    """The built-to-diverge arm scales with the rate the grid runs at (the pretrained regime selects its own),
    and the detector table still counts it as the diverging class."""
    for lr, want in ((1.0, "8"), (0.05, "0.4")):
        (part, arm, flags), = [x for x in ST.arms("calibrate", lr=lr) if "no clipping" in x[1]]
        assert flags[flags.index("--learning-rate") + 1] == want and arm == f"FedAvg lr {want}, no clipping"
        assert RP.arm_of({"partition": "iid", "algorithm": "fedavg", "learning_rate": float(want),
                         "max_grad_norm": 0.0}, lr=lr) == (part, arm)
        assert ST.KNOWN["diverging (8x the rate, no clipping)"](part, arm)
        assert not ST.KNOWN["diverging (8x the rate, no clipping)"]("iid", "FedAvg")


def test_calibrate_arms_built_to_drift_and_to_oscillate():
    """Drift by construction: 8x the local steps for an eighth of the rounds (about the same local steps in all;
    each client fits its own texts for several epochs a round), on iid and on topic shards; oscillation by
    construction: one topic-skewed client per round with 8x the local steps. Each lands in its own detector class."""
    arms = {(p, a): parse_with_config(train.get_args_parser(), [*ST.STUDY, *ST.rounds_flags(60), *f], {})
            for p, a, f in ST.arms("calibrate", rounds=60)}
    for part, arm, cls, want in (
            ("iid", "FedAvg, 64 local steps, 7 rounds", "drifting by construction (iid, 8x the local steps)",
             (64, 7, 1.0)),
            ("topic a=0.01", "FedAvg, 64 local steps, 7 rounds",
             "drifting by construction (topic skew, 8x the local steps)", (64, 7, 1.0)),
            ("topic a=0.01", "FedAvg, 1 client/round, 64 local steps, 30 rounds",
             "oscillating by construction (topic skew, 1 client/round, 8x the local steps)", (64, 30, 0.1))):
        a = arms[(part, arm)]
        assert (a.local_steps, a.num_rounds, a.participation_rate) == want and a.eval_every == 1
        assert RP.arm_of(vars(a), rounds=60) == (part, arm)
        assert [k for k, is_ in ST.KNOWN.items() if is_(part, arm)] == [cls]


def test_grid_steps_come_from_the_runs_at_the_grids_rounds():
    """Calibrate's 64-step arms outnumber the rest of a calibrate-only grid; the grid's local steps (and so every
    other arm's label) still come from its runs at the grid's rounds."""
    runs = [{"args": {"num_rounds": 60, "local_steps": 8}}] * 2 + [{"args": {"num_rounds": 7, "local_steps": 64}}] * 6
    assert RP.grid_steps(runs, 60) == 8 and RP.grid_steps(runs, 7) == 64 and RP.grid_steps([], 60) == ST.LOCAL_STEPS
    fedavg = {"partition": "iid", "algorithm": "fedavg", "num_clients": 10, "learning_rate": 0.01}
    groups = RP.by_arm([{"args": {**fedavg, "num_rounds": 60, "local_steps": 8}},
                       *[{"args": {**fedavg, "num_rounds": 7, "local_steps": 64}}] * 3], 60, 0.01)
    assert sorted(groups) == [("iid", "FedAvg"), ("iid", "FedAvg, 64 local steps, 7 rounds")]


def test_a_budget_twin_is_no_arm_of_the_split_family():
    """The budget check's twin (the same arm at twice the rounds) checks a plateau; "Does the split hurt" leaves it
    out, so it does not enlarge the table's Holm family. An arm run longer for another reason stays."""
    groups = {(p, a): [] for p in ("iid", "topic a=0.01")
              for a in ("FedAvg", "FedAvg, 120 rounds", "FedAvg, 2 of 10 clients/round, 300 rounds")}
    assert RP.is_twin(("iid", "FedAvg, 120 rounds"), groups, 60)
    assert not RP.is_twin(("iid", "FedAvg, 2 of 10 clients/round, 300 rounds"), groups, 60)
    assert not RP.is_twin(("iid", "FedAvg, 120 rounds"), groups, 40)   # not twice this grid's rounds
    assert not RP.is_twin(("iid", "FedAvg"), groups, 60)
