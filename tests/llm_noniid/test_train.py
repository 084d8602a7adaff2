"""train.py end to end with --quick: metrics and summary, algorithm equivalences through the real script,
resume (SCAFFOLD state included), divergence stop, YAML config, and one-line errors for bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from clicases import LLM_SMOKE, the_run

from common import cli
from common.checkpoint import load_checkpoint
from common.client_store import committed_rows
from common.config import parse_with_config
from common.engine import STORE_DIR
from llm_noniid import federated, train

REPO = Path(__file__).resolve().parents[2]
ROUND_KEYS = {"round", "val_loss", "val_ppl", "train_loss", "client_train_loss", "grad_norm_var",
              "client_divergence", "client_divergence_rel", "cosine_drift", "prox_term", "participants"}


def rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (the_run(out_dir) / "metrics.jsonl").read_text().splitlines()]


def quick(out_dir, *extra):
    return train.main(["--quick", *LLM_SMOKE, "--quiet", "--out-dir", str(out_dir), *extra])


def test_quick_run_writes_every_metric(out_dir):
    s = quick(out_dir, "--partition", "topic_skew", "--alpha", "0.1")
    assert s["status"] == "complete" and s["rounds_done"] == 3 and s["failure_modes"] == {}
    r = rows(out_dir)
    assert len(r) == 3 and all(ROUND_KEYS <= set(x) for x in r)
    assert all(math.isfinite(x["val_loss"]) for x in r)
    assert r[-1]["val_loss"] < r[0]["val_loss"]  # it learns
    assert s["final_val_ppl"] < s["vocab_size"]  # better than uniform over the vocabulary
    run = the_run(out_dir)
    stats = json.loads((run / "partition.json").read_text())
    assert stats["mean_classes_per_client"] < 4 and len(stats["clients"]) == 4
    assert s["bytes_up"] == s["bytes_down"] == 3 * 4 * 4 * s["trainable_params"]


def test_fedprox_mu_zero_equals_fedavg_in_the_script(tmp_path):
    flags = ["--num-rounds", "2", "--max-local-steps", "2", "--partition", "topic_skew"]
    a = quick(tmp_path / "a", "--algorithm", "fedavg", *flags)
    b = quick(tmp_path / "b", "--algorithm", "fedprox", "--mu", "0", *flags)
    assert [x["val_loss"] for x in rows(tmp_path / "a")] == [x["val_loss"] for x in rows(tmp_path / "b")]
    assert a["final_val_ppl"] == b["final_val_ppl"]


def test_scaffold_one_step_equals_fedavg_in_the_script(tmp_path):
    flags = ["--num-rounds", "1", "--max-local-steps", "1", "--partition", "topic_skew", "--alpha", "0.1",
             "--lora-r", "4"]
    a = quick(tmp_path / "a", "--algorithm", "fedavg", *flags)
    b = quick(tmp_path / "b", "--algorithm", "scaffold", *flags)
    assert a["final_val_loss"] == pytest.approx(b["final_val_loss"], rel=1e-6)
    assert rows(tmp_path / "b")[0]["cv_norm"] > 0  # the control variates did move


def test_resume_reproduces_the_uninterrupted_scaffold_run(tmp_path):
    flags = ["--algorithm", "scaffold", "--participation-rate", "0.5", "--partition", "token_skew",
             "--token-skew", "vocabulary", "--lora-r", "4", "--learning-rate", "0.05", "--run-name", "r"]
    quick(tmp_path / "full", *flags, "--num-rounds", "3")
    quick(tmp_path / "part", *flags, "--num-rounds", "2")
    quick(tmp_path / "part", *flags, "--num-rounds", "3", "--resume", "--extend")
    full, part = rows(tmp_path / "full"), rows(tmp_path / "part")
    assert len(part) == 3
    for x, y in zip(full, part):
        for key in ("participants", "val_loss", "train_loss", "cv_norm", "cv_client_norm", "client_divergence"):
            assert x[key] == y[key], key
    ca = load_checkpoint(tmp_path / "full" / "r" / "checkpoint.pt", "llm_noniid/train")
    cb = load_checkpoint(tmp_path / "part" / "r" / "checkpoint.pt", "llm_noniid/train")
    assert ca["round"] == cb["round"] == 3
    sa, sb = (committed_rows(tmp_path / run / "r" / STORE_DIR, c["client_store"], "scaffold_c0")  # one cluster
              for run, c in (("full", ca), ("part", cb)))
    assert sorted(sa) == sorted(sb) and len(sa) >= 2
    for k in sa:
        assert all(torch.equal(u, v) for u, v in zip(sa[k], sb[k]))
    assert all(torch.equal(ca["global"][n], cb["global"][n]) for n in ca["global"])


def test_an_interrupted_adamw_cosine_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """The pretrained regime's setting (local AdamW, a cosine over the rounds, IFCA): a run stopped after its
    second round and resumed with the same flags logs the uninterrupted run's rows exactly (the grid runner's
    resume path)."""
    flags = ["--local-optimizer", "adamw", "--lr-schedule", "cosine", "--learning-rate", "0.01", "--lora-r", "4",
             "--partition", "topic_skew", "--clustering", "ifca", "--num-clusters", "2", "--num-rounds", "4",
             "--run-name", "r"]
    quick(tmp_path / "full", *flags)
    end = federated.LlmTask.round_end

    def stop_after_two(self, rnd):
        end(self, rnd)
        if rnd["round"] == 2:  # round 3 of 4 trained, not yet logged: the checkpoint holds round 2
            raise KeyboardInterrupt

    monkeypatch.setattr(federated.LlmTask, "round_end", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        quick(tmp_path / "part", *flags)
    assert len(rows(tmp_path / "part")) == 2
    monkeypatch.setattr(federated.LlmTask, "round_end", end)
    s = quick(tmp_path / "part", *flags, "--resume")
    full, part = rows(tmp_path / "full"), rows(tmp_path / "part")
    assert len(part) == 4 and s["rounds_done"] == 4
    for x, y in zip(full, part):
        for key in ("participants", "clusters", "val_loss", "personal_val_loss", "train_loss", "client_divergence"):
            assert x.get(key) == y.get(key), (x["round"], key)


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(out_dir, capsys):
    with pytest.raises(SystemExit) as e:
        cli.run(train.main, ["--quick", *LLM_SMOKE, "--quiet", "--out-dir", str(out_dir), "--lora-r", "0",
                             "--learning-rate", "30", "--num-rounds", "4", "--run-name", "d"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after save_pretrained's progress bars)
    s = json.loads((out_dir / "d" / "summary.json").read_text())
    at = s["failure_modes"]["divergence"]
    assert e.value.code == 3 and f"non-finite validation loss at round {at}" in err
    assert s["status"] == "diverged" and s["diverged_at"] == f"round {at}"
    assert s["rounds_done"] == at < 4 and s["final_val_ppl"] == math.inf  # the whole summary, with the NaN row
    ckpt = out_dir / "d" / "checkpoint.pt"
    if at > 1:
        state = load_checkpoint(ckpt, "llm_noniid/train")
        assert state["round"] == at - 1 and all(torch.isfinite(t).all() for t in state["global"].values())
        assert f"checkpoint.pt keeps the last finite state (round {at - 1})" in err
    else:  # the message says so instead of naming a round 0 that was never saved
        assert not ckpt.exists() and "no checkpoint had been saved" in err and "keeps" not in err


def test_resuming_a_finished_run_returns_its_summary(out_dir):
    """--resume of a run that already ran all its rounds trains nothing and ends as the run ended."""
    first = quick(out_dir, "--num-rounds", "2", "--run-name", "done")
    again = quick(out_dir, "--num-rounds", "2", "--run-name", "done", "--resume")
    for key in ("status", "rounds_done", "final_val_loss", "local_steps_per_round", "clusters"):
        assert again[key] == first[key], key
    assert first["local_steps_per_round"] > 0


def test_yaml_config_maps_onto_flags_and_cli_overrides(tmp_path):
    args = parse_with_config(train.get_args_parser(), ["--config", str(REPO / "llm_noniid/configs/default.yaml")])
    assert (args.model, args.partition, args.num_rounds, args.learning_rate) == ("distilgpt2", "topic_skew", 50, 5e-5)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num-rounds: 7\nalgorithm: fedprox\nlearning_rate: 1e-3\n")
    args = parse_with_config(train.get_args_parser(), ["--config", str(cfg), "--algorithm", "scaffold"])
    assert (args.num_rounds, args.algorithm, args.learning_rate) == (7, "scaffold", 1e-3)


BAD = {
    "unknown algorithm": (["--algorithm", "fedsgd"], "--algorithm: invalid choice: 'fedsgd'"),
    "unknown partition": (["--partition", "label_flip"], "--partition 'label_flip' is unknown"),
    "unknown lr schedule": (["--lr-schedule", "step"], "--lr-schedule 'step' is unknown"),
    "alpha zero": (["--partition", "topic_skew", "--alpha", "0"], "--alpha must be > 0"),
    "alpha negative": (["--alpha", "-1"], "--alpha must be > 0"),
    "participation zero": (["--participation-rate", "0"], "--participation-rate must be in (0, 1]"),
    "participation above one": (["--participation-rate", "1.5"], "--participation-rate must be in (0, 1]"),
    "yaml unknown key": (["--config", "{yaml}"], "unknown key 'num_epochs'"),
    "missing yaml": (["--config", "{missing}"], "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_with_one_line(case, tmp_path, capsys):
    argv, expected = BAD[case]
    (tmp_path / "bad.yaml").write_text("num_rounds: 3\nnum_epochs: 2\n")
    argv = [a.format(yaml=tmp_path / "bad.yaml", missing=tmp_path / "none.yaml") for a in argv]
    with pytest.raises(SystemExit) as e:
        cli.run(train.main, ["--quick", *LLM_SMOKE, "--out-dir", str(tmp_path / "runs"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_uncached_hub_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit):
        cli.run(train.main, ["--quick", *LLM_SMOKE, "--model", "distilgpt2", "--tokenizer", "bpe", "--cache-dir",
                             str(tmp_path / "hf"), "--out-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert "'distilgpt2' could not be loaded" in err and len(err.splitlines()) == 1, err


def test_lora_adapters_are_the_only_trainable_parameters():
    from common import params as P
    from llm_noniid.model import LORA_TARGETS, add_lora, tiny_gpt2

    model = add_lora(tiny_gpt2(100, 16, 0), r=4, alpha=8, dropout=0.0)
    names = [n for n, _ in P.named_trainable(model)]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert {n.split(".lora_")[0].split(".")[-1] for n in names} == set(LORA_TARGETS["gpt2"])
    full = add_lora(tiny_gpt2(100, 16, 0), r=0, alpha=8, dropout=0.0)
    assert P.numel(P.trainable(full)) == sum(p.numel() for p in full.parameters())


def test_lora_rank_and_sequence_length_are_bounded_by_the_model():
    from common.cli import UsageError
    from llm_noniid.model import add_lora, max_lora_rank, max_positions, tiny_gpt2

    base = tiny_gpt2(100, 16, 0)  # n_embd 64: c_attn [64, 192], c_fc [64, 256], c_proj [256, 64] / [64, 64]
    assert max_lora_rank(base, ["c_attn", "c_proj", "c_fc"]) == 64 and max_positions(base) == 16
    assert add_lora(base, r=64, alpha=8, dropout=0.0) is not None
    with pytest.raises(UsageError, match="--lora-r 100000 exceeds the width 64"):
        add_lora(tiny_gpt2(100, 16, 0), r=100000, alpha=8, dropout=0.0)


def test_compiled_forward_gives_the_same_run(tmp_path, tiny_folder):
    """--compile with the aot_eager backend (inductor's graphs, no code generation: fast on a CPU) trains and
    evaluates the LoRA model through the compiled forward and reproduces the eager run. A 1-layer GPT-2 folder:
    compiling it takes about half the time of tiny-gpt2's 2 layers."""
    flags = ["--num-rounds", "2", "--max-local-steps", "2", "--algorithm", "scaffold", "--lora-r", "4", "--model",
             str(tiny_folder("gpt2"))]
    eager = quick(tmp_path / "eager", *flags)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    comp = quick(tmp_path / "comp", *flags, "--compile", "--compile-backend", "aot_eager")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    for a, b in zip(rows(tmp_path / "eager"), rows(tmp_path / "comp"), strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert b["client_divergence"] == pytest.approx(a["client_divergence"], rel=1e-4)
    assert comp["final_val_ppl"] == pytest.approx(eager["final_val_ppl"], rel=1e-5)


def test_quick_run_learns_well_past_the_unigram(tmp_path):
    """The --quick preset itself (no pinned budget) ends well below the unigram it records beside its result."""
    s = train.main(["--quick", "--quiet", "--out-dir", str(tmp_path)])
    assert s["status"] == "complete" and s["rounds_done"] == 16
    assert s["final_val_ppl"] < 0.75 * s["unigram_val_ppl"] < s["uniform_ppl"]


def test_cosine_schedule_sets_each_rounds_sgd_step(tmp_path):
    """--lr-schedule cosine: round 1 trains at --learning-rate exactly as the constant run does; later rounds at
    the cosine's smaller rate, so the runs part from round 2 on (the SGD step reads the round's rate)."""
    from common import engine

    argv = ["--quick", *LLM_SMOKE, "--num-rounds", "3", "--out-dir", str(tmp_path)]
    runs = {sched: train.main([*argv, "--lr-schedule", sched, "--run-name", sched]) for sched in ("constant", "cosine")}
    rows = {sched: [json.loads(line) for line in (tmp_path / sched / "metrics.jsonl").read_text().splitlines()]
            for sched in runs}
    assert rows["constant"][0]["train_loss"] == rows["cosine"][0]["train_loss"]
    assert rows["constant"][0]["update_norm"] == rows["cosine"][0]["update_norm"]
    assert rows["cosine"][1]["update_norm"] != rows["constant"][1]["update_norm"]
    assert runs["cosine"]["final_val_ppl"] != runs["constant"]["final_val_ppl"]
    assert engine.cosine_lr(1, 3, 0.5) == pytest.approx(0.375) and engine.cosine_lr(2, 3, 0.5) == pytest.approx(0.125)
