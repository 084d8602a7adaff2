"""The text path of vit_sparse_fl: a Hugging Face encoder with mean pooling and a head, on AG News CSV files,
through the ViT's federated, sparse and probe code (a tiny random BERT and CSV files written here)."""
from __future__ import annotations

import json

import pytest
import torch

from common.cli import UsageError
from common.fisher import diagonal_fisher
from vit_sparse_fl import federated, text
from vit_sparse_fl import train_federated as fed
from vit_sparse_fl import train_federated_sparse as fsp


def argv(tiny, out, *extra):
    model_dir, data = tiny
    return ["--quick", "--quiet", "--arch", "encoder", "--weights", str(model_dir), "--data", "ag_news",
            "--data-dir", str(data), "--max-length", "16", "--max-test", "0", "--num-clients", "8",
            "--participation-rate", "0.5", "--rounds", "4", "--eval-every", "2", "--batch-size", "16",
            "--lr", "0.05", "--out-dir", str(out), *extra]


def test_reads_the_csv_format_and_splits_a_seeded_quarter_for_test(tiny):
    texts, labels = text.read_csv(tiny[1] / "test.csv")
    assert len(texts) == 480 and labels.tolist()[:4] == [0, 1, 2, 3] and "\\" not in texts[0]
    args = fed.get_args_parser().parse_args(argv(tiny, "unused"))
    (pool, _), (test, test_labels) = text.read_splits(args)
    assert (len(pool), len(test)) == (360, 120) and pool.dtype == torch.long
    assert pool.shape[1] == 16 and set(test_labels.tolist()) == {0, 1, 2, 3}
    assert (pool > 4).float().mean() > 0.5                                      # words, not [UNK] / padding


def test_federated_text_run_learns_and_exports_a_loadable_classifier(tiny, tmp_path):
    s = fed.main(argv(tiny, tmp_path, "--rounds", "24", "--eval-every", "12", "--participation-rate", "0.25"))
    assert s["chance_accuracy"] == 0.25 and s["test_accuracy"] > 0.5          # well past the 4-class chance
    folder = tmp_path / s["run_dir"].rsplit("/", 1)[1] / "model"
    model = text.load(folder)
    from transformers import AutoModel
    assert AutoModel.from_pretrained(folder).config.hidden_size == 32        # a plain Hugging Face encoder
    args = fed.get_args_parser().parse_args(argv(tiny, "unused"))
    _, (ids, labels) = text.read_splits(args)
    with torch.no_grad():
        acc = float((model(ids).argmax(-1) == labels).float().mean())
    assert acc == pytest.approx(s["test_accuracy"])


def test_sparse_text_run_keeps_masked_coordinates_and_probe_trains_only_the_head(tiny, tmp_path):
    s = fsp.main(argv(tiny, tmp_path, "--mask-strategy", "least_sensitive", "--fisher-score", "talos",
                      "--calibration-rounds", "2", "--sparsity-ratio", "0.9", "--head-warmup", "1"))
    assert s["mask_density"] == pytest.approx(0.1, abs=1e-3) and s["calibration_sample_gradients"] == 2 * 8 * 16
    dens = json.loads((tmp_path / s["run_dir"].rsplit("/", 1)[1] / "mask_density.json").read_text())
    assert not any("pooler" in k for k in dens["per_tensor"])                 # mean pooling: no unused pooler
    tables = [f"backbone.embeddings.{t}_embeddings.weight" for t in ("word", "position", "token_type")]
    assert s["frozen_tables"] == sorted(tables) and all(dens["per_tensor"][t] == 0.0 for t in tables)
    assert s["trainable_backbone_share"] < 0.1                                # 10 % of what the masks choose from
    trained = text.load(tmp_path / s["run_dir"].rsplit("/", 1)[1] / "model")
    pretrained, _ = text.build(str(tiny[0]), 4, 0.0)
    assert torch.equal(trained.backbone.embeddings.word_embeddings.weight,
                       pretrained.backbone.embeddings.word_embeddings.weight)  # frozen, as TaLoS's NLP code
    after, before = trained.backbone.encoder.state_dict(), pretrained.backbone.encoder.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)          # the masks train the encoder
    s = fsp.main(argv(tiny, tmp_path, "--mask-strategy", "least_sensitive", "--fisher-score", "talos",
                      "--calibration-rounds", "2", "--sparsity-ratio", "0.9", "--head-warmup", "1",
                      "--mask-embeddings", "--run-name", "with_tables"))
    dens = json.loads((tmp_path / "with_tables" / "mask_density.json").read_text())
    assert s["frozen_tables"] == [] and dens["per_tensor"][tables[0]] > 0       # the tables are eligible then
    probe = fed.get_args_parser().parse_args(argv(tiny, tmp_path, "--freeze-layers", "2"))
    federated.finish_args(probe)  # as main does: defaults that follow other flags (--holdout-fraction)
    ctx = federated.setup(probe)
    assert {n.split(".")[0] for n in ctx["names"]} == {"head"}               # the probe: head only


def test_per_example_fisher_of_the_text_classifier_runs_under_vmap(tiny, recwarn):
    model, _ = text.build(str(tiny[0]), 4, 0.0)
    model.set_fused_attention(False)
    ids = text.tokenizer(str(tiny[0]))(["vote goal today", "stocks chip"], max_length=8, truncation=True,
                                       padding="max_length", return_tensors="pt")["input_ids"]
    y = torch.tensor([0, 2])
    fisher = diagonal_fisher(model, [(ids, y)], labels="empirical")
    assert not [w for w in recwarn if "vmap" in str(w.message)]              # no fallback to the loop
    loop = [torch.zeros_like(p) for p in model.parameters()]
    model.eval()
    for i in range(2):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(ids[i:i + 1]), y[i:i + 1]).backward()
        for acc, p in zip(loop, model.parameters()):
            acc += p.grad ** 2 / 2
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-8) for a, b in zip(fisher, loop))


@pytest.mark.parametrize("extra,message", [
    (["--data", "synthetic"], "--arch encoder and --data ag_news go together"),
    (["--weights", "dino"], "needs --weights minilm or a Hugging Face encoder folder"),
    (["--freeze-layers", "3"], "exceeds the 2 layers")])
def test_bad_text_inputs_end_in_one_line(tiny, tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        fed.main([*argv(tiny, tmp_path), *extra])


def test_malformed_csv_and_missing_folder_are_refused(tiny, tmp_path):
    (tmp_path / "test.csv").write_text('"1","only a title"\n')
    with pytest.raises(UsageError, match="expected \"class index"):
        text.read_csv(tmp_path / "test.csv")
    with pytest.raises(UsageError, match="no test.csv"):
        text.csv_files(tmp_path / "nothing")


def test_plot_vit_draws_a_text_run_freezing_every_layer_as_the_head_only_probe(tiny):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("plot_vit", Path(__file__).parents[2] / "plots" / "plot_vit.py")
    plot_vit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_vit)

    def run(frozen):
        return {"args": {"arch": "encoder", "freeze_layers": frozen}, "summary": {"weights": str(tiny[0])}}
    assert [plot_vit.probe_label(run(n)) for n in (2, 1)] == ["probe: head", "probe: head + last block"]
    assert plot_vit.frozen(run(0)) == 0 and plot_vit.frozen(run(5)) == 2       # depth 2: every layer frozen


def test_mask_embeddings_is_refused_for_a_vit(tmp_path):
    """The ViT has no embedding tables: --mask-embeddings would change nothing, so it is refused in one line."""
    with pytest.raises(UsageError, match="--mask-embeddings: only a text encoder"):
        fsp.main(["--quick", "--out-dir", str(tmp_path), "--mask-embeddings"])
