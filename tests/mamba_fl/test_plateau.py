"""Real-text mode: the article split (train / validation / test, no article in two), the plateau rule and the
best-validation model scored once on the test articles after training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clicases import the_run

from common.early_stop import EarlyStop
from mamba_fl import central, fed_avg, lmdata, split_wikitext


def _articles(prefix: str, n: int) -> str:
    art = " = {p} {i} = \n\n = = Part = = \n\n Words of {p} {i} here .\n\n"
    return "\n" + "".join(art.format(p=prefix, i=i) for i in range(n))


def test_split_pools_files_and_never_puts_an_article_in_two_parts(tmp_path):
    a, b = tmp_path / "valid.txt", tmp_path / "test.txt"
    a.write_text(_articles("Alpha", 12), encoding="utf-8")
    b.write_text(_articles("Beta", 8), encoding="utf-8")
    argv = ["--raw", str(a), str(b), "--valid-fraction", "0.1", "--test-fraction", "0.2", "--shuffle-seed", "3"]
    info = split_wikitext.main(argv + ["--out-dir", str(tmp_path / "s")])
    titles = {k: set(info[f"{k}_titles"]) for k in ("train", "valid", "test")}
    assert [len(t) for t in titles.values()] == [14, 2, 4]
    parts = list(titles.values())
    assert all(not (parts[i] & parts[j]) for i in range(3) for j in range(i + 1, 3))
    assert set.union(*titles.values()) == {f"Alpha {i}" for i in range(12)} | {f"Beta {i}" for i in range(8)}
    texts = {k: (tmp_path / "s" / f).read_text(encoding="utf-8") for k, f in
             (("train", "wiki.train.raw"), ("valid", "wiki.valid.raw"), ("test", "wiki.test.raw"))}
    for part, names in titles.items():  # each article whole, in the split it was dealt to
        for t in names:
            assert f" = {t} = \n\n = = Part = = \n\n Words of {t} here .\n" in texts[part]
    assert [s["articles"] for s in info["sources"]] == [12, 8]
    again = split_wikitext.main(argv + ["--out-dir", str(tmp_path / "t")])  # the seed fixes the deal
    assert again["test_titles"] == info["test_titles"]
    other = split_wikitext.main(argv[:-1] + ["4", "--out-dir", str(tmp_path / "u")])
    assert other["test_titles"] != info["test_titles"]


def test_early_stop_waits_for_patience_and_keeps_the_best():
    stop = EarlyStop(patience=3, min_improvement=0.01)
    p = [torch.zeros(2)]
    seen = []
    for at, v in enumerate([10.0, 9.0, 8.95, 8.94, 8.93, 8.0]):
        p[0].fill_(v)
        seen.append(stop.update(v, at, p))
    # 9.0 improves by 10 %; the next three are within 1 % of it: the third of them stops the run
    assert seen == [False, False, False, False, True, True] and stop.stopped_at == 4
    assert (stop.best, stop.best_at) == (8.0, 5)
    q = [torch.ones(2)]
    stop.restore_(q)
    assert q[0].tolist() == [8.0, 8.0]
    again = EarlyStop(3)
    again.load_state_dict(stop.state_dict())
    assert again.summary() == stop.summary() and again.summary()["stopped"] == "plateau"


def test_early_stop_keeps_the_budgets_best_and_never_stops_before_it():
    stop = EarlyStop(patience=2, min_improvement=0.01, budget_at=5)
    p = [torch.zeros(1)]
    seen = []
    for at, v in enumerate([10.0, 9.0, 9.5, 9.6, 9.7, 8.0], start=1):
        p[0].fill_(v)
        seen.append(stop.update(v, at, p))
    # patience is spent at evaluation 4, where the run would stop without a budget; it stops at budget_at
    assert seen == [False, False, False, False, True, True] and stop.stopped_at == 5
    s = stop.summary()
    assert (s["budget_at"], s["budget_best_val_ppl"], s["budget_best_at"]) == (5, 9.0, 2)
    assert (s["best_val_ppl"], s["best_at"]) == (8.0, 6)
    q = [torch.ones(1)]
    stop.restore_(q, budget=True)
    assert q[0].item() == 9.0
    again = EarlyStop(2, budget_at=5)
    again.load_state_dict(stop.state_dict())
    again.restore_(q)
    assert q[0].item() == 8.0 and again.summary() == s
    assert "budget_at" not in EarlyStop(2).summary()
    # a budget between two evaluations: the best of those before it, not of the first one after it
    between = EarlyStop(patience=0, budget_at=25)
    for at, v in ((10, 5.0), (20, 4.0), (30, 3.0), (40, 2.0)):
        between.update(v, at, [torch.full((1,), v)])
    assert (between.summary()["budget_best_val_ppl"], between.summary()["budget_best_at"]) == (4.0, 20)


def test_budget_result_of_a_long_run_is_the_short_runs_result(tiny, split_dir, tmp_path):
    """--budget-at N in a longer run gives exactly what a run of N rounds reports: its best-validation model, its
    validation and test perplexity (a constant rate: the short run is the long run's prefix). Federated only: central.py
    reports through the same lmdata.reported_model and EarlyStop."""
    base = ["--data-dir", str(split_dir), "--test", "--lr", "2e-2", "--eval-every", "1"]
    short = fed_avg.main(tiny(*base, "--rounds", "3", "--out-dir", str(tmp_path / "short")))
    long = fed_avg.main(tiny(*base, "--rounds", "6", "--budget-at", "3", "--out-dir", str(tmp_path / "long")))
    assert long["budget_best_val_ppl"] == short["best_val_ppl"] and long["budget_best_at"] == short["best_at"]
    assert long["budget_test_ppl"] == pytest.approx(short["test_ppl"], rel=1e-6)
    assert long["budget_test_unigram_ppl"] == short["test_unigram_ppl"]
    assert long["best_val_ppl"] <= short["best_val_ppl"] and long["stopped"] == "budget"


def _never_reads_test(monkeypatch):
    real = Path.read_text

    def guarded(self, *a, **kw):
        assert self.name != lmdata.TEST_FILE, "the test split was read during training"
        return real(self, *a, **kw)
    monkeypatch.setattr(Path, "read_text", guarded)
    return real


@pytest.mark.parametrize("script", ["central", "fedavg"])
def test_plateau_stops_and_the_best_model_is_tested_after_training(script, tiny, split_dir, out_dir, monkeypatch):
    """central with --test: the best model scored on the test articles; fedavg without: the file never opened."""
    main = central.main if script == "central" else fed_avg.main
    length = ["--max-steps", "8"] if script == "central" else ["--rounds", "8", "--eval-every", "1"]
    argv = tiny("--data-dir", str(split_dir), *length, "--patience", "2", "--min-improvement", "0.5", "--lr", "2e-2")
    if script == "fedavg":
        _never_reads_test(monkeypatch)
    summary = main(argv + (["--test"] if script == "central" else []))
    assert summary["stopped"] == "plateau" and summary["stopped_at"] < 8  # no evaluation halves perplexity
    rows = [json.loads(line) for line in the_run(out_dir).joinpath("metrics.jsonl").read_text().splitlines()]
    assert len(rows) == summary["stopped_at"]
    assert summary["best_val_ppl"] == min(r["val_ppl"] for r in rows)
    assert rows[summary["best_at"] - 1]["val_ppl"] == summary["best_val_ppl"]
    done = summary["steps_done"] if script == "central" else summary["rounds_done"]
    assert done == summary["stopped_at"]
    if script == "fedavg":
        assert "test_ppl" not in summary
    else:
        assert 1 < summary["test_ppl"] < summary["test_uniform_ppl"] and summary["test_unigram_ppl"] > 1
        assert summary["test_blocks"] > 0 and summary["test_ppl_word"] > 1


def test_test_needs_a_test_file(tiny, tmp_path, capsys):
    from clicases import one_line_error

    assert "wiki.test.raw" in one_line_error(central.main, tiny("--max-steps", "1", "--test"), capsys)


def test_document_topics_recovers_topics_that_share_function_words():
    from common.shard import document_topics

    rng = np.random.default_rng(0)
    fillers = "the of and a in to is was".split()
    themes = ["storm wind rain coast landfall".split(), "goal season match league club".split(),
              "song album chart single band".split()]
    truth = [i % 3 for i in range(30)]
    docs = [" ".join(rng.choice(fillers + themes[t], size=200)) for t in truth]
    labels = document_topics(docs, 3, seed=1)
    assert len({(t, lab) for t, lab in zip(truth, labels)}) == 3  # each theme is one topic, each topic one theme
    assert (document_topics(docs, 3, seed=1) == labels).all()


def test_topic_shards_on_real_text_give_clients_different_articles(tiny, split_dir, out_dir):
    from common import cli
    from mamba_fl import federated

    args = cli.parse(fed_avg.get_args_parser(), tiny("--data-dir", str(split_dir), "--shard", "topic",
                                                     "--num-clients", "3"))
    federated.finish_args(args)
    data = lmdata.load_lm_data(args)
    shards = lmdata.client_shards(args, data)
    assert sorted(np.concatenate(shards).tolist()) == list(range(data.train.shape[0]))  # a partition
    topics = [set(data.train_topics[s].tolist()) for s in shards]
    assert all(topics) and not any(topics[i] & topics[j] for i in range(3) for j in range(i + 1, 3))
