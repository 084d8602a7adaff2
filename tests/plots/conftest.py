"""The runs the plot tests draw: one folder holding each subproject's quick run plus a small grid of each (made
by the training scripts' own main with --quick and tiny sizes), trained once per session."""
from __future__ import annotations

import pytest
from clicases import LLM_SMOKE

MAMBA = ["--quick", "--quiet", "--layers", "1", "--eval-blocks", "4", "--sample-tokens", "4", "--val-freq", "1",
         "--lr", "3e-3"]
VIT = ["--quick", "--quiet", "--num-clients", "10", "--participation-rate", "0.2", "--local-steps", "2",
       "--rounds", "2", "--eval-every", "1", "--max-train", "300", "--max-test", "60", "--batch-size", "16"]
LLM = ["--quick", *LLM_SMOKE, "--quiet", "--num-rounds", "2", "--max-train-examples", "96", "--max-eval-examples",
       "16", "--max-local-steps", "2"]
LORA = ["--quick", "--quiet", "--max_eval_samples", "32"]


@pytest.fixture(scope="session")
def mixed(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("mamba_cache"))


def make_runs(root, cache):
    """One folder: each subproject's quick run with its default name, and a small grid under the grid's names
    (two seeds of one arm; one cell of another configuration)."""
    from llm_noniid import train
    from lora_glue_fl import fedavg_rounds, main_glue_lora
    from mamba_fl import central, fed_avg
    from vit_sparse_fl import train_centralized, train_federated, train_federated_sparse

    out = ["--out-dir", str(root)]
    mamba = [*MAMBA, "--cache-dir", str(cache), *out]
    fed_avg.main([*mamba, "--num-clients", "2", "--rounds", "2", "--save-deltas"])  # the quick start's kind of run
    central.main([*mamba, "--max-steps", "4", "--batch-size", "4", "--run-name", "central_L1_synthetic_s0"])
    for seed in ("0", "1"):  # the grid: central and two seeds of FedAvg, 1 layer, topic shards
        fed_avg.main([*mamba, "--num-clients", "2", "--rounds", "2", "--shard", "topic", "--seed", seed,
                      "--run-name", f"fedavg_L1_topic_s{seed}"])
    train_federated.main([*VIT, *out])
    train_federated.main([*VIT, *out, "--sharding", "non_iid", "--nc", "2"])
    train_federated.main([*VIT, *out, "--sharding", "non_iid", "--nc", "2", "--freeze-layers", "2",
                          "--lr", "0.1", "--run-name", "probe_nc2"])  # a probe at its own rate: same suite
    train_federated.main([*VIT, *out, "--max-train", "200", "--run-name", "other_suite"])  # drawn apart
    train_centralized.main(["--quick", "--quiet", "--max-train", "300", "--max-test", "60", "--batch-size", "16",
                            "--total-steps", "8", "--warmup-epochs", "0", *out])  # joins the first suite
    train_federated_sparse.main([*VIT, *out, "--mask-strategy", "random", "--sparsity-ratio", "0.5",
                                 "--head-warmup", "1"])
    train.main([*LLM, *out])
    train.main([*LLM, *out, "--num-rounds", "3", "--run-name", "three_rounds"])  # same arm: a line of its own
    train.main([*LLM, *out, "--partition", "topic_skew", "--alpha", "0.1"])
    for seed in ("0", "1"):
        fedavg_rounds.main([*LORA, "--out_dir", str(root), "--seed", seed, "--learning_rate", "3e-3",
                            "--max_train_samples", "240", "--local_epochs", "1"])  # mechanics, not learning
    main_glue_lora.main([*LORA, "--out_dir", str(root), "--seed", "0"])
    return root
