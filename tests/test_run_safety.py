"""Runs never lose data, end to end through the real scripts: a non-finite loss or aggregate stops the run
with exit status 3 keeping the last finite checkpoint (every subproject), a second run into a locked
directory is refused, resuming on other data is refused, a rerun without --resume is refused and
--overwrite leaves a clean directory, --extend continues a finished run on purpose."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from clicases import one_line_error

from common import checkpoint, cli, runlog
from lora_glue_fl import fedavg_rounds, main_glue_lora, modeling
from mamba_fl import fed_avg, federated
from vit_sparse_fl import experiment, train_federated

REPO = Path(__file__).resolve().parents[1]
MAMBA = ["--quick", "--quiet", "--eval-every", "1", "--eval-blocks", "4", "--sample-tokens", "0", "--num-clients", "2"]
VIT = ["--quick", "--quiet", "--num-clients", "10", "--participation-rate", "0.2", "--local-steps", "1",
       "--eval-every", "1", "--max-train", "200", "--max-test", "40", "--batch-size", "16"]
LORA = ["--quick", "--quiet", "--max_eval_samples", "16"]
LORA_FED = [*LORA, "--max_train_samples", "240", "--local_epochs", "1"]   # fedavg_rounds: mechanics, not learning


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _diverges(main, argv, capsys) -> str:
    """Run like ``__main__``: exit status 3 and one line without a traceback; return the line."""
    with pytest.raises(SystemExit) as e:
        cli.run(main, argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 3 and "\n" not in err and "Traceback" not in err, err
    return err


def _poison_after(calls: int):
    """A wrapper factory: the wrapped training function turns its model's parameters to NaN from call
    ``calls`` on (a blow-up in the middle of a run, where it would happen)."""
    def wrap(fn, model_of):
        count = [0]

        def wrapped(*a, **k):
            out = fn(*a, **k)
            count[0] += 1
            if count[0] > calls:
                with torch.no_grad():
                    for p in model_of(a, k).parameters():
                        if p.is_floating_point():
                            p.fill_(float("nan"))
            return out
        return wrapped
    return wrap


def _assert_kept(run: Path, kind: str, key: str, at: int, tensors):
    state = checkpoint.load_checkpoint(run / "checkpoint.pt", kind)
    assert state[key] == at
    assert all(torch.isfinite(t).all() for t in tensors(state))
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    assert not (run / ".lock").exists()


def _global_tensors(state: dict) -> list:
    """The global model's tensors of a mamba / vit / lora checkpoint (named dict, or an older unnamed list)."""
    return list(state["global"].values()) if isinstance(state["global"], dict) else state["global"]


@pytest.mark.parametrize("dp", [[], ["--dp-clip", "1", "--dp-noise", "0.5", "--dp-sampling", "fixed"]],
                         ids=["plain", "dp"])
def test_mamba_nan_stops_with_exit_3_and_keeps_the_last_finite_checkpoint(out_dir, monkeypatch, capsys, dp):
    """Also under DP, where the client's non-finite update meets the clipping first."""
    # 2 clients per round: the poison starts in round 3, after the round-2 checkpoint
    monkeypatch.setattr(federated, "train_steps", _poison_after(4)(federated.train_steps, lambda a, k: a[0]))
    err = _diverges(fed_avg.main, [*MAMBA, *dp, "--rounds", "5", "--out-dir", str(out_dir), "--run-name", "r"],
                    capsys)
    assert "round 3" in err and "keeps the last finite state (round 2)" in err
    _assert_kept(out_dir / "r", "mamba_fl/fed_avg", "round", 2,
                 _global_tensors)


def test_vit_nan_stops_with_exit_3_and_keeps_the_last_finite_checkpoint(out_dir, monkeypatch, capsys):
    # 2 clients per round: the poison starts in round 2
    monkeypatch.setattr(experiment, "train_steps", _poison_after(2)(experiment.train_steps, lambda a, k: a[0]))
    err = _diverges(train_federated.main, [*VIT, "--rounds", "4", "--out-dir", str(out_dir), "--run-name", "r"],
                    capsys)
    assert "round 2" in err
    _assert_kept(out_dir / "r", "vit_sparse_fl/train_federated", "round", 1,
                 _global_tensors)


def test_vit_huge_learning_rate_diverges_instead_of_reporting_numbers(out_dir, capsys):
    err = _diverges(train_federated.main, [*VIT, "--rounds", "3", "--lr", "1e6", "--out-dir", str(out_dir),
                                          "--run-name", "r"], capsys)
    assert "non-finite" in err
    summary = json.loads((out_dir / "r" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "test_accuracy" not in summary


def test_lora_nan_stops_with_exit_3_and_keeps_the_last_finite_checkpoint(out_dir, monkeypatch, capsys):
    # 3 clients per round: the poison starts in round 2
    monkeypatch.setattr(modeling, "train_local", _poison_after(3)(modeling.train_local, lambda a, k: a[0]))
    err = _diverges(fedavg_rounds.main, [*LORA_FED, "--rounds", "2", "--out-dir", str(out_dir), "--run-name", "r"],
                    capsys)
    assert "round 2" in err
    _assert_kept(out_dir / "r", "lora_glue_fl/fedavg_rounds", "round", 1, _global_tensors)
    assert not list((out_dir / "r").glob("round_2/fused_*"))  # no NaN adapter written


def test_lora_centralized_nan_stops_with_exit_3(out_dir, monkeypatch, capsys):
    monkeypatch.setattr(modeling, "train_local", _poison_after(0)(modeling.train_local, lambda a, k: a[0]))
    real = modeling.train_local

    def train_then_report(*a, **k):  # the poisoned model reports its epoch as the real loop does
        out = real(*a, **k)
        k["on_epoch"](1.0, float("nan"))
        return out

    monkeypatch.setattr(modeling, "train_local", train_then_report)
    err = _diverges(main_glue_lora.main, [*LORA, "--max_train_samples", "32", "--out-dir", str(out_dir),
                                         "--run-name", "r"], capsys)
    assert "epoch 1" in err
    assert json.loads((out_dir / "r" / "summary.json").read_text())["status"] == "diverged"
    assert not (out_dir / "r" / "adapter").exists()


def test_a_second_run_into_a_running_directory_is_refused_and_a_killed_runs_lock_is_taken_over(out_dir, capsys):
    argv = [*MAMBA, "--rounds", "400", "--out-dir", str(out_dir), "--run-name", "r"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "mamba_fl" / "fed_avg.py"), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out_dir / "r" / "metrics.jsonl").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        err = one_line_error(fed_avg.main, argv, capsys, code=4)
        assert "in use by another run" in err and f"pid {proc.pid}" in err
        err = one_line_error(fed_avg.main, [*argv, "--resume"], capsys, code=4)
        assert "in use by another run" in err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out_dir / "r" / ".lock").exists()  # a killed run leaves its lock file; the kernel freed the lock
    s = fed_avg.main([*argv[:argv.index("--rounds")], "--rounds", "3", *argv[argv.index("--rounds") + 2:],
                      "--overwrite"])
    assert s["rounds_done"] == 3 and not (out_dir / "r" / ".lock").exists()


def test_resume_with_another_data_folder_is_refused(out_dir, tmp_path, capsys):
    from common import synthetic
    from vit_sparse_fl import data as cifar
    src = cifar.find_root(synthetic.ensure("cifar100", n_train_per_class=100, n_test_per_class=20))
    a, b = tmp_path / "a" / "cifar-100-python", tmp_path / "b" / "cifar-100-python"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    import pickle
    with open(b / "train", "rb") as f:
        d = pickle.load(f, encoding="latin1")
    d["data"] = 255 - d["data"]  # same layout, other images
    with open(b / "train", "wb") as f:
        pickle.dump(d, f)
    argv = [*VIT, "--rounds", "2", "--data", "cifar100", "--out-dir", str(out_dir), "--run-name", "r"]
    train_federated.main([*argv, "--data-dir", str(a.parent)])
    before = _files(out_dir / "r")
    err = one_line_error(train_federated.main, [*argv, "--data-dir", str(b.parent), "--resume"], capsys)
    assert "the data differ" in err and "data folder" in err and "train changed" in err
    assert _files(out_dir / "r") == before
    train_federated.main([*argv, "--data-dir", str(a.parent), "--resume"])  # the same data: fine


def test_rerun_is_refused_and_overwrite_leaves_a_clean_directory(out_dir, capsys):
    argv = [*LORA_FED, "--out-dir", str(out_dir), "--run-name", "r"]
    fedavg_rounds.main([*argv, "--rounds", "2", "--save_client_adapters", "all"])
    run = out_dir / "r"
    assert (run / "round_2").is_dir()
    err = one_line_error(fedavg_rounds.main, [*argv, "--rounds", "1"], capsys)
    assert "already holds a finished run" in err and "--resume" in err and "--overwrite" in err
    (run / "notes.txt").write_text("left by hand")
    s = fedavg_rounds.main([*argv, "--rounds", "1", "--overwrite_output_dir"])
    assert s["rounds_done"] == 1
    assert not (run / "round_2").exists() and not (run / "notes.txt").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["round"] for r in rows} == {1}


def test_extend_continues_a_finished_run_on_purpose(out_dir, capsys):
    argv = [*MAMBA, "--out-dir", str(out_dir), "--run-name", "r"]
    fed_avg.main([*argv, "--rounds", "2"])
    err = one_line_error(fed_avg.main, [*argv, "--rounds", "3", "--resume"], capsys)
    assert "--rounds (saved 2, now 3)" in err and "--extend" in err
    s = fed_avg.main([*argv, "--rounds", "3", "--resume", "--extend"])
    rows = [json.loads(x) for x in (out_dir / "r" / "metrics.jsonl").read_text().splitlines()]
    assert s["rounds_done"] == 3 and [r["round"] for r in rows] == [1, 2, 3]
    meta = json.loads((out_dir / "r" / "args.json").read_text())
    assert meta["args"]["rounds"] == 3 and meta["resumes"][-1]["extended"] == {"rounds": [2, 3]}


def test_resume_refuses_missing_metrics_and_removes_stale_temp_files(out_dir, capsys):
    argv = [*MAMBA, "--rounds", "2", "--out-dir", str(out_dir), "--run-name", "r"]
    fed_avg.main(argv)
    run = out_dir / "r"
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(b"torn")
    metrics = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").unlink()
    assert "metrics.jsonl is missing" in one_line_error(fed_avg.main, [*argv, "--resume"], capsys)
    (run / "metrics.jsonl").write_bytes(metrics.replace(b"\n", b"\nnot json\n", 1))
    assert "metrics.jsonl:2 is not a JSON object" in one_line_error(fed_avg.main, [*argv, "--resume"], capsys)
    (run / "metrics.jsonl").write_bytes(metrics)
    fed_avg.main([*argv, "--resume"])
    assert not (run / ".checkpoint.pt.x1y2.tmp").exists()
    runlog.release_all()


def _nan_worker(rank, world, port, out):
    from multirank import torchrun_env

    torchrun_env(rank, world, port)
    if rank == 1:  # only rank 1's clients blow up (from round 2): the aggregate carries it to every rank
        experiment.train_steps = _poison_after(2)(experiment.train_steps, lambda a, k: a[0])
    argv = [*VIT, "--num-clients", "8", "--participation-rate", "0.5", "--rounds", "4", "--out-dir", out,
            "--run-name", "r"]
    try:
        train_federated.main(argv)
    except cli.Diverged as e:
        Path(out, f"rank{rank}.diverged").write_text(str(e))
    finally:
        from common import distributed as D
        D.cleanup()


def test_under_torchrun_every_rank_stops_on_a_non_finite_aggregate(out_dir):
    from multirank import run_ranks

    run_ranks(_nan_worker, str(out_dir))
    for rank in (0, 1):
        assert "round 2" in (out_dir / f"rank{rank}.diverged").read_text()
    _assert_kept(out_dir / "r", "vit_sparse_fl/train_federated", "round", 1,
                 _global_tensors)


def test_adapter_files_get_the_usual_permissions(out_dir):
    fedavg_rounds.main([*LORA, "--rounds", "1", "--out-dir", str(out_dir), "--run-name", "r"])
    umask = os.umask(0)
    os.umask(umask)
    files = list((out_dir / "r").glob("round_1/*/adapter/*"))
    assert files and all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in files)
