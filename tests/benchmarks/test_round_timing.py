"""Round/client timers of llm_noniid/train.py and lora_glue_fl/fedavg_rounds.py (what the overhead benchmarks
read), their continuation across --resume, and the --quick runs of bench_llm_round.py and bench_lora_merge.py."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from common import engine
from common.checkpoint import load_checkpoint
from llm_noniid import train
from lora_glue_fl import fedavg_rounds, modeling

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


class FakeClock:
    """time.perf_counter that advances 1 s per call: the totals then count the timer reads, the same in an
    uninterrupted run and in one cut and resumed, so a total that restarted at 0 on resume shows."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def bench(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the benchmarks import benchlib from their own folder
    return importlib.import_module(name)


def test_llm_timing_totals_continue_on_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "time", FakeClock())  # the rounds' timers
    flags = ["--quick", "--quiet", "--algorithm", "scaffold", "--max-train-examples", "64", "--max-local-steps", "2",
             "--run-name", "r"]
    full = train.main([*flags, "--out-dir", str(tmp_path / "full"), "--num-rounds", "3"])
    monkeypatch.setattr(engine, "time", FakeClock())
    train.main([*flags, "--out-dir", str(tmp_path / "part"), "--num-rounds", "2"])
    state = load_checkpoint(tmp_path / "part" / "r" / "checkpoint.pt", "llm_noniid/train")
    saved = state["timing"] | {"train_tokens": state["task"]["train_tokens"]}
    monkeypatch.setattr(engine, "time", FakeClock())
    part = train.main([*flags, "--out-dir", str(tmp_path / "part"), "--num-rounds", "3", "--resume", "--extend"])
    # 4 clients x 2 local steps x 8 texts x 32 token positions per round
    assert saved["train_tokens"] == 2 * 4 * 2 * 8 * 32 and part["train_tokens"] == full["train_tokens"] == 3 * 2048
    # one clock read before and one after each client's local steps, one at each end of a round
    assert saved["client_seconds"] == 2 * 4 and saved["round_seconds"] == 2 * (4 * 2 + 1)
    for key in ("client_seconds", "round_seconds", "overhead_fraction"):
        assert part[key] == full[key], key
    assert full["overhead_fraction"] == pytest.approx(1 - 12 / 27)


def test_lora_timing_totals_continue_on_resume(tmp_path, monkeypatch):
    argv = ["--quick", "--quiet", "--out-dir", str(tmp_path), "--local_epochs", "0.1"]
    monkeypatch.setattr(engine, "time", FakeClock())  # the rounds' timers
    full = fedavg_rounds.main([*argv, "--run-name", "full"])
    real_train = modeling.train_local

    def crash_in_round_two(*a, **kw):
        if kw["round_idx"] == 2:
            raise KeyboardInterrupt
        return real_train(*a, **kw)

    monkeypatch.setattr(engine, "time", FakeClock())  # the rounds' timers
    monkeypatch.setattr(modeling, "train_local", crash_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        fedavg_rounds.main([*argv, "--run-name", "cut"])
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt", "lora_glue_fl/fedavg_rounds")["timing"]
    assert saved == {"client_seconds": 3.0, "round_seconds": 3 * 2 + 1.0}  # round 1 of 3 clients
    monkeypatch.setattr(engine, "time", FakeClock())  # the rounds' timers
    monkeypatch.setattr(modeling, "train_local", real_train)
    cut = fedavg_rounds.main([*argv, "--run-name", "cut", "--resume"])
    assert (full["client_seconds"], full["round_seconds"]) == (cut["client_seconds"], cut["round_seconds"]) == (6, 14)
    assert cut["overhead_fraction"] == pytest.approx(1 - 6 / 14)


def test_bench_llm_round_quick(tmp_path, monkeypatch, capsys):
    out = tmp_path / "llm.json"
    rows = bench("bench_llm_round", monkeypatch).main(
        ["--quick", "--algorithms", "scaffold", "--lora-r", "0", "4", "--json", str(out)])  # SCAFFOLD: the most
    assert json.loads(out.read_text()) == rows                                          # round machinery
    assert [(r["algorithm"], r["lora_r"]) for r in rows] == [("scaffold", 0), ("scaffold", 4)]
    for r in rows:
        assert r["rounds"] == 2 and r["train_tokens"] == 2 * 96 * 32  # one local epoch over every text
        assert 0 < r["client_s"] <= r["round_s"] and 0 <= r["overhead"] < 1
        assert r["overhead"] == pytest.approx(1 - r["client_s"] / r["round_s"], abs=0.02)
        assert r["tokens_per_s"] == pytest.approx(r["train_tokens"] / (2 * r["round_s"]), rel=1e-6)
    assert rows[1]["trainable_params"] < rows[0]["trainable_params"]  # LoRA trains only the adapters
    table = capsys.readouterr().out
    assert "| algorithm |" in table and "LoRA r=4" in table and "all parameters" in table


def test_bench_lora_merge_quick_measures_a_round(tmp_path, monkeypatch):
    out = tmp_path / "lora.json"
    s = bench("bench_lora_merge", monkeypatch).main(["--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["round"] == s["round"] and saved["step_s"] is None and s["agree"] < 1e-4
    r = s["round"]
    assert r["clients"] == 2 and r["rounds"] == 2 and r["examples_per_client"] == [1000, 1000]
    assert 0 < r["client_s"] <= r["round_s"] and 0 <= r["overhead"] < 1
