"""The README blocks of llm_noniid's results, generated from the committed records of run_experiments.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs).

Records: ``RECORDS/runs/<algorithm>_<partition>_k10_p1_lr0.01_j8_schedcosine_s<seed>/`` (args.json,
summary.json), the pretrained-LoRA regime's grid. A sentence about one method on every split is one Holm family
over those splits (``SPLITS``), declared here.
"""
from __future__ import annotations

import re
from functools import cache

from common import results as RS
from common import stats

RECORDS = "llm_noniid/figures/pretrained/grid"
SPLITS = {"iid": "iid", "topic_a0.01": "topic α = 0.01", "topic_a0.1": "topic α = 0.1",
          "style_length": "style", "token_frequency": "token skew"}
SETTING = "k10_p1_lr0.01_j8_schedcosine"   # 10 clients, all in every round, the selected rate, 8 local steps


@cache
def arm(algorithm: str, split: str) -> dict:
    """{seed: final validation perplexity} of an arm's reported runs (not the longer _R300 continuations)."""
    return RS.by_seed(RS.records(f"{RECORDS}/runs", f"{algorithm}_{split}_{SETTING}_s[0-9]"), "final_val_ppl")


def scaffold() -> str:
    """SCAFFOLD − FedAvg on every split, one Holm family over the splits."""
    fam = RS.family({s: (arm("scaffold", s), arm("fedavg", s)) for s in SPLITS}, unit=" ppl")
    parts = [f"{name} {c}" for s, name in SPLITS.items() for _, c in [fam[s]]]
    text = (f"SCAFFOLD − FedAvg, final perplexity, Holm over the {len(fam)} splits together: "
            + "; ".join(parts))
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def study() -> str:
    """The top README's line for the pretrained-LoRA regime."""
    iid, topic = (stats.summarize(arm("fedavg", s).values()) for s in ("iid", "topic_a0.01"))
    skew = RS.family({"topic": (arm("fedavg", "topic_a0.01"), arm("fedavg", "iid"))}, unit=" ppl")["topic"][1]
    text = (f"FedAvg on topic skew α = 0.01 {topic.mean:.1f} ± {topic.sd:.1f} against {iid.mean:.1f} ± {iid.sd:.1f} "
            f"on iid shards (paired by seed: {skew}); " + scaffold())
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


BLOCKS = {"scaffold": scaffold, "study": study}
