"""llm_noniid/detector_study.py on synthetic runs: the choice rule reads the calibration runs only, the held-out rates
count hits and false alarms by class with Wilson intervals, overlapping seeds are refused, and the planned runs are
the pretrained grid's arms of each known class at new seeds."""
from __future__ import annotations

import dataclasses

import pytest

from common import cli
from common import stats as S
from common.errors import UsageError
from llm_noniid import detector_study as DS
from llm_noniid import failure, train
from llm_noniid import studies as ST

DRIFT_IID, DRIFT_TOPIC, ONE = DS.TARGETS["client_drift"][0], DS.TARGETS["client_drift"][1], \
    DS.TARGETS["slow_convergence"][0]


def run(seed: int, gap: float, fall: float = 0.5) -> dict:
    """A run of 12 evaluations: the validation loss falls by ``fall`` nats from 5 (no divergence, no oscillation)
    and the clients' loss sits ``gap`` nats below it."""
    val = [5.0 - fall * i / 11 for i in range(12)]
    return {"args": {"seed": seed}, "summary": {},
            "rows": [{"round": i + 1, "val_loss": v, "train_loss": v - gap} for i, v in enumerate(val)]}


def classes(seeds, healthy_gap=0.35, drift_gap=0.75) -> dict:
    return {DS.HEALTHY: [run(s, healthy_gap) for s in seeds], DRIFT_IID: [run(s, drift_gap) for s in seeds],
            DRIFT_TOPIC: [run(s, drift_gap) for s in seeds], ONE: [run(s, 0.1, fall=0.05) for s in seeds]}


def test_the_rule_takes_the_most_sensitive_value_that_flags_no_healthy_run():
    assert DS.choose(classes([0, 1]), "client_drift") == DS.Choice("client_drift", 0.4, False)
    assert DS.choose(classes([0, 1], healthy_gap=0.45), "client_drift").value == 0.5
    # nothing healthy above the smallest gap tried: the sweep's edge, said so
    assert DS.choose(classes([0, 1], healthy_gap=0.1), "client_drift") == DS.Choice("client_drift", 0.3, True)
    assert DS.choose(classes([0, 1], healthy_gap=0.9), "client_drift").value is None
    # slow convergence flags more the larger its least improvement: 0.1 first; a healthy run improving 8 %
    # (0.4 of 5 nats within 10 evaluations) rules it out, the 1 % improver is flagged at 0.05
    c = classes([0, 1])
    assert DS.choose(c, "slow_convergence").value == 0.05 and DS.count(c[ONE], "slow_convergence", 0.05) == (2, 2)
    with pytest.raises(UsageError, match="no healthy run"):
        DS.choose({DRIFT_IID: c[DRIFT_IID]}, "client_drift")


def test_the_sweeps_lead_with_their_most_sensitive_value():
    flags = {m: [DS.count(sum(classes([0], h, 1.0).values(), []), m, v)[0] for v in failure.SWEEPS[m].values]
             for m, h in (("client_drift", 0.55), ("slow_convergence", 0.35))}
    assert all(a >= b for f in flags.values() for a, b in zip(f, f[1:])) and all(f[0] > f[-1] for f in flags.values())


def test_rates_count_hits_and_false_alarms_by_class():
    c = classes([3, 4, 5])
    c[DS.HEALTHY][0] = run(3, 0.7)  # one healthy run drifting: a false alarm at 0.5
    c["diverging (8x the rate, no clipping)"] = [run(3, 0.9)]  # another class the drift detector flags
    assert DS.rates(c, "client_drift", 0.5) == {"hit": (6, 6), "healthy": (1, 3), "other": (1, 4)}
    assert DS.rates(c, "client_drift", 0.95) == {"hit": (0, 6), "healthy": (0, 3), "other": (0, 4)}


def test_held_out_rates_never_choose_and_overlapping_seeds_are_refused():
    cal, new = classes([0, 1, 2]), classes([3, 4])
    new[DS.HEALTHY][1] = run(4, 0.6)  # a held-out healthy run above the chosen 0.4 and 0.5: a false alarm, no choice
    text = DS.table(cal, new)
    drift = [line for line in text.splitlines() if line.startswith("| client_drift |")]
    assert len(drift) == 2 and "0.4 (chosen)" in drift[0] and "0.5 (the default, not the rule's choice)" in drift[1]
    assert "6/6 of its classes, 0/3 healthy" in drift[0]  # the calibration runs, as chosen
    assert S.fmt_proportion(4, 4) in drift[0] and S.fmt_proportion(1, 2) in drift[0]  # held out: hits, healthy
    assert "| oscillating (topic skew, 1 client/round) | slow_convergence | 3 | 2 |" in text
    assert "client_drift flags 4/4 of its classes' runs (on the calibration runs 6/6), 1/2 healthy and 0/2" in text
    assert "on the held-out runs, slow_convergence flag every run of their classes and no other run;" in text
    with pytest.raises(UsageError, match="overlap the calibration seeds"):
        DS.table(cal, classes([2, 3]))


def plan(tmp_path, *extra):
    args = DS.get_args_parser().parse_args(["--out-dir", str(tmp_path), "--seeds", "3", "4", *extra])
    return DS.plan(args, prepare=False)


def test_the_planned_runs_are_the_pretrained_grids_arms_of_each_class(tmp_path):
    jobs = plan(tmp_path)
    chosen = DS.selection()
    got = {}
    for job in jobs:
        a = vars(cli.parse(train.get_args_parser(), job.argv))
        assert a["seed"] in (3, 4) and a["lora_r"] == 8 and a["lr_schedule"] == "cosine"
        (cls,) = DS.classify([{"args": a}], ST.PRETRAINED_ROUNDS, chosen["learning_rate"])
        got.setdefault(cls, []).append(job.name)
    assert {c: len(v) for c, v in got.items()} == {DS.HEALTHY: 6, **{c: 2 for t in DS.TARGETS.values() for c in t}}
    assert len(jobs) == 2 * len(DS.ARMS)
    only = plan(tmp_path, "--arms", "fedavg", "diverging")
    assert sorted(j.name for j in only) == sorted(j.name for j in jobs if j.name.startswith(
        ("fedavg_iid_k10_p1_lr0.01_j8", "fedavg_iid_k10_p1_lr0.08")))
    assert len(only) == 4


def test_calibration_seeds_are_refused_as_new_seeds(capsys):
    with pytest.raises(SystemExit) as stop:   # as the script's __main__ runs it: one line, exit 2
        cli.run(DS.main, ["--seeds", "2", "3", "--dry-run"])
    assert stop.value.code == 2 and "seeds 0, 1, 2 are the calibration runs" in capsys.readouterr().err


def test_the_chosen_thresholds_are_thresholds():
    for mode, sweep in failure.SWEEPS.items():
        assert sweep.key in vars(failure.DEFAULT) and mode in failure.MODES
        assert getattr(DS.at(mode, sweep.values[-1]), sweep.key) == sweep.values[-1]
        assert DS.at(mode, sweep.values[0]) == dataclasses.replace(failure.DEFAULT, **{sweep.key: sweep.values[0]})
    assert set(DS.TARGETS) == set(failure.MODES) and all(c in ST.KNOWN for t in DS.TARGETS.values() for c in t)
