"""llm_noniid/shakespeare.py: FedAvg of the character LSTM (and the tiny causal LM) on the committed Shakespeare
sample through the round engine; the LEAF model's shape; one-line refusals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from clicases import one_line_error, the_run

from common import cli
from common import shakespeare as S
from common.checkpoint import load_checkpoint
from llm_noniid import options as llm_options
from llm_noniid import shakespeare as SH
from llm_noniid import shakespeare_task


@pytest.fixture(autouse=True)
def one_thread():
    """The LSTM's small steps run fastest on one thread (two contend on a busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


SMALL = ["--quick", "--quiet", "--hidden", "32", "--rounds", "2", "--clients-per-round", "4"]


def test_the_leaf_model_is_an_8_dim_embedding_and_two_lstm_layers_of_256():
    m = shakespeare_task.CharLSTM(57)
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


def test_a_synthetic_population_is_contiguous_slices_of_real_roles_three_integers_a_client():
    data = S.load(SH.SAMPLE)
    sizes = np.array([len(t) for t in data.train])
    pop = S.population(sizes, 5000, seed=0)
    assert len(pop) == 5000 and pop.role.nbytes + pop.start.nbytes + pop.length.nbytes == 5000 * 20
    assert (pop.length >= 1).all() and (pop.start >= 0).all() and (pop.start + pop.length <= sizes[pop.role]).all()
    for i in (0, 1, 4999):  # a client's samples: one role's training samples, a contiguous run of them
        r, s, n = int(pop.role[i]), int(pop.start[i]), int(pop.length[i])
        assert np.array_equal(pop.positions(data.train, i), data.train[r][s:s + n])
    share = np.bincount(pop.role, minlength=len(sizes)) / 5000  # roles drawn in proportion to their size
    assert np.abs(share - sizes / sizes.sum()).max() < 0.03
    assert set(pop.length[pop.length < sizes[pop.role]]) <= set(sizes)  # lengths are the real sizes, capped
    again, other = S.population(sizes, 5000, seed=0), S.population(sizes, 5000, seed=1)
    assert np.array_equal(again.start, pop.start) and not np.array_equal(other.role, pop.role)


def test_a_population_run_trains_its_synthetic_clients_and_scores_the_real_test_split(tmp_path, capsys):
    s = SH.main(SMALL + ["--population", "300", "--out-dir", str(tmp_path)])
    assert s["clients"] == 300 and s["roles"] == 12 and s["population"] == 300 and s["eval_samples"] == 1012
    assert s["rounds_done"] == 2 and s["final_test_loss"] < s["uniform_loss"]
    err = one_line_error(SH.main, SMALL + ["--population-seed", "3", "--out-dir", str(tmp_path)], capsys)
    assert "--population-seed" in err and "without --population" in err


def test_the_validation_split_holds_out_a_tenth_of_each_roles_training_samples_never_the_test():
    data = S.load(SH.SAMPLE)
    kept, held = S.hold_out(data.train, llm_options.VALIDATION_FRACTION)
    for t, k, h, test in zip(data.train, kept, held, data.test):
        assert len(h) == int(0.1 * len(t)) and np.array_equal(np.sort(np.concatenate([k, h])), t)
        assert not set(h) & set(test) and not set(h) & set(k)


def _task(argv):
    """The task of ``shakespeare.py --quick <argv>`` over the committed sample, without running it."""
    args = cli.parse(SH.get_args_parser(), ["--quick", "--hidden", "8", *argv])
    data = S.load(args.data_dir)
    sizes, train_of = shakespeare_task.clients(args, data)
    model = shakespeare_task.build_model(args, len(data.vocab))
    return shakespeare_task.ShakespeareTask(args, data, model, torch.device("cpu"), np.arange(4), sizes, train_of)


def test_batch_size_0_is_fedsgd_one_step_on_the_clients_whole_set_per_epoch():
    task = _task(["--batch-size", "0"])
    for k in (0, 5):
        batches = task.client_batches(k, 0)
        assert len(batches) == 1 and sorted(batches.picks[0]) == sorted(task.train_of(k))
        assert len(batches[0][1]) == task.sizes[k]
    five = _task(["--batch-size", "0", "--local-epochs", "5"]).client_batches(3, 2)
    assert len(five) == 5 and all(sorted(p) == sorted(task.train_of(3)) for p in five.picks)
    capped = _task(["--batch-size", "0", "--local-epochs", "5", "--max-local-steps", "2"]).client_batches(3, 2)
    assert len(capped) == 2 and all(np.array_equal(a, b) for a, b in zip(capped.picks, five.picks))


def test_max_client_samples_keeps_a_fixed_random_subset_of_each_role():
    full, capped = _task([]), _task(["--max-client-samples", "30"])
    assert capped.sizes.max() == 30 and (capped.sizes == np.minimum(full.sizes, 30)).all()
    for k in range(len(full.sizes)):
        kept, every = capped.train_of(k), full.train_of(k)
        assert set(kept) <= set(every) and (full.sizes[k] <= 30) == np.array_equal(kept, every)
    big = int(np.argmax(full.sizes))
    assert not np.array_equal(capped.train_of(big), full.train_of(big)[:30])  # a random subset, not the first
    other_seed = _task(["--max-client-samples", "30", "--seed", "4"])       # the data, not the run
    assert np.array_equal(other_seed.train_of(big), capped.train_of(big))
    assert len(capped.client_batches(big, 0)) == 3  # B = 10


def test_max_client_samples_is_refused_with_a_population(capsys):
    err = one_line_error(SH.main, SMALL + ["--population", "50", "--max-client-samples", "10"], capsys)
    assert "--max-client-samples caps the roles" in err


def _interrupt(at: int):
    """A ShakespeareTask.evaluate that raises KeyboardInterrupt at its ``at``-th call, as Ctrl-C would (the round is
    trained, not yet logged or checkpointed)."""
    calls, real = [0], shakespeare_task.ShakespeareTask.evaluate

    def evaluate(task, rnd):
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt
        return real(task, rnd)
    return evaluate


@pytest.mark.parametrize("flags", [[], ["--algorithm", "feddyn", "--server-opt", "fedavgm"],
                                   ["--dp-clip", "1", "--dp-noise", "1", "--server-opt", "fedadam"]],
                         ids=["fedavg", "feddyn-fedavgm", "dp-fedadam"])
def test_a_run_stopped_after_some_rounds_resumes_bit_equal_to_the_uninterrupted_run(tmp_path, monkeypatch, flags):
    """Stopped in round 3's evaluation (2 rounds checkpointed), ``--resume`` redoes round 3 and ends with the
    uninterrupted run's metrics, summary and global model bit for bit: the client sampling, FedDyn's g_k, the
    server optimizer's moments and the DP noise and accountant all continue where they were."""
    argv = ["--quick", "--quiet", "--hidden", "16", "--rounds", "4", "--clients-per-round", "4",
            "--max-local-steps", "3", "--max-eval-samples", "200", *flags, "--out-dir", str(tmp_path)]

    def record(name):
        path = tmp_path / name
        rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        return rows, load_checkpoint(path / "checkpoint.pt", "llm_noniid/shakespeare")["global"]

    full = SH.main([*argv, "--run-name", "full"])
    monkeypatch.setattr(shakespeare_task.ShakespeareTask, "evaluate", _interrupt(at=3))
    with pytest.raises(KeyboardInterrupt):
        SH.main([*argv, "--run-name", "cut"])
    monkeypatch.undo()
    assert len(record("cut")[0]) == 2
    resumed = SH.main([*argv, "--run-name", "cut", "--resume"])
    (rows_full, x_full), (rows_cut, x_cut) = record("full"), record("cut")
    assert [r["round"] for r in rows_cut] == [1, 2, 3, 4] and rows_cut == rows_full
    assert x_cut.keys() == x_full.keys() and all(torch.equal(x_cut[n], x_full[n]) for n in x_full)
    timing = {"wall_seconds", "cpu_seconds", "load_start", "load_end", "wall_seconds_this_session",
              "client_seconds", "round_seconds"}
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in full.items() if k not in timing}
