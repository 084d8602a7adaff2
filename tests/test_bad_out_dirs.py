"""Output locations a user can give that cannot hold a run: every script that writes refuses them in one line
(exit 2, no traceback) before it writes anything, its caches included (the README's "validate, then write").

Run as a user runs them: no FEDLAB_CACHE / FEDLAB_DATA (conftest's fresh home folder holds ~/.cache/fedlab), so
the default cache paths (<out-dir>/cache, ~/.cache/fedlab) are the ones exercised. After each refusal the test's
folder, the current folder and the home folder hold exactly what they held before.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from clicases import LLM_SMOKE, one_line_error
from test_bad_inputs import ROOT, SCRIPTS

from llm_noniid import pretrain, train
from lora_glue_fl import fedavg_merge, make_shards
from mamba_fl import fed_entropy, fed_fisher, fed_momentum
from vit_sparse_fl import pretrain as vit_pretrain

# script -> (main, argv, the flag naming the folder it writes in, the name messages give it)
WRITERS = {**{key: (main, argv, "--out-dir", "--out-dir") for key, (main, argv) in SCRIPTS.items()},
           "lora_fed_output_root": (SCRIPTS["lora_fed"][0], SCRIPTS["lora_fed"][1], "--output_root", "--out-dir"),
           "mamba_fisher": (fed_fisher.main, ["--quick", "--quiet"], "--out-dir", "--out-dir"),
           "mamba_entropy": (fed_entropy.main, ["--quick", "--quiet"], "--out-dir", "--out-dir"),
           "mamba_momentum": (fed_momentum.main, ["--quick", "--quiet"], "--out-dir", "--out-dir"),
           "llm_train": (train.main, ["--quick", *LLM_SMOKE, "--quiet"], "--out-dir", "--out-dir"),
           "llm_pretrain": (pretrain.main, ["--quick", "--quiet"], "--cache-dir", "--cache-dir"),
           "vit_pretrain": (vit_pretrain.main, ["--quick", "--quiet"], "--cache-dir", "--cache-dir"),
           "make_shards": (make_shards.main, ["--quick", "--no_plot"], "--out_dir", "--out_dir"),
           "fedavg_merge": (fedavg_merge.main, ["--adapters", "a", "b"], "--save_adapter",
                            "--save_adapter")}
# the scripts whose --cache-dir defaults to <out-dir>/cache (tokenizers, token streams)
CACHED = {"mamba_fed": "--cache-dir", "mamba_central": "--cache-dir", "llm_train": "--cache-dir"}
# the scripts of the embedded data in --quick (generated into $FEDLAB_DATA, else ~/.cache/fedlab/synthetic)
EMBEDDED = ("mamba_fed", "mamba_central", "vit_fed", "vit_central", "lora_central", "lora_fed", "llm_train")

BAD = {  # name -> the path, in the test's folder {tmp} (made by ``bad_places``)
    "a file": "{tmp}/a_file", "under a file": "{tmp}/a_file/sub", "a symbolic link loop": "{tmp}/loop",
    "a dangling link": "{tmp}/dangling", "a read-only folder": "{tmp}/read_only",
    "a folder in /proc": "/proc/self", "a new folder in /proc": "/proc/self/fedlab", "/dev/null": "/dev/null",
    "the empty path": "",
}


@pytest.fixture
def bad_places(tmp_path, monkeypatch) -> Path:
    """The test's folder with the bad places of ``BAD``, the current folder an empty one inside it, and no
    FEDLAB_CACHE / FEDLAB_DATA (as in a user's shell)."""
    for name in ("FEDLAB_CACHE", "FEDLAB_DATA"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "read_only").mkdir(mode=0o555)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): its mode, and a file's size and modification time (not a
    folder's: the write probe of ``check_out_dir`` makes and removes a folder in it)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(Path(folder) / name)
            out[os.path.relpath(Path(folder) / name, root)] = (st.st_mode, *(() if name in dirs else (
                st.st_size, st.st_mtime_ns)))
    return out


def _refused_and_nothing_written(main, argv, tmp: Path, capsys) -> str:
    folders = (tmp, Path.home())
    before = [_tree(f) for f in folders]
    err = one_line_error(main, argv, capsys)
    assert [_tree(f) for f in folders] == before, err
    return err


def _place(bad: str, tmp: Path) -> str:
    if bad == "a read-only folder" and ROOT:
        pytest.skip("permission bits do not bind root (the /proc rows cover a folder nothing can be made in)")
    return BAD[bad].format(tmp=tmp)


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("key", list(WRITERS))
def test_a_bad_output_folder_is_refused_before_anything_is_written(key, bad, bad_places, capsys):
    main, argv, flag, named = WRITERS[key]
    err = _refused_and_nothing_written(main, [*argv, flag, _place(bad, bad_places)], bad_places, capsys)
    assert named in err, err


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("key", list(CACHED))
def test_a_bad_cache_folder_is_refused_before_anything_is_written(key, bad, bad_places, capsys):
    main, argv, *_ = WRITERS[key]
    argv = [*argv, "--out-dir", str(bad_places / "runs"), CACHED[key], _place(bad, bad_places)]
    assert CACHED[key] in _refused_and_nothing_written(main, argv, bad_places, capsys)


@pytest.mark.parametrize("key", list(CACHED))
def test_the_default_cache_beside_the_runs_is_checked_first(key, bad_places, capsys):
    """<out-dir>/cache, where the tokenizer would go, is a file: one line, nothing written (the embedded data
    neither)."""
    main, argv, *_ = WRITERS[key]
    (bad_places / "runs").mkdir()
    (bad_places / "runs" / "cache").write_text("not a folder\n")
    err = _refused_and_nothing_written(main, [*argv, "--out-dir", str(bad_places / "runs")], bad_places, capsys)
    assert "the cache folder <out-dir>/cache" in err and "is a file" in err, err


@pytest.mark.parametrize("key", list(CACHED))
def test_a_bad_fedlab_cache_is_refused_before_anything_is_written(key, bad_places, capsys, monkeypatch):
    main, argv, *_ = WRITERS[key]
    monkeypatch.setenv("FEDLAB_CACHE", str(bad_places / "a_file"))
    err = _refused_and_nothing_written(main, [*argv, "--out-dir", str(bad_places / "runs")], bad_places, capsys)
    assert "$FEDLAB_CACHE" in err, err


@pytest.mark.parametrize("where", ["FEDLAB_DATA", "home"])
@pytest.mark.parametrize("key", EMBEDDED)
def test_a_bad_embedded_data_folder_is_refused_before_anything_is_written(key, where, bad_places, capsys,
                                                                          monkeypatch):
    """$FEDLAB_DATA, or ~/.cache/fedlab/synthetic under a home folder whose ~/.cache/fedlab is a file."""
    main, argv, *_ = WRITERS[key]
    if where == "home":
        home = bad_places / "home"
        (home / ".cache").mkdir(parents=True)
        (home / ".cache" / "fedlab").write_text("not a folder\n")
        monkeypatch.setenv("HOME", str(home))
    else:
        monkeypatch.setenv("FEDLAB_DATA", str(bad_places / "a_file"))
    flag = "--output_root" if key == "lora_fed" else "--out-dir"
    err = _refused_and_nothing_written(main, [*argv, flag, str(bad_places / "runs")], bad_places, capsys)
    assert "embedded-data folder" in err and "is a file" in err, err


def test_an_empty_out_dir_in_a_config_file_is_refused(bad_places, capsys):
    (bad_places / "empty.yaml").write_text('out_dir: ""\n')
    main, argv, *_ = WRITERS["vit_fed"]
    err = _refused_and_nothing_written(main, [*argv, "--config", str(bad_places / "empty.yaml")], bad_places, capsys)
    assert "out_dir: an empty path is not a folder" in err, err


# the other scripts that write in a folder they are given: grid drivers, plots, shard and split writers
OTHERS = {"mamba_fl.run_grid": ["--out-dir"], "mamba_fl.real_grid": ["--out-dir"],
          "mamba_fl.split_wikitext": ["--out-dir"], "llm_noniid.run_experiments": ["--out-dir"],
          "lora_glue_fl.run_grid": ["--out-dir"], "vit_sparse_fl.run_all_experiments": ["--out-dir"],
          "vit_sparse_fl.compare_budgets": ["--out"], "plots.plot_mamba": ["--runs", ".", "--out"],
          "plots.plot_vit": ["--runs", ".", "--out"], "plots.plot_lora_glue": ["--runs", ".", "--out"],
          "plots.plot_llm_noniid": ["--runs", ".", "--out"]}


@pytest.mark.parametrize("module", list(OTHERS))
def test_an_empty_output_path_is_refused_by_every_other_script(module, bad_places, capsys):
    import importlib

    main = importlib.import_module(module).main
    err = _refused_and_nothing_written(main, [*OTHERS[module], ""], bad_places, capsys)
    assert "an empty path is not a folder" in err, err
