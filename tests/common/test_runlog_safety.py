"""common.runlog refuses what would lose a finished run or lie about it: a run that finished while a second
one was starting, a lock file that is a symbolic link, a full disk, a checkpoint at round -5 or holding NaN,
run names and directories the file system cannot hold. Every refusal leaves the files byte-identical."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from common import checkpoint as ck
from common import runlog
from common.errors import UsageError

ARGS = {"seed": 0, "lr": 0.1, "rounds": 3}
KIND = "common/test_runlog_safety"


def _rd(root, name="r", **kw) -> runlog.RunDir:
    kw.setdefault("kind", KIND)
    return runlog.RunDir(root, name, ARGS, **kw)


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _finished(root, name="r") -> None:
    rd = _rd(root, name)
    rd.log({"round": 0, "loss": 1.0})
    rd.save_checkpoint({"round": 0, "w": torch.ones(3)})
    rd.write_summary({"loss": 1.0})
    rd.release()


def test_a_run_that_finished_while_a_second_was_starting_is_not_deleted(tmp_path):
    first, second = _rd(tmp_path), _rd(tmp_path)  # both checked an empty directory: the race
    first.log({"round": 0, "loss": 1.0})
    first.write_summary({"loss": 1.0})
    first.release()
    before = _files(tmp_path)
    with pytest.raises(UsageError, match="written by another run while this one was starting"):
        second.claim()
    assert _files(tmp_path) == before
    assert not (tmp_path / "r" / ".lock").exists()  # the refused run let the lock go


def test_a_resume_whose_checkpoint_changed_before_the_claim_is_refused(tmp_path):
    rd = _rd(tmp_path)
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0, "w": torch.ones(3)})
    rd.release()
    late = _rd(tmp_path, resume=True)
    other = _rd(tmp_path, resume=True)
    other.log({"round": 1})
    other.save_checkpoint({"round": 1, "w": torch.ones(3)})
    other.release()
    before = _files(tmp_path)
    with pytest.raises(UsageError, match="written by another run"):
        late.claim()
    assert _files(tmp_path) == before


def test_the_lock_file_is_never_followed_through_a_symbolic_link(tmp_path):
    runs, outside = tmp_path / "runs", tmp_path / "outside.json"
    outside.write_text("keep me")
    _finished(runs)
    os.symlink(outside, runs / "r" / ".lock")
    before = _files(tmp_path)
    for args, kw in ((ARGS, {}), (ARGS, {"resume": True}), ({**ARGS, "overwrite": True}, {})):
        with pytest.raises(UsageError, match="symbolic link"):
            runlog.RunDir(runs, "r", args, kind=KIND, **kw).claim()
        assert _files(tmp_path) == before, (args, kw)


def test_a_full_disk_is_one_line_and_the_last_checkpoint_stays_whole(tmp_path, monkeypatch):
    rd = _rd(tmp_path)
    rd.log({"round": 0})
    rd.save_checkpoint({"round": 0, "w": torch.ones(3)})
    before = _files(tmp_path)
    real_save = torch.save

    def full(obj, f, *a, **k):  # the disk fills up half-way through the write, as torch.save reports it
        class Full:
            def write(self, b):
                if len(b) > 8:
                    f.write(b[:8])
                    raise OSError(errno.ENOSPC, "No space left on device")
                return f.write(b)

            def flush(self):
                f.flush()
        real_save(obj, Full(), *a, **k)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UsageError) as e:
        rd.save_checkpoint({"round": 1, "w": torch.ones(3) * 2})
    msg = str(e.value)
    assert "no space left" in msg and "checkpoint.pt keeps round 0" in msg and "\n" not in msg, msg
    before.pop("r/.lock")  # the run stopped: its lock is released
    assert _files(tmp_path) == before  # no temp file left, round 0 intact
    monkeypatch.setattr(torch, "save", real_save)
    state = _rd(tmp_path, resume=True).load_checkpoint()
    assert state["round"] == 0 and torch.equal(state["w"], torch.ones(3))


@pytest.mark.parametrize("state, expect", [
    ({"round": -5, "w": torch.ones(3)}, "says round -5"),
    ({"round": 1.5, "w": torch.ones(3)}, "says round 1.5"),
    ({"step": True, "w": torch.ones(3)}, "says step True"),
    ({"round": 1, "w": torch.tensor([1.0, float("nan")])}, "holds non-finite values (w)"),
])
def test_a_checkpoint_that_cannot_be_continued_is_refused_in_true_words(tmp_path, state, expect):
    rd = _rd(tmp_path)
    rd.log({"round": 0})
    rd.log({"round": 1})
    rd.release()
    # written as a damaged or foreign file would be: past save_checkpoint's own checks
    ck.save_checkpoint(tmp_path / "r" / "checkpoint.pt", {**state, "runlog": {"rows": 2}}, KIND)
    before = _files(tmp_path)
    with pytest.raises(UsageError) as e:
        _rd(tmp_path, resume=True)
    assert expect in str(e.value) and "last finite" not in str(e.value), str(e.value)
    assert _files(tmp_path) == before


def test_run_names_and_directories_the_file_system_cannot_hold(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    for name, expect in (("x" * 300, "300 bytes"), ("loop", "symbolic links"), ("gone", "symbolic link to nothing"),
                         ("a\0b", "not a plain folder name")):
        with pytest.raises(UsageError, match=expect):
            _rd(tmp_path, name)
    with pytest.raises(UsageError, match="symbolic links"):
        runlog.RunDir(tmp_path / "loop" / "sub", "r", ARGS, kind=KIND)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone", "loop"]


def test_an_overflow_after_the_claim_is_a_divergence_not_an_unfinished_run(tmp_path, capsys):
    from common import cli

    def main(argv):
        rd = _rd(tmp_path)
        rd.log({"round": 0, "loss": 1.0})
        w = torch.ones(3)
        w.add_(torch.ones(3), alpha=-1e39)  # a step of lr 1e39: torch cannot hold it in float32
    with pytest.raises(SystemExit) as e:
        cli.run(main, [])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 3 and "\n" not in err and "overflow" in err, err
    summary = (tmp_path / "r" / "summary.json").read_text()
    assert '"status": "diverged"' in summary
    with pytest.raises(UsageError, match="already holds a diverged run"):
        _rd(tmp_path)


def test_a_full_disk_outside_the_run_directory_is_one_line(capsys):
    from common import cli

    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/model.safetensors")
    with pytest.raises(SystemExit) as e:
        cli.run(main, [])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "no space left" in err and "model.safetensors" in err, err


def test_no_output_folder_may_lie_in_a_run_directory_but_the_run_itself(tmp_path):
    from common.errors import check_out_dir

    _finished(tmp_path)
    run = tmp_path / "r"
    (tmp_path / "link").symlink_to(run)
    before = _files(tmp_path)
    for path in (run, run / "adapter", run / "a" / "b", tmp_path / "link" / "x"):
        with pytest.raises(UsageError, match="inside the run directory"):
            check_out_dir(path, "--save_adapter")
    with pytest.raises(UsageError, match="inside the run directory"):
        _rd(run, "nested")  # a run whose --out-dir is a finished run
    assert check_out_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    _rd(tmp_path, resume=True).claim().release()  # the run itself may still resume
    assert {k: v for k, v in _files(tmp_path).items() if k != "r/args.json"} == \
        {k: v for k, v in before.items() if k != "r/args.json"}
