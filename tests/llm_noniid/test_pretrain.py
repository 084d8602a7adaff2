"""pretrain.py: WikiText articles split by article, a cached Hugging Face folder that transformers loads with no
project code, learned past the unigram, resumed bit for bit after an interruption, and fine-tuned by train.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clicases import LLM_SMOKE, one_line_error

from llm_noniid import pretrain, pretraining, train

WORDS = "market team chip price season court vote match share player court law fund goal".split()


def wikitext(path, articles: int = 12, seed: int = 0):
    """A WikiText-layout file (' = Title = ' headings, ' = = Section = = ', paragraphs in tokenized spacing)
    whose articles each favour a few words, so a model can learn more than their frequencies."""
    rng = np.random.default_rng(seed)
    lines = []
    for a in range(articles):
        favour = rng.choice(WORDS, 3, replace=False)
        lines += ["", f" = Article {a} = ", ""]
        for p in range(8):
            if p == 4:
                lines += [" = = Section = = ", ""]
            words = [favour[i % 3] if rng.random() < 0.6 else rng.choice(WORDS) for i in range(40)]
            lines += [" " + " ".join(words) + " @-@ the end , as said . ", ""]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_articles_split_without_overlap_and_detokenized(tmp_path):
    arts = pretraining.read_articles([str(wikitext(tmp_path / "a.raw", 20)), str(wikitext(tmp_path / "a.raw", 20))])
    assert len(arts) == 20  # the same file twice: every article once
    parts = pretraining.split_articles(arts, seed=0)
    titles = [{t for t, _ in parts[k]} for k in ("train", "valid", "test")]
    assert sum(map(len, titles)) == 20 and not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2])
    assert len(titles[1]) == len(titles[2]) == 1
    assert pretraining.detokenize("a @-@ b , c ( d ) 5 @.@ 3 end .") == "a-b, c (d) 5.3 end."
    assert "Section" not in arts[0][1]  # section headings are not text
    (tmp_path / "short.raw").write_text(" = A = \n Alpha text . \n = B = \n Beta text . \n = C = \n Gamma . \n")
    assert [t for t, _ in pretraining.read_articles([str(tmp_path / "short.raw")])] == ["A", "B", "C"]


def test_quick_base_loads_without_project_code_learns_and_is_cached(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    argv = ["--quick", "--text-files", str(wikitext(tmp_path / "w.raw")), "--cache-dir", str(tmp_path / "c"),
            "--steps", "60", "--eval-every", "30", "--lr", "3e-3"]
    folder = pretrain.main(argv)
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(folder)
    info = json.loads((folder / "pretrain.json").read_text())
    assert info["test_ppl"] < 0.8 * info["unigram_ppl"] < info["uniform_ppl"]  # clearly past token frequencies
    assert info["articles"] == {"train": 10, "valid": 1, "test": 1} and info["best_step"] in (30, 60)
    assert info["cpu_seconds_last_session"] > 0 and info["load_start"] >= 0 and info["load_end"] >= 0
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "gpt2" and len(tok) <= model.config.vocab_size
    ids = tok("market team chip", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert pretrain.main(argv) == folder and (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert "pretrained in" in capsys.readouterr().out  # the cached base is reported, not retrained
    assert pretrain.main([*argv, "--seed", "1"]) != folder  # another setting: another key
    (tmp_path / "lr.yaml").write_text("lr: 3.0e-3\n")  # the same settings from a YAML file: the same base
    assert pretrain.main([*[a for a in argv if a not in ("--lr", "3e-3")], "--config", str(tmp_path / "lr.yaml")]) \
        == folder

    s = train.main(["--quick", *LLM_SMOKE, "--num-rounds", "2", "--model", str(folder), "--lora-r", "2",
                    "--out-dir", str(tmp_path / "runs"), "--run-name", "r"])
    assert s["status"] == "complete" and s["vocab_size"] == len(tok)


def test_an_interrupted_pretraining_resumes_bit_for_bit(tmp_path, monkeypatch):
    text = str(wikitext(tmp_path / "w.raw"))
    argv = ["--quick", "--text-files", text, "--steps", "40", "--eval-every", "10", "--quiet"]
    whole = pretrain.main([*argv, "--cache-dir", str(tmp_path / "a")])
    saves, real = [], pretraining.save_checkpoint

    def interrupted(*a, **k):
        real(*a, **k)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretraining, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main([*argv, "--cache-dir", str(tmp_path / "b")])
    monkeypatch.setattr(pretraining, "save_checkpoint", real)
    resumed = pretrain.main([*argv, "--cache-dir", str(tmp_path / "b")])
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (json.loads((f / "pretrain.json").read_text())["history"] for f in (whole, resumed))
    assert ha == hb and len(ha) == 4


@pytest.mark.parametrize("extra, expected", [
    (["--n-head", "3"], "--n-head 3 must divide --n-embd"),
    (["--text-files", "{missing}"], "does not exist"),
    (["--text-files", "{no_titles}"], "hold 0 articles"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),  # numpy's RNG would raise later
    (["--weight-decay", "-0.1"], "--weight-decay must be at least 0"),
])
def test_bad_input_fails_in_one_line(extra, expected, tmp_path, capsys):
    (tmp_path / "plain.txt").write_text("just a line of text\nand another\n")
    extra = [e.format(missing=tmp_path / "none.raw", no_titles=tmp_path / "plain.txt") for e in extra]
    line = one_line_error(pretrain.main, ["--quick", "--cache-dir", str(tmp_path / "c"), *extra], capsys)
    assert expected in line, line
    assert not (tmp_path / "c").exists()


def test_a_diverged_pretraining_exits_3_with_a_diverged_summary(tmp_path, capsys):
    """Every validation perplexity NaN (a rate of 1e30): exit 3 in one line, summary.json ``status: diverged`` in
    the work folder, no base made (before: best model None, a TypeError traceback)."""
    from common import cli

    argv = ["--quick", "--quiet", "--lr", "1e30", "--text-files", str(wikitext(tmp_path / "w.raw")),
            "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as e:
        cli.run(pretrain.main, argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 3 and "\n" not in err and "Traceback" not in err and "diverged" in err, err
    (summary,) = (tmp_path / "cache").glob("*.run/summary.json")
    record = json.loads(summary.read_text())
    assert record["status"] == "diverged" and record["diverged_at"] == "step 20"
    assert not list((tmp_path / "cache").glob("*/pretrain.json"))


def test_the_cache_key_holds_the_torch_threads(tmp_path, monkeypatch):
    """Two thread counts split the float sums differently, so they make two bases (different in the last bits): each
    its own folder, never one folder for both."""
    keys = []
    monkeypatch.setattr(pretraining.CK, "built_once",
                        lambda root, key, ready, build: keys.append(key) or tmp_path / key)
    argv = ["--quick", "--quiet", "--text-files", str(wikitext(tmp_path / "w.raw")), "--cache-dir", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 1):
            pretrain.main([*argv, "--threads", str(n)])
    finally:
        torch.set_num_threads(threads)
    assert keys[0] != keys[1] and keys[0] == keys[2], keys
