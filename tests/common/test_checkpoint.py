"""common.checkpoint: atomic writes survive crashes; unusable checkpoints give one clear line."""
from __future__ import annotations

import json
import os
import pickle
import random
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from common import checkpoint as ck
from common import cli, seed


def test_atomic_writes_round_trip_with_normal_permissions(tmp_path):
    p = ck.atomic_write_bytes(tmp_path / "sub" / "a.bin", b"\x00\x01abc")
    assert p.read_bytes() == b"\x00\x01abc"
    ck.atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    obj = {"x": torch.tensor(1.5), "v": torch.arange(3), "n": np.float32(2.0), "a": np.arange(2), "p": tmp_path}
    ck.atomic_write_json(tmp_path / "o.json", obj)
    assert json.loads((tmp_path / "o.json").read_text()) == {"x": 1.5, "v": [0, 1, 2], "n": 2.0, "a": [0, 1],
                                                              "p": str(tmp_path)}
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "o.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(f.name for f in tmp_path.iterdir()) == ["o.json", "sub", "t.txt"]  # no temp files left
    assert [f.name for f in (tmp_path / "sub").iterdir()] == ["a.bin"]


def test_failed_replace_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    ck.atomic_write_json(target, {"old": True})

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_write_json(target, {"old": False})
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "checkpoint.pt", {"w": torch.ones(3)}, "k")
    assert json.loads(target.read_text()) == {"old": True}
    assert [f.name for f in tmp_path.iterdir()] == ["summary.json"]


def test_failing_serializer_keeps_old_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"round": 1}, "k")
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        ck.save_checkpoint(path, {"round": 2, "bad": lambda: None}, "k")  # lambdas cannot be pickled
    assert ck.load_checkpoint(path, "k") == {"round": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_writer_killed_mid_write_leaves_old_file(tmp_path):
    """A forked writer (no new interpreter to start) is SIGKILLed after writing half its data."""
    target = tmp_path / "metrics.bin"
    target.write_bytes(b"old contents")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(read_end)

            def write(f):
                f.write(b"new" * 100000)
                f.flush()
                os.write(write_end, b"w")
                time.sleep(60)
            ck._atomic_write(target, write)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 1) == b"w"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
    assert target.read_bytes() == b"old contents"
    leftovers = [f.name for f in tmp_path.iterdir() if f.name != "metrics.bin"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".metrics.bin.")  # the torn temp, never the target


def test_checkpoint_round_trip_with_rng_states(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = {"round": 4, "params": [torch.randn(2, 3), torch.arange(5)], "opt": {"m": torch.zeros(2)},
             "rng": seed.get_rng_state()}
    path = ck.save_checkpoint(tmp_path / "checkpoint.pt", state, "mamba_fl/fed_fisher")
    loaded = ck.load_checkpoint(path, "mamba_fl/fed_fisher")
    assert loaded["round"] == 4
    torch.testing.assert_close(loaded["params"], state["params"])
    seed.set_rng_state(loaded["rng"])
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed.set_rng_state(state["rng"])
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    # an ordinary torch.load reads our file too
    assert torch.load(path, weights_only=False)["kind"] == "mamba_fl/fed_fisher"


def _one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("keep", [0.5, 0.99, "minus1", 64])
def test_truncated_checkpoint_gives_one_line_error(tmp_path, keep):
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"w": torch.randn(1000)}, "k")
    data = path.read_bytes()
    n = len(data) - 1 if keep == "minus1" else (keep if isinstance(keep, int) else int(len(data) * keep))
    path.write_bytes(data[:n])
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(path, "k")
    assert "truncated" in _one_line(e.value)
    assert isinstance(e.value, cli.UsageError)


def test_foreign_files_are_refused(tmp_path):
    pkl = tmp_path / "plain.pkl"
    pkl.write_bytes(pickle.dumps({"round": 1}))
    torch_file = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, torch_file)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other_zip = tmp_path / "data.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "x")
    for path, phrase in [(pkl, "not a fedlab checkpoint"), (torch_file, "not a fedlab checkpoint"),
                         (text, "not a fedlab checkpoint"), (other_zip, "not a torch checkpoint"),
                         (tmp_path / "missing.pt", "no checkpoint")]:
        with pytest.raises(ck.CheckpointError) as e:
            ck.load_checkpoint(path, "k")
        assert phrase in _one_line(e.value), (path, str(e.value))


class _Marker:
    """Unpickling this touches a file: proves whether a foreign pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_foreign_checkpoint_is_refused_before_any_code_runs(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "checkpoint.pt"
    torch.save({"payload": _Marker(marker), "format": ck.FORMAT}, path)
    with pytest.raises(ck.CheckpointError, match="not a fedlab checkpoint"):
        ck.load_checkpoint(path, "k")
    assert not marker.exists()


class _Shell:
    """Unpickling this runs a shell command: the payload a crafted run directory would carry."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("where", ["state", "nested"])
def test_crafted_checkpoint_with_our_header_is_refused_without_running_it(tmp_path, where):
    """The header is ours and the archive complete, so only the weights-only load stands between the
    payload and ``--resume``: it must be refused in one line, and the file it would create must not exist."""
    marker = tmp_path / "pwned"
    payload = _Shell(f"touch {marker}")
    state = {"round": 3, "model": {"w": torch.ones(2)}}
    if where == "state":
        state["rng"] = payload
    else:
        state["model"]["opt"] = [torch.zeros(1), {"x": payload}]
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": ck.FORMAT, "version": ck.VERSION, "kind": "k", "state": state}, path)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(path, "k")
    # it passed every check that reads without unpickling: refused by the scan of what it imports
    assert "system" in _one_line(e.value) and "asks to import" in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def test_saving_objects_a_weights_only_load_refuses_fails_at_save_time(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"round": 1}, "k")
    with pytest.raises(TypeError, match=r"state\['rng'\]\['numpy'\]\[1\] is a numpy.ndarray"):
        ck.save_checkpoint(path, {"round": 2, "rng": {"numpy": ("MT19937", np.arange(3))}}, "k")
    assert ck.load_checkpoint(path, "k") == {"round": 1}  # the old checkpoint is kept


def test_wrong_kind_and_version_are_refused(tmp_path):
    path = ck.save_checkpoint(tmp_path / "checkpoint.pt", {"round": 1}, "llm_noniid/fed_avg")
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(path, "mamba_fl/fed_fisher")
    assert "llm_noniid/fed_avg" in _one_line(e.value) and "mamba_fl/fed_fisher" in str(e.value)
    newer = tmp_path / "newer.pt"
    torch.save({"format": ck.FORMAT, "version": 99, "kind": "k", "state": {}}, newer)
    with pytest.raises(ck.CheckpointError, match="version 99"):
        ck.load_checkpoint(newer, "k")


def test_checkpoint_error_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04 torn")

    def main(argv=None):
        ck.load_checkpoint(path, "k")
    with pytest.raises(SystemExit) as e:
        cli.run(main)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "truncated" in err
