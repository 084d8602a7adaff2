"""End-to-end runs of the three scripts on the embedded data, sized to take seconds."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from clicases import narrow_files, umask

from common import cli, engine
from common import params as P
from common import seed as seeding
from common.checkpoint import load_checkpoint
from common.export import tensors_from_state
from plots import plot_vit
from vit_sparse_fl import data as cifar
from vit_sparse_fl import federated, federated_sparse, sparse, train_centralized
from vit_sparse_fl import train_federated as fed
from vit_sparse_fl import train_federated_sparse as fsp

# a smaller --quick: 10 clients of ~45 images, 2 per round, 2 local steps
SMALL = ["--quick", "--quiet", "--num-clients", "10", "--participation-rate", "0.2", "--local-steps", "2",
         "--rounds", "2", "--eval-every", "1", "--max-train", "300", "--max-test", "60", "--batch-size", "16"]


def _ctx(out_dir, *extra, script=fed):
    args = script.get_args_parser().parse_args([*SMALL, "--out-dir", str(out_dir), *extra])
    federated.finish_args(args)
    return federated.setup(args)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One FedAvg and one sparse run in one folder: (folder, fedavg summary, sparse summary)."""
    root = tmp_path_factory.mktemp("runs")
    dense = fed.main([*SMALL, "--out-dir", str(root)])
    sp = fsp.main([*SMALL, "--out-dir", str(root), "--mask-strategy", "random", "--sparsity-ratio", "0.5",
                   "--head-warmup", "1"])
    return root, dense, sp


def test_federated_quick_run(tiny_runs):
    _, s, _ = tiny_runs
    rows = [json.loads(line) for line in open(f"{s['run_dir']}/metrics.jsonl")]
    assert [r["round"] for r in rows] == [1, 2]
    assert 0 <= s["test_accuracy"] <= 1 and s["rounds_done"] == 2 and s["client_seconds"] > 0
    assert json.load(open(f"{s['run_dir']}/summary.json"))["test_accuracy"] == s["test_accuracy"]


def test_sparse_run_writes_mask_density(tiny_runs):
    _, dense, s = tiny_runs
    dens = json.load(open(f"{s['run_dir']}/mask_density.json"))
    assert dens["overall"] == pytest.approx(0.5, abs=1e-6) and s["mask_density"] == dens["overall"]
    assert "backbone.blocks.0.attn.qkv.weight" in dens["per_tensor"]
    assert not any(k.startswith("head") for k in dens["per_tensor"])
    # a message is the masked coordinates, both ways: the frozen ones never change, the clients hold them
    assert s["bytes_up"] == s["bytes_down"] < dense["bytes_down"] == dense["bytes_up"]
    assert s["calibration_sample_gradients"] == 0        # a random mask scores nothing


def test_plots_read_the_run_directories(tiny_runs, tmp_path):
    root, _, _ = tiny_runs
    out = plot_vit.main(["--runs-dir", str(root), "--out", str(tmp_path)])
    names = sorted(p.rsplit("/", 1)[1] for p in out["figures"])
    assert names == ["vit_accuracy_vs_rounds.png", "vit_mask_density.png", "vit_strategies.png"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)


def test_no_mask_density_figure_without_mask_density_files(tiny_runs, tmp_path, capsys):
    root, _, _ = tiny_runs
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    for f in copy.rglob("mask_density.json"):
        f.unlink()
    out = plot_vit.main(["--runs-dir", str(copy), "--out", str(tmp_path / "figs")])
    assert not any(p.endswith("vit_mask_density.png") for p in out["figures"])
    assert not (tmp_path / "figs" / "vit_mask_density.png").exists()
    assert "skipped vit_mask_density.png" in capsys.readouterr().out


def test_pathological_shards_have_exactly_nc_classes(out_dir):
    ctx = _ctx(out_dir, "--sharding", "non_iid", "--nc", "3")
    labels = ctx["train"].labels
    assert all(len(labels[idx].unique()) == 3 for idx in ctx["shards"])
    assert sum(len(idx) for idx in ctx["shards"]) == len(labels)


def test_masked_parameters_unchanged_after_training_and_strategies_differ(out_dir):
    ctx = _ctx(out_dir, "--sparsity-ratio", "0.8", "--num-clients", "4", "--participation-rate", "0.5",
               "--max-train", "120", "--calibration-rounds", "1", script=fsp)
    start = P.clone(ctx["params"])
    masks, models = {}, {}
    for strategy in ("least_sensitive", "most_sensitive"):
        ctx["args"].mask_strategy = strategy
        masks[strategy], calibration = federated_sparse.build_masks(ctx, start)
        # one calibration round: one batch of every client's shard, one sample gradient per image scored
        args = ctx["args"]
        assert calibration == sum(min(args.batch_size, len(s)) for s in ctx["shards"]) > 0
        glob = P.clone(start)
        federated.plain_rounds(ctx, glob, masks[strategy])
        for g, s, m, n in zip(glob, start, masks[strategy], ctx["names"]):
            if m is None:
                assert n.startswith("head.") and not torch.equal(g, s)        # the head is trained densely
            else:
                assert torch.equal(g[~m], s[~m])
                assert not m.any() or not torch.equal(g[m], s[m])
        # the one model object holds the last client's weights: also untouched off the mask
        for p, s, m in zip(ctx["params"], start, masks[strategy]):
            if m is not None:
                assert torch.equal(p.detach()[~m], s[~m])
        models[strategy] = glob
    least = [m for m in masks["least_sensitive"] if m is not None]
    most = [m for m in masks["most_sensitive"] if m is not None]
    assert sparse.density(least) == pytest.approx(0.2, abs=1e-6) == sparse.density(most)
    # both ranked the same scores (same seeded sampled labels): disjoint up to exact ties
    overlap = sum(int((a & b).sum()) for a, b in zip(least, most))
    assert overlap <= 0.001 * sum(m.numel() for m in least)
    assert any(not torch.equal(a, b) for a, b in zip(models["least_sensitive"], models["most_sensitive"]))


def test_resume_reproduces_the_uninterrupted_run(out_dir, monkeypatch):
    argv = [*SMALL, "--rounds", "4", "--eval-every", "2", "--local-steps", "1", "--out-dir", str(out_dir)]
    full = fed.main([*argv, "--run-name", "full"])
    real_train = federated.VitTask.train_client

    def crash_in_round_3(self, k, r, *a, **kw):
        if r == 2:
            raise KeyboardInterrupt
        return real_train(self, k, r, *a, **kw)

    monkeypatch.setattr(federated.VitTask, "train_client", crash_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        fed.main([*argv, "--run-name", "cut"])
    monkeypatch.setattr(federated.VitTask, "train_client", real_train)
    resumed = fed.main([*argv, "--run-name", "cut", "--resume"])
    rows = lambda name: [json.loads(x) for x in open(out_dir / name / "metrics.jsonl")]
    assert rows("full") == rows("cut") and len(rows("cut")) == 2
    assert resumed["test_accuracy"] == full["test_accuracy"] and resumed["test_loss"] == full["test_loss"]


def test_centralized_resume_and_best_checkpoints(out_dir, monkeypatch):
    argv = ["--quick", "--quiet", "--epochs", "2", "--warmup-epochs", "1", "--max-train", "70",
            "--max-test", "50", "--batch-size", "16", "--keep-best", "1", "--patience", "0",
            "--out-dir", str(out_dir)]
    with umask(0o022):
        full = train_centralized.main([*argv, "--run-name", "full"])
    assert narrow_files(out_dir / "full") == []  # best_epoch*.pt 0644, not tempfile's 0600
    assert len(full["best_checkpoints"]) == 1 and full["epochs_done"] == 2
    assert sorted(p.name for p in (out_dir / "full").glob("best_*.pt")) == full["best_checkpoints"]
    real = train_centralized.keep_best

    def crash_at_epoch_2(run_path, best, epoch, *a):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(run_path, best, epoch, *a)

    monkeypatch.setattr(train_centralized, "keep_best", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_centralized.main([*argv, "--run-name", "cut"])
    monkeypatch.setattr(train_centralized, "keep_best", real)
    resumed = train_centralized.main([*argv, "--run-name", "cut", "--resume"])
    rows = lambda name: [json.loads(x) for x in open(out_dir / name / "metrics.jsonl")]
    assert rows("full") == rows("cut")
    assert resumed["test_accuracy"] == full["test_accuracy"]


def test_sweep_keeps_every_value(out_dir):
    out = fed.main([*SMALL, "--rounds", "2", "--local-steps", "1", "--out-dir", str(out_dir),
                    "--local-steps-experiment", "--j-values", "1", "2"])
    assert set(out["results"]) == {"J=1", "J=2"}
    assert [out["results"][k]["rounds"] for k in ("J=1", "J=2")] == [2, 1]     # rounds x J constant
    index = out_dir / "fedavg_iid_J1-2_R2_lr0.05_local_steps_experiment_s0.json"
    assert json.loads(index.read_text())["results"]["J=2"]["rounds"] == 1
    # a sweep with other settings writes its own index: the first one is still there, unchanged
    fed.main([*SMALL, "--rounds", "1", "--local-steps", "1", "--out-dir", str(out_dir),
              "--local-steps-experiment", "--j-values", "1"])
    assert json.loads(index.read_text())["results"]["J=2"]["rounds"] == 1
    assert (out_dir / "fedavg_iid_J1_R1_lr0.05_local_steps_experiment_s0.json").is_file()


@pytest.mark.parametrize("script,extra,message", [
    (fed, ["--sharding", "non_iid", "--nc", "11"], "--nc 11 exceeds the 10 classes"),
    (fed, ["--participation-rate", "0"], "--participation-rate must be in (0, 1]"),
    (fed, ["--participation-rate", "1.5"], "--participation-rate must be in (0, 1]"),
    (fsp, ["--sparsity-ratio", "1.0"], "--sparsity-ratio must be in [0, 1)"),
    (fsp, ["--sparsity-ratio", "-0.1"], "--sparsity-ratio must be in [0, 1)"),
    (fsp, ["--mask-strategy", "largest"], "invalid choice: 'largest'"),
    (fed, ["--algorithm", "scaffold"], "SCAFFOLD needs plain SGD local steps (its control variates assume them): "
                                       "--momentum 0.9; use --momentum 0"),
    (fed, ["--algorithm", "scaffold", "--momentum", "0", "--server-opt", "fedadam"], "its own server step"),
    (fed, ["--clustering", "ifca"], "--clustering: 'ifca' is refused here: one global model is evaluated"),
    (fed, ["--clustering", "kmeans"], "invalid choice: 'kmeans'"),
    (fed, ["--data", "cifar100", "--data-dir", "EMPTY"], "no CIFAR-100 pickles"),
    (train_centralized, ["--data", "cifar100", "--data-dir", "EMPTY"], "no CIFAR-100 pickles"),
])
def test_bad_inputs_fail_with_one_line(script, extra, message, out_dir, tmp_path, capsys):
    extra = [str(tmp_path) if e == "EMPTY" else e for e in extra]
    base = ["--quiet"] if script is train_centralized else SMALL
    base = [*base, "--out-dir", str(out_dir)]
    with pytest.raises(SystemExit) as e:
        cli.run(script.main, [*base, *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_compiled_forward_gives_the_same_run(tiny_runs, tmp_path):
    """--compile (backend aot_eager: inductor's graphs without code generation, fast on a CPU) trains and
    evaluates through the compiled forward and reproduces the eager FedAvg run."""
    _, dense, _ = tiny_runs
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    comp = fed.main([*SMALL, "--out-dir", str(tmp_path), "--compile", "--compile-backend", "aot_eager"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert comp["test_loss"] == pytest.approx(dense["test_loss"], rel=1e-5)
    assert comp["test_accuracy"] == dense["test_accuracy"]


def test_quick_is_a_preset_below_the_config_file_and_the_command_line(tmp_path):
    """defaults < --quick < YAML --config < command line; --help states both values of a preset flag."""
    def parse(argv):  # a fresh parser each time: a parse leaves the preset and YAML values as its defaults
        return fed.get_args_parser().parse_args(argv)

    assert parse([]).rounds == 300 and parse(["--quick"]).rounds == 8
    assert parse(["--quick", "--rounds", "5"]).rounds == 5
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 6\nlr: 0.2\n")
    args = parse(["--quick", "--config", str(cfg)])
    assert (args.rounds, args.lr, args.arch, args.eval_every) == (6, 0.2, "vit_tiny", 2)
    assert parse(["--quick", "--config", str(cfg), "--rounds", "7"]).rounds == 7
    cfg.write_text("quick: true\n")
    assert parse(["--config", str(cfg)]).rounds == 8
    # --classes chooses the classes instead of --num-classes: --quick's 10 give way, a given number does not
    assert parse(["--quick", "--classes", "0", "5"]).num_classes == 0
    assert parse(["--quick", "--classes", "0", "5", "--num-classes", "3"]).num_classes == 3
    assert fsp.get_args_parser().parse_args(["--quick"]).calibration_rounds == 3
    text = " ".join(fsp.get_args_parser().format_help().split())
    assert "(default: 5; --quick: 3)" in text and "(default: 0; --quick: 10)" in text
    assert "(default: None)" not in text
    text = " ".join(train_centralized.get_args_parser().format_help().split())
    assert "training epochs (default: 50; --quick: 4)" in text and "(default: None)" not in text


def test_sweep_file_names_carry_the_swept_values():
    args = fed.get_args_parser().parse_args(["--rounds", "30", "--lr", "0.1", "--nc-values", "1", "2",
                                             "--heterogeneity-experiment", "--seed", "3"])
    federated.finish_args(args)
    assert federated.sweep_file_name(args, "fedavg", "heterogeneity") == \
        "fedavg_noniid_nc1-2_J4_R30_lr0.1_heterogeneity_experiment_s3.json"
    args = fed.get_args_parser().parse_args(["--sharding", "non_iid", "--nc", "2", "--j-values", "4", "16",
                                             "--data", "cifar100"])
    federated.finish_args(args)
    assert federated.sweep_file_name(args, "sparse_random_s0.9", "local_steps") == \
        "sparse_random_s0.9_cifar100_noniid_nc2_J4-16_R300_lr0.01_local_steps_experiment_s0.json"


@pytest.mark.parametrize("algorithm", ["fedprox", "scaffold"])
def test_fedprox_and_scaffold_match_the_algorithm_by_hand(out_dir, algorithm):
    """Three clients (all in every round), two rounds of two plain SGD steps at the cosine lr: FedProx adds
    mu (theta - theta_global) to the gradient; SCAFFOLD adds c - c_k, then c_k+ = c_k - c + (x - y_k) / (J lr),
    x += mean_k dy_k, c += sum_k dc_k / N. The reference is written out here on the same model and batches."""
    mu = 0.5
    flags = ["--num-clients", "3", "--participation-rate", "1", "--momentum", "0", "--weight-decay", "0",
             "--algorithm", algorithm, *(["--mu", str(mu)] if algorithm == "fedprox" else []), "--no-augment"]
    fed.main([*SMALL, *flags, "--out-dir", str(out_dir), "--run-name", algorithm])
    ctx = _ctx(out_dir / "ref", *flags)
    args, plist, model = ctx["args"], ctx["params"], ctx["model"]
    x = [p.detach().clone() for p in plist]
    c = [torch.zeros_like(p) for p in plist]
    ci = [[torch.zeros_like(p) for p in plist] for _ in range(3)]
    for r in range(args.rounds):
        lr = engine.cosine_lr(r, args.rounds, args.lr)
        ys = []
        for k in range(3):
            P.load_(plist, x)
            model.train()
            gen = seeding.client_generator(args.seed, r, k, ctx["device"], purpose="round")
            with seeding.client_rng(args.seed, r, k, purpose="round_dropout"):
                for xb, yb in cifar.batches(ctx["train"], args.batch_size, args.local_steps, gen, args.image_size,
                                            augment_train=False, indices=ctx["shards"][k]):
                    F.cross_entropy(model(xb).float(), yb, label_smoothing=args.label_smoothing).backward()
                    with torch.no_grad():
                        for j, p in enumerate(plist):
                            g = p.grad + (mu * (p - x[j]) if algorithm == "fedprox" else c[j] - ci[k][j])
                            p -= lr * g
                            p.grad = None
            ys.append([p.detach().clone() for p in plist])
        if algorithm == "fedprox":
            n = [float(len(s)) for s in ctx["shards"]]
            x = [sum(w * y[j] for w, y in zip(n, ys)) / sum(n) for j in range(len(x))]
        else:
            J = args.local_steps
            dc = [[(x[j] - y[j]) / (J * lr) - c[j] for j in range(len(x))] for y in ys]
            ci = [[a + d for a, d in zip(ci[k], dc[k])] for k in range(3)]
            c = [cj + sum(d[j] for d in dc) / 3 for j, cj in enumerate(c)]
            x = [xj + sum(y[j] - xj for y in ys) / 3 for j, xj in enumerate(x)]
    got = tensors_from_state(load_checkpoint(out_dir / algorithm / "checkpoint.pt",
                                             "vit_sparse_fl/train_federated")["global"], ctx["names"])
    for a, b in zip(got, x):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)

