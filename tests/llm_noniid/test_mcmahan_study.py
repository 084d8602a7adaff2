"""llm_noniid/mcmahan_study.py: the arms are shakespeare.py runs that parse (FedSGD is E = 1, B = inf), rounds to
target counted at the first evaluation that reaches it, and the table (llm_noniid/results.py) from a fabricated
record set: the paper's rows beside the arms, speed-ups paired by seed, a still-improving arm marked."""
from __future__ import annotations

import json
import math

from common import cli
from llm_noniid import mcmahan_study as MS
from llm_noniid import results as R
from llm_noniid import shakespeare as SH


def test_every_arm_is_a_shakespeare_run_that_parses_and_fedsgd_is_one_full_batch_epoch():
    args = MS.get_args_parser().parse_args(["--data-dir", "d", "--out-dir", "o", "--seeds", "0", "1"])
    plan = MS.plan(args)
    assert [j.name for j in plan[:len(MS.ARMS)]] == [f"{a}_s0" for a in MS.ARMS] and len(plan) == 2 * len(MS.ARMS)
    parsed = {}
    for job in plan:
        assert job.script == "llm_noniid.shakespeare"
        a = cli.parse(SH.get_args_parser(), job.argv)
        SH.check_args(a)
        parsed[job.name] = a
    sgd = parsed["fedsgd_s1"]
    assert (sgd.local_epochs, sgd.batch_size, sgd.seed) == (1, 0, 1) and sgd.max_client_samples == MS.CAP
    for name, a in parsed.items():  # every arm shares the model, clients, cohort and evaluation; only E, B, rate differ
        assert (a.hidden, a.clients_per_round, a.max_eval_samples, a.eval_split) == (
            MS.HIDDEN, MS.COHORT, MS.EVAL_SAMPLES, "test"), name
        arm = MS.ARMS[name.rsplit("_s", 1)[0]]
        assert (a.local_epochs, a.batch_size, a.learning_rate, a.rounds) == (arm.epochs, arm.batch, arm.lr,
                                                                             arm.rounds)


def test_rounds_to_target_is_the_first_evaluation_at_or_above_it():
    curve = [(10, 20.0), (20, 29.99), (30, 30.0), (40, 28.0), (50, 35.0)]
    assert R.rounds_to(curve, 30) == 30 and R.rounds_to(curve, 35) == 50 and R.rounds_to(curve, 35.1) is None
    assert R.rounds_to(curve, 0) == 10 and R.rounds_to([], 1) is None


def fabricate(folder, name: str, seed: int, e: int, b: int, every: int, curve: list[float]) -> None:
    run = folder / f"{name}_s{seed}"
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"args": {"seed": seed, "local_epochs": e, "batch_size": b,
                                                        "learning_rate": 2.0, "max_client_samples": 50}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"round": every * (i + 1), "test_accuracy": a}) + "\n"
                                               for i, a in enumerate(curve)))
    (run / "summary.json").write_text(json.dumps({
        "final_test_accuracy": curve[-1], "rounds_done": every * len(curve), "majority_accuracy": 0.16,
        "uniform_accuracy": 1 / 82, "train_samples": 40 * 1000, "clients": 1000,
        "round_seconds": 0.5 * every * len(curve)}))


def test_the_table_sets_the_paper_beside_the_arms_and_marks_a_still_improving_arm(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "MCMAHAN_TARGET", 30)
    for s in range(3):  # FedSGD reaches 30 % at evaluation 4, 5, 6 (rounds 40, 50, 60) and keeps climbing
        fabricate(tmp_path, "fedsgd", s, 1, 0, 10, [0.1, 0.2, 0.25] + [0.25] * s + [0.3, 0.32, 0.34, 0.36, 0.38])
        # E = 1, B = 10: 30 % at round 10 in every seed, then flat: at its plateau
        fabricate(tmp_path, "fedavg_e1_b10", s, 1, 10, 5, [0.2, 0.3, 0.4, 0.41, 0.41, 0.405, 0.41, 0.409])
    # E = 5, B = 10: seed 0 flat after its rise, seed 1 too short to tell (its last ties its best), seed 2 never
    # reaches the target; seed 3 reaches it, then falls below the majority character
    for s, c in enumerate([[0.3, 0.4, 0.42, 0.42, 0.418, 0.421, 0.419, 0.42], [0.2, 0.3, 0.42, 0.42],
                           [0.1, 0.12, 0.14, 0.16],
                           [0.3, 0.4, 0.05, 0.03]]):
        fabricate(tmp_path, "fedavg_e5_b10", s, 5, 10, 2, c)
    table = R.mcmahan_table(str(tmp_path))
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")]
            for line in table.split("\n")[2:8]}
    sgd, e1, e5 = rows[("1", "∞")], rows[("1", "10")], rows[("5", "10")]
    assert sgd[2:5] == ["1", "3,906 (2,488)", "FedSGD"] and e1[2:5] == ["7.4", "164 (460)", "23.8x"]
    assert e5[4] == "95.3x" and rows[("5", "50")][5] == "not run" and rows[("1", "50")][3] == "549 (1,635)"
    assert sgd[8] == "50 ± 10 (40, 50, 60)" and sgd[13] == "0/3 (3 still improving)" and sgd[12] == "0.50"
    assert e1[5] == "4.0" and e1[8] == "10 ± 0 (10, 10, 10)" and e1[13] == "3/3"
    g = math.exp(sum(math.log(x) for x in (4, 5, 6)) / 3)
    assert e1[9].startswith(f"{g:.1f}x [") and e1[9].endswith("(n=3)")
    assert e5[8] == "3 ± 1 (2, 4, > 8, 2)"
    assert e5[13] == "1/4 (1 still improving) (1 not checked) (1 fell to the majority character or below)"
    assert e5[9].startswith(f"{math.sqrt(20 * 12.5):.1f}x [")  # seeds 0, 1: 40 / 2 and 50 / 4 (no FedSGD seed 3)
    assert "majority character 16.0 %" in table and "uniform 1.2 %" in table
