"""What the data layer costs before a run starts: generating each embedded dataset, and sharding a large label set.

    python benchmarks/bench_data.py                 # every embedded dataset at its default size; 1M labels
    python benchmarks/bench_data.py --quick         # 100k labels, one repeat: checks it runs

Timed, one after the other in this process (median of --repeats for the shards):
  generation    ``common.synthetic.ensure(kind)`` into a fresh folder, for every kind of ``synthetic.KINDS``
                (what a first run of a script waits for before it reads its data)
  sharding      ``common.shard.dirichlet`` (alpha 0.5, at least 10 per client) and ``shard.pathological``
                (5 classes per client) of --labels labels of 100 classes into 100 clients
Targets (2 cores, other work on them allowed): every kind generated in < 15 s, both shards of 1M labels in < 5 s.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import markdown_table, timeit

from common import cli, flags, shard, synthetic

GENERATE_TARGET_S, SHARD_TARGET_S = 15.0, 5.0


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--labels", type=flags.POSITIVE_INT, default=1_000_000, help="labels to shard")
    p.add_argument("--repeats", type=flags.POSITIVE_INT, default=3, help="timed shardings (median reported)")
    p.add_argument("--kinds", nargs="+", default=list(synthetic.KINDS), choices=list(synthetic.KINDS),
                   help="embedded datasets to generate")
    p.add_argument("--device", default="cpu", help="accepted for run_all.py: generation and sharding run on the CPU")
    p.add_argument("--quick", action="store_true", help="100k labels, one repeat, wikitext only: a smoke run")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def generation_seconds(kinds: list[str]) -> dict[str, float]:
    """Seconds of ``synthetic.ensure(kind)`` into an empty folder, per kind."""
    out = {}
    with tempfile.TemporaryDirectory() as root:
        for kind in kinds:
            t = time.perf_counter()
            synthetic.ensure(kind, root=Path(root) / kind)
            out[kind] = time.perf_counter() - t
    return out


def shard_seconds(n: int, repeats: int) -> float:
    """Median seconds of a Dirichlet and a pathological sharding of ``n`` labels (100 classes, 100 clients)."""
    labels = np.random.default_rng(0).integers(0, 100, n)

    def both():
        parts = shard.dirichlet(labels, 100, 0.5, seed=0, min_size=10)
        shard.pathological(labels, 100, 5, seed=0)
        assert sum(map(len, parts)) == n
    return timeit(both, warmup=0, repeats=repeats).median_s


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    if args.quick:
        args.labels, args.repeats, args.kinds = 100_000, 1, ["wikitext"]
    gen = generation_seconds(args.kinds)
    shards = shard_seconds(args.labels, args.repeats)
    met = lambda s, target: "yes" if s < target else "NO"  # noqa: E731
    print(markdown_table(["what", "seconds", "target", "met"],
                         [*([f"generate {k}", f"{s:.2f}", f"< {GENERATE_TARGET_S:g}", met(s, GENERATE_TARGET_S)]
                            for k, s in gen.items()),
                          [f"shard {args.labels:,} labels (dirichlet + pathological)", f"{shards:.2f}",
                           f"< {SHARD_TARGET_S:g}", met(shards, SHARD_TARGET_S)]]))
    summary = {"labels": args.labels, "generate_s": gen, "shard_s": shards,
               "targets": {"generate_s": GENERATE_TARGET_S, "shard_s": SHARD_TARGET_S}}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    cli.run(main)
