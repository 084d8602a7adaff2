"""The README blocks of the benchmarks, generated from the committed benchmark record ``RESULTS.md`` (written by
``python benchmarks/run_all.py``; ``python -m common.results --write`` rewrites the blocks from it, ``--check``
fails when one differs).

    python -m common.results --show benchmarks.summary      # the top README's summary from RESULTS.md

A row of the record is (benchmark, setting, metric, value, target, met?); a block picks rows by benchmark and
metric and reads the first number of their value ("2.68x faster (46 vs 124 ms)" -> 2.68).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from common import results as RS
from common.errors import check

RECORDS = "benchmarks"  # the folder of the record (``RESULTS``), as common.results reads folders
RESULTS = "RESULTS.md"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Row:
    benchmark: str
    setting: str
    metric: str
    value: str
    target: str
    met: str

    def number(self, which: int = 0) -> float:
        """The value's ``which``-th number (commas dropped)."""
        found = NUMBER.findall(self.value)
        check(len(found) > which, f"benchmarks/{RESULTS}: no number {which + 1} in {self.value!r} ({self.metric})")
        return float(found[which].replace(",", ""))


def rows(folder: str = RECORDS) -> list[Row]:
    """The record's table rows (the header and its rule left out)."""
    text = (RS.path(folder) / RESULTS).read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 6 and cells[0] != "benchmark" and not set(cells[0]) <= {"-"}:
            out.append(Row(*cells))
    return out


def pick(all_rows: list[Row], benchmark: str, metric: str, setting: str = "") -> list[Row]:
    """The rows of ``benchmark`` whose metric starts with ``metric`` and whose setting contains ``setting``."""
    return [r for r in all_rows if r.benchmark == benchmark and r.metric.startswith(metric) and setting in r.setting]


def summary(folder: str = RECORDS) -> str:
    """The top README's summary: the round overhead outside local training in every subproject, the aggregators
    against Flower's ``aggregate()`` quiet and busy, the aggregation targets missed, and the cross-device rows
    (the sequential engine against a plain loop, Flower and pfl-research, per sample and in peak memory)."""
    all_rows = rows(folder)
    overhead = [r.number() for r in all_rows if "overhead" in r.metric and "Fisher" not in r.metric]
    flower = {mood: [r.number() for r in all_rows if r.benchmark == "aggregate" and r.metric.endswith("vs Flower")
                     and mood in r.setting] for mood in ("quiet", "busy")}
    missed = [r for r in all_rows if r.benchmark == "aggregate" and r.met == "NO" and "quiet" in r.setting]
    check(overhead and all(flower.values()), f"benchmarks/{RESULTS}: no overhead or aggregate rows")
    quiet, busy = (RS.range_of(flower[mood], 1, " to ", "x") for mood in ("quiet", "busy"))
    text = (f"everything outside local training, aggregation included, is {RS.range_of(overhead, 1, ' to ')} % of "
            f"a round in every subproject (FedFisher's Fisher aside: it is the method's work); the aggregators beat "
            f"Flower's `aggregate()` on ViT-S/16-sized uploads in every row ({quiet} quiet, {busy} with every core "
            f"busy), and "
            + (f"{len(missed)} quiet targets are missed" if len(missed) != 1 else "1 quiet target is missed"))
    text += (" (" + "; ".join(f"{r.metric} {r.value.split(' (')[0]}, target {r.target}"
                              + (f" at {k[0]}" if (k := re.findall(r"K=\d+", r.setting)) else "")
                              for r in missed) + ")") if missed else ""
    engine = {r.setting: r for r in pick(all_rows, "cross_device", "sequential engine vs plain loop")}
    if engine:
        setting = next(s for s in engine if "LSTM 256" in s) if any("LSTM 256" in s for s in engine) else \
            next(iter(engine))
        per_k = {name: pick(all_rows, "cross_device", name, setting)[0].number()
                 for name in ("this engine, sequential", "plain PyTorch loop", "Flower", "pfl-research")}
        rss = pick(all_rows, "cross_device", "peak RSS, this engine, sequential vs pfl-research", setting)
        seq = per_k["this engine, sequential"]
        roles, units = re.search(r"([\d,]+) roles", setting), re.search(r"LSTM (\d+)", setting)
        text += (f". On one cross-device workload ({roles[1] if roles else 'its'} Shakespeare roles, LEAF's LSTM"
                 + (f" at {units[1]} units" if units else "") + ") the sequential engine costs "
                 f"{seq / per_k['plain PyTorch loop']:.2f}x a plain PyTorch loop's CPU time per sample and "
                 f"{seq / per_k['pfl-research']:.2f}x pfl-research's, Flower "
                 f"{per_k['Flower'] / per_k['plain PyTorch loop']:.1f}x the loop's"
                 + (f", at {rss[0].number():.2f}x pfl-research's peak memory" if rss else ""))
        short = [r for r in all_rows if r.benchmark == "cross_device" and r.met == "NO"]
        text += ("; missed there: " + "; ".join(
            f"{r.metric} {r.value.split(' (')[0]} ({r.setting.split(',')[0]}), target {r.target}" for r in short)
                 ) if short else ""
    return RS.minus(text + ".")


BLOCKS = {"summary": summary}
