"""mamba_fl/results_synthetic.py on small records in run_grid.py's format (args.json, summary.json, metrics.jsonl):
the study's arms are the grid's plan, each verdict is corrected over the family the study declares, an arm above
the unigram leaves its family, the plateau and compute warnings come from the records, and ``--show --records``
writes the blocks from another folder."""
from __future__ import annotations

import json

import pytest

from common import results as RS
from common import stats
from mamba_fl import results_synthetic as SY
from mamba_fl import run_grid, studies

FOLDER = "mamba_fl/results/synthetic_grid"
# final perplexity per token by arm (seed s adds NOISE[s]); fedavgm ends above the unigram (251) in every seed
FINAL = {"central": 22.8, "central-b4": 29.0, "fedavg": 28.4, "fedfisher": 28.9, "fedentropy": 30.0,
         "fedmom-ema": 73.0, "fedavgm": 4000.0, "fedavg-reset": 53.0, "fedavg-sgd": 70.0, "fedavg-lu8": 28.6,
         "central-long": 22.7, "fedavg-long": 26.5, "fedfisher-long": 24.7}
TOPIC = {"fedavg": 34.3, "fedfisher": 33.0, "fedentropy": 380.0, "fedmom-ema": 185.0}  # topic shards
NOISE = (0.0, 0.3, -0.2)
TIME = """mamba_fl grid: 90 runs: 18 done before, 72 to run
\tCommand being timed: "python mamba_fl/run_grid.py --jobs 2"
\tPercent of CPU this job got: 97%
\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:35:06
"""


def _write(root, arm: str, seed: int) -> None:
    """One run's records: a central arm's best evaluation before its last (at its plateau), every other arm's last
    (still improving); central-b4 trains on 6,148 sequences (4 % short of FedAvg's 6,400)."""
    kind, layers, shard = arm.split("_")
    base = TOPIC.get(kind, FINAL[kind]) if shard == "topic" and not kind.endswith("long") else FINAL[kind]
    final = base * (1.02 if layers == "L2" else 1.0) + NOISE[seed] + 0.1 * ((seed * len(arm)) % 3)  # seeds differ
    central = kind.startswith("central")
    curve = [final * 3, final * 2, final * 0.98, final] if central else [final * 3, final * 2, final * 1.2, final]
    steps = {"central": 400, "central-b4": 100, "central-long": 1200}.get(kind)
    sequences = {"central-b4": 6148, "fedavg-lu8": 6144}.get(kind, 19200 if kind.endswith("long") else 6400)
    summary = {"final_val_ppl": final, "final_val_ppl_word": final * 1.1, "unigram_ppl": 251.1,
               "unigram_ppl_word": 302.3, "uniform_ppl": 2566.0, "optimal_ppl_word": 9.1, "eval_blocks": 171,
               "train_tokens": 64 * sequences, "wall_seconds": 60.0, "cpu_seconds": 45.0, "load_start": 1.5,
               "load_end": 2.25, **({"steps_done": steps} if central else
                                    {"rounds_done": 300 if kind.endswith("long") else 100})}
    args = {"seed": seed, "sequence_length": 64, "num_clients": 4, "batch_size": 64 if kind == "central-b4" else 16}
    extra = {"fedentropy": "entropy_weight_ratio", "fedfisher": "fisher_eps_share"}.get(kind)
    run = root / f"{arm}_s{seed}"
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"args": args}), encoding="utf-8")
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    rows = [{"round": 10 * (i + 1), "val_ppl": v} | ({extra: 0.25 + 0.01 * i} if extra else {})
            for i, v in enumerate(curve)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _records(folder) -> None:
    """Every arm of the study, 3 seeds, in ``folder/runs``; the grid's /usr/bin/time report in ``folder``."""
    for arm in SY.SYNTHETIC.arms:
        for seed in SY.SYNTHETIC.seeds:
            _write(folder / "runs", arm.name, seed)
    (folder / "time.txt").write_text(TIME, encoding="utf-8")


@pytest.fixture
def fresh():
    """No redirect and no cached records before and after the test."""
    RS.REDIRECTS.clear()
    SY.grid.cache_clear()
    SY.findings.cache_clear()
    yield
    RS.REDIRECTS.clear()
    SY.grid.cache_clear()
    SY.findings.cache_clear()


@pytest.fixture
def records(tmp_path, fresh):
    """``_records`` read in place of the committed records."""
    _records(tmp_path)
    RS.REDIRECTS[FOLDER] = tmp_path
    return tmp_path


def test_the_studys_arms_are_the_grids_runs():
    planned = {n for n, _, _ in run_grid.grid_plan(SY.DEFAULTS)}
    assert len(planned) == 90
    assert {f"{a.name}_s{s}" for a in SY.SYNTHETIC.arms for s in SY.SYNTHETIC.seeds} == planned
    b4 = SY.SYNTHETIC.arm("central-b4_L1_synthetic")
    assert b4.script == "mamba_fl.central" and "--seed" not in b4.flags and "64" in b4.flags
    assert SY.SYNTHETIC.compute == "equal samples"
    assert {f: len(c) for f, c in SY.SYNTHETIC.families().items()} == \
        {"gap": 9, "aggregators": 17, "client optimizer": 3}


def test_each_verdict_is_corrected_over_its_declared_family(records):
    """The claims are those of the family's comparisons corrected together apart from the study
    (``common.results.family``); FedAvgM and FedEntropy on topic shards, above the unigram in every seed, leave the
    aggregators' family."""
    for family, comparisons in SY.SYNTHETIC.families().items():
        pairs = {(c.arm, c.reference): (SY.compared(c.arm), SY.compared(c.reference)) for c in comparisons
                 if SY.compared(c.arm)}
        expected = RS.family(pairs)
        assert {k: (SY.findings()[k].paired, SY.findings()[k].claim) for k in pairs} == expected
        assert SY.family_size(family) == len(pairs)
    assert SY.family_size("aggregators") == 11 and SY.family_size("gap") == 9
    assert ("fedavgm_L1_contiguous", "fedavg_L1_contiguous") not in SY.findings()
    assert SY.said("fedavgm_L1_topic", "fedavg_L1_topic") == "not compared (3/3 end above the unigram)"
    assert "over 9)" in SY.findings()["central_L1_synthetic", "fedavg_L1_topic"].claim


def test_the_headline_table_states_the_plateau_the_compute_and_the_families(records):
    text = SY.synthetic_table()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    central = rows["central (400 steps of 16 blocks)"]
    assert "22.9 ± 0.3 |" in central and "still improving" not in central  # its best evaluation was not its last
    fedavg = rows["FedAvg (100 rounds of 4 clients' 16-block steps)"]
    assert fedavg.count("3/3 still improving") == 2
    b4 = rows["central, 4x batch − FedAvg"]
    assert b4.count("unmatched compute (equal samples: 6.15e+03 vs 6.4e+03)") == 2  # 4 % fewer sequences
    assert "over 9" in b4 and "over 11" in rows["FedFisher − FedAvg"]
    assert "unigram 251.1 / token (302.3 / word), uniform 2566 / token, the source's optimum 9.10 / word" in text
    assert "FedAvg 6,400 training sequences, central 6,400, central-b4 6,148" in text
    assert "\u2212" in b4 and " -" not in b4.replace(" − ", "")  # prose's minus sign


def test_the_share_of_the_gap_comes_from_the_remainders_simultaneous_interval(records):
    fed, b4, central = (SY.values(studies.synthetic_name(a, 1, "topic")) for a in ("fedavg", "central-b4", "central"))
    part = stats.explained(stats.paired(fed, b4), stats.paired(fed, central).mean, 9)
    assert 0 < part < 1 and SY.share(1, "topic") == part
    assert SY.share(1, "contiguous") == 1  # central-b4 ends behind FedAvg there
    text = SY.synthetic_gap()
    assert f"account for all of the gap on contiguous shards and at least {100 * part:.0f} % of the gap on topic " \
        "shards." in text
    assert "Holm over the study's 9 gap comparisons" in text and "With 3x the rounds" in text
    assert "FedAvg's runs, the reference: 3/3 still improving at both depths on both shards, 3/3 still improving " \
        "with the longer budget" in text


def test_a_share_not_resolved_is_said_so(monkeypatch):
    monkeypatch.setattr(SY, "share", lambda layers, shard: {"contiguous": 0.0, "topic": 0.4}[shard])
    assert SY.accounted(2) == ("The fewer sequential updates account for at least 40 % of the gap on topic shards; "
                               "how much on contiguous shards is not resolved (what they leave reaches the whole gap).")
    monkeypatch.setattr(SY, "share", lambda layers, shard: 0.0)
    assert SY.accounted(2).startswith("How much of the gap the fewer sequential updates account for on contiguous "
                                      "and topic shards is not resolved")


def test_the_arms_block_names_what_beats_fedavg_after_holm(records):
    text = SY.synthetic_arms()
    assert "over 11" in text and "over 3" in text and "not compared (3/3 end above the unigram)" in text
    # FedFisher on topic shards: 33.0 against 34.3 in every seed, a difference Holm keeps over 11
    fisher = SY.findings()["fedfisher_L1_topic", "fedavg_L1_topic"]
    assert "p_Holm" in fisher.claim and "FedFisher at 1 layer on topic shards" in SY.below_fedavg()
    assert "below FedAvg after it: FedFisher at 1 layer on topic shards;" in text
    assert "FedFisher at 1 layer on topic shards, longer budget" in SY.below_fedavg()
    assert "unmatched compute" in SY.said("fedavg-lu8_L1_contiguous", "fedavg_L1_contiguous")
    line = SY.study_synthetic()
    assert line.startswith("1 layer, equal samples (6,400 training sequences)")
    assert line.endswith(f"3 of the 11 aggregator comparisons below FedAvg after Holm ({', '.join(SY.below_fedavg())})")


def test_the_full_tables_and_the_wall_time(records):
    text = SY.synthetic_tables()
    assert text.count("| FedAvg (the reference) | ") == 5
    assert text.count("| FedAvg, longer budget (the reference) |") == 1
    for arm, ref in (("fedfisher_L2_topic", "fedavg_L2_topic"), ("central-b4_L1_synthetic", "fedavg_L1_topic")):
        assert SY.minus(SY.findings()[arm, ref].claim) in text  # study_report.table's claims are the blocks'
    entropy = next(line for line in text.splitlines() if line.startswith("| FedEntropy"))
    assert "max/min weight 0.28, 0.28, 0.28 (last round, per seed)" in entropy
    assert "floor decides 28.0 % of coordinates (last round)" in text
    assert "Families (Holm): gap, 9 comparisons; aggregators, 11 comparisons; client optimizer, 3 comparisons" in text
    assert SY.synthetic_time() == (
        "90 runs, one thread each: their own clocks (summary.json) add up to 90.0 min of wall time and 67.5 min of "
        "CPU, the 1-minute load average 1.50–2.25 at their starts and ends. The command that ran the last 72 of them "
        "(18 done before it), 2 at a time, took 95.1 min (`/usr/bin/time -v`: 97% CPU; time.txt). Their records: "
        f"270 files, {sum(f.stat().st_size for f in (records / 'runs').rglob('*') if f.is_file()) / 1e6:.1f} MB")


def test_show_writes_the_blocks_from_your_runs(tmp_path, fresh, capsys):
    """``python -m common.results --show NAME --records COMMITTED=YOURS``: the block of another folder's runs."""
    _records(tmp_path)
    assert RS.main(["--show", "mamba_fl.study-synthetic", "--records", f"{FOLDER}/runs={tmp_path / 'runs'}"]) == 0
    assert "1 layer, equal samples (6,400 training sequences)" in capsys.readouterr().out
