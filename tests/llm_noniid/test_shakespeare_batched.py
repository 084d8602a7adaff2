"""llm_noniid/shakespeare.py --client-batching stacked on the committed sample: the same run as one client at a
time up to float summation order (the LSTM and the tiny causal LM; roles of unequal sizes), resumed bit-equal,
refused in one line where it does not apply."""
from __future__ import annotations

import json

import pytest
import torch
from clicases import one_line_error, the_run

from common import shakespeare as S
from common.checkpoint import load_checkpoint
from llm_noniid import shakespeare as SH

TINY = ["--quick", "--quiet", "--clients-per-round", "4", "--run-name", "r"]
LSTM = ["--hidden", "16"]
GPT = ["--model", "tiny-gpt2", "--max-local-steps", "3", "--learning-rate", "0.1", "--max-eval-samples", "100"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def run(folder, *flags) -> tuple[dict, list[dict], dict]:
    """(summary, metrics rows, the checkpoint's global model) of a run in ``folder``."""
    s = SH.main([*TINY, *flags, "--out-dir", str(folder)])
    rows = [json.loads(x) for x in (the_run(folder) / "metrics.jsonl").read_text().splitlines()]
    return s, rows, load_checkpoint(the_run(folder) / "checkpoint.pt", "llm_noniid/shakespeare")["global"]


# the LSTM: every role each round, at most 12 steps: two roles stop early (7 and 10 batches), the rest run 12
@pytest.mark.parametrize("flags", [[*LSTM, "--rounds", "2", "--clients-per-round", "12", "--max-local-steps", "12"],
                                   [*GPT, "--rounds", "1"]], ids=["lstm", "tiny-gpt2"])
def test_stacked_clients_train_the_model_one_client_at_a_time_does(tmp_path, flags):
    s0, rows0, x0 = run(tmp_path / "off", *flags)
    s1, rows1, x1 = run(tmp_path / "stacked", *flags, "--client-batching", "stacked")
    assert x0.keys() == x1.keys()
    for name in x0:
        torch.testing.assert_close(x1[name], x0[name], rtol=1e-4, atol=1e-5, msg=name)
    assert [r["round"] for r in rows1] == [r["round"] for r in rows0]
    for a, b in zip(rows0, rows1):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
    assert s1["bytes_up"] == s0["bytes_up"] and s1["clients_per_round"] == s0["clients_per_round"]


def test_the_sample_s_roles_take_unequal_numbers_of_steps():
    steps = sorted(-(-len(t) // 10) for t in S.load(SH.SAMPLE).train)  # batches of 10 per role and epoch
    assert steps[:2] == [7, 10] and steps[2] > 12


def test_a_stacked_run_resumes_bit_equal(tmp_path):
    flags = [*LSTM, "--client-batching", "stacked", "--max-local-steps", "6"]
    _, rows, whole = run(tmp_path / "whole", *flags, "--rounds", "2")
    run(tmp_path / "part", *flags, "--rounds", "1")
    _, rows_part, part = run(tmp_path / "part", *flags, "--rounds", "2", "--resume", "--extend")
    assert rows_part == rows and all(torch.equal(whole[n], part[n]) for n in whole)


def test_stacked_training_is_refused_where_it_does_not_apply(capsys):
    for algorithm in ("scaffold", "feddyn"):
        err = one_line_error(SH.main, [*TINY, "--client-batching", "stacked", "--algorithm", algorithm], capsys)
        assert "--client-batching stacked trains plain local SGD steps" in err and algorithm in err
