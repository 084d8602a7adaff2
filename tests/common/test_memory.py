"""common.memory: sizes that cannot fit are refused before anything is allocated, with what fits; the sizes the
project runs (--quick, the source configurations) are not. The rows run each script in process with the
available memory pinned, so the result does not depend on the machine."""
from __future__ import annotations

import pytest
from clicases import one_line_error

from common import memory
from common.errors import UsageError
from llm_noniid import pretrain, train
from lora_glue_fl import fedavg_rounds, main_glue_lora
from mamba_fl import central, fed_avg
from vit_sparse_fl import train_centralized, train_federated

GIB = 2**30


def test_estimate_parts_and_scaling():
    small = memory.transformer(params=1000, batch=2, seq=8, width=4, layers=2, heads=2, vocab=10)
    assert set(small) == {"parameters, gradients and optimizer state", "activations", "logits"}
    assert small["parameters, gradients and optimizer state"] == 4 * 1000 * 4  # weights, gradients, 2 moments
    double = memory.transformer(params=1000, batch=2, seq=16, width=4, layers=2, heads=2, vocab=10)
    assert double["logits"] == 2 * small["logits"] and double["activations"] > 2 * small["activations"]
    frozen = memory.transformer(params=1000, trainable=0, batch=2, seq=8, width=4, layers=2, heads=2, vocab=10)
    assert frozen["parameters, gradients and optimizer state"] == 4 * 1000


def test_check_fits_says_what_fits(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda device="cpu": GIB)
    est = lambda s: {"activations": s["--seq-len"] * s["--batch-size"] * 1024}  # noqa: E731
    memory.check_fits(est, {"--seq-len": 1024, "--batch-size": 1024})  # exactly 1 GiB: fits
    with pytest.raises(UsageError) as e:
        memory.check_fits(est, {"--seq-len": 4096, "--batch-size": 1024}, what="the model")
    msg = str(e.value)
    assert "the model needs at least 4 GiB" in msg and "1 GiB is available on cpu" in msg
    assert "--seq-len 1024 or --batch-size 256" in msg


def test_available_is_positive():
    assert memory.available("cpu") > 0


def test_config_dims_reads_both_spellings():
    assert memory.config_dims({"n_embd": 8, "n_layer": 2, "n_head": 2}) == (8, 2, 2)
    assert memory.config_dims({"hidden_size": 8, "num_hidden_layers": 3, "num_attention_heads": 4}) == (8, 3, 4)
    assert memory.config_dims({"hidden_size": 8}) is None


SOURCE_SHAPES = [  # the source configurations the READMEs name: far below a laptop's memory
    memory.transformer(params=8192 * 512 + 4 * 3 * 1024 * 512, batch=32, seq=256, width=512, layers=4, heads=0,
                       vocab=8192, inner=2 * 1024 + 256),                                       # Mamba2, 4 layers
    memory.transformer(params=22_000_000, batch=32, seq=197, width=384, layers=12, heads=6, vocab=100,
                       inner=4 * 384),                                                          # DINO ViT-S/16
    memory.transformer(params=82_000_000, trainable=0, batch=8, seq=128, width=768, layers=6, heads=12,
                       vocab=50257, inner=4 * 768),                                             # distilgpt2 + LoRA
]


@pytest.mark.parametrize("parts", SOURCE_SHAPES)
def test_source_configurations_fit_in_8_gib(parts):
    assert sum(parts.values()) < 8 * GIB


# (id, main, argv, the size flag named in the line[, GiB available; default 1/8])
TOO_BIG = [
    ("llm seq len", train.main, ["--quick", "--seq-len", "100000"], "--seq-len"),
    ("llm batch and seq", train.main, ["--quick", "--seq-len", "4096", "--batch-size", "64"], "--seq-len 199"),
    ("mamba d-model", fed_avg.main, ["--quick", "--d-model", "200000"], "--d-model"),
    ("mamba central d-model", central.main, ["--quick", "--d-model", "200000"], "--d-model"),
    ("vit small batch", train_federated.main, ["--quick", "--arch", "vit_small", "--image-size", "224",
                                               "--num-clients", "2", "--batch-size", "1000"], "--batch-size", 2),
    ("vit central small batch", train_centralized.main, ["--quick", "--arch", "vit_small", "--image-size", "224",
                                                         "--batch-size", "2000"], "--batch-size", 2),
    ("lora positions", main_glue_lora.main, ["--quick", "--max_seq_length", "1000000"], "--max_seq_length"),
    ("lora fed batch", fedavg_rounds.main, ["--quick", "--batch_size", "100000"], "--batch_size"),
]


@pytest.mark.parametrize("case", TOO_BIG, ids=[c[0] for c in TOO_BIG])
def test_sizes_that_cannot_fit_are_refused_before_any_write(case, tmp_path, capsys, monkeypatch):
    _, main, argv, flag, *gib = case
    monkeypatch.setattr(memory, "available", lambda device="cpu": int(GIB * (gib or [1 / 8])[0]))
    out = tmp_path / "runs"
    err = one_line_error(main, [*argv, "--quiet", "--out-dir", str(out)], capsys)
    assert "needs at least" in err and "is available on" in err and flag in err, err
    assert not out.exists() or [p.name for p in out.iterdir()] == ["cache"]  # the data cache only


def test_pretrain_too_wide_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available", lambda device="cpu": GIB)
    err = one_line_error(pretrain.main, ["--quick", "--n-embd", "96000", "--n-head", "3",
                                         "--cache-dir", str(tmp_path / "c")], capsys)
    assert "needs at least" in err and "1 GiB is available" in err and "--n-embd" in err
    assert not (tmp_path / "c").exists()
