"""Model, tokenizer and adapter folders are read as data, never run, and a crafted or corrupt one is refused in one
line naming the file (``common.pretrained``): tiny random models saved with save_pretrained here, then altered,
through every script flag that reads such a folder. Custom modules and pickles write a marker file when run: it
must never appear, with "y" waiting on stdin for transformers' "run the custom code?" question."""
from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from clicases import LLM_SMOKE, one_line_error

from common.text import load_tokenizer

MARKER = "ran.txt"  # written by the folders' code when it runs


def _custom_code(folder: Path, config: str, module: str, mapping: dict) -> str:
    """``config`` names ``module``.py (which writes the marker on import) in its auto_map."""
    data = json.loads((folder / config).read_text())
    data["auto_map"] = mapping
    (folder / config).write_text(json.dumps(data))
    (folder / f"{module}.py").write_text(f"open({str(folder.parent / MARKER)!r}, 'w').write('ran')\n")
    return config


def model_code(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "fedlab_custom"  # a type transformers does not know: only the folder's code builds it
    (folder / "config.json").write_text(json.dumps(config))
    return _custom_code(folder, "config.json", "modeling_custom", {k: f"modeling_custom.{k[4:]}" for k in (
        "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")})


def tokenizer_code(folder: Path) -> str:
    return _custom_code(folder, "tokenizer_config.json", "tokenization_custom",
                        {"AutoTokenizer": ["tokenization_custom.Tok", "tokenization_custom.TokFast"]})


def pickled_weights(folder: Path) -> str:
    """The safetensors replaced by a raw pickle that runs a shell command when unpickled."""
    (folder / "model.safetensors").unlink()
    marker = folder.parent / MARKER
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    return "pytorch_model.bin"


def _header(folder: Path, name: str = "model.safetensors") -> tuple[bytes, int]:
    data = (folder / name).read_bytes()
    return data, struct.unpack("<Q", data[:8])[0]


def huge_header(folder: Path, name: str = "model.safetensors") -> str:
    data, _ = _header(folder, name)
    (folder / name).write_bytes(struct.pack("<Q", 2 ** 62) + data[8:])
    return name


def header_not_json(folder: Path, name: str = "model.safetensors") -> str:
    data, n = _header(folder, name)
    (folder / name).write_bytes(data[:8] + b"{" * n + data[8 + n:])
    return name


def truncated(folder: Path, name: str = "model.safetensors") -> str:
    data, n = _header(folder, name)
    (folder / name).write_bytes(data[:8 + n + (len(data) - 8 - n) // 2])
    return name


def _write(name: str, text: str):
    def alter(folder: Path) -> str:
        (folder / name).write_text(text)
        return name
    return alter


def _edit_json(name: str, change):
    def alter(folder: Path) -> str:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
        return name
    return alter


def _huge_token_id(tok: dict) -> None:
    tok["model"]["vocab"]["zzz"] = 2 * 10 ** 9


def _no_unknown_token(tok: dict) -> None:
    """A vocabulary that loads but cannot encode: a WordLevel model whose unknown token is not in it."""
    tok["model"] = {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "<nope>"}
    tok["added_tokens"] = []


CASES = {  # name -> alteration of a valid folder (returns the file the refusal must name), words of the refusal
    "custom model code": (model_code, "custom code"),
    "custom tokenizer code": (tokenizer_code, "custom code"),
    "pickle as weights": (pickled_weights, "raw pickle"),
    "safetensors header too long": (huge_header, "not a safetensors file"),
    "safetensors header not JSON": (header_not_json, "not a safetensors file"),
    "safetensors truncated": (truncated, "does not fit the file"),
    "config.json not JSON": (_write("config.json", '{"model_type": "gpt2",'), "not JSON"),
    "config.json absurd size": (_edit_json("config.json", lambda c: c.update(vocab_size=2 * 10 ** 9)),
                                "not a size a model can have"),
    "config.json a list": (_write("config.json", "[1, 2]"), "must hold a JSON object"),
    "tokenizer.json not JSON": (_write("tokenizer.json", "not json at all"), "not JSON"),
    "tokenizer.json not a tokenizer": (_write("tokenizer.json", '{"a": 1}'), 'no tokenizer "model"'),
    "token id 2e9": (_edit_json("tokenizer.json", _huge_token_id), "token id 2000000000"),
    "tokenizer that cannot encode": (_edit_json("tokenizer.json", _no_unknown_token), "could not be loaded"),
}


def save_quietly(obj, folder: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        obj.save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A random 1-layer GPT-2 with a byte-level BPE beside it (tokenizer.json + tokenizer_config.json)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gpt2")
    (root / "text.txt").write_text("the market rose as the team won the match and the new chip shipped\n" * 50)
    tok = load_tokenizer("bpe", train_files=[root / "text.txt"], vocab_size=320, cache_dir=root / "tok")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    save_quietly(model, root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    """A random 1-layer BERT encoder with a WordPiece tokenizer (tokenizer.json + tokenizer_config.json)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("bert")
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a"]) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "model")
    torch.manual_seed(0)
    save_quietly(BertModel(BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=32)), root / "model")
    return root / "model"


def crafted(valid: Path, case: str, tmp_path: Path) -> tuple[Path, str]:
    """A copy of ``valid`` in ``tmp_path`` altered by ``CASES[case]``; (folder, the file named)."""
    folder = tmp_path / "crafted"
    shutil.copytree(valid, folder)
    return folder, CASES[case][0](folder)


def assert_refused(line: str, folder: Path, file: str, case: str, tmp_path: Path) -> None:
    assert CASES[case][1] in line, line
    assert str(folder / file) in line, line
    assert not (tmp_path / MARKER).exists(), "the folder's code ran"
    assert not (tmp_path / "runs").exists(), "written before the refusal"


# ---- every case through llm_noniid/train.py --model, the flag that reads both a model and its tokenizer ----
@pytest.mark.parametrize("case", sorted(CASES))
def test_llm_noniid_model_flag_refuses_each_crafted_folder(case, gpt2_folder, tmp_path, capsys, monkeypatch):
    from llm_noniid import train

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 8))
    folder, file = crafted(gpt2_folder, case, tmp_path)
    line = one_line_error(train.main, ["--quick", *LLM_SMOKE, "--model", str(folder), "--lora-r", "2",
                                       "--out-dir", str(tmp_path / "runs")], capsys)
    assert_refused(line, folder, file, case, tmp_path)


# ---- the other flags that read a model or tokenizer folder: code, and files that are not what they claim ----
ENTRY_CASES = ["custom model code", "custom tokenizer code", "pickle as weights", "safetensors truncated",
               "tokenizer.json not a tokenizer", "token id 2e9"]


def _llm_tokenizer(folder, tmp_path):
    from llm_noniid import train
    return train.main, ["--quick", *LLM_SMOKE, "--model", "tiny-gpt2", "--tokenizer", str(folder),
                        "--out-dir", str(tmp_path / "runs")]


def _llm_grid_base(folder, tmp_path):
    from llm_noniid import run_experiments
    csv = tmp_path / "news.csv"
    csv.write_text('"1","a title","a text"\n')
    return run_experiments.main, ["--regime", "pretrained", "--mode", "quick", "--base", str(folder),
                                  "--split-csv", str(csv), "--out-dir", str(tmp_path / "runs")]


def _vit_encoder(folder, tmp_path):
    from vit_sparse_fl import train_federated
    data = tmp_path / "ag_news"
    data.mkdir()
    (data / "test.csv").write_text("".join(f'"{i % 4 + 1}","the a","the\\\\a"\n' for i in range(40)))
    return train_federated.main, ["--quick", "--quiet", "--arch", "encoder", "--weights", str(folder), "--data",
                                  "ag_news", "--data-dir", str(data), "--max-length", "8", "--out-dir",
                                  str(tmp_path / "runs")]


def _lora_model(folder, tmp_path):
    from lora_glue_fl import main_glue_lora
    return main_glue_lora.main, ["--task_name", "mrpc", "--data", "synthetic", "--max_seq_length", "16", "--quiet",
                                 "--lora_r", "2", "--model_name_or_path", str(folder), "--out-dir",
                                 str(tmp_path / "runs")]


def _lora_tokenizer(folder, tmp_path):
    from lora_glue_fl import main_glue_lora
    return main_glue_lora.main, ["--quick", "--task_name", "mrpc", "--quiet", "--tokenizer", str(folder),
                                 "--out-dir", str(tmp_path / "runs")]


def _merge_base(folder, tmp_path):
    """fedavg_merge.py --do_eval --base_model FOLDER with a valid adapter."""
    import torch

    from lora_glue_fl import adapters, fedavg_merge
    adapter = adapters.Adapter({"bert.encoder.layer.0.attention.self.query": (torch.zeros(2, 16), torch.zeros(16, 2))},
                               {}, 2, 2.0, ["query"])
    adapters.save(adapter, tmp_path / "adapter", "unused")
    return fedavg_merge.main, ["--adapters", str(tmp_path / "adapter"), "--save_adapter", str(tmp_path / "runs"),
                               "--do_eval", "--base_model", str(folder), "--task_name", "mrpc", "--data",
                               "synthetic"]


ENTRIES = {  # script flag -> (the valid folder it reads, argv builder)
    "llm_noniid/train.py --tokenizer": ("gpt2_folder", _llm_tokenizer),
    "llm_noniid/run_experiments.py --base": ("gpt2_folder", _llm_grid_base),
    "vit_sparse_fl --arch encoder --weights": ("bert_folder", _vit_encoder),
    "lora_glue_fl --model_name_or_path": ("bert_folder", _lora_model),
    "lora_glue_fl --tokenizer": ("bert_folder", _lora_tokenizer),
    "lora_glue_fl/fedavg_merge.py --base_model": ("bert_folder", _merge_base),
}


@pytest.mark.parametrize("case", ENTRY_CASES)
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_every_folder_flag_refuses_code_and_corrupt_files(entry, case, request, tmp_path, capsys, monkeypatch):
    fixture, build = ENTRIES[entry]
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 8))
    folder, file = crafted(request.getfixturevalue(fixture), case, tmp_path)
    main, argv = build(folder, tmp_path)
    line = one_line_error(main, argv, capsys)
    assert_refused(line, folder, file, case, tmp_path)


# ---- adapters: peft folders read by fedavg_merge.py --adapters --------------------------------------------
ADAPTER_CASES = {
    "weights header too long": (lambda f: huge_header(f, "adapter_model.safetensors"), "not a safetensors file"),
    "weights header not JSON": (lambda f: header_not_json(f, "adapter_model.safetensors"), "not a safetensors file"),
    "weights truncated": (lambda f: truncated(f, "adapter_model.safetensors"), "does not fit the file"),
    "config not JSON": (_write("adapter_config.json", "{"), "not JSON"),
    "config names code": (_edit_json("adapter_config.json", lambda c: c.update(
        auto_mapping={"base_model_class": "X", "parent_library": "evil_module"})), "custom code"),
}


@pytest.mark.parametrize("case", sorted(ADAPTER_CASES))
def test_crafted_adapter_folders_are_refused_in_one_line(case, tmp_path, capsys):
    import torch

    from lora_glue_fl import adapters, fedavg_merge
    folder = tmp_path / "adapter"
    adapters.save(adapters.Adapter({"m.query": (torch.ones(2, 8), torch.ones(8, 2))}, {}, 2, 2.0, ["query"]), folder)
    alter, words = ADAPTER_CASES[case]
    file = alter(folder)
    line = one_line_error(fedavg_merge.main, ["--adapters", str(folder), "--save_adapter", str(tmp_path / "out")],
                          capsys)
    assert words in line and str(folder / file) in line, line
    assert not (tmp_path / "out").exists()


# ---- as a user runs it: a script process with "y" on stdin; no question, no code run, no native crash -------
DRIVER = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import test_model_folders as T
    from common import cli
    from llm_noniid import train
    valid, root = Path(sys.argv[2]), Path(sys.argv[3])
    for i, case in enumerate(sorted(T.CASES)):
        folder, _ = T.crafted(valid, case, root / str(i))
        try:
            cli.run(train.main, ["--quick", "--model", str(folder), "--lora-r", "2", "--out-dir", str(root / "runs")])
        except SystemExit as e:
            print(case, "->", e.code, flush=True)
""")


def test_a_script_process_answering_yes_runs_no_folder_code_and_never_crashes(gpt2_folder, tmp_path):
    """Every crafted folder in one child process (a native abort would kill it: exit -6, cases missing), with
    answers "y" waiting on stdin; each case exits 2, nothing asks a question, no marker appears."""
    root = tmp_path / "cases"
    root.mkdir()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(Path(__file__).parent), str(gpt2_folder), str(root)],
                          input="y\n" * 64, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f"{case} -> 2" for case in sorted(CASES)], proc.stdout + proc.stderr[-2000:]
    assert "custom code?" not in proc.stdout + proc.stderr and "[y/N]" not in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob(MARKER)), "a folder's code ran"
    assert len(proc.stderr.strip().splitlines()) == len(CASES) and "Traceback" not in proc.stderr, proc.stderr


# ---- the checks themselves: what the libraries raise becomes one line; valid files pass untouched ------------
def test_a_rust_panic_while_loading_is_one_line_naming_the_source():
    """tokenizers' ``PanicException`` derives from ``BaseException``, not ``Exception``: ``loading`` converts it;
    interrupts pass through."""
    from common import pretrained

    class PanicException(BaseException):
        pass

    with pytest.raises(pretrained.NotLoaded, match=r"tok.json could not be loaded \(PanicException: boom\)"):
        with pretrained.loading("tok.json"):
            raise PanicException("boom\nat src/lib.rs")
    with pytest.raises(KeyboardInterrupt), pretrained.loading("tok.json"):
        raise KeyboardInterrupt


def test_valid_safetensors_of_every_shape_and_dtype_pass_the_header_check(tmp_path):
    import torch
    from safetensors.torch import save_file

    from common import pretrained
    tensors = {"scalar": torch.tensor(1.5), "empty": torch.zeros(0, 3), "bf16": torch.ones(2, 3, dtype=torch.bfloat16),
               "i64": torch.arange(5), "bool": torch.ones(4, dtype=torch.bool), "f16": torch.ones(7, dtype=torch.half)}
    save_file(tensors, tmp_path / "ok.safetensors", metadata={"format": "pt"})
    pretrained.check_safetensors(tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-1])
    with pytest.raises(pretrained.UsageError, match="does not fit the file"):
        pretrained.check_safetensors(tmp_path / "short.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(data[:5])
    with pytest.raises(pretrained.UsageError, match="not a safetensors file"):
        pretrained.check_safetensors(tmp_path / "tiny.safetensors")


@pytest.mark.parametrize("alter", [huge_header, header_not_json, truncated])
def test_vit_weights_and_exported_model_folders_with_corrupt_safetensors_are_one_line(alter, tmp_path):
    """vit_sparse_fl's --weights FILE.safetensors / a run's model folder, and ``vit.load`` of that folder."""
    from common.cli import UsageError
    from vit_sparse_fl import vit

    model = vit.ViTClassifier(vit.VIT_TINY)
    folder = vit.save(model, tmp_path, image_size=32, info={})
    alter(folder)
    for read in (lambda: vit.load_backbone_weights(model, str(folder)), lambda: vit.load(folder)):
        with pytest.raises(UsageError, match=f"{folder / 'model.safetensors'}: "):
            read()
