"""The pretrained base: cached and reused, and fine-tuning starts exactly from a project checkpoint."""
from __future__ import annotations

import pytest
import torch

from common import cli
from vit_sparse_fl import experiment as exp
from vit_sparse_fl import federated, pretrain, train_centralized
from vit_sparse_fl import train_federated as fed

TINY = ["--quick", "--quiet", "--epochs", "1", "--warmup-epochs", "0", "--max-train", "64", "--max-test", "40",
        "--batch-size", "16", "--patience", "0"]


def test_pretrained_base_is_trained_once_and_reused(tmp_path, monkeypatch):
    calls = []
    real = train_centralized.main

    def counting(argv):
        calls.append(argv)
        return real(argv)

    monkeypatch.setattr(train_centralized, "main", counting)
    argv = [*TINY, "--classes", "10", "20", "--cache-dir", str(tmp_path)]
    first = pretrain.main(argv)
    stamp = (tmp_path / first["path"]).stat().st_mtime_ns
    again = pretrain.main([*argv[:-2], "--cache-dir", str(tmp_path), "--quiet"])     # same settings
    assert len(calls) == 1 and again["path"] == first["path"]
    assert (tmp_path / first["path"]).stat().st_mtime_ns == stamp
    assert first["summary"]["num_classes"] == 10 and "--classes" in first["argv"]
    other = pretrain.main([*argv, "--seed", "1"])                                   # new settings: new base
    assert len(calls) == 2 and other["path"] != first["path"]


def _model_and_test(out_dir, *extra):
    args = fed.get_args_parser().parse_args([*TINY[:2], "--max-test", "40", "--out-dir", str(out_dir), *extra])
    federated.finish_args(args)
    ctx = federated.setup(args)
    return ctx


def test_fine_tuning_from_a_project_checkpoint_loads_every_tensor(out_dir):
    summary = train_centralized.main([*TINY, "--out-dir", str(out_dir), "--keep-best", "1"])
    path = out_dir / summary["run_dir"].rsplit("/", 1)[1] / summary["best_checkpoints"][0]
    saved = torch.load(path, weights_only=True)["model"]
    ctx = _model_and_test(out_dir, "--weights", str(path))
    assert ctx["weights"].endswith("(backbone and head)")
    state = ctx["model"].state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    acc = exp.evaluate(ctx["model"], ctx["test"], ctx["args"], ctx["device"])["accuracy"]
    assert acc == summary["test_accuracy"] and acc > 0.1           # the checkpoint's accuracy, above chance
    # a base pretrained on other classes: the backbone loads, the head is new
    ctx5 = _model_and_test(out_dir, "--weights", str(path), "--classes", "0", "5")
    assert ctx5["weights"].endswith("(backbone; new 5-class head)")
    assert all(torch.equal(ctx5["model"].state_dict()[k], saved[k]) for k in saved if k.startswith("backbone."))


def test_checkpoint_of_another_vit_fails_in_one_line(out_dir, tmp_path):
    from vit_sparse_fl.vit import ViTClassifier, ViTConfig
    other = ViTClassifier(ViTConfig(img_size=32, patch_size=4, embed_dim=24, depth=1, num_heads=2, num_classes=10))
    path = tmp_path / "other.pt"
    torch.save({"model": other.state_dict(), "config": other.config()}, path)
    with pytest.raises(cli.UsageError, match="a checkpoint of another ViT"):
        _model_and_test(out_dir, "--weights", str(path))


def test_cache_key_ignores_flags_that_do_not_change_the_base():
    """Run-handling flags (--overwrite, --extend, --report-to, --config, ...) leave the key alone, so adding such a
    flag to train_centralized does not orphan every cached base (and with it every run of the suite, whose
    --weights names the base). The suite's base key is pinned: it changes only with the recipe (bump VERSION)."""
    from vit_sparse_fl import studies

    def key(*extra):
        return pretrain.cache_key(pretrain.base_settings([*studies.BASE, "--cache-dir", "c", *extra])[1])

    assert key() == key("--overwrite") == key("--report-to", "none") == key("--quiet", "--device", "cpu") == \
        key("--checkpoint-every", "3")
    assert key() != key("--seed", "1")
    assert key() == "5511fd203c3f3718"


def test_a_diverged_pretraining_exits_3_with_a_diverged_summary(tmp_path, capsys):
    """A rate of 1e30: the base's run stops as every training run does (exit 3, one line, status diverged)."""
    import json

    with pytest.raises(SystemExit) as e:
        cli.run(pretrain.main, [*TINY, "--classes", "10", "20", "--lr", "1e30", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 3 and "\n" not in err and "Traceback" not in err, err
    (summary,) = tmp_path.glob("*.run/summary.json")
    assert json.loads(summary.read_text())["status"] == "diverged"
    assert not list(tmp_path.glob("*/base.pt"))
