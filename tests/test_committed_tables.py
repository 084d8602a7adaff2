"""The committed comparison tables are what the one table writer (``common.study_report.table``) writes from their
committed records: vit_sparse_fl's suite tables (run_all_experiments.py) and budget table (compare_budgets.py),
llm_noniid's grid reports (run_experiments.py). The numbers of every row are compared first (means, sds, intervals,
p-values, what a null rules out, family sizes, seeds), so a change in the statistics names its row; then the text,
which wording alone changes: regenerate the file with the command the failure gives."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import cli, stats
from llm_noniid import report as llm
from vit_sparse_fl import compare_budgets as cb
from vit_sparse_fl import report as suite_report
from vit_sparse_fl import run_all_experiments as suite

REPO = Path(__file__).resolve().parents[1]
VIT = "vit_sparse_fl/results"
LLM = "llm_noniid/results"
NUM = r"[+\-−]?\d+(?:\.\d+)?(?:e[+-]?\d+)?"


def suite_table(folder: str, *argv: str) -> str:
    """run_all_experiments.py --table-only's results.md of a committed suite (its runs/ folder is the out-dir)."""
    return suite_report.make_table(cli.parse(suite.get_args_parser(), list(argv)), REPO / VIT / folder / "runs", "")[0]


def budgets_table(*folders: str) -> str:
    designs: list = []
    suites = cb.load_suites([str(REPO / VIT / f / "runs") for f in folders], designs)
    return cb.make_table(suites, designs[0])[0]


def llm_report(grid: str, compare: str | None = None) -> str:
    return llm.report(Path(LLM) / grid, compare_dir=Path(LLM) / compare if compare else None, write=False)


TABLES = {  # committed file: (how it is written, the command that rewrites it)
    f"{VIT}/r192/results_R192_rates.md": (lambda: suite_table("r192", "--rounds", "192"), "copy r192/runs to an "
                                          "out-dir; run_all_experiments.py --table-only --rounds 192 --out-dir it"),
    f"{VIT}/r768_rates/results_R768_rates.md": (lambda: suite_table("r768_rates", "--rounds", "768"),
                                                "run_all_experiments.py --table-only --rounds 768 (as above)"),
    f"{VIT}/text_r24/results_text_R24_frozen_tables.md": (lambda: suite_table("text_r24", "--text"),
                                                          "run_all_experiments.py --text --table-only (as above)"),
    f"{VIT}/text_r48/results_text_R48.md": (lambda: suite_table("text_r48", "--text", "--rounds", "48"),
                                            "run_all_experiments.py --text --rounds 48 --table-only (as above)"),
    f"{VIT}/text_r96/results_text_R96.md": (lambda: suite_table("text_r96", "--text", "--rounds", "96"),
                                            "run_all_experiments.py --text --rounds 96 --table-only (as above)"),
    f"{VIT}/text_budgets/results_text_budgets_frozen_tables.md": (
        lambda: budgets_table("text_r12", "text_r24", "text_r48", "text_r96"),
        "compare_budgets.py vit_sparse_fl/results/text_r{12,24,48,96}/runs --out DIR"),
    f"{LLM}/ag_news/grid/report.md": (lambda: llm_report("ag_news/grid"),
                                      "run_experiments.py --mode analyze --out-dir llm_noniid/results/ag_news/grid"),
    f"{LLM}/pretrained/grid/report.md": (lambda: llm_report("pretrained/grid", "ag_news/grid"),
                                         "run_experiments.py --mode analyze --out-dir llm_noniid/results/pretrained/"
                                         "grid --compare-dir llm_noniid/results/ag_news/grid"),
}


def quantities(cell: str) -> dict:
    """The numbers a cell states, by what they are: a value's mean and sd, a difference's mean and interval, its
    seeds, p-value (as ``stats.fmt_p`` prints it), what its null rules out, its family's size, diverged seeds."""
    def p(text: str) -> str:
        return text if text.startswith("<") else stats.fmt_p(float(text))

    found = {}
    if m := re.search(rf"({NUM}) \[({NUM}), ({NUM})\]", cell):
        found["difference"] = m.groups()
    elif m := re.match(rf"({NUM})(?: ± ({NUM}))?", cell):
        found["value"] = m.groups()
    for key, pattern in {"n": r"\(n=(\d+)", "p_holm": rf"p_Holm (?:= )?(< 0\.001|{NUM})",
                         "p": rf"\bp (?:= )?(< 0\.001|{NUM})", "rules out": rf"rules out > ({NUM})",
                         "over": r"over (\d+)", "diverged": r"(\d+) diverged"}.items():
        if m := re.search(pattern, cell):
            found[key] = p(m[1]) if key.startswith("p") else m[1]
    return found


def rows(text: str) -> list[list[dict]]:
    """Every table row of a Markdown text (header and rule lines left out) as its cells' ``quantities``."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    out = []
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            continue  # a header
        out.append([q for cell in line.strip("|").split(" | ") if (q := quantities(cell.strip()))])
    return out


def same_numbers(committed: str, written: str) -> list[str]:
    """Where the rows' numbers differ: a quantity the committed cell states that the written one states otherwise
    or not at all (a value cell's seed count is left out where it is the study's, so n is compared where both
    state it); a comparison shown in one and not the other."""
    problems = []
    old, new = rows(committed), rows(written)
    if len(old) != len(new):
        return [f"{len(old)} table rows committed, {len(new)} written"]
    for i, (a, b) in enumerate(zip(old, new)):
        if len(a) != len(b) or any(("difference" in x) != ("difference" in y) for x, y in zip(a, b)):
            problems.append(f"row {i}: cells {a} committed, {b} written")
            continue
        problems += [f"row {i}: {key} {x[key]} committed, {y.get(key)} written" for x, y in zip(a, b) for key in x
                     if key != "n" and x[key] != y.get(key) or key == "n" and key in y and x[key] != y[key]]
    return problems


@pytest.mark.parametrize("path", list(TABLES))
def test_a_committed_table_is_what_its_records_give(path, monkeypatch):
    monkeypatch.chdir(REPO)  # the reports name their folders relative to the working directory
    write, command = TABLES[path]
    committed, written = (REPO / path).read_text(encoding="utf-8"), write()
    assert same_numbers(committed, written) == [], f"{path}: the numbers differ"
    assert committed == written, f"{path}: the wording differs; rewrite it: {command}"


def test_the_number_check_sees_a_changed_interval_and_a_dropped_comparison():
    table = "| arm | acc | Δ |\n|---|---|---|\n| a | 50.1 ± 1.0 | +1.2 [+0.2, +2.2] (n=3; p_Holm = 0.04 over 2) |\n"
    assert same_numbers(table, table) == []
    older = table.replace("(n=3; p_Holm = 0.04 over 2)", "(n=3), p_Holm 0.04")   # the family's size added
    assert same_numbers(older, table) == [] and same_numbers(table, older) != []
    assert same_numbers(table, table.replace("+2.2]", "+2.3]")) != []
    assert same_numbers(table, table.replace("| +1.2 [+0.2, +2.2] (n=3; p_Holm = 0.04 over 2) |", "| – |")) != []
    assert same_numbers(table.replace("50.1 ± 1.0", "50.1 ± 1.0 (n=3)"), table) == []   # n left out: the study's
