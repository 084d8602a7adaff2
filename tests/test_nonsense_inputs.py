"""Inputs that are valid one by one but mean nothing, or cannot finish, are refused in one line (exit 2, no
traceback) before anything is written: flags that change nothing in the run (command line or --config), counts
beyond the shared bound, run names that are not plain folder names, YAML 1.1's surprising numbers, NUL bytes in
data files, participation rates that sample no client, IFCA clusters beyond the clients. Each table row runs a
script in process (``cli.run``) into a fresh out-dir that must not exist afterwards."""
from __future__ import annotations

import pytest
from clicases import one_line_error

from common import runlog
from llm_noniid import federated, train
from lora_glue_fl import fedavg_rounds, main_glue_lora
from mamba_fl import central, fed_avg, fed_momentum
from vit_sparse_fl import train_centralized, train_federated

SCRIPTS = {"mamba": fed_avg.main, "mamba_momentum": fed_momentum.main, "mamba_central": central.main,
           "vit": train_federated.main, "vit_central": train_centralized.main, "lora": main_glue_lora.main,
           "lora_fed": fedavg_rounds.main, "llm": train.main}
BASE = {"lora_fed": ["--quick", "--quiet", "--partition", "iid"]}

# (id, script, extra argv, text of the one line)
UNUSED = [
    *[(f"{s} mu without fedprox", s, ["--mu", "0.1"], "--mu changes nothing without --algorithm fedprox")
      for s in ("mamba", "vit", "lora_fed", "llm")],
    *[(f"{s} scaffold weighting without scaffold", s, ["--scaffold-weighting", "size"],
       "--scaffold-weighting changes nothing without --algorithm scaffold") for s in ("mamba", "vit", "llm")],
    *[(f"{s} server momentum without a momentum server", s, ["--server-momentum", "0.5"],
       "--server-momentum changes nothing without --server-opt fedavgm or fedadam")
      for s in ("mamba", "vit", "lora_fed", "llm")],
    ("mamba momentum form with fedadam", "mamba", ["--server-opt", "fedadam", "--momentum-form", "ema"],
     "--momentum-form changes nothing without --server-opt fedavgm"),
    ("mamba ifca init rounds without ifca", "mamba", ["--ifca-init-rounds", "3"], "without --clustering ifca"),
    ("llm ifca batches without ifca", "llm", ["--ifca-batches", "3"], "without --clustering ifca"),
    ("mamba delta tensors without save deltas", "mamba", ["--delta-tensors", "x"], "without --save-deltas"),
    ("mamba central prompt without samples", "mamba_central", ["--sample-tokens", "0", "--prompt", "Hi"],
     "--prompt changes nothing with --sample-tokens 0"),
    ("mamba min improvement without patience", "mamba", ["--min-improvement", "0.1"], "without --patience"),
    ("llm lora targets with rank 0", "llm", ["--lora-r", "0", "--lora-targets", "c_attn"],
     "--lora-targets changes nothing with --lora-r 0"),
    ("llm lora alpha with rank 0", "llm", ["--lora-alpha", "8"], "--lora-alpha changes nothing with --lora-r 0"),
    ("llm alpha on iid", "llm", ["--alpha", "0.1"], "--alpha changes nothing without --partition topic_skew"),
    ("llm min size with topic mix", "llm", ["--partition", "topic_skew", "--min-size", "3"],
     "--min-size changes nothing without --partition topic_skew --topic-split labels"),
    ("llm token skew on iid", "llm", ["--token-skew", "vocabulary"], "without --partition token_skew"),
    ("llm style criterion on iid", "llm", ["--style-criterion", "formality"], "without --partition style_skew"),
    ("llm cluster features without data clusters", "llm", ["--cluster-features", "topics"],
     "without --clustering data"),
    ("yaml mu without fedprox", "llm", ["--config", "{tmp}/mu.yaml"], "--mu changes nothing"),
    *[(f"{s} participation rate and clients per round", s, ["--participation-rate", "0.5", "--clients-per-round",
                                                             "1"], "--participation-rate changes nothing with")
      for s in ("mamba", "vit", "llm", "lora_fed")],
    ("vit nc on iid shards", "vit", ["--nc", "3"], "--nc changes nothing without --sharding non_iid"),
    ("lora fed svd rank with naive merging", "lora_fed", ["--aggregation", "naive", "--svd_rank", "2"],
     "--svd-rank changes nothing without --aggregation svd"),
    ("llm bpe vocabulary with a hub tokenizer", "llm", ["--model", "distilgpt2", "--bpe-vocab-size", "300"],
     "--bpe-vocab-size changes nothing without --tokenizer bpe"),
]
COUNTS = [
    *[(f"{s} rounds 10**11", s, ["--rounds", str(10**11)], "must be at most 10000000")
      for s in ("mamba", "vit", "lora_fed", "llm")],
    ("vit central epochs 10**11", "vit_central", ["--epochs", str(10**11)], "must be at most 10000000"),
    ("mamba central steps 10**11", "mamba_central", ["--max-steps", str(10**11)], "must be at most"),
    ("mamba epochs 1e40", "mamba", ["--n-epochs", "1e40"], "--n-epochs must be at most 10000000"),
    ("lora epochs 1e40", "lora", ["--num_train_epochs", "1e40"], "must be at most 10000000"),
    ("llm ifca init rounds 1e9", "llm", ["--clustering", "ifca", "--num-clusters", "2", "--ifca-init-rounds",
                                         str(10**9)], "--ifca-init-rounds must be at most 10000000"),
    ("yaml rounds 10**11", "mamba", ["--config", "{tmp}/rounds_huge.yaml"], "must be at most 10000000"),
    ("yaml rounds 1.0e+40", "llm", ["--config", "{tmp}/rounds_float.yaml"], "invalid int value"),
]
YAML = {"mu.yaml": "mu: 0.1\n", "rounds_huge.yaml": f"rounds: {10**11}\n", "rounds_float.yaml": "rounds: 1.0e+40\n",
        "octal.yaml": "rounds: 010\n", "grouped.yaml": "rounds: 1_000\n", "hex.yaml": "rounds: 0x10\n",
        "binary.yaml": "rounds: 0b1\n", "base60.yaml": "rounds: 1:20\n", "yes.yaml": "quiet: yes\n",
        "float_grouped.yaml": "lr: 1_0.5\n"}
NONSENSE = [
    *[(f"yaml {name}", s, ["--config", "{tmp}/" + name], "in YAML 1.1")
      for s, name in (("mamba", "octal.yaml"), ("vit", "grouped.yaml"), ("llm", "hex.yaml"),
                      ("lora_fed", "binary.yaml"), ("mamba_central", "base60.yaml"), ("vit_central", "yes.yaml"),
                      ("mamba", "float_grouped.yaml"))],
    *[(f"{s} participation 1e-300", s, ["--participation-rate", "1e-300"], "less than a tenth of one")
      for s in ("mamba", "vit", "llm", "lora_fed")],
    ("mamba ifca more clusters than clients", "mamba", ["--clustering", "ifca", "--num-clusters", "9"],
     "--num-clusters 9 exceeds the 4 clients"),
    ("llm ifca more clusters than clients", "llm", ["--clustering", "ifca", "--num-clusters", "9"],
     "--num-clusters 9 exceeds the 4 clients"),
    *[(f"{s} run name {what}", s, ["--run-name", name], "is not a plain folder name")
      for s, what, name in (("mamba", "newline", "a\nb"), ("vit", "bidi override", "run\u202etxt.exe"),
                            ("lora", "escape", "x\x1b[31m"), ("llm", "dot dot", ".."), ("mamba_central", "backslash",
                                                                                        "a\\b"))],
    ("lora tsv with a NUL byte", "lora", ["--data", "dir", "--data_dir", "{tmp}/glue_nul"], "train.tsv:3: a NUL byte"),
    ("llm csv with a NUL byte", "llm", ["--data", "ag_news", "--data-dir", "{tmp}/ag_nul"], "train.csv:2: a NUL byte"),
]
CASES = UNUSED + COUNTS + NONSENSE


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonsense")
    for name, text in YAML.items():
        (root / name).write_text(text)
    glue = root / "glue_nul"
    glue.mkdir()
    for split in ("train.tsv", "dev.tsv"):
        (glue / split).write_text("sentence\tlabel\na good film\t1\nbad\x00 film\t0\n")
    ag = root / "ag_nul"
    ag.mkdir()
    for split in ("train.csv", "test.csv"):
        (ag / split).write_text('"1","a title","a text"\n"2","b\x00","more text"\n')
    return root


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_nonsense_is_one_line_exit_2_and_writes_nothing(case, tmp, tmp_path, capsys):
    _, key, extra, expect = case
    out = tmp_path / "runs"
    argv = [*BASE.get(key, ["--quick", "--quiet"]), *(a.format(tmp=tmp) for a in extra), "--out-dir", str(out)]
    err = one_line_error(SCRIPTS[key], argv, capsys)
    assert expect in err, err
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))  # nothing written, not even a cache


def test_the_tables_are_distinct():
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv", [["--algorithm", "fedprox", "--mu", "0.1"],
                                  ["--algorithm", "scaffold", "--local-optimizer", "sgd",
                                   "--scaffold-weighting", "size"],
                                  ["--server-opt", "fedavgm", "--server-momentum", "0.5", "--momentum-form", "ema"],
                                  ["--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "c_attn"],
                                  ["--partition", "topic_skew", "--topic-split", "labels", "--min-size", "1"],
                                  ["--clustering", "ifca", "--num-clusters", "4", "--ifca-init-rounds", "2"],
                                  ["--clustering", "data", "--cluster-features", "topics"],
                                  ["--participation-rate", "0.1"]])  # 0.4 of 4 clients: one
def test_flags_where_they_apply_are_taken(argv):
    """The same flags with what they apply to pass validation (the --quick presets are defaults, not given)."""
    federated.validate(train.cli.parse(train.get_args_parser(), ["--quick", *argv]))


def test_given_is_command_line_and_config_not_defaults_or_presets(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("alpha: 0.2\n")
    args = train.cli.parse(train.get_args_parser(), ["--quick", "--config", str(cfg), "--num_rounds", "3"])
    assert {"alpha", "num_rounds", "quick", "config"} <= args.given
    assert not {"mu", "lora_r", "seq_len", "batch_size"} & args.given  # a default, --quick's presets
    assert "given" not in vars(args)  # not saved in args.json, not compared on --resume


def test_a_glue_file_without_nul_still_reads(tmp_path):
    from lora_glue_fl import glue_tasks
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na good film\t1\nbad film\t0\n")
    assert len(glue_tasks.read_tsv(tmp_path / "train.tsv", "sst2")) == 2


@pytest.mark.parametrize("name", ["run-1", "caf\u00e9_s0", "fedavg_iid_k4_p0.5+x"])
def test_plain_run_names_are_taken(name):
    runlog.check_run_name(name)

