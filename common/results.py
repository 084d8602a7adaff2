"""The numbers a README states, generated from committed records: every result paragraph or table of a README
sits between markers and is rewritten from the records by the function of its name.

    python -m common.results --check     # regenerate every block; exit 1 naming each block that differs, and
                                         # each statistic stated outside a block
    python -m common.results --write     # rewrite every block in place (after new records are committed)

Checked: the top README, common's and each subproject's, every ``<subproject>/results/**/findings.md`` (a
study's reading, committed beside its records) and every other Markdown file there that holds a block (a report).

A statistic stated outside a block is a number nobody regenerates: ``loose`` finds them (a ± between numbers, an
interval ``[a, b]``, a p-value, ``n=``), outside code and outside blocks, and ``--check`` names each one.

A block in a README:

    <!-- results:mamba_fl.real-table -->
    ... (generated: do not edit by hand) ...
    <!-- /results:mamba_fl.real-table -->

(indented markers, inside a list item, indent every generated line alike)
Its name is ``<subproject>.<block>``: the subproject's ``results`` module (``mamba_fl/results.py``, ...) holds
``BLOCKS``, {block: function() -> the block's Markdown}, each reading the subproject's committed record folder (one
constant there, ``RECORDS``); ``benchmarks.<block>`` blocks from ``benchmarks/results.py`` (the benchmark record,
``benchmarks/RESULTS.md``); ``common.<block>`` blocks come from code (``COMMON``: common/combinations.py's table of
what runs where). The subproject modules are looked up by name (``SUBPROJECTS``), so ``common`` imports
no subproject; they import only ``common``. The same block may appear in several READMEs (a study's line in the
top README and in its subproject's). Sentences use one vocabulary: ``common.stats.claim`` and ``fmt_p``.

The same blocks from your own runs (a grid's out-dir in place of a committed record folder):

    python -m common.results --show lora_glue_fl.sst2-table \
        --records lora_glue_fl/results/minilm_glue=runs/lora_glue_minilm

``--records COMMITTED=YOURS`` makes every block read ``YOURS`` wherever it would read the committed folder (or a
folder inside it), so a table of your runs is written by the code that writes the README's.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from common import stats
from common.errors import UsageError, check

ROOT = Path(__file__).resolve().parents[1]
SUBPROJECTS = ("mamba_fl", "vit_sparse_fl", "lora_glue_fl", "llm_noniid")
FINDINGS = tuple(sorted(p.relative_to(ROOT).as_posix() for s in SUBPROJECTS  # a study's reading or report beside
                        for p in (ROOT / s / "results").rglob("*.md")      # its records, once it holds a block
                        if p.name == "findings.md" or "<!-- results:" in p.read_text(encoding="utf-8")))
READMES = ("README.md", "common/README.md", *(f"{s}/README.md" for s in SUBPROJECTS), *FINDINGS)
COMMON = ("combinations",)  # common's modules with blocks generated from code, not records (``common.<block>``)
BLOCK = re.compile(r"^(?P<indent>[ ]*)<!-- results:(?P<name>[\w.-]+) -->\n(?P<body>.*?)^(?P=indent)"
                   r"<!-- /results:(?P=name) -->", re.S | re.M)
OPENING = re.compile(r"<!-- (/?)results:([\w.-]+) -->")


# ------------------------------------------------------------------------------------- reading records
REDIRECTS: dict[str, Path] = {}  # committed record folder (relative to ROOT) -> the folder read in its place


def path(folder: str | Path) -> Path:
    """Where a block reads the committed record folder ``folder`` (relative to the repository root): the folder
    itself, or what ``--records`` put in its place (``REDIRECTS``; a folder inside a redirected one moves with it)."""
    rel = Path(folder)
    for committed, mine in REDIRECTS.items():
        try:
            return mine / rel.relative_to(committed)
        except ValueError:
            continue
    return ROOT / rel


def record(path: Path) -> dict:
    """One run directory's args and summary (metrics.jsonl is not read: blocks state final numbers), with the
    run's "name"; a summary-less (unfinished) run has "summary" None."""
    meta = json.loads((path / "args.json").read_text(encoding="utf-8"))
    summary = path / "summary.json"
    return {"name": path.name, "path": path, "args": meta.get("args", {}),
            "summary": json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else None}


def records(folder: str | Path, pattern: str = "*") -> list[dict]:
    """The finished runs (summary.json present) of a committed record folder, sorted by name."""
    folder = path(folder)
    check(folder.is_dir(), f"{folder}: no such record folder (a results block reads its committed records)")
    runs = (record(p) for p in sorted(folder.glob(pattern)) if (p / "args.json").is_file())
    return [r for r in runs if r["summary"] is not None]


def by_seed(runs: Iterable[dict], key: str, scale: float = 1.0) -> dict:
    """{seed: scale * summary[key]} over the runs that have the key."""
    return {r["args"]["seed"]: scale * r["summary"][key] for r in runs if r["summary"].get(key) is not None}


def family(pairs: Mapping, digits: int = 1, unit: str = "") -> dict:
    """{name: (Paired, claim sentence)} of comparisons {name: ({seed: a}, {seed: b})} corrected together by Holm:
    the family the sentences name ("over m")."""
    diffs = {k: stats.paired(a, b) for k, (a, b) in pairs.items()}
    verdicts, m = stats.holm(diffs), sum(d.n >= 2 for d in diffs.values())
    return {k: (d, stats.claim(d, verdicts[k], m, digits, unit)) for k, d in diffs.items()}


def minus(text: str) -> str:
    """Prose's minus sign (U+2212) for a negative number ('-1.7' and '[-2.2', not '6.2-7.2', '1e-3' or
    'central-b4')."""
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def range_of(values: Iterable[float], digits: int = 1, sep: str = "-", unit: str = "") -> str:
    """'6.2-7.2': the smallest and largest value (one value alone), each followed by ``unit`` ('1.7x to 6.1x')."""
    values = sorted(values)
    lo, hi = f"{values[0]:.{digits}f}{unit}", f"{values[-1]:.{digits}f}{unit}"
    return lo if lo == hi else f"{lo}{sep}{hi}"


# ------------------------------------------------------------------------------ statistics outside blocks
STATISTIC = re.compile(r"\d\s*±\s*\d"                                    # mean ± sd
                       r"|\[\s*[+\-−]?\d[\d.,]*\s*[,;…]\s*[+\-−]?\d[\d.,]*\s*\]"  # an interval [a, b]
                       r"|\bp(?:_Holm)?\s*(?:=|<|≤)\s*0?\.\d"                # a p-value
                       r"|\(n\s*=\s*\d")                                       # a seed count beside a verdict
FENCE = re.compile(r"^\s*(```|~~~)")


def loose(text: str) -> list[tuple[int, str]]:
    """[(line number, line)] of ``text``'s lines that state a statistic (``STATISTIC``) outside every results block,
    code fence and inline code span: numbers a reader would cite that nothing regenerates."""
    inside = set()
    for m in BLOCK.finditer(text):
        first = text.count("\n", 0, m.start())
        inside.update(range(first, first + m.group(0).count("\n") + 1))
    out, fenced = [], False
    for i, line in enumerate(text.split("\n")):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or i in inside:
            continue
        if STATISTIC.search(re.sub(r"`[^`]*`", "", line)):
            out.append((i + 1, line.strip()))
    return out


# ------------------------------------------------------------------------------------------ the blocks
def generators(subprojects: Iterable[str] = SUBPROJECTS) -> dict[str, Callable[[], str]]:
    """{"<subproject>.<block>": function} over the subprojects' ``results`` modules (a subproject without one has no
    blocks)."""
    out = {f"common.{name}": fn for mod in COMMON
           for name, fn in importlib.import_module(f"common.{mod}").BLOCKS.items()}
    for sub in subprojects:
        if not (ROOT / sub / "results.py").is_file():
            continue
        module = importlib.import_module(f"{sub}.results")
        out |= {f"{sub}.{name}": fn for name, fn in module.BLOCKS.items()}
    # the benchmark record's blocks (benchmarks/ is a folder of scripts, not a package: loaded by its path)
    spec = importlib.util.spec_from_file_location("benchmarks_results", ROOT / "benchmarks" / "results.py")
    if spec and spec.loader and (ROOT / "benchmarks" / "results.py").is_file():
        module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
        spec.loader.exec_module(module)  # registered first: its dataclasses look their module up
        out |= {f"benchmarks.{name}": fn for name, fn in module.BLOCKS.items()}
    return out


def blocks_in(text: str, where: str = "README") -> list[str]:
    """The block names of ``text`` in order; an opening marker without its closing one (or the reverse) is refused."""
    names = [m["name"] for m in BLOCK.finditer(text)]
    markers = OPENING.findall(text)
    check(len(markers) == 2 * len(names), f"{where}: a results marker without its pair (each "
          "'<!-- results:NAME -->' needs a '<!-- /results:NAME -->' after it, nothing nested)")
    return names


def render(text: str, made: Mapping[str, str], where: str = "README") -> str:
    """``text`` with every block's body replaced by ``made[name]`` (a name with no generator is refused)."""
    unknown = [n for n in blocks_in(text, where) if n not in made]
    check(not unknown, f"{where}: no generator for results block(s) {', '.join(unknown)} (known: "
          f"{', '.join(sorted(made))})")
    def body(m: re.Match) -> str:
        pad, name = m["indent"], m["name"]
        lines = [pad + line if line else line for line in made[name].rstrip("\n").split("\n")]
        return f"{pad}<!-- results:{name} -->\n" + "\n".join(lines) + f"\n{pad}<!-- /results:{name} -->"

    return BLOCK.sub(body, text)


def regenerate(readmes: Iterable[str | Path] = READMES, root: Path = ROOT) -> dict[Path, tuple[str, str, list[str]]]:
    """{README path: (current text, regenerated text, names of the blocks that differ)}; every generator that a
    README names runs once."""
    texts = {root / p: (root / p).read_text(encoding="utf-8") for p in readmes if (root / p).is_file()}
    wanted = {n for path, t in texts.items() for n in blocks_in(t, str(path))}
    gens = generators()
    made = {n: gens[n]() for n in sorted(wanted) if n in gens}
    out = {}
    for path, text in texts.items():
        new = render(text, made, str(path))
        old_bodies = {m["name"]: m["body"] for m in BLOCK.finditer(text)}
        new_bodies = {m["name"]: m["body"] for m in BLOCK.finditer(new)}
        out[path] = (text, new, [n for n in old_bodies if old_bodies[n] != new_bodies[n]])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 naming every block that differs from its records")
    mode.add_argument("--write", action="store_true", help="rewrite every block in place from its records")
    mode.add_argument("--show", nargs="+", metavar="BLOCK", help="print these blocks (e.g. mamba_fl.real-table)")
    mode.add_argument("--loose", action="store_true", help="list every statistic stated outside a block (``loose``); "
                      "exit 1 when there is one")
    parser.add_argument("--records", nargs="+", default=[], metavar="COMMITTED=YOURS",
                        help="with --show: read folder YOURS (a grid's out-dir) wherever a block reads the committed "
                             "record folder COMMITTED (relative to the repository root)")
    parser.add_argument("readmes", nargs="*", help="README files (default: the top README and each subproject's)")
    args = parser.parse_args(argv)
    try:
        if args.show:
            return show(args.show, args.records)
        check(not args.records, "--records goes with --show: --check and --write read the committed records")
        if args.loose:
            return report_loose(args.readmes or READMES, Path.cwd() if args.readmes else ROOT)
        result = regenerate(args.readmes or READMES, Path.cwd() if args.readmes else ROOT)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = [(path, n) for path, (_, _, names) in result.items() for n in names]
    if args.write:
        for path, (old, new, _) in result.items():
            if new != old:
                path.write_text(new, encoding="utf-8")
        print(f"rewrote {len(stale)} block(s)" + "".join(f"\n  {p}: {n}" for p, n in stale))
        return 0
    for path, name in stale:
        print(f"{path}: results block {name} differs from its records (python -m common.results --write)")
    hand = [(path, n, line) for path, (old, _, _) in result.items() for n, line in loose(old)]
    for path, n, line in hand:
        print(f"{path}:{n}: a statistic outside a results block (generate it, or drop it): {line[:120]}")
    count = sum(len(blocks_in(old)) for old, _, _ in result.values())
    print(f"{count} results block(s) checked, {len(stale)} differ; {len(hand)} statistic(s) outside a block")
    return 1 if stale or hand else 0


def report_loose(readmes: Iterable[str | Path] = READMES, root: Path = ROOT) -> int:
    """Print each statistic outside a block as ``path:line: text``; 1 when there is one."""
    found = [(p, n, line) for p in readmes if (root / p).is_file()
             for n, line in loose((root / p).read_text(encoding="utf-8"))]
    for p, n, line in found:
        print(f"{p}:{n}: {line[:160]}")
    print(f"{len(found)} statistic(s) outside a results block")
    return 1 if found else 0


def show(names: Iterable[str], redirects: Iterable[str] = ()) -> int:
    """Print blocks ``names``, reading each ``COMMITTED=YOURS`` folder in place of the committed one."""
    own = importlib.import_module("common.results").REDIRECTS  # the blocks' module, also under ``python -m``
    for item in redirects:
        committed, sep, mine = item.partition("=")
        check(sep and committed and mine, f"--records {item!r}: expected COMMITTED=YOURS")
        check(Path(mine).is_dir(), f"--records {item!r}: {mine} is not a folder")
        own[committed.rstrip("/")] = Path(mine).resolve()
    gens = generators()
    unknown = [n for n in names if n not in gens]
    check(not unknown, f"no results block {', '.join(unknown)} (known: {', '.join(sorted(gens))})")
    for name in names:
        print(f"<!-- {name} -->\n{gens[name]().rstrip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
