"""Bad inputs never lose data: every training script of mamba_fl, vit_sparse_fl and lora_glue_fl (and the
llm_noniid cases decided by the shared parser and run directory) is run on a table of bad inputs pointed at
a FINISHED run in the same run directory; each must end with one line on stderr, exit status 2, no
traceback, and leave every file under the runs root byte-identical.

The finished runs are made once per module with tiny --quick settings; each row then runs the script in
process (``cli.run(main, argv)``, as its ``__main__`` does).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from clicases import LLM_SMOKE, one_line_error

from common import checkpoint as ck
from common import runlog
from lora_glue_fl import baseline_run, fedavg_merge, fedavg_rounds, main_glue_lora, make_shards
from mamba_fl import central, fed_avg
from vit_sparse_fl import train_centralized, train_federated, train_federated_sparse

VIT_SMALL = ["--quick", "--quiet", "--num-clients", "10", "--participation-rate", "0.2", "--local-steps", "1",
             "--rounds", "2", "--eval-every", "1", "--max-train", "200", "--max-test", "40", "--batch-size", "16"]
LORA = ["--quick", "--quiet", "--max_train_samples", "48", "--max_eval_samples", "16"]

# script key -> (main, base argv); every base argv writes into {runs}/<key>/done
SCRIPTS = {
    "mamba_fed": (fed_avg.main, ["--quick", "--quiet", "--rounds", "2", "--eval-every", "1", "--eval-blocks", "4",
                                 "--sample-tokens", "0", "--num-clients", "2"]),
    "mamba_central": (central.main, ["--quick", "--quiet", "--max-steps", "2", "--val-freq", "1",
                                     "--eval-blocks", "4", "--sample-tokens", "0"]),
    "vit_fed": (train_federated.main, VIT_SMALL),
    "vit_central": (train_centralized.main, ["--quick", "--quiet", "--epochs", "2", "--warmup-epochs", "1",
                                             "--max-train", "70", "--max-test", "20"]),
    "vit_sparse": (train_federated_sparse.main, [*VIT_SMALL, "--calibration-rounds", "1", "--sparsity-ratio", "0.5",
                                                "--mask-strategy", "random"]),
    "lora_central": (main_glue_lora.main, LORA),
    "lora_full": (baseline_run.main, LORA),
    "lora_fed": (fedavg_rounds.main, ["--quick", "--quiet", "--rounds", "2", "--local_epochs", "1",
                                      "--max_train_samples", "240", "--max_eval_samples", "16"]),
}

def _base(key: str, paths: dict) -> list[str]:
    main, argv = SCRIPTS[key]
    return [*argv, "--out-dir", str(paths["runs"] / key), "--run-name", "done"]


def _cifar(folder: Path, labels: list[int] | None = None, shape=(3072,), garbage: bool = False) -> Path:
    root = folder / "cifar-100-python"
    root.mkdir(parents=True)
    for name in ("train", "test"):
        if garbage:
            (root / name).write_bytes(b"\x00\x01 not a pickle")
            continue
        labs = labels if labels is not None else [i % 10 for i in range(40)]
        data = np.zeros((len(labs), *shape), dtype=np.uint8)
        with open(root / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labs}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, f)
    return folder


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict:
    """Finished runs of every script under runs/, and bad data files beside them."""
    root = tmp_path_factory.mktemp("bad_inputs")
    runs = root / "runs"
    runs.mkdir()
    p = {"runs": runs, "root": root}
    (runs / "a_file").write_text("not a folder")
    p["file"] = runs / "a_file"
    bad = root / "data"
    # WikiText folders
    for name, train in (("wiki_latin1", "caf\xe9 = au lait =\n".encode("latin-1") * 50),
                        ("wiki_binary", bytes(range(256)) * 40), ("wiki_empty", b"")):
        d = bad / name
        d.mkdir(parents=True)
        (d / "wiki.train.raw").write_bytes(train)
        (d / "wiki.valid.raw").write_text(" = A = \n some valid text here .\n" * 20)
    (bad / "wiki_no_valid").mkdir()
    (bad / "wiki_no_valid" / "wiki.train.raw").write_text(" = A = \n text .\n" * 20)
    wiki_other = bad / "wiki_other"
    wiki_other.mkdir()
    for n in ("wiki.train.raw", "wiki.valid.raw"):
        (wiki_other / n).write_text(" = Other = \n " + " ".join(f"w{i % 97}" for i in range(3000)) + " .\n")
    # CIFAR-100 folders
    (bad / "cifar_empty").mkdir()
    _cifar(bad / "cifar_label_neg", labels=[-1] + [1] * 39)
    _cifar(bad / "cifar_label_150", labels=[150] + [1] * 39)
    _cifar(bad / "cifar_garbage", garbage=True)
    _cifar(bad / "cifar_shape", shape=(100,))
    _cifar(bad / "cifar_no_images", labels=[])
    _cifar(bad / "cifar_other", labels=[i % 10 for i in range(400)])
    _cifar(bad / "cifar_label_half", labels=[1.5] + [1] * 39)
    _cifar(bad / "cifar_crafted")
    with open(bad / "cifar_crafted" / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({"data": _Shell(f"touch {root / 'pwned'}"), "fine_labels": [0]}, f)
    # GLUE TSV folders
    for name, content in (("tsv_header", "foo\tbar\nhello\t1\n"),
                          ("tsv_latin1", None), ("tsv_label", "sentence\tlabel\ngood movie\t7\nbad\t0\n")):
        d = bad / name
        d.mkdir()
        for split in ("train.tsv", "dev.tsv"):
            if content is None:
                (d / split).write_bytes("sentence\tlabel\ncaf\xe9 movie\t1\n".encode("latin-1"))
            else:
                (d / split).write_text(content)
    stsb = bad / "tsv_stsb_nan"
    stsb.mkdir()
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = "".join(f"{i}\tnews\tf\t2012\t{i}\tnone\tnone\ta cat sat\ta dog sat\t{s}\n"
                   for i, s in enumerate(["3.2", "nan", "1.0", "4.5"]))
    for split in ("train.tsv", "dev.tsv"):
        (stsb / split).write_text(head + rows)
    # shard manifests: indices as strings, manifests of another dataset
    for name, edit_client in (("shards_strings", lambda c: {**c, "indices": [str(i) for i in c["indices"]]}),
                              ("shards_mnli", lambda c: {**c, "dataset": "mnli"})):
        d = bad / name
        make_shards.main(["--quick", "--k", "2", "--out_dir", str(d), "--no_plot"])
        for f in [*d.glob("client_*.json")]:
            f.write_text(json.dumps(edit_client(json.loads(f.read_text()))))
        if name == "shards_mnli":
            (d / "summary.json").write_text(json.dumps({**json.loads((d / "summary.json").read_text()),
                                                        "task": "mnli"}))
    # shard manifests with a bad summary.json
    shards = bad / "shards_bad_summary"
    make_shards.main(["--quick", "--k", "2", "--out_dir", str(shards), "--no_plot"])
    (shards / "summary.json").write_text("{not json")
    (bad / "shards_empty").mkdir()
    # adapters: the lora run's final fused adapter, and one whose config lacks r
    finish(p, "lora_fed")
    adapter = next((runs / "lora_fed" / "done").glob("round_2/fused_*/adapter"))
    broken = bad / "adapter_no_r"
    broken.mkdir()
    for f in adapter.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((broken / "adapter_config.json").read_text())
    cfg.pop("r", None)
    (broken / "adapter_config.json").write_text(json.dumps(cfg))
    listed = bad / "adapter_config_list"  # a config file holding a JSON list, not an object
    shutil.copytree(broken, listed)
    (listed / "adapter_config.json").write_text("[1, 2]")
    rslora = bad / "adapter_rslora"  # the run's own adapter, its scaling declared rsLoRA
    shutil.copytree(adapter, rslora)
    cfg = json.loads((rslora / "adapter_config.json").read_text())
    (rslora / "adapter_config.json").write_text(json.dumps(cfg | {"use_rslora": True}))
    (bad / "llm_half_round.yaml").write_text("num_rounds: 2.5\n")
    for name, content in CONFIGS.items():
        (bad / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / "loop").symlink_to(root / "loop")  # a symbolic link loop, for the output-location rows
    # run directories with a corrupt args.json, metrics.jsonl or summary.json (for the plot scripts)
    meta = json.dumps({"args": {"seed": 0}, "script": "x"})
    for name, files in (("corrupt_args", {"args.json": "{not json"}),
                        ("corrupt_metrics", {"args.json": meta, "metrics.jsonl": '{"round": 1}\nnot json\n{}\n'}),
                        ("corrupt_summary", {"args.json": meta, "summary.json": "[1, 2]"})):
        run = bad / name / "run"
        run.mkdir(parents=True)
        for fname, text in files.items():
            (run / fname).write_text(text)
    p.update(bad=bad, adapter=adapter)
    return p


class _Shell:
    """Unpickling this runs a shell command: the payload of a crafted file a user may be handed."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# --config files for the rows below (written into {bad} by the fixture)
CONFIGS = {
    "overwrite_string.yaml": 'overwrite: "false"\n', "overwrite_number.yaml": "overwrite: 1\n",
    "lr_list.yaml": "lr: [0.1, 0.2]\n", "out_dir_list.yaml": "out_dir: [a, b]\n",
    "mapping.yaml": "model_config: {name: x}\n", "lr_null.yaml": "lr: null\n",
    "shard_bogus.yaml": "sharding: bogus\n", "clustering_ifca.yaml": "clustering: ifca\n",
    "dup_key.yaml": "lr: 0.1\nlr: 0.2\n",
    "binary.yaml": bytes(range(256)), "latin1.yaml": "lr: 0.1 # caf\xe9\n".encode("latin-1"),
    "lora_lr_list.yaml": "learning_rate: [0.1]\n", "lora_epochs_text.yaml": "num_train_epochs: two\n",
    "seed_huge.yaml": f"seed: {10**30}\n", "eval_blocks_negative.yaml": "eval_blocks: -1\n",
}


def finish(p: dict, key: str) -> None:
    """The finished run of ``key`` in {runs}/<key>/done (made on first use)."""
    summary = p["runs"] / key / "done" / "summary.json"
    if not summary.is_file():
        SCRIPTS[key][0](_base(key, p))
        runlog.release_all()
        assert json.loads(summary.read_text()).get("status", "complete") == "complete"


ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False

# (id, script key or other script, extra argv, expected text of the one line). {bad}, {runs}, {file},
# {adapter} are filled from the fixture. Rows without a script key's base argv name another script.
CASES = [
    # ---- never overwrite a run silently (same, other or longer arguments without --resume)
    ("mamba rerun finished", "mamba_fed", [], "already holds a finished run"),
    ("mamba rerun more rounds", "mamba_fed", ["--rounds", "3"], "--rounds (saved 2, now 3)"),
    ("mamba resume more rounds", "mamba_fed", ["--rounds", "3", "--resume"], "--extend"),
    ("mamba resume and overwrite", "mamba_fed", ["--resume", "--overwrite"], "contradict"),
    ("mamba extend without resume", "mamba_fed", ["--extend"], "with --resume"),
    ("mamba central rerun", "mamba_central", [], "already holds a finished run"),
    ("vit rerun finished", "vit_fed", [], "already holds a finished run"),
    ("vit rerun other seed", "vit_fed", ["--seed", "1"], "--seed (saved 0, now 1)"),
    ("vit central rerun", "vit_central", [], "already holds a finished run"),
    ("vit sparse rerun", "vit_sparse", [], "already holds a finished run"),
    ("lora rerun finished", "lora_central", [], "already holds a finished run"),
    ("lora baseline rerun", "lora_full", [], "already holds a finished run"),
    ("lora fed fewer rounds", "lora_fed", ["--rounds", "1"], "--rounds (saved 2, now 1)"),
    # ---- resume with other data
    ("mamba resume other data dir", "mamba_fed", ["--resume", "--data-dir", "{bad}/wiki_other"], "--data-dir"),
    ("vit resume other data dir", "vit_fed", ["--resume", "--data", "cifar100", "--data-dir", "{bad}/cifar_other"],
     "--data (saved"),
    # ---- output location
    ("mamba out-dir is a file", "mamba_fed", ["--out-dir", "{file}"], "is a file"),
    ("mamba out-dir under a file", "mamba_central", ["--out-dir", "{file}/sub"], "is a file"),
    ("vit out-dir is a file", "vit_fed", ["--out-dir", "{file}"], "is a file"),
    ("vit central out-dir is a file", "vit_central", ["--out-dir", "{file}"], "is a file"),
    ("lora out-dir is a file", "lora_central", ["--out-dir", "{file}"], "is a file"),
    ("lora fed out-dir is a file", "lora_fed", ["--output_root", "{file}"], "is a file"),
    ("run name with a slash", "mamba_fed", ["--run-name", "a/b"], "--run-name"),
    # ---- non-finite and nonsense numbers (mamba)
    ("mamba weight decay nan", "mamba_fed", ["--weight-decay", "nan"],
     "--weight-decay must be finite and at least 0, got nan"),
    ("mamba lr inf", "mamba_fed", ["--lr", "inf"], "--lr must be finite and > 0, got inf"),
    ("mamba lr negative", "mamba_fed", ["--lr", "-1"], "--lr must be"),
    ("mamba batch size zero", "mamba_fed", ["--batch-size", "0"], "--batch-size"),
    ("mamba clients zero", "mamba_fed", ["--num-clients", "0"], "--num-clients"),
    ("mamba local updates zero", "mamba_fed", ["--local-updates", "0"], "--local-updates"),
    ("mamba participation 1.5", "mamba_fed", ["--participation-rate", "1.5"], "--participation-rate"),
    ("mamba holdout 1", "mamba_fed", ["--holdout-fraction", "1"], "--holdout-fraction"),
    ("mamba eval every zero", "mamba_fed", ["--eval-every", "0"], "--eval-every"),
    ("mamba sequence length 1", "mamba_fed", ["--sequence-length", "1"], "--sequence-length"),
    ("mamba n-epochs negative", "mamba_fed", ["--n-epochs", "-1"], "--n-epochs"),
    ("mamba central max steps negative", "mamba_central", ["--max-steps", "-1"], "--max-steps"),
    ("mamba central val freq zero", "mamba_central", ["--val-freq", "0"], "--val-freq"),
    ("mamba no cuda", "mamba_fed", ["--device", "cuda:7"], "--device"),
    # a new run directory is never made for a bad input (the tensor names are checked before the claim)
    ("mamba bad delta tensors", "mamba_fed", ["--run-name", "new", "--save-deltas", "--delta-tensors", "nope"],
     "--delta-tensors"),
    ("mamba central bad delta tensors", "mamba_central", ["--run-name", "new", "--save-deltas", "--delta-tensors",
                                                          "nope"], "--delta-tensors"),
    # ---- data files (mamba)
    ("mamba data dir missing", "mamba_fed", ["--data-dir", "{bad}/nope"], "is not a folder"),
    ("mamba train not utf-8", "mamba_fed", ["--data-dir", "{bad}/wiki_latin1"], "UTF-8"),
    ("mamba train binary", "mamba_central", ["--data-dir", "{bad}/wiki_binary"], "UTF-8"),
    ("mamba train empty", "mamba_fed", ["--data-dir", "{bad}/wiki_empty"], "is empty"),
    ("mamba no valid split", "mamba_fed", ["--data-dir", "{bad}/wiki_no_valid"], "wiki.valid.raw"),
    ("mamba tokenizer folder missing", "mamba_fed", ["--tokenizer", "{bad}/no_tokenizer"], "no_tokenizer"),
    # ---- vit arguments
    ("vit eval batch size zero", "vit_fed", ["--eval-batch-size", "0"], "--eval-batch-size"),
    ("vit split seed negative", "vit_fed", ["--split-seed", "-1"], "--split-seed must be in [0, 4294967295]"),
    ("vit momentum negative", "vit_fed", ["--momentum", "-1"], "--momentum"),
    ("vit head dropout 1.5", "vit_fed", ["--head-dropout", "1.5"], "--head-dropout"),
    ("vit weight decay negative", "vit_central", ["--weight-decay", "-1"], "--weight-decay"),
    ("vit lr nan", "vit_fed", ["--lr", "nan"], "--lr must be finite and > 0, got nan"),
    ("vit clients zero", "vit_fed", ["--num-clients", "0"], "--num-clients"),
    ("vit rounds zero", "vit_fed", ["--rounds", "0"], "--rounds"),
    ("vit local steps zero", "vit_fed", ["--local-steps", "0"], "--local-steps"),
    ("vit nc zero", "vit_fed", ["--sharding", "non_iid", "--nc", "0"], "--nc"),
    ("vit max train negative", "vit_fed", ["--max-train", "-5"], "--max-train"),
    ("vit num classes negative", "vit_fed", ["--num-classes", "-3"], "--num-classes"),
    ("vit label smoothing 1", "vit_central", ["--label-smoothing", "1"], "--label-smoothing"),
    ("vit freeze too many", "vit_fed", ["--freeze-layers", "99"], "--freeze-layers"),
    ("vit interference window 2", "vit_fed", ["--interference-window", "2"], "--interference-window"),
    ("vit interference images negative", "vit_fed", ["--interference-images", "-1"], "--interference-images"),
    ("vit central epochs zero", "vit_central", ["--epochs", "0"], "--epochs"),
    ("vit central warmup too long", "vit_central", ["--warmup-epochs", "5"], "--warmup-epochs"),
    ("vit central min lr negative", "vit_central", ["--min-lr", "-1"], "--min-lr"),
    ("vit sparse ratio 1", "vit_sparse", ["--sparsity-ratio", "1.0"], "--sparsity-ratio"),
    ("vit weights missing", "vit_fed", ["--weights", "{bad}/none.pth"], "none.pth"),
    # ---- vit data files
    ("vit empty cifar folder", "vit_fed", ["--data", "cifar100", "--data-dir", "{bad}/cifar_empty"], "no CIFAR-100"),
    ("vit cifar label -1", "vit_fed", ["--data", "cifar100", "--data-dir", "{bad}/cifar_label_neg"], "label"),
    ("vit cifar label 150", "vit_central", ["--data", "cifar100", "--data-dir", "{bad}/cifar_label_150"], "label"),
    ("vit cifar not a pickle", "vit_fed", ["--data", "cifar100", "--data-dir", "{bad}/cifar_garbage"],
     "not a CIFAR-100 pickle"),
    ("vit cifar wrong shape", "vit_fed", ["--data", "cifar100", "--data-dir", "{bad}/cifar_shape"], "[N, 3072]"),
    ("vit cifar no images", "vit_central", ["--data", "cifar100", "--data-dir", "{bad}/cifar_no_images"],
     "no images"),
    ("vit cifar label 1.5", "vit_fed", ["--data", "cifar100", "--data-dir", "{bad}/cifar_label_half"],
     "labels must be integers"),
    ("vit central cifar label 1.5", "vit_central", ["--data", "cifar100", "--data-dir", "{bad}/cifar_label_half"],
     "labels must be integers"),
    ("vit cifar crafted pickle", "vit_fed", ["--data", "cifar100", "--data-dir", "{bad}/cifar_crafted"], "refused"),
    ("vit central cifar crafted pickle", "vit_central",
     ["--data", "cifar100", "--data-dir", "{bad}/cifar_crafted"], "refused"),
    ("vit sparse cifar crafted pickle", "vit_sparse",
     ["--data", "cifar100", "--data-dir", "{bad}/cifar_crafted"], "refused"),
    # ---- lora arguments
    ("lora lr negative", "lora_central", ["--learning_rate", "-1"], "--learning_rate"),
    ("lora lr nan", "lora_central", ["--learning_rate", "nan"], "--learning_rate must be finite and > 0, got nan"),
    ("lora fed lr negative", "lora_fed", ["--learning_rate", "-1"], "--learning_rate"),
    ("lora alpha zero", "lora_central", ["--lora_alpha", "0"], "--lora_alpha"),
    ("lora fed alpha zero", "lora_fed", ["--lora_alpha", "0"], "--lora_alpha"),
    ("lora fused alpha zero", "lora_fed", ["--alpha", "0"], "--alpha"),
    ("lora rank zero", "lora_central", ["--lora_r", "0"], "--lora_r"),
    ("lora svd rank above layer size", "lora_fed", ["--svd_rank", "1000"], "--svd_rank"),
    ("lora rank above layer size", "lora_fed", ["--lora_r", "1000"], "--lora_r"),
    ("lora max eval samples zero", "lora_central", ["--max_eval_samples", "0"], "--max_eval_samples"),
    ("lora max train samples negative", "lora_central", ["--max_train_samples", "-5"], "--max_train_samples"),
    ("lora train batch zero", "lora_central", ["--per_device_train_batch_size", "0"], "batch_size"),
    ("lora epochs zero", "lora_central", ["--num_train_epochs", "0"], "--num_train_epochs"),
    ("lora dropout 1.5", "lora_central", ["--lora_dropout", "1.5"], "--lora_dropout"),
    ("lora fed rounds zero", "lora_fed", ["--rounds", "0"], "--rounds"),
    ("lora max seq length zero", "lora_fed", ["--max_seq_length", "0"], "--max_seq_length"),
    ("lora baseline lr negative", "lora_full", ["--learning_rate", "-1"], "--learning_rate"),
    # ---- lora files, models, tokenizers
    ("lora tokenizer missing", "lora_central", ["--tokenizer", "/nonexistent/tok"], "/nonexistent/tok"),
    ("lora baseline tokenizer missing", "lora_full", ["--tokenizer", "/nonexistent/tok"], "/nonexistent/tok"),
    ("lora init adapter missing", "lora_fed", ["--init_adapter", "/nonexistent/adapter"], "/nonexistent/adapter"),
    ("lora init adapter rslora", "lora_fed", ["--init_adapter", "{bad}/adapter_rslora", "--run-name", "fresh"],
     "rsLoRA adapter"),
    ("lora tsv bad header", "lora_central", ["--data_dir", "{bad}/tsv_header", "--run-name", "fresh"], "header"),
    ("lora tsv not utf-8", "lora_fed", ["--data_dir", "{bad}/tsv_latin1", "--run-name", "fresh"], "UTF-8"),
    ("lora tsv bad label", "lora_central", ["--data_dir", "{bad}/tsv_label", "--run-name", "fresh"], "label"),
    ("lora shard dir bad summary", "lora_fed", ["--shard_dir", "{bad}/shards_bad_summary"], "summary.json"),
    ("lora shard dir empty", "lora_fed", ["--shard_dir", "{bad}/shards_empty"], "client_"),
    ("lora shard indices strings", "lora_fed", ["--shard_dir", "{bad}/shards_strings"], "'indices'[0] is '"),
    ("lora shards of another dataset", "lora_fed", ["--shard_dir", "{bad}/shards_mnli"], "'mnli'"),
    ("lora stsb label nan", "lora_central", ["--task_name", "stsb", "--data", "dir", "--data_dir",
                                             "{bad}/tsv_stsb_nan", "--run-name", "fresh"], "is nan, not a number"),
    ("lora fed stsb label nan", "lora_fed", ["--task_name", "stsb", "--data", "dir", "--data_dir",
                                             "{bad}/tsv_stsb_nan", "--run-name", "fresh"], "is nan, not a number"),
    ("lora baseline stsb label nan", "lora_full", ["--task_name", "stsb", "--data", "dir", "--data_dir",
                                                   "{bad}/tsv_stsb_nan", "--run-name", "fresh"], "is nan"),
    # ---- other lora scripts (no run directory of their own: the finished runs must still be untouched)
    ("merge adapter config without r", "fedavg_merge",
     ["--adapters", "{bad}/adapter_no_r", "--save_adapter", "{runs}/merged"], "adapter_config.json"),
    ("merge adapter config a list", "fedavg_merge",
     ["--adapters", "{bad}/adapter_config_list", "--save_adapter", "{runs}/merged"], "must hold a JSON object"),
    ("merge weights inf", "fedavg_merge",
     ["--adapters", "{adapter}", "{adapter}", "--weights", "inf", "1", "--save_adapter", "{runs}/merged"], "finite"),
    ("merge weights negative", "fedavg_merge",
     ["--adapters", "{adapter}", "{adapter}", "--weights", "-1", "1", "--save_adapter", "{runs}/merged"], "weights"),
    ("merge adapter missing", "fedavg_merge", ["--adapters", "{bad}/none", "--save_adapter", "{runs}/merged"], "none"),
    ("merge svd rank above size", "fedavg_merge",
     ["--adapters", "{adapter}", "--svd_rank", "1000", "--save_adapter", "{runs}/merged"], "--svd_rank"),
    ("merge save over a file", "fedavg_merge", ["--adapters", "{adapter}", "--save_adapter", "{file}"], "is a file"),
    ("merge over an existing adapter", "fedavg_merge", ["--adapters", "{adapter}", "--save_adapter", "{adapter}"],
     "inside the run directory"),
    ("merge manifests of another dataset", "fedavg_merge",
     ["--adapters", "{adapter}", "--shard_manifests", "{bad}/shards_mnli/client_1.json", "--task_name", "sst2",
      "--save_adapter", "{runs}/merged"], "made for 'mnli', not 'sst2'"),
    ("merge manifest indices strings", "fedavg_merge",
     ["--adapters", "{adapter}", "--shard_manifests", "{bad}/shards_strings/client_1.json",
      "--save_adapter", "{runs}/merged"], "'indices'[0] is '"),
    ("make_shards out dir is a file", "make_shards", ["--quick", "--out_dir", "{file}"], "is a file"),
    ("make_shards k zero", "make_shards", ["--quick", "--k", "0", "--out_dir", "{runs}/shards"], "--k"),
    # ---- plot scripts: unrelated folders, corrupt run files, an output path that is a file
    ("plot_mamba unrelated folder", "plot_mamba", ["--runs", "{bad}/wiki_other", "--out", "{root}/figs"],
     "nothing to draw"),
    ("plot_mamba corrupt args", "plot_mamba", ["--runs", "{bad}/corrupt_args", "--out", "{root}/figs"],
     "not valid JSON"),
    ("plot_mamba missing folder", "plot_mamba", ["--runs", "{bad}/none", "--out", "{root}/figs"], "no such folder"),
    ("plot_vit unrelated folder", "plot_vit", ["--runs", "{bad}/wiki_other", "--out", "{root}/figs"], "wiki_other"),
    ("plot_vit corrupt metrics", "plot_vit", ["--runs", "{bad}/corrupt_metrics", "--out", "{root}/figs"],
     "metrics.jsonl:2"),
    ("plot_vit out is a file", "plot_vit", ["--runs", "{runs}/vit_fed", "--out", "{file}"], "is a file"),
    ("plot_lora unrelated folder", "plot_lora", ["--runs", "{bad}/wiki_other", "--out", "{root}/figs"],
     "wiki_other"),
    ("plot_lora corrupt summary", "plot_lora", ["--runs", "{bad}/corrupt_summary", "--out", "{root}/figs"],
     "JSON object"),
    # ---- llm_noniid: the shared parser and run directory
    ("llm lr nan", "llm", ["--learning-rate", "nan"], "--learning-rate must be finite and > 0, got nan"),
    ("llm yaml half round", "llm", ["--config", "{bad}/llm_half_round.yaml"], "expected an integer"),
    ("llm max grad norm inf", "llm", ["--max-grad-norm", "inf"],
     "--max-grad-norm must be finite and at least 0, got inf"),
    ("llm resume and overwrite", "llm", ["--resume", "--overwrite"], "contradict"),
    ("llm out-dir is a file", "llm", ["--out-dir", "{file}"], "is a file"),
    ("llm lora rank above the layers", "llm", ["--lora-r", "100000"], "--lora-r 100000 exceeds the width"),
    # ---- devices torch names but the project does not run on, in every script
    *[(f"{key} device {dev}", key, ["--device", dev], f"{dev} device is not supported")
      for key, dev in (("mamba_fed", "mps"), ("mamba_central", "xpu"), ("vit_fed", "meta"), ("vit_central", "mps"),
                       ("vit_sparse", "xpu"), ("lora_central", "meta"), ("lora_full", "mps"), ("lora_fed", "xpu"),
                       ("llm", "meta"))],
]
CASES += [
    # ---- --config values: the flags' own types and choices, booleans that are booleans, one line each
    ("config overwrite string against a finished run", "mamba_fed", ["--config", "{bad}/overwrite_string.yaml"],
     "overwrite: 'false' is not a boolean"),
    ("config overwrite number", "mamba_central", ["--config", "{bad}/overwrite_number.yaml"], "true or false"),
    ("config lr list", "mamba_fed", ["--config", "{bad}/lr_list.yaml"], "a list is not allowed"),
    ("config out dir list", "vit_fed", ["--config", "{bad}/out_dir_list.yaml"], "expected a folder path for --out-dir"),
    ("config mapping", "mamba_fed", ["--config", "{bad}/mapping.yaml"], "a mapping is not allowed"),
    ("config null", "vit_central", ["--config", "{bad}/lr_null.yaml"], "null is not a value"),
    ("config value outside choices", "vit_fed", ["--config", "{bad}/shard_bogus.yaml"], "invalid choice: 'bogus'"),
    ("config value this script refuses", "lora_fed", ["--config", "{bad}/clustering_ifca.yaml"],
     "'ifca' is refused here: the run keeps one fused adapter"),
    ("config duplicate key", "vit_sparse", ["--config", "{bad}/dup_key.yaml"], "given twice"),
    ("config binary file", "lora_central", ["--config", "{bad}/binary.yaml"], "not UTF-8"),
    ("config latin-1 file", "lora_fed", ["--config", "{bad}/latin1.yaml"], "not UTF-8"),
    ("config lora lr list", "lora_full", ["--config", "{bad}/lora_lr_list.yaml"], "a list is not allowed"),
    ("config lora epochs text", "lora_central", ["--config", "{bad}/lora_epochs_text.yaml"], "invalid float value"),
    ("config llm overwrite string", "llm", ["--config", "{bad}/overwrite_string.yaml"], "not a boolean"),
    # ---- no script writes into a run directory but the run itself (lora_fed/done is finished by the fixture)
    ("make_shards into a finished run", "make_shards", ["--quick", "--out_dir", "{runs}/lora_fed/done"],
     "inside the run directory"),
    ("make_shards under a finished run", "make_shards", ["--quick", "--out_dir", "{runs}/lora_fed/done/shards"],
     "inside the run directory"),
    ("merge into a finished run", "fedavg_merge", ["--adapters", "{adapter}", "--save_adapter",
                                                   "{runs}/lora_fed/done/merged"], "inside the run directory"),
    ("lora adapter output into a finished run", "lora_central",
     ["--run-name", "fresh", "--adapter_output_dir", "{runs}/lora_fed/done/adapter"], "inside the run directory"),
    ("mamba nested run in a finished run", "mamba_fed", ["--out-dir", "{runs}/lora_fed/done"],
     "inside the run directory"),
    ("mamba central nested run", "mamba_central", ["--out-dir", "{runs}/lora_fed/done/sub"],
     "inside the run directory"),
    ("vit nested run in a finished run", "vit_fed", ["--out-dir", "{runs}/lora_fed/done/round_1"],
     "inside the run directory"),
    ("vit central nested run", "vit_central", ["--out-dir", "{runs}/lora_fed/done"], "inside the run directory"),
    ("lora nested run in a finished run", "lora_central", ["--out-dir", "{runs}/lora_fed/done"],
     "inside the run directory"),
    ("lora fed nested run", "lora_fed", ["--output_root", "{runs}/lora_fed/done", "--run-name", "x"],
     "inside the run directory"),
    ("llm nested run in a finished run", "llm", ["--out-dir", "{runs}/lora_fed/done"], "inside the run directory"),
    # ---- output locations the file system cannot hold: one line before anything is written
    ("mamba out-dir link loop", "mamba_fed", ["--out-dir", "{root}/loop"], "symbolic links"),
    ("mamba run directory is a link loop", "mamba_fed", ["--out-dir", "{root}", "--run-name", "loop"],
     "symbolic links"),
    ("vit out-dir link loop", "vit_central", ["--out-dir", "{root}/loop/sub"], "symbolic links"),
    ("lora out-dir link loop", "lora_central", ["--out-dir", "{root}/loop"], "symbolic links"),
    ("llm out-dir link loop", "llm", ["--out-dir", "{root}/loop"], "symbolic links"),
    ("make_shards out dir link loop", "make_shards", ["--quick", "--out_dir", "{root}/loop"], "symbolic links"),
    ("merge save adapter link loop", "fedavg_merge", ["--adapters", "{adapter}", "--save_adapter", "{root}/loop"],
     "symbolic links"),
    ("mamba run name 300 characters", "mamba_fed", ["--run-name", "x" * 300], "300 bytes"),
    ("vit run name 300 characters", "vit_fed", ["--run-name", "x" * 300], "300 bytes"),
    ("lora run name 300 characters", "lora_central", ["--run-name", "x" * 300], "300 bytes"),
    ("llm run name 300 characters", "llm", ["--run-name", "x" * 300], "300 bytes"),
    ("mamba out-dir name 300 characters", "mamba_central", ["--out-dir", "{root}/" + "y" * 300], "300 bytes"),
    # ---- numbers outside what the code can do: the flags' range-checked types (common.flags.Number)
    ("mamba seed 10**30", "mamba_fed", ["--seed", str(10**30)], "--seed must be in [0, 4294967295]"),
    ("mamba central seed negative", "mamba_central", ["--seed", "-1"], "--seed must be in"),
    ("vit seed 10**30", "vit_fed", ["--seed", str(10**30)], "--seed must be in"),
    ("vit central seed 10**30", "vit_central", ["--seed", str(10**30)], "--seed must be in"),
    ("lora seed 10**30", "lora_central", ["--seed", str(10**30)], "--seed must be in"),
    ("lora fed seed negative", "lora_fed", ["--seed", "-3"], "--seed must be in"),
    ("llm seed 10**30", "llm", ["--seed", str(10**30)], "--seed must be in"),
    ("make_shards seed 10**30", "make_shards", ["--quick", "--seed", str(10**30), "--out_dir", "{root}/shards"],
     "--seed must be in"),
    ("config seed 10**30", "vit_sparse", ["--config", "{bad}/seed_huge.yaml"], "--seed must be in"),
    ("mamba eval blocks -1", "mamba_fed", ["--eval-blocks", "-1"], "--eval-blocks must be at least 0"),
    ("mamba central eval blocks -1", "mamba_central", ["--eval-blocks", "-1"], "--eval-blocks must be at least 0"),
    ("config eval blocks -1", "mamba_fed", ["--config", "{bad}/eval_blocks_negative.yaml"], "must be at least 0"),
    ("mamba sample tokens -1", "mamba_fed", ["--sample-tokens", "-1"], "--sample-tokens"),
    ("mamba d-model zero", "mamba_central", ["--d-model", "0"], "--d-model must be at least 1"),
    ("mamba chunk size zero", "mamba_fed", ["--chunk-size", "0"], "--chunk-size"),
    ("mamba central n-epochs zero", "mamba_central", ["--n-epochs", "0"], "--n-epochs must be > 0"),
    ("mamba rounds zero", "mamba_fed", ["--rounds", "0"], "--rounds must be at least 1"),
    ("vit keep best zero", "vit_central", ["--keep-best", "0"], "--keep-best"),
    ("vit patience negative", "vit_central", ["--patience", "-1"], "--patience"),
    ("vit total steps negative", "vit_central", ["--total-steps", "-1"], "--total-steps"),
    ("vit head warmup negative", "vit_fed", ["--head-warmup", "-1"], "--head-warmup"),
    ("vit freeze layers negative", "vit_fed", ["--freeze-layers", "-1"], "--freeze-layers"),
    ("vit calibration rounds negative", "vit_sparse", ["--calibration-rounds", "-1"], "--calibration-rounds"),
    ("vit calibration batches zero", "vit_sparse", ["--calibration-batches", "0"], "--calibration-batches"),
    ("vit participation 0", "vit_fed", ["--participation-rate", "0"], "--participation-rate must be in (0, 1]"),
    ("lora fed participation 0", "lora_fed", ["--participation-rate", "0"], "--participation-rate"),
    ("lora fed clients zero", "lora_fed", ["--num-clients", "0"], "--num-clients"),
    ("lora fed batch zero", "lora_fed", ["--batch_size", "0"], "--batch_size"),
    ("lora eval batch zero", "lora_central", ["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size"),
    ("llm rounds zero", "llm", ["--num-rounds", "0"], "--num-rounds must be at least 1"),
    ("llm participation 1.5", "llm", ["--participation-rate", "1.5"], "--participation-rate"),
    ("llm lora rank negative", "llm", ["--lora-r", "-1"], "--lora-r"),
    ("llm local epochs zero", "llm", ["--local-epochs", "0"], "--local-epochs"),
    ("llm batch size zero", "llm", ["--batch-size", "0"], "--batch-size"),
    ("llm eval every zero", "llm", ["--eval-every", "0"], "--eval-every"),
    ("merge eval batch zero", "fedavg_merge",
     ["--adapters", "{adapter}", "--eval_batch_size", "0", "--save_adapter", "{root}/merged"], "--eval_batch_size"),
    ("make_shards min per label negative", "make_shards",
     ["--quick", "--min_per_label", "-1", "--out_dir", "{root}/shards"], "--min_per_label"),
]
if not ROOT:
    CASES.append(("mamba out-dir unwritable", "mamba_fed", ["--out-dir", "/proc/fedlab"], "not writable"))


def _other_main(key: str):
    if key.startswith("plot_"):
        import importlib
        return importlib.import_module({"plot_mamba": "plots.plot_mamba", "plot_vit": "plots.plot_vit",
                                        "plot_lora": "plots.plot_lora_glue"}[key]).main
    if key == "fedavg_merge":
        return fedavg_merge.main
    if key == "make_shards":
        return make_shards.main
    from llm_noniid import train
    return train.main


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _unchanged(root: Path, before: dict[str, bytes]) -> None:
    """Every file under ``root`` as ``before``; new files only in a text cache (``<out-dir>/cache``, the default
    without FEDLAB_CACHE: tokenizers and token streams keyed by their content, e.g. of the other data a refused
    --resume read), never in a run directory."""
    after = _snapshot(root)
    assert {name: after.get(name) for name in before} == before
    added = sorted(set(after) - set(before))
    assert all(Path(name).parts[1:2] == ("cache",) for name in added), added


@pytest.mark.parametrize("key", list(SCRIPTS))
def test_crafted_checkpoint_is_refused_on_resume_without_running_it(key, paths, capsys):
    """A copy of the finished run whose checkpoint.pt carries our header, the script's kind and a payload:
    --resume refuses it in one line, the payload's file never appears, nothing under runs/ changes."""
    finish(paths, key)
    done = paths["runs"] / key / "done"
    crafted = paths["runs"] / key / "crafted"
    if not crafted.exists():
        shutil.copytree(done, crafted, ignore=shutil.ignore_patterns(".lock"))
        marker = paths["root"] / f"pwned_{key}"
        state = {"round": 1, "rng": _Shell(f"touch {marker}")}
        kind = torch.load(done / "checkpoint.pt", weights_only=True)["kind"]
        torch.save({"format": ck.FORMAT, "version": ck.VERSION, "kind": kind, "state": state},
                   crafted / "checkpoint.pt")
    before = _snapshot(paths["runs"])
    err = one_line_error(SCRIPTS[key][0], [*_base(key, paths)[:-1], "crafted", "--resume"], capsys)
    assert "refused" in err and "system" in err, err
    assert not list(paths["root"].glob("pwned*"))
    _unchanged(paths["runs"], before)


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, paths, capsys):
    _, key, extra, expect = case
    fill = {k: str(v) for k, v in paths.items()}
    extra = [a.format(**fill) for a in extra]
    if key in SCRIPTS:
        finish(paths, key)
        main, argv = SCRIPTS[key][0], [*_base(key, paths), *extra]
    elif key == "llm":
        main, argv = _other_main(key), ["--quick", *LLM_SMOKE, "--quiet", "--out-dir", str(paths["runs"] / "llm"),
                                        *extra]
    else:
        if key == "plot_vit":
            finish(paths, "vit_fed")
        main, argv = _other_main(key), extra
    before = _snapshot(paths["runs"])
    err = one_line_error(main, argv, capsys)
    assert expect in err, err
    _unchanged(paths["runs"], before)
