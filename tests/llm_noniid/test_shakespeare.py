"""llm_noniid/shakespeare.py: FedAvg of the character LSTM (and the tiny causal LM) on the committed Shakespeare
sample through the round engine; the LEAF model's shape; one-line refusals."""
from __future__ import annotations

import json
import math

import pytest
import torch
from clicases import one_line_error, the_run

from llm_noniid import shakespeare as SH


@pytest.fixture(autouse=True)
def one_thread():
    """The LSTM's small steps run fastest on one thread (two contend on a busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


SMALL = ["--quick", "--quiet", "--hidden", "32", "--rounds", "2", "--clients-per-round", "4"]


def test_the_leaf_model_is_an_8_dim_embedding_and_two_lstm_layers_of_256():
    m = SH.CharLSTM(57)
    assert m.embed.weight.shape == (57, 8) and m.lstm.num_layers == 2 and m.lstm.hidden_size == 256
    assert m(torch.zeros(3, 80, dtype=torch.long)).shape == (3, 57)


def test_a_quick_run_learns_below_the_uniform_loss(tmp_path):
    s = SH.main(SMALL + ["--out-dir", str(tmp_path)])
    rows = [json.loads(x) for x in (the_run(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and s["clients"] == 12 and s["clients_per_round"] == 4
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] < s["uniform_loss"] == math.log(s["vocab_size"])
    assert 0 < s["majority_accuracy"] < 0.3 and s["uniform_accuracy"] == 1 / s["vocab_size"]
    assert s["eval_samples"] == 1012 and s["bytes_up"] == 2 * 4 * 4 * s["trainable_params"]


def test_the_tiny_causal_lm_trains_through_the_same_task(tmp_path):
    s = SH.main(["--quick", "--quiet", "--model", "tiny-gpt2", "--rounds", "1", "--clients-per-round", "2",
                 "--max-local-steps", "2", "--learning-rate", "0.1", "--max-eval-samples", "50",
                 "--out-dir", str(tmp_path)])
    assert s["rounds_done"] == 1 and math.isfinite(s["final_test_loss"])


def test_bad_inputs_are_refused_in_one_line(tmp_path, capsys):
    assert "--data-dir is needed" in one_line_error(SH.main, ["--out-dir", str(tmp_path)], capsys)
    assert "--model 'rnn' is unknown" in one_line_error(SH.main, SMALL + ["--model", "rnn"], capsys)
    err = one_line_error(SH.main, ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path)], capsys)
    assert "no manifest.json" in err
    err = one_line_error(SH.main, ["--quick", "--model", "tiny-gpt2", "--layers", "3"], capsys)
    assert "--layers changes nothing with --model tiny-gpt2" in err
