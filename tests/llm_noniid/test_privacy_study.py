"""llm_noniid/privacy_study.py: the plan (every arm the same mechanism, epsilon = inf its noiseless twin) and the
privacy-utility table from a fabricated record set (llm_noniid/results.py), the plateau rule included."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from common import stats
from common.errors import UsageError
from llm_noniid import privacy_study as PS
from llm_noniid import results as R
from llm_noniid import studies


def fabricate(folder, name: str, seed: int, curve: list[float], eps: float, noise: float, n: int) -> None:
    run = folder / name
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"args": {"seed": seed}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"round": 10 * (i + 1), "test_accuracy": a}) + "\n"
                                               for i, a in enumerate(curve)))
    (run / "summary.json").write_text(json.dumps({
        "final_test_accuracy": curve[-1], "dp_epsilon": eps, "dp_delta": 1 / n ** 1.1, "dp_noise": noise,
        "dp_expected_cohort": 20.0, "dp_rate": 20 / n, "rounds_done": 10 * len(curve), "majority_accuracy": 0.16,
        "uniform_accuracy": 1 / 82, "clients": n, "trainable_params": 10000,
        "wall_seconds": 3.0 * 10 * len(curve)}))


def test_the_table_pairs_each_epsilon_with_its_noiseless_twin_and_flags_a_still_improving_run(tmp_path):
    for s in range(3):
        fabricate(tmp_path, f"roles_epsinf_s{s}", s, [0.20, 0.30, 0.34 + 0.01 * s, 0.34], math.inf, 0.0, 1166)
        # flat over its last two thirds, a last evaluation below its best: at its plateau
        fabricate(tmp_path, f"roles_eps3_s{s}", s, [0.15, 0.20, 0.25, 0.25, 0.24, 0.25, 0.245, 0.24 + 0.004 * s],
                  2.999, 0.9, 1166)
        # seed 0 still climbing, seed 1 at its plateau, seed 2 ends below the majority character
        late = [[0.10, 0.12, 0.14, 0.19], [0.10, 0.16, 0.17, 0.168, 0.17, 0.165], [0.10, 0.16, 0.17, 0.155]][s]
        fabricate(tmp_path, f"synthetic10k_eps1_s{s}", s, late, 0.998, 0.8, 10000)
        fabricate(tmp_path, f"synthetic10k_epsinf_s{s}", s, [0.2, 0.3, 0.35, 0.35], math.inf, 0.0, 10000)
        fabricate(tmp_path, f"roles-lr1_epsinf_s{s}", s, [0.2, 0.3, 0.4, 0.4 + 0.001 * s], math.inf, 0.0, 1166)
    table = R.privacy_table(str(tmp_path))
    lines = table.split("\n")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in lines[2:7]}
    assert "| reference | – |" in rows[("1,166 roles, server rate 1", "∞ (δ 4.2e-04)")]
    assert rows[("10,000 synthetic", "1.00 (δ 4.0e-05)")].split("|")[8].strip() == "–"  # no own-rate run there
    eps3 = rows[("1,166 roles", "3.00 (δ 4.2e-04)")]
    d = stats.paired({s: 24 + 0.4 * s for s in range(3)}, {s: 34.0 for s in range(3)})
    assert f"\u2212{-d.mean:.1f} [\u2212{-d.lo:.1f}, \u2212{-d.hi:.1f}]" in eps3 and "p_Holm" in eps3
    assert eps3.count("p_Holm") == 2 and "| reference |" in rows[("1,166 roles", "∞ (δ 4.2e-04)")]
    assert "| 0.9 | 20 (q 0.017) | 40 |" in eps3 and "24.4 ± 0.4 (n=3)" in eps3 and "| 3/3 |" in eps3
    assert "reference" in rows[("1,166 roles", "∞ (δ 4.2e-04)")]
    assert "1/3 (1 still improving) (1 not above the majority character)" in rows[("10,000 synthetic",
                                                                                    "1.00 (δ 4.0e-05)")]
    # seed 0's 4 evaluations end level with the best: too few for the trend check; seeds 1, 2 end at their best
    assert rows[("1,166 roles, server rate 1", "∞ (δ 4.2e-04)")].endswith("| 0/3 (2 still improving) (1 not checked) |")
    assert "Holm over the table's 4 comparisons" in table and "majority character 16.0 %" in table
    said = R.privacy_findings(str(tmp_path))  # noise norm z sqrt(d) / cohort = 0.9 x 100 / 20 in units of C
    assert "1,166 roles (N = 1,166" in said and "4.5 at ε = 3 times C" in said and "3/3 at ε = 3, 3/3 at ε = ∞" in said
    assert "10,000 synthetic (N = 10,000" in said and "4.0 at ε = 1" in said and "2/3 at ε = 1" in said


def test_the_mcmahan_tables_rule_is_common_plateaus_with_the_trend_check():
    rule = studies.MCMAHAN_PLATEAU
    assert (rule.schedule, rule.trend_z, rule.direction) == ("constant", studies.MCMAHAN_Z, "max")

    def state(curve):
        return rule.judge(curve).state

    assert state([10, 20, 30]) == "still improving" and state([10, 20, 21, 22.1, 22.0, 23.0]) == "still improving"
    assert state([20, 21, 22, 23, 24, 25, 26, 27, 28, 24]) == "still improving"   # a rise, one dip of 4 at the end
    assert state([30, 31, 30.5, 31.2, 30.8, 31.0, 30.6, 31.1, 30.9]) == "at plateau"   # flat, best before the last
    assert state([10, 30, 30.2, 29.9]) == "not checked"   # too few evaluations to tell a trend from a dip


def test_the_plateau_rule_is_common_plateau_and_a_noiseless_run_is_judged_by_its_continuation(tmp_path):
    """privacy_study.PLATEAU: a noiseless run is judged by the same run continued (at plateau when the continuation
    ends within 0.5 sd of the seeds above it, though its best is its last), a run without one by where its best
    evaluation is and by its trend (at plateau when its best is before its last and its last two thirds are flat),
    and a private arm by the same epsilon at the next longer budget (a new run): at plateau when it ends no higher."""
    for s in range(3):
        fabricate(tmp_path, f"roles_epsinf_s{s}", s, [0.16, 0.17, 0.18, 0.20 + 0.01 * s], math.inf, 0.0, 1166)
        tail = [0.205, 0.199, 0.203, 0.200, 0.204, 0.198, 0.203, 0.201]   # flat after round 40, noisy
        fabricate(tmp_path, f"roles_epsinf_R120_s{s}", s, [0.16, 0.17, 0.18, 0.20 + 0.01 * s]
                  + [a + 0.01 * s for a in tail], math.inf, 0.0, 1166)
        fabricate(tmp_path, f"roles_eps3_s{s}", s, [0.16, 0.17, 0.18, 0.19 + 0.01 * s], 2.999, 0.9, 1166)
        fabricate(tmp_path, f"roles_eps8_s{s}", s, [0.16, 0.17, 0.18, 0.19 + 0.01 * s], 7.999, 0.5, 1166)
        # epsilon 8 over 120 rounds (a new run, more noise a round) ends no higher than over 40: 40 is its plateau
        fabricate(tmp_path, f"roles_eps8_R120_s{s}", s, [0.16, 0.17, 0.18, 0.185, 0.188, 0.19 + 0.01 * s],
                  7.999, 0.6, 1166)
    table = R.privacy_table(str(tmp_path))
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[1:5:3]): line for line in table.split("\n")
            if line.startswith("| 1,166")}
    assert rows[("∞ (δ 4.2e-04)", "40")].endswith("| 3/3 |")  # its best is its last, its continuation no higher
    assert rows[("∞ (δ 4.2e-04)", "120")].endswith("| 3/3 |")  # best before the last, the last two thirds flat
    assert rows[("3.00 (δ 4.2e-04)", "40")].endswith("| 0/3 (3 still improving) |")
    assert rows[("8.00 (δ 4.2e-04)", "40")].endswith("| 3/3 |")  # its best is its last, its longer budget no higher
    assert rows[("8.00 (δ 4.2e-04)", "120")].endswith("| 0/3 (3 still improving) |")  # its own curve: best last
    assert "an arm with a longer budget is judged by it" in table
    said = R.privacy_findings(str(tmp_path))
    assert ("Runs at their plateau by the rule (a budget judged by the same seed at the next longer one, the longest "
            "by its own curve): ε = 3: 0/3 at 40; ε = 8: 3/3 at 40, 0/3 at 120; ε = ∞: 3/3 at 40, 3/3 at 120.") in said
    assert "ε = 3 is at its plateau at no budget" in said
    d = stats.paired({s: 19.0 + s for s in range(3)}, {s: 20.0 + s for s in range(3)})
    assert (f"ε = 8 from 40 rounds (20.0 %), against ε = ∞ (at its plateau) −{-d.mean:.1f}".replace("-", "\u2212")
            in said)
    tail = [0.245, 0.238, 0.243, 0.239, 0.244, 0.237, 0.242, 0.239, 0.243, 0.238, 0.241, 0.240]   # flat, noisy
    for s in range(3):  # continuations 3 points higher: 40 and 120 rounds still improving, 480 by its best and trend
        shutil.rmtree(tmp_path / f"roles_epsinf_R120_s{s}")
        fabricate(tmp_path, f"roles_epsinf_R120_s{s}", s, [0.16, 0.17, 0.18, 0.20 + 0.01 * s, 0.22, 0.21 + 0.01 * s],
                  math.inf, 0.0, 1166)
        fabricate(tmp_path, f"roles_epsinf_R480_s{s}", s, [0.16, 0.17, 0.18, 0.20 + 0.01 * s, 0.22, 0.21 + 0.01 * s]
                  + [a + 0.01 * s for a in tail], math.inf, 0.0, 1166)
    table = R.privacy_table(str(tmp_path))
    inf = [line for line in table.split("\n") if line.startswith("| 1,166 roles | ∞")]
    assert [line.rsplit("|", 2)[1].strip() for line in inf] == ["0/3 (3 still improving)"] * 2 + ["3/3"]



def test_every_arm_is_the_same_mechanism_and_infinity_is_its_noiseless_twin():
    args = PS.get_args_parser().parse_args(["--data-dir", "d", "--out-dir", "o", "--seeds", "0", "1"])
    plan = {j.name: j.argv for j in PS.plan(args)}
    long = sum(len(budgets) for budgets in PS.LONG_POPULATIONS.values()) * len(PS.EPSILONS) + len(PS.OWN_ROUNDS)
    assert len(plan) == 2 * (len(PS.POPULATIONS) * len(PS.EPSILONS) + len(PS.FEW_EPSILONS) + 1 + long)
    assert "synthetic10k_eps8_R480_s1" in plan and "synthetic10k_eps8_R120_s1" not in plan
    own, inf0 = plan["roles-lr1_epsinf_s0"], plan["roles_epsinf_s0"]  # the noiseless run at its own server rate
    assert [a for a, b in zip(own, inf0) if a != b] == ["1", "roles-lr1_epsinf_s0"] and len(own) == len(inf0)
    inf, one = plan["synthetic10k_epsinf_s1"], plan["synthetic10k_eps1_s1"]
    assert inf[inf.index("--dp-noise") + 1] == "0" and one[one.index("--dp-epsilon") + 1] == "1"
    def without(argv, flag):
        i = argv.index(flag)
        return argv[:i] + argv[i + 2:]

    assert without(one, "--dp-epsilon") == [a.replace("epsinf", "eps1") for a in without(inf, "--dp-noise")]
    assert "--population" in one and "--population" not in plan["roles_eps3_s0"] and "--quick" in plan["few12_eps8_s0"]
    for n in PS.LONG_ROUNDS:  # only the length and name differ
        for name in ("roles_eps3", PS.OWN + "_epsinf"):
            long, short = plan[f"{name}_R{n}_s1"], plan[f"{name}_s1"]
            assert [(a, b) for a, b in zip(long, short) if a != b] == [(str(n), str(PS.ROUNDS)),
                                                                       (f"{name}_R{n}_s1", f"{name}_s1")]


def test_select_runs_only_the_named_runs_and_refuses_a_pattern_matching_none():
    args = PS.get_args_parser().parse_args(["--data-dir", "d", "--select", "few12_eps1_s0", "roles_eps*_R120_s*"])
    names = [j.name for j in PS.plan(args)]
    assert names[0] == "few12_eps1_s0" and len(names) == 1 + len(PS.EPSILONS) * len(PS.SEEDS)
    assert all(n.startswith("roles_eps") and "_R120_" in n for n in names[1:])
    with pytest.raises(UsageError, match="matches no run"):
        PS.plan(PS.get_args_parser().parse_args(["--select", "nothing*"]))


def test_a_longer_budget_is_paired_with_the_same_arm_and_a_run_whose_last_evaluation_is_best_is_still_improving(
        tmp_path):
    for s in range(3):
        fabricate(tmp_path, f"roles_epsinf_s{s}", s, [0.16, 0.17, 0.18, 0.19 + 0.01 * s], math.inf, 0.0, 1166)
        fabricate(tmp_path, f"roles_eps1_s{s}", s, [0.16, 0.17, 0.18, 0.185], 0.999, 1.3, 1166)
        # the noiseless arm keeps climbing, to its last evaluation but in seed 1 (one dip at the end); the private
        # arm flat over its last two thirds
        fabricate(tmp_path, f"roles_epsinf_R120_s{s}", s, [0.16, 0.17, 0.18, 0.19 + 0.01 * s, 0.22, 0.24, 0.25,
                                                           0.26, 0.27, 0.28, 0.31 if s == 1 else 0.29,
                                                           0.30 + 0.002 * s], math.inf, 0.0, 1166)
        fabricate(tmp_path, f"roles_eps1_R120_s{s}", s, [0.16, 0.18, 0.20, 0.22, 0.246, 0.243, 0.247, 0.244, 0.248,
                                                         0.245, 0.247, 0.244 + 0.001 * s], 0.999, 2.1, 1166)
    table = R.privacy_table(str(tmp_path))
    rows = [line for line in table.split("\n") if line.startswith("| 1,166")]
    assert [r.split("|")[5].strip() for r in rows] == ["40", "120", "40", "120"]
    inf_long, eps1_long = rows[3], rows[1]
    assert inf_long.endswith("| 0/3 (3 still improving) |") and eps1_long.endswith("| 3/3 |")
    d = stats.paired({s: 30 + 0.2 * s for s in range(3)}, {s: 19.0 + s for s in range(3)})
    assert f"+{d.mean:.1f} [+{d.lo:.1f}, +{d.hi:.1f}]" in inf_long.split("|")[9]
    assert rows[0].split("|")[9].strip() == "–" and "over their 2 comparisons" in table
    said = R.privacy_findings(str(tmp_path))
    assert "ε = ∞: 0/3 at 40, 0/3 at 120" in said and "ε = 1: 0/3 at 40, 3/3 at 120" in said
    assert "ε = 1 from 120 rounds (24.5 %), against ε = ∞ (itself not at its plateau)" in said


def test_a_run_that_diverged_is_counted_not_dropped(tmp_path):
    for s in range(3):
        fabricate(tmp_path, f"few12_eps1_s{s}", s, [0.05, 0.02, 0.015], 0.99, 8.0, 12)
        fabricate(tmp_path, f"few12_epsinf_s{s}", s, [0.15, 0.16, 0.17], math.inf, 0.0, 12)
    (tmp_path / "few12_eps1_s1" / "summary.json").unlink()  # an older record: no summary at all
    (tmp_path / "few12_eps1_s2" / "summary.json").write_text(json.dumps({  # what the engine writes now
        "status": "diverged", "diverged_at": "round 35", "dp_epsilon": 0.9, "dp_delta": 0.065, "dp_noise": 8.0}))
    row = next(line for line in R.privacy_table(str(tmp_path)).split("\n") if "| 0.99 (" in line)
    assert "1.5 (n=1), 2 diverged" in row and "0/3 (1 not above the majority character) (2 diverged)" in row
