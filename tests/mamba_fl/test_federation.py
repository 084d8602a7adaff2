"""The federated algorithms against simple references: one-client FedAvg == centralized AdamW on the same
batches; FedFisher with identical Fishers == FedAvg; FedEntropy with equal entropies == the uniform mean;
--resume after an interruption reproduces the uninterrupted run exactly."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from common import checkpoint, cli, engine, export, params, seed
from common import shard as shard_mod
from mamba_fl import central, client_stats, fed_avg, fed_entropy, fed_fisher, federated, lmdata
from mamba_fl import model as mmodel


def global_params(run_dir, script: str = "fed_avg") -> list[torch.Tensor]:
    """The global parameters a federated run saved in its last checkpoint (named tensors, in model order)."""
    state = checkpoint.load_checkpoint(run_dir / "checkpoint.pt", f"mamba_fl/{script}")
    return export.tensors_from_state(state["global"])


def _assert_same(a, b, tol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if tol == 0.0:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def _even_split(tiny) -> list[str]:
    """Flags giving two clients equal contiguous shards (so FedAvg's n_k weights are uniform): a block
    length near 64 that cuts the training stream into an even number of blocks."""
    argv = tiny()
    args = cli.parse(fed_avg.get_args_parser(), argv)
    federated.finish_args(args)
    n_tokens = int((lmdata.load_lm_data(args).train >= 0).sum())
    T = next(t for t in range(64, 96) if -(-n_tokens // t) % 2 == 0)
    return ["--num-clients", "2", "--sequence-length", str(T)]


def test_one_client_fedavg_equals_centralized_adamw(tiny, out_dir):
    """With one client whose AdamW state persists across rounds (the default), R rounds of U local steps are
    exactly R*U centralized AdamW steps on the same batches (the server just copies the single client's model)."""
    argv = tiny("--num-clients", "1", "--local-updates", "2", rounds=2)
    fed_avg.main(argv)
    (run,) = out_dir.iterdir()

    # the centralized reference: same init, one AdamW, the batches the client drew, in order
    parser = fed_avg.get_args_parser()
    args = cli.parse(parser, argv)
    federated.finish_args(args)
    data = lmdata.load_lm_data(args)
    seed.seed_everything(args.seed)
    model = mmodel.build_model(args, data.vocab_size, data.tokenizer.pad_token_id, data.tokenizer.eos_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    everything = lmdata.client_shards(args, data)[0]
    assert len(everything) == data.train.shape[0]
    for r in range(2):
        steps = federated.client_batch_indices(everything, args.seed, r, 0, 2, args.batch_size)
        federated.train_steps(model, opt, data.train, steps, data.tokenizer.pad_token_id, torch.device("cpu"))
    reference = params.clone(params.trainable(model))
    # the weighted mean of one client is w * theta / w: equal up to float rounding of that division
    _assert_same(global_params(run), reference, tol=1e-6)

    # and with a fresh AdamW each round the runs must differ (the test above is not vacuous)
    fed_avg.main(tiny("--num-clients", "1", "--local-updates", "2", "--client-opt-state", "reset",
                      "--run-name", "reset", rounds=2))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(global_params(out_dir / "reset"), reference))


def test_fedfisher_with_identical_fishers_equals_fedavg(tiny, out_dir, monkeypatch):
    even = _even_split(tiny)
    monkeypatch.setattr(client_stats.fisher, "diagonal_fisher",
                        lambda model, batches, params, **kw: [torch.full_like(p, 0.5) for p in params])
    # one round: the two aggregates then differ only by float rounding (training would amplify it)
    fed_fisher.main(tiny(*even, "--run-name", "fisher", rounds=1))
    fed_avg.main(tiny(*even, "--run-name", "avg", rounds=1))
    _assert_same(global_params(out_dir / "fisher", "fed_fisher"), global_params(out_dir / "avg"), tol=1e-6)


def test_fedentropy_with_equal_entropies_is_the_uniform_mean(tiny, out_dir, monkeypatch):
    even = _even_split(tiny)
    monkeypatch.setattr(client_stats.evaluate, "mean_entropy", lambda *a, **kw: 3.0)
    fed_entropy.main(tiny(*even, "--run-name", "entropy", rounds=1))
    # equal shards, equal held-out splits: FedAvg's n_k weights are uniform too
    fed_avg.main(tiny(*even, "--holdout-fraction", "0.1", "--run-name", "avg", rounds=1))
    _assert_same(global_params(out_dir / "entropy", "fed_entropy"), global_params(out_dir / "avg"), tol=1e-6)
    rows = [json.loads(x) for x in (out_dir / "entropy" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["entropy"] == {"0": 3.0, "1": 3.0}


def test_fedfisher_with_scaffold_applies_the_fisher_aggregate(tiny, out_dir):
    """fed_fisher.py --algorithm scaffold: the server moves to the Fisher aggregate (a finite fisher_eps_share; not
    SCAFFOLD's own mean, which the same run with --aggregator mean takes), the Fisher counted in the upload."""
    sgd = ("--algorithm", "scaffold", "--optimizer", "sgd", "--lr", "0.05")
    fisher = fed_fisher.main(tiny(*sgd, "--run-name", "fisher", rounds=1))
    mean = fed_fisher.main(tiny(*sgd, "--aggregator", "mean", "--run-name", "mean", rounds=1))
    rows = [json.loads(x) for x in (out_dir / "fisher" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[-1]["fisher_eps_share"]) and "fisher_eps_share" not in json.loads(
        (out_dir / "mean" / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(not torch.equal(a, b) for a, b in zip(global_params(out_dir / "fisher", "fed_fisher"),
                                                     global_params(out_dir / "mean", "fed_fisher")))
    # per client and round: x and c down; y, dc (and the Fisher) up
    assert fisher["bytes_down"] == mean["bytes_down"] == mean["bytes_up"]
    assert fisher["bytes_up"] == 1.5 * mean["bytes_up"]


@pytest.mark.parametrize("aggregator", ["fisher", "entropy"])
def test_fed_avg_runs_the_other_aggregators(aggregator, tiny, out_dir):
    summary = fed_avg.main(tiny("--aggregator", aggregator, "--run-name", aggregator, rounds=1))
    row = json.loads((out_dir / aggregator / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(summary["final_val_ppl"]) and ("fisher_eps_share" in row or "entropy_weight" in row)


def test_epoch_rounds_count_the_rounds_a_client_sits_out():
    """--n-epochs without --rounds: 2 passes over 40-block shards in batches of 4 take 20 rounds when every client
    takes part, 40 when half of them do."""
    args = SimpleNamespace(n_epochs=2.0, local_updates=1, batch_size=4, num_clients=4, participation_rate=1.0)
    assert federated.epoch_rounds(args, [40, 40, 30, 50]) == 20
    assert federated.epoch_rounds(SimpleNamespace(**{**vars(args), "participation_rate": 0.5}), [40] * 4) == 40


class _Interrupt:
    """Replaces evaluate_global: raises KeyboardInterrupt at the given call, as Ctrl-C would."""

    def __init__(self, at: int):
        self.at, self.calls, self.real = at, 0, federated.evaluate_global

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(*a, **kw)


@pytest.mark.parametrize("script", ["fed_avg", "central"])
def test_resume_reproduces_the_uninterrupted_run(script, tiny, out_dir, monkeypatch):
    main = {"fed_avg": fed_avg.main, "central": central.main}[script]
    length = ["--rounds", "3"] if script == "fed_avg" else ["--max-steps", "3", "--batch-size", "4"]
    full = main(tiny(*length, "--run-name", "full"))
    monkeypatch.setattr(federated, "evaluate_global", _Interrupt(at=2))  # dies after the first checkpoint
    with pytest.raises(KeyboardInterrupt):
        main(tiny(*length, "--run-name", "cut"))
    monkeypatch.undo()
    resumed = main(tiny(*length, "--run-name", "cut", "--resume"))
    assert resumed["final_val_ppl"] == full["final_val_ppl"]
    assert resumed["best_val_ppl"] == full["best_val_ppl"]
    rows = {n: [json.loads(x) for x in (out_dir / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("full", "cut")}
    assert rows["full"] == rows["cut"] and len(rows["full"]) == 3


def test_checkpoint_every_saves_every_nth_evaluation_and_resumes_from_the_last(tiny, out_dir, monkeypatch):
    length = ["--rounds", "4", "--checkpoint-every", "2"]
    full = fed_avg.main(tiny(*length, "--run-name", "full"))
    monkeypatch.setattr(federated, "evaluate_global", _Interrupt(at=4))  # dies in the 4th evaluation
    with pytest.raises(KeyboardInterrupt):
        fed_avg.main(tiny(*length, "--run-name", "cut"))
    monkeypatch.undo()
    saved = torch.load(out_dir / "cut" / "checkpoint.pt", weights_only=False)
    assert saved["state"]["runlog"]["rows"] == 2  # the 2nd evaluation's checkpoint; the 1st and 3rd were skipped
    resumed = fed_avg.main(tiny(*length, "--run-name", "cut", "--resume", "--checkpoint-every", "1"))
    assert resumed["final_val_ppl"] == full["final_val_ppl"]
    rows = {n: [json.loads(x) for x in (out_dir / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("full", "cut")}
    assert rows["full"] == rows["cut"] and len(rows["full"]) == 4


@pytest.mark.parametrize("algorithm", ["fedprox", "scaffold"])
def test_fedprox_and_scaffold_match_the_algorithm_by_hand(tiny, out_dir, algorithm):
    """Two clients, two rounds of two plain SGD steps: FedProx adds mu (theta - theta_global) to every
    gradient; SCAFFOLD adds c - c_k, then c_k+ = c_k - c + (x - y_k) / (K lr), x += mean_k dy_k,
    c += sum_k dc_k / N. The reference is written out here on the same model and batches."""
    mu, lr = 0.5, 0.05
    argv = tiny("--optimizer", "sgd", "--local-updates", "2", "--lr", str(lr), "--algorithm", algorithm,
                *(["--mu", str(mu)] if algorithm == "fedprox" else []), "--run-name", algorithm, rounds=2)
    fed_avg.main(argv)
    parser = fed_avg.get_args_parser()
    args = cli.parse(parser, argv)
    federated.finish_args(args)
    data = lmdata.load_lm_data(args)
    seed.seed_everything(args.seed)
    model = mmodel.build_model(args, data.vocab_size, data.tokenizer.pad_token_id, data.tokenizer.eos_token_id)
    plist = params.trainable(model)
    shards = lmdata.client_shards(args, data)
    x = [p.detach().clone() for p in plist]
    c = [torch.zeros_like(p) for p in plist]
    ci = [[torch.zeros_like(p) for p in plist] for _ in shards]
    for r in range(2):
        ys = []
        for k, shard in enumerate(shards):
            params.load_(plist, x)
            for idx in federated.client_batch_indices(shard, args.seed, r, k, 2, args.batch_size):
                batch = lmdata.text.lm_batch(data.train[torch.as_tensor(idx)], data.tokenizer.pad_token_id)
                model(**batch).loss.backward()
                with torch.no_grad():
                    for j, p in enumerate(plist):
                        g = p.grad + (mu * (p - x[j]) if algorithm == "fedprox" else c[j] - ci[k][j])
                        p -= lr * g
                        p.grad = None
            ys.append([p.detach().clone() for p in plist])
        if algorithm == "fedprox":  # the size-weighted mean
            n = [float(len(s)) for s in shards]
            x = [sum(w * y[j] for w, y in zip(n, ys)) / sum(n) for j in range(len(x))]
        else:
            dc = [[ci[k][j] - c[j] + (x[j] - y[j]) / (2 * lr) - ci[k][j] for j in range(len(x))]
                  for k, y in enumerate(ys)]
            for k in range(len(shards)):
                ci[k] = [a + d for a, d in zip(ci[k], dc[k])]
            c = [cj + sum(d[j] for d in dc) / len(shards) for j, cj in enumerate(c)]
            x = [xj + sum(y[j] - xj for y in ys) / len(ys) for j, xj in enumerate(x)]
    _assert_same(global_params(out_dir / algorithm), x, tol=2e-5)
    plain = fed_avg.main(tiny("--optimizer", "sgd", "--local-updates", "2", "--lr", str(lr), "--run-name", "plain",
                              rounds=2))  # the hooks changed the run (the comparison above is not vacuous)
    assert plain["final_val_loss"] != json.loads((out_dir / algorithm / "summary.json").read_text())["final_val_loss"]


def test_ifca_clusters_in_mamba(tiny, out_dir):
    """--clustering ifca: two cluster models, each evaluated; the log names every client's cluster."""
    summary = fed_avg.main(tiny("--num-clients", "4", "--clustering", "ifca", "--num-clusters", "2",
                                "--ifca-init-rounds", "1", "--algorithm", "fedprox", "--run-name", "ifca", rounds=2))
    a = json.loads((out_dir / "ifca" / "args.json").read_text())["args"]
    per_step = a["batch_size"] * a["sequence_length"]  # compute counts the 2 starting models' local steps too
    per_round = engine.clients_per_round(a["participation_rate"], a["num_clients"])
    assert summary["train_tokens"] == (2 * per_round + 2 * 1) * a["local_updates"] * per_step
    rows = [json.loads(x) for x in (out_dir / "ifca" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows[-1]["val_loss_per_cluster"]) == 2 and len(rows[-1]["clusters"]) == 4
    state = checkpoint.load_checkpoint(out_dir / "ifca" / "checkpoint.pt", "mamba_fl/fed_avg")
    assert len(state["clusters"]) == 1 and state["cluster_info"]["seed_clients"][0] in range(4)


def test_central_holdout_trains_on_exactly_the_federated_clients_blocks(tiny, out_dir, monkeypatch):
    """central --holdout-fraction f --holdout-clients K: a pass visits each block that K contiguous clients keep
    after holding out f of theirs (fed_avg's training blocks) once, and no held-out block."""
    seen = []  # the blocks of every step (not trained on: only which blocks is checked)
    monkeypatch.setattr(federated, "train_steps", lambda fwd, opt, blocks, batches, *a, **kw: (
        seen.extend(int(i) for b in batches for i in b), torch.zeros(()))[1])
    argv = tiny("--max-steps", "1000", "--batch-size", "64", "--holdout-fraction", "0.25", "--holdout-clients", "2")
    args = cli.parse(central.get_args_parser(), argv)
    federated.finish_args(args)
    n = lmdata.load_lm_data(args).train.shape[0]
    kept = [i for idx in shard_mod.contiguous(n, 2) for i in lmdata.split_holdout(idx, 0.25)[0]]
    steps = -(-len(kept) // 64)  # one pass
    central.main(tiny("--max-steps", str(steps), "--batch-size", "64", "--holdout-fraction", "0.25",
                      "--holdout-clients", "2", "--val-freq", str(steps)))
    assert sorted(seen) == sorted(kept) and len(kept) < n
