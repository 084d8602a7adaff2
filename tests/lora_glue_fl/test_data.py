"""GLUE readers (original TSV layouts), metrics against known values, shards and their manifests."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from common import cli
from lora_glue_fl import glue_shards, glue_tasks


def write(path, lines, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def test_task_table_covers_glue():
    assert set(glue_tasks.TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert glue_tasks.get_task("STSB").num_labels == 1 and glue_tasks.get_task("mnli").num_labels == 3
    with pytest.raises(cli.UsageError, match="unknown GLUE task 'sst3'"):
        glue_tasks.get_task("sst3")


def test_readers_for_original_layouts(tmp_path):
    # CoLA: no header; source, label, original label, sentence
    write(tmp_path / "cola/train.tsv", ["gj04\t1\t\tOur friends won't buy this analysis.",
                                        "gj04\t0\t*\tThey drank the pub."])
    cola = glue_tasks.read_tsv(tmp_path / "cola/train.tsv", "cola")
    assert cola.text_a == ["Our friends won't buy this analysis.", "They drank the pub."]
    assert cola.label.tolist() == [1, 0]
    # MRPC: BOM, quotes are literal text
    write(tmp_path / "mrpc/train.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                                        '1\t1\t2\tHe said "the witness\tHe said the witness.'], bom=True)
    mrpc = glue_tasks.read_tsv(tmp_path / "mrpc/train.tsv", "mrpc")
    assert mrpc.text_a == ['He said "the witness'] and mrpc.text_b == ["He said the witness."]
    assert mrpc.label.tolist() == [1]
    # MNLI: gold_label is the last column, genre kept, dev_matched / dev_mismatched
    head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
           "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
    row = lambda g, y: f"0\t1\t1n\t{g}\t( a )\t( b )\t(a)\t(b)\tA man.\tA person.\t{y}\t{y}"
    for f in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        write(tmp_path / "mnli" / f, [head, row("fiction", "neutral"), row("travel", "contradiction")])
    mnli = glue_tasks.read_glue_dir(tmp_path / "mnli", "mnli")
    assert set(mnli) == {"train", "validation_matched", "validation_mismatched"}
    assert mnli["train"].label.tolist() == [1, 2] and mnli["train"].genre == ["fiction", "travel"]
    # each row's gold_label is its own last column (dev files have five annotator columns, train one)
    dev_row = "0\t1\t1n\tslate\t( a )\t( b )\t(a)\t(b)\tA man.\tA person.\tneutral\t\t\t\tentailment\tentailment"
    write(tmp_path / "mnli_mixed.tsv", [head, dev_row, row("travel", "contradiction")])
    assert glue_tasks.read_tsv(tmp_path / "mnli_mixed.tsv", "mnli").label.tolist() == [0, 2]
    write(tmp_path / "mnli_short.tsv", [head, row("travel", "neutral"), row("travel", "neutral").rsplit("\t", 2)[0]])
    with pytest.raises(cli.UsageError, match=r"mnli_short.tsv:3: 10 columns, expected at least 11"):
        glue_tasks.read_tsv(tmp_path / "mnli_short.tsv", "mnli")
    # STS-B: float scores; RTE: string labels
    write(tmp_path / "stsb/dev.tsv",
          ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
           "0\tmain-news\tf\t2012\t1\tnone\tnone\tA plane.\tA jet.\t4.75"])
    assert glue_tasks.read_tsv(tmp_path / "stsb/dev.tsv", "stsb").label.tolist() == [4.75]
    write(tmp_path / "rte/train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tnot_entailment"])
    assert glue_tasks.read_tsv(tmp_path / "rte/train.tsv", "rte").label.tolist() == [1]
    # a foreign file: one clear line
    write(tmp_path / "bad/train.tsv", ["text\ty", "a\t1"])
    with pytest.raises(cli.UsageError, match="column 'sentence' missing"):
        glue_tasks.read_tsv(tmp_path / "bad/train.tsv", "sst2")
    with pytest.raises(cli.UsageError, match="dev.tsv not found"):
        glue_tasks.read_glue_dir(tmp_path / "cola", "cola")


def test_metrics_known_values():
    pred_logits = np.array([[0, 1], [0, 1], [1, 0], [1, 0], [0, 1]], dtype=float)   # predictions 1 1 0 0 1
    labels = np.array([1, 0, 0, 0, 1])                                               # tp 2 fp 1 tn 2 fn 0
    m = glue_tasks.compute_metrics("mrpc", {"validation": (pred_logits, labels)})
    assert m["accuracy"] == pytest.approx(0.8) and m["f1"] == pytest.approx(0.8)
    c = glue_tasks.compute_metrics("cola", {"validation": (pred_logits, labels)})
    assert c["matthews_corrcoef"] == pytest.approx(4 / 6)
    s = glue_tasks.compute_metrics("stsb",
                                   {"validation": (np.array([[1.], [2.], [3.], [4.]]), np.array([1., 4, 9, 16]))})
    assert s["pearson"] == pytest.approx(25 / math.sqrt(645)) and s["spearman"] == pytest.approx(1.0)
    three = np.eye(3)[[0, 1, 2, 0]]
    mn = glue_tasks.compute_metrics("mnli", {"validation_matched": (three, np.array([0, 1, 2, 0])),
                                             "validation_mismatched": (three, np.array([0, 1, 1, 1]))})
    assert (mn["accuracy_matched"], mn["accuracy_mismatched"], mn["accuracy_mean"]) == (1.0, 0.5, 0.75)
    assert glue_tasks.compute_metrics("qnli", {"validation": (pred_logits, labels)}) == {"accuracy": pytest.approx(0.8)}


def examples(n, labels=None, genre=None, seed=0):
    rng = np.random.default_rng(seed)
    y = np.asarray(labels if labels is not None else rng.integers(0, 2, n))
    return glue_tasks.Examples([f"s{i}" for i in range(n)], None, y, genre)


def test_iid_is_stratified_and_manifests_round_trip(tmp_path):
    train = examples(103, labels=[0] * 70 + [1] * 33)
    info = glue_shards.make_client_splits(train, "sst2", 4, "iid", seed=1)
    sizes = info["size_per_client"]
    assert sum(sizes) == 103 and max(sizes) - min(sizes) <= 1
    for h in info["label_histograms"]:                      # every client gets its share of each label
        assert abs(h["0"] - 70 / 4) <= 1 and abs(h["1"] - 33 / 4) <= 1
    assert set(info) >= {"client_indices", "size_per_client", "total_train", "task", "mode", "meta"}
    glue_shards.save_shard_manifests(tmp_path / "m", info)
    shards, summary = glue_shards.read_shard_manifests(tmp_path / "m")
    assert [s.tolist() for s in shards] == info["client_indices"]
    assert json.loads((tmp_path / "m/client_1.json").read_text())["dataset"] == "sst2"
    assert summary["meta"]["seed"] == 1
    again = glue_shards.make_client_splits(train, "sst2", 4, "iid", seed=1)
    assert again["client_indices"] == info["client_indices"]
    # a smaller K into the same folder leaves no stale client files
    glue_shards.save_shard_manifests(tmp_path / "m", glue_shards.make_client_splits(train, "sst2", 2, "iid", seed=1))
    assert len(glue_shards.read_shard_manifests(tmp_path / "m")[0]) == 2


def test_mnli_stratified_by_label_and_genre_and_stsb_by_bins():
    genres = ["fiction", "travel", "slate"] * 40
    train = examples(120, labels=[0, 1, 2, 2, 1, 0, 0, 0] * 15, genre=genres)
    keys = glue_shards.strata(train, "mnli")
    assert len(set(keys)) == 9 and keys[0] == "0|fiction"
    assert glue_shards.bin_scores([0.0, 0.19, 0.2, 4.99, 5.0]) == [0, 0, 1, 24, 24]
    grid = np.arange(26) / 5  # scores on the 0.2 edges, as the readers hold them (float32): each opens its bin
    assert glue_shards.bin_scores(grid.astype(np.float32)) == [*range(25), 24]
    stsb = glue_tasks.Examples(["a"] * 50, ["b"] * 50, np.linspace(0, 5, 50).astype(np.float32))
    info = glue_shards.make_client_splits(stsb, "stsb", 5, "iid", seed=0)
    assert sorted(i for c in info["client_indices"] for i in c) == list(range(50))


def test_overlap_shares_the_documented_fraction():
    train = examples(1000)
    info = glue_shards.make_client_splits(train, "sst2", 4, "overlap", seed=0, overlap_ratio=0.2)
    sets = [set(c) for c in info["client_indices"]]
    shared = set.intersection(*sets)
    for s in sets:
        assert len(shared) / len(s) == pytest.approx(0.2, abs=0.01)
        assert all(len((s - shared) & (t - shared)) == 0 for t in sets if t is not s)   # own parts disjoint
    assert set.union(*sets) == set(range(1000))


def test_category_modes_no_empty_clients():
    train = examples(60, labels=[0] * 30 + [1] * 30)
    info = glue_shards.make_client_splits(train, "sst2", 5, "category", seed=0, category_key="label")
    assert min(info["size_per_client"]) > 0
    assert all(len(h) == 1 for h in info["label_histograms"])     # each client holds one label only
    info = glue_shards.make_client_splits(train, "sst2", 2, "category_overlap", seed=0, category_key="label",
                                          overlap_ratio=0.25)
    a, b = (set(c) for c in info["client_indices"])
    assert len(a & b) > 0 and len(a | b) == 60
    with pytest.raises(cli.UsageError, match="category_key"):
        glue_shards.make_client_splits(train, "sst2", 2, "category", seed=0)
    with pytest.raises(cli.UsageError, match="not a column"):
        glue_shards.make_client_splits(train, "sst2", 2, "category", seed=0, category_key="genre")


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_overlap_ratio_outside_range_refused(ratio):
    with pytest.raises(cli.UsageError, match=r"overlap_ratio must be in \[0, 1\)"):
        glue_shards.make_client_splits(examples(20), "sst2", 2, "overlap", overlap_ratio=ratio)


def test_shard_dir_without_manifests_refused(tmp_path):
    with pytest.raises(cli.UsageError, match="no client_<i>.json manifests"):
        glue_shards.read_shard_manifests(tmp_path)


def _manifests(tmp_path, **client_1):
    """Two sst2 client manifests (and summary.json) with client_1.json's keys replaced by ``client_1``."""
    info = glue_shards.make_client_splits(examples(20), "sst2", 2, "iid", seed=0)
    glue_shards.save_shard_manifests(tmp_path, info)
    path = tmp_path / "client_1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **client_1}))
    return path


@pytest.mark.parametrize("indices, phrase", [(["1", "2"], r"\[0\] is '1'"), ([0, 1.5], r"\[1\] is 1.5"),
                                             ([0, True], "is True"), ([3, -1], "is -1"), ([], "empty"),
                                             ({"0": 1}, "must be a list"), ([[1, 2]], r"is \[1, 2\]")])
def test_manifest_indices_that_are_not_row_numbers_are_refused(tmp_path, indices, phrase):
    path = _manifests(tmp_path, indices=indices)
    with pytest.raises(cli.UsageError, match=phrase):
        glue_shards.read_shard_manifests(tmp_path)
    with pytest.raises(cli.UsageError, match=phrase):
        glue_shards.read_manifest(path)  # fedavg_merge's --shard_manifests


def test_manifests_of_another_dataset_are_refused(tmp_path):
    path = _manifests(tmp_path, dataset="mnli")
    with pytest.raises(cli.UsageError, match="mixes manifests of different datasets"):
        glue_shards.read_shard_manifests(tmp_path)
    with pytest.raises(cli.UsageError, match="made for 'mnli', not 'sst2'"):
        glue_shards.read_manifest(path, "sst2")
    assert len(glue_shards.read_manifest(path)) > 0  # no task named: any GLUE dataset
    (tmp_path / "summary.json").unlink()
    (tmp_path / "client_2.json").unlink()
    assert glue_shards.read_shard_manifests(tmp_path)[1]["task"] == "mnli"  # what callers compare with theirs
    _manifests(tmp_path, dataset="imagenet")
    with pytest.raises(cli.UsageError, match="'dataset' is 'imagenet'"):
        glue_shards.read_shard_manifests(tmp_path)


@pytest.mark.parametrize("score", ["nan", "inf", "-0.5", "5.5"])
def test_stsb_scores_outside_0_to_5_are_bad_input(tmp_path, score):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tmain-news\tf\t2012\t0\tnone\tnone\ta cat\ta dog\t{}\n"
    (tmp_path / "train.tsv").write_text(header + row.format("3.2") + row.format(score))
    with pytest.raises(cli.UsageError, match=f"score of example 2 is {score.lstrip('+')}"):
        glue_tasks.read_tsv(tmp_path / "train.tsv", "stsb")


def test_real_sst2_and_mrpc_files(shared_data):
    sst2 = glue_tasks.read_glue_dir(shared_data / "glue_sst2", "sst2")
    assert (len(sst2["train"]), len(sst2["validation"])) == (67349, 872)
    assert set(np.unique(sst2["train"].label)) == {0, 1}
    mrpc = glue_tasks.read_glue_dir(shared_data / "glue_mrpc", "mrpc")
    assert (len(mrpc["train"]), len(mrpc["validation"])) == (3668, 408)
    assert mrpc["train"].text_a[0].startswith("Amrozi accused his brother")
    assert mrpc["train"].label.mean() == pytest.approx(0.674, abs=0.01)   # 2474 / 3668 paraphrases
