"""The README blocks of vit_sparse_fl's results, generated from the committed records of run_all_experiments.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs).

Records: ``RECORDS/runs_R<rounds>/<setting>_seed<seed>/`` (args.json, summary.json). A mask table's family is
the one run_all_experiments.py's table corrects together: every row against dense FedAvg and against the
head-only probe, test accuracy and interference (``common.stats.ref_pairs``).
"""
from __future__ import annotations

import re
from functools import cache

from common import results as RS
from common import stats

RECORDS = "vit_sparse_fl/figures"
PROBE = "probe: head + final norm"
STRATEGIES = ("least_sensitive", "most_sensitive", "lowest_magnitude", "highest_magnitude", "random")


@cache
def suite(rounds: int) -> dict:
    """{setting: [runs]} of the synthetic-CIFAR suite at R = ``rounds``."""
    out: dict = {}
    for r in RS.records(f"{RECORDS}/runs_R{rounds}", "*_seed*"):
        out.setdefault(r["name"].rsplit("_seed", 1)[0], []).append(r)
    return out


def pct(runs: list[dict], metric: str) -> dict:
    return RS.by_seed(runs, metric, 100.0 if metric == "test_accuracy" else 1.0)


def mask_family(rounds: int, shard: str, sparsity: float) -> dict:
    """{(setting, ref, metric): (Paired, claim)} of one mask table (Holm over all its differences)."""
    g = suite(rounds)
    dense, probe = f"fedavg_{shard}", f"probe_{shard}_head"
    keys = [dense, probe, f"probe_{shard}_last", *(f"sparse_{shard}_s{sparsity:g}_{s}" for s in STRATEGIES)]
    keys += [k for k in (f"sparse_{shard}_s{sparsity:g}_least_sensitive_fisher",) if k in g]
    pairs = stats.ref_pairs(keys, [dense, probe], ("test_accuracy", "interference"),
                            lambda key, m: pct(g[key], m) if g.get(key) else {})
    return RS.family(pairs)


def minus(text: str) -> str:
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def r192_nc2() -> str:
    """The masks against dense FedAvg and against the head-only probe at Nc = 2, s = 0.9, R = 192."""
    fam = mask_family(192, "nc2", 0.9)
    m = len(fam)
    acc = {(k, ref): c for (k, ref, metric), (_, c) in fam.items() if metric == "test_accuracy"}
    dense, probe = "fedavg_nc2", "probe_nc2_head"
    ls, rnd, fisher = "sparse_nc2_s0.9_least_sensitive", "sparse_nc2_s0.9_random", \
        "sparse_nc2_s0.9_least_sensitive_fisher"
    over_probe = fam[ls, probe, "test_accuracy"][0]
    return minus(
        f"- Test accuracy minus dense FedAvg's (points, Holm over the table's {m} differences, 3 seeds): "
        f"least_sensitive {acc[ls, dense]}; random {acc[rnd, dense]}; least_sensitive with the true-Fisher score "
        f"{acc[fisher, dense]}; the head-only probe ({PROBE}) {acc[probe, dense]}.\n"
        f"- least_sensitive − probe: {acc[ls, probe]}; random − probe {acc[rnd, probe]}. So over training the "
        f"head and the final norm alone, a least-sensitive mask buys at most "
        f"{stats.ruled_out(over_probe, m):.1f} points here.")


def study_r192() -> str:
    """The top README's line for the R = 192 mask tables."""
    fam = mask_family(192, "nc2", 0.9)
    ls, dense, probe = "sparse_nc2_s0.9_least_sensitive", "fedavg_nc2", "probe_nc2_head"
    g = suite(192)
    mean = {k: stats.summarize(pct(g[k], "test_accuracy").values()).mean for k in (ls, dense, probe)}
    return minus(
        f"at Nc = 2 (R = 192, each arm at its own rate, 3 seeds) a 90 %-sparse least-sensitive mask ends at "
        f"{mean[ls]:.1f} % against dense FedAvg's {mean[dense]:.1f} % "
        f"({fam[ls, dense, 'test_accuracy'][1]}) and the probe's ({PROBE}) {mean[probe]:.1f} % "
        f"({fam[ls, probe, 'test_accuracy'][1]})")


BLOCKS = {"r192-nc2": r192_nc2, "study-r192": study_r192}
