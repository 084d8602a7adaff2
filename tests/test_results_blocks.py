"""Every number a README states in a results block is what its committed records give: ``python -m common.results
--check`` passes on the checkout, and fails, naming the block, once a number inside a block is edited by hand."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from common import results, stats

ROOT = results.ROOT


def test_every_block_matches_its_records():
    run = subprocess.run([sys.executable, "-m", "common.results", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)  # about 20 s idle; minutes on a loaded machine
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 differ; 0 statistic(s) outside a block" in run.stdout


def test_an_edited_number_fails_naming_its_block(tmp_path):
    copy = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", copy)
    text = copy.read_text(encoding="utf-8")
    block = next(m for m in results.BLOCK.finditer(text) if m["name"] == "vit_sparse_fl.study-r192")
    edited = re.sub(r"\+8\.3", "+9.3", block["body"], count=1)
    assert edited != block["body"]
    copy.write_text(text.replace(block["body"], edited), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "common.results", "--check", str(copy)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert run.returncode == 1
    assert "vit_sparse_fl.study-r192" in run.stdout and "1 differ" in run.stdout
    fixed = subprocess.run([sys.executable, "-m", "common.results", "--write", str(copy)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert fixed.returncode == 0 and copy.read_text(encoding="utf-8") == text


def test_markers_are_refused_unpaired_or_unknown():
    with pytest.raises(results.UsageError, match="without its pair"):
        results.blocks_in("<!-- results:a.b -->\ntext\n")
    with pytest.raises(results.UsageError, match="no generator for results block"):
        results.render("<!-- results:a.b -->\nold\n<!-- /results:a.b -->\n", {})
    # an indented block (inside a list item) keeps its indentation on every generated line
    text = "- item\n  <!-- results:a.b -->\n  old\n  <!-- /results:a.b -->\n"
    assert results.render(text, {"a.b": "new\nlines"}) == \
        "- item\n  <!-- results:a.b -->\n  new\n  lines\n  <!-- /results:a.b -->\n"


def test_the_vocabulary_names_the_family_and_its_size():
    clear = stats.paired({0: 10.0, 1: 11.0, 2: 12.0}, {0: 5.0, 1: 5.5, 2: 6.2})
    null = stats.paired({0: 1.0, 1: 2.0, 2: 1.5}, {0: 1.2, 1: 1.7, 2: 1.5})
    v = stats.holm({"clear": clear, "null": null})
    assert stats.claim(clear, v["clear"], 2).endswith(f"(n=3; p_Holm = {stats.fmt_p(v['clear'].p_holm)} over 2)")
    assert stats.claim(null, v["null"], 2).endswith(f"no difference after Holm over 2; rules out > "
                                                    f"{stats.ruled_out(null, 2):.1f})")
    alone = stats.holm({"clear": clear})["clear"]
    assert "a single comparison; no correction" in stats.claim(clear, alone, 1)
    assert "Holm" not in stats.claim(clear, alone, 1)
    assert "a single comparison; no correction" in stats.fmt_verdict(clear, alone, m=1)
    assert [stats.fmt_p(p) for p in (0.00017, 0.0028, 0.05, 0.4321)] == ["< 0.001", "0.0028", "0.05", "0.43"]


def test_explained_share_comes_from_the_remainders_interval():
    # gap 10; the remainder (ref - control) is 0 +- 1: nearly all of the gap is explained, never more than all
    tight = stats.paired({0: 1.0, 1: -1.0, 2: 0.5, 3: -0.5}, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0})
    assert 0.7 < stats.explained(tight, 10.0) <= 1.0
    # a remainder whose interval reaches the whole gap explains nothing
    wide = stats.paired({0: 12.0, 1: -8.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert stats.explained(wide, 10.0) == 0.0
    # the gap's sign decides which end of the interval bounds the remainder
    assert stats.explained(tight, -10.0) == stats.explained(tight, 10.0)


def test_show_reads_your_runs_in_place_of_the_committed_records(tmp_path):
    """``--show NAME --records COMMITTED=YOURS``: the same block, written by the same code, from another folder."""
    mine = tmp_path / "base"
    shutil.copytree(ROOT / "llm_noniid/results/pretrained/base", mine)
    info = (mine / "pretrain.json").read_text(encoding="utf-8")
    committed = subprocess.run([sys.executable, "-m", "common.results", "--show", "llm_noniid.base"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert committed.returncode == 0 and "test perplexity 80.7" in committed.stdout, committed.stderr
    (mine / "pretrain.json").write_text(re.sub(r'("test_ppl": )[0-9.]+', r"\g<1>99.94", info, count=1),
                                        encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "common.results", "--show", "llm_noniid.base", "--records",
                          f"llm_noniid/results/pretrained/base={mine}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert "test perplexity 99.9" in run.stdout and "80.7" not in run.stdout
    bad = subprocess.run([sys.executable, "-m", "common.results", "--check", "--records", f"x={mine}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and "--records goes with --show" in bad.stderr


def test_a_redirect_moves_the_folders_inside_it(tmp_path):
    results.REDIRECTS["a/results"] = tmp_path
    try:
        assert results.path("a/results/r192/x.json") == tmp_path / "r192/x.json"
        assert results.path("a/results") == tmp_path
        assert results.path("b/results") == ROOT / "b/results"
    finally:
        results.REDIRECTS.clear()


def test_the_detectors_block_chooses_on_the_calibration_runs_and_counts_on_the_held_out_ones(tmp_path):
    """A held-out healthy run made to drift (its clients' loss 0.9 nats under the validation loss) is one more false
    alarm in the block's drift row, and the threshold the calibration runs chose stays where it was."""
    held = "llm_noniid/results/pretrained/detectors"
    mine = tmp_path / "detectors"
    shutil.copytree(ROOT / held, mine)
    run = next(p for p in sorted(mine.iterdir()) if p.name.startswith("fedavg_iid_k10_p1_lr0.01_j8_"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "train_loss": r["val_loss"] - 0.9} if "val_loss" in r
                                                          and "train_loss" in r else r) + "\n" for r in rows))

    def drift_row(*extra: str) -> list[str]:
        shown = subprocess.run([sys.executable, "-m", "common.results", "--show", "llm_noniid.detectors", *extra],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
        assert shown.returncode == 0, shown.stderr
        row = next(line for line in shown.stdout.splitlines() if line.startswith("| client_drift |"))
        return row.split(" | ")

    before, after = drift_row(), drift_row("--records", f"{held}={mine}")
    assert after[2:5] == before[2:5] and "(chosen" in before[2]  # chosen on seeds 0-2, as flagged there
    k, n = (int(x) for x in before[5].split(" ")[0].split("/"))
    assert after[5].startswith(f"{k + 1}/{n} ")


def test_a_statistic_outside_a_block_is_found():
    text = ("Setup: K = 50 clients, 3 seeds.\n"
            "<!-- results:a.b -->\nFedAvg 93.7 ± 0.2, +8.3 [+6.1, +10.5] (n=3; p_Holm = 0.04 over 30)\n"
            "<!-- /results:a.b -->\n"
            "```\npython x.py  # 1.0 ± 0.1\n```\n"
            "`mean ± sd` is the format; dense 80.3 ± 1.6.\n"
            "the gap +2.4 [+1.2, +3.5], p_Holm = 0.0042 over 14\n")
    assert [n for n, _ in results.loose(text)] == [8, 9]
    assert results.report_loose(["README.md"], ROOT) == 0  # the top README states no statistic by hand


def test_check_fails_on_a_statistic_stated_by_hand(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# a study\n\nFedAvg reached 93.7 ± 0.2 on the test set.\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "common.results", "--check", str(readme)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert run.returncode == 1
    assert "README.md:3: a statistic outside a results block" in run.stdout and "1 statistic(s)" in run.stdout


def test_the_benchmarks_summary_reads_the_record(tmp_path):
    """``benchmarks.summary`` states the record's numbers: a changed row changes the sentence, a missed target is
    named with its value and target, and a record without the rows it reads is refused."""
    head = "| benchmark | setting | metric | value | target | met? |\n|---|---|---|---|---|---|\n"
    rows = ["| llm_noniid | fedavg | round overhead (outside local steps) | 2.5% of 0.2 s | < 5% | yes |",
            "| mamba_fl | 1 layer | FedFisher round overhead (includes its Fisher) | 62.7% | - | - |",
            "| mamba_fl | 1 layer | FedAvg round overhead | 0.9% | < 5% | yes |",
            "| aggregate | quiet, load 1 | FedAvgM step vs Flower | 2.93x faster (11 vs 33 ms) | >= 2.5x | yes |",
            "| aggregate | quiet, load 1 | FedAdam step vs Flower | 2.42x faster (27 vs 64 ms) | >= 2.5x | NO |",
            "| aggregate | busy (2 busy loops) | FedAdam step vs Flower | 3.19x faster (42 vs 135 ms) | >= 1x | yes |"]
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n" + head + "\n".join(rows) + "\n", encoding="utf-8")
    gens = results.generators()
    results.REDIRECTS["benchmarks"] = tmp_path
    try:
        text = gens["benchmarks.summary"]()
        assert "is 0.9 to 2.5 % of a round" in text  # FedFisher's Fisher is the method's work, not overhead
        assert "(2.4x to 2.9x quiet, 3.2x with every core busy)" in text
        assert "1 quiet target is missed (FedAdam step vs Flower 2.42x faster, target >= 2.5x)" in text
        (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n" + head, encoding="utf-8")
        with pytest.raises(results.UsageError, match="no overhead or aggregate rows"):
            gens["benchmarks.summary"]()
    finally:
        results.REDIRECTS.clear()
