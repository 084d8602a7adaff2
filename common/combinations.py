"""Which combinations of the shared flags run in which subproject: common/README.md's table, generated (results
block ``common.combinations``, ``python -m common.results``) by asking each subproject's federated script's own
argument checks (``common.jobs.check_job``: its parser, presets and checks; nothing runs) about every algorithm x
aggregator x server optimizer x clustering of the registries, with ``--quick``.

    python -m common.combinations                       # the table
    python -m common.combinations --why lora_glue_fl --algorithm feddyn   # one combination's verdict

A new algorithm or aggregator appears once registered; a script's refusal (its declared reasons, the classes'
``refuse``) removes a combination. The scripts are looked up by module name (``SCRIPTS``), so ``common`` imports no
subproject. A plain-SGD algorithm (``plain_sgd``) is asked with the script's ``PLAIN_SGD_ARGS`` (its flags for
plain SGD local steps), and the table says so.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import re
import sys
from functools import cache

from common import aggregators as AG
from common import algorithm_flags, jobs
from common import algorithms as AL
from common import engine as _engine  # noqa: F401  (registers every algorithm and aggregator)
from common.errors import UsageError

SCRIPTS = {"mamba_fl": "mamba_fl.fed_avg", "vit_sparse_fl": "vit_sparse_fl.train_federated",
           "llm_noniid": "llm_noniid.train", "lora_glue_fl": "lora_glue_fl.fedavg_rounds"}
CLUSTERINGS = ("none", "ifca", "data")
DIMENSIONS = ("algorithm", "aggregator", "server_opt", "clustering")


def values() -> dict[str, tuple[str, ...]]:
    """Every dimension's values: the registries' (at call time, so a class registered later counts)."""
    return {"algorithm": tuple(AL.REGISTRY), "aggregator": tuple(AG.REGISTRY),
            "server_opt": algorithm_flags.SERVER_OPTS, "clustering": CLUSTERINGS}


def argv(subproject: str, combo: dict) -> list[str]:
    """The script's flags for one combination (IFCA with 2 clusters; plain SGD where the algorithm needs it)."""
    out = ["--quick", "--algorithm", combo["algorithm"], "--aggregator", combo["aggregator"],
           "--server-opt", combo["server_opt"], "--clustering", combo["clustering"]]
    if combo["clustering"] == "ifca":
        out += ["--num-clusters", "2"]
    if AL.REGISTRY[combo["algorithm"]].plain_sgd:
        out += list(plain_sgd_args(subproject))
    return out


def plain_sgd_args(subproject: str) -> tuple[str, ...]:
    return tuple(getattr(importlib.import_module(SCRIPTS[subproject]), "PLAIN_SGD_ARGS", ()))


def verdict(subproject: str, **combo: str) -> str | None:
    """None if the script runs the combination (unnamed dimensions at their defaults), else its one-line refusal."""
    combo = {"algorithm": "fedavg", "aggregator": "mean", "server_opt": "fedavg", "clustering": "none"} | combo
    try:
        jobs.check_job(jobs.Job("combination", SCRIPTS[subproject], argv(subproject, combo)))
    except UsageError as e:
        return str(e)
    return None


@cache
def _runs(subproject: str, key: tuple) -> frozenset:
    dims = dict(key)
    return frozenset(c for c in itertools.product(*dims.values())
                     if verdict(subproject, **dict(zip(DIMENSIONS, c))) is None)


def runs(subproject: str) -> frozenset[tuple[str, str, str, str]]:
    """The (algorithm, aggregator, server_opt, clustering) combinations the subproject's script runs."""
    return _runs(subproject, tuple((d, v) for d, v in values().items()))


def _names(chosen: list[str], every: tuple[str, ...], word: str) -> str:
    return f"every {word}" if list(chosen) == list(every) else " / ".join(chosen)


def cell(subproject: str, algorithm: str) -> str:
    """What runs with ``algorithm``: aggregators x server optimizers x clusterings, each listed (or "every ...") when
    the runnable set is their product, else the runnable triples themselves; "refused" when none runs."""
    ok = {c[1:] for c in runs(subproject) if c[0] == algorithm}
    if not ok:
        return "refused"
    dims = values()
    axes = [[v for v in dims[d] if any(c[i] == v for c in ok)] for i, d in enumerate(DIMENSIONS[1:])]
    if len(ok) == len(axes[0]) * len(axes[1]) * len(axes[2]):
        text = " × ".join([_names(axes[0], dims["aggregator"], "aggregator"),
                           _names(axes[1], dims["server_opt"], "server optimizer"),
                           "clustering " + " / ".join(axes[2]) if axes[2] != ["none"] else "no clustering"])
    else:  # not a product: each runnable combination
        text = "; ".join(" + ".join(c) for c in sorted(ok))
    extra = plain_sgd_args(subproject) if AL.REGISTRY[algorithm].plain_sgd else ()
    return text + (f" (with `{' '.join(extra)}`)" if extra else "")


def table() -> str:
    """The Markdown table, then each value a subproject refuses outright, in its script's words."""
    subs = list(SCRIPTS)
    lines = ["| `--algorithm` | " + " | ".join(f"{s} (`{SCRIPTS[s].split('.')[1]}.py`)" for s in subs) + " |",
             "|---" * (len(subs) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(cell(s, a) for s in subs) + " |" for a in AL.REGISTRY]
    refused: dict[tuple[str, str, str], list[str]] = {}  # (subproject, flag, reason) -> the values refused for it
    for s in subs:
        done = runs(s)
        for i, d in enumerate(DIMENSIONS):
            for v in values()[d]:
                if not any(c[i] == v for c in done):
                    reason = verdict(s, **{d: v}).split("is refused here: ", 1)[-1]
                    refused.setdefault((s, "--" + d.replace("_", "-"), reason), []).append(v)
    refused = [f"- {s} `{flag} {' / '.join(vs)}`: {reason}" for (s, flag, reason), vs in refused.items()]
    paired: dict[tuple[str, str], tuple[str, list[str]]] = {}  # (algorithm, flag) -> (reason, the values)
    for s in subs:
        done = runs(s)
        for a in AL.REGISTRY:
            for i, d in enumerate(DIMENSIONS[1:], 1):
                for v in values()[d]:
                    others = any(c[i] == v for c in done)
                    if others and not any(c[0] == a and c[i] == v for c in done) and any(c[0] == a for c in done):
                        flag = "--" + d.replace("_", "-")
                        why = re.sub(rf" ?\(here {v}\)", "", verdict(s, algorithm=a, **{d: v}))
                        reason, vs = paired.setdefault((a, flag), (re.sub(rf"\b{v}\b", "{}", why), []))
                        vs += [v] if v not in vs else []
    refused += [f"- `--algorithm {a}` with `{flag} {' / '.join(vs)}`: {reason.replace('{}', ' / '.join(vs))}"
                for (a, flag), (reason, vs) in paired.items()]
    legend = ("Each cell: the aggregators × server optimizers × clusterings that run with the row's algorithm "
              "(`--quick`, asked of the script's own checks: `python -m common.combinations --why SUBPROJECT "
              "FLAGS`); every other combination is refused in one line saying why:")
    return "\n".join(lines + ["", legend, *refused])


BLOCKS = {"combinations": table}


def main(argv_=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--why", nargs=argparse.REMAINDER, metavar="SUBPROJECT FLAGS",
                        help="one combination: a subproject and --algorithm / --aggregator / --server-opt / "
                             "--clustering values (the others at their defaults)")
    args = parser.parse_args(argv_)
    if not args.why:
        print(table())
        return 0
    sub, *rest = args.why
    if sub not in SCRIPTS:
        print(f"error: unknown subproject {sub!r}; expected one of {', '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    pick = argparse.ArgumentParser(prog=f"--why {sub}")
    for d in DIMENSIONS:
        pick.add_argument(f"--{d.replace('_', '-')}", choices=values()[d], default=argparse.SUPPRESS)
    why = verdict(sub, **vars(pick.parse_args(rest)))
    print("runs" if why is None else f"refused: {why}")
    return 0 if why is None else 1


if __name__ == "__main__":
    sys.exit(main())
