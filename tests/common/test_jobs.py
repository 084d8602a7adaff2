"""common.jobs, the grid runner, on a tiny script in its own processes: a rerun skips finished runs and resumes
interrupted ones, a directory holding other arguments is reported and left byte-identical, prerequisites order
the jobs, and no job outlives its driver (Ctrl-C or SIGKILL)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common import jobs

# A run of --steps steps of --sleep seconds: a checkpoint per step (the step count), summary.json at the end,
# its pid in pid.txt. --fail exits 2 as a bad input would; --diverge exits 3.
SCRIPT = '''
import os, sys, time
from common import cli, flags, runlog

def get_args_parser(add_help=True):
    p = cli.ArgumentParser(add_help=add_help)
    cli.add_run_args(p)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--fail", action="store_true")
    p.add_argument("--diverge", action="store_true")
    p.add_argument("--num-clients", type=int, default=4)
    p.add_argument("--participation-rate", type=float, default=1.0)
    p.add_argument("--data-dir", default=None)
    flags.add_clients_per_round(p)
    p.presets = {"quick": {"steps": 2, "lr": 0.5}}
    return p

def main(argv=None):
    args = cli.parse(get_args_parser(), argv)
    flags.resolve_clients_per_round(args)  # args.json holds the rate derived from --clients-per-round
    cli.check(not args.fail, "--fail given")
    rd = runlog.RunDir(args.out_dir, args.run_name, args, resume=args.resume, kind="tinyjob").claim()
    (rd.path / "pid.txt").write_text(str(os.getpid()))
    state = rd.load_checkpoint()
    start = state["step"] + 1 if state else 0
    rd.log({"event": "start", "from": start})
    if args.diverge:
        rd.diverge("step 0", "loss")
    for step in range(start, args.steps):
        time.sleep(args.sleep)
        rd.save_checkpoint({"step": step})
    return rd.write_summary({"steps": args.steps, "started_at_step": start, "final_ppl": 1.0 + args.lr})

if __name__ == "__main__":
    cli.run(main)
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The module ``tinyjob`` importable here and in the job processes."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "tinyjob.py").write_text(textwrap.dedent(SCRIPT))
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")]))
    return tmp_path / "runs"


def job(out: Path, name: str, *flags: str, **kw) -> jobs.Job:
    return jobs.Job(name, "tinyjob", [*flags, "--out-dir", str(out), "--run-name", name, "--quiet"], **kw)


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_skips_finished_resumes_interrupted_and_reports_other_arguments(tiny, capsys):
    out = tiny
    plan = [job(out, "a"), job(out, "b", "--lr", "0.2"), job(out, "c", "--steps", "4")]
    first = jobs.run_plan(plan, parallel=2, log_dir=out / "logs", next_step="python plot.py")
    assert first.status == {"a": "finished", "b": "finished", "c": "finished"}
    printed = capsys.readouterr().out
    assert "3 runs: 0 done before, 3 to run" in printed and "next: python plot.py" in printed
    assert json.loads((out / "b" / "summary.json").read_text())["final_ppl"] == pytest.approx(1.2)

    # b: interrupted after its second checkpoint (summary gone); c: now asked with other arguments
    (out / "b" / "summary.json").unlink()
    before = tree(out / "c")
    plan2 = [job(out, "a"), job(out, "b", "--lr", "0.2"), job(out, "c", "--steps", "5")]
    assert [jobs.classify(j).kind for j in plan2] == ["done", "resume", "other"]
    again = jobs.run_plan(plan2, parallel=2, log_dir=out / "logs", next_step="python plot.py")
    assert again.status == {"a": "done-before", "b": "finished", "c": "other"}
    assert json.loads((out / "b" / "summary.json").read_text())["started_at_step"] == 3  # resumed, not restarted
    assert tree(out / "c") == before                                    # never touched
    printed = capsys.readouterr().out
    assert "--steps saved 4, now 5" in printed and "1 holding other arguments" in printed
    assert "python plot.py" not in printed and "run the same command again" in printed
    # a flag left at its default in the plan but given to the run counts as a difference too
    assert jobs.classify(job(out, "b")).kind == "other"
    # the log keeps both invocations (appended, with the command)
    assert (out / "logs" / "b.log").read_text().count("=== ") == 2


def test_runs_with_quick_presets_or_a_yaml_config_count_as_done(tiny, tmp_path, capsys):
    """A job's flags are read as its script reads them: --quick's preset values and --config YAML values are in
    args.json, so the finished runs are done on a rerun (not 'other'), and a changed YAML value is 'other'."""
    out, cfg = tiny, tmp_path / "c.yaml"
    cfg.write_text("steps: 4\n")
    plan = [job(out, "q", "--quick"), job(out, "y", "--config", str(cfg))]
    assert jobs.run_plan(plan, log_dir=out / "logs").status == {"q": "finished", "y": "finished"}
    assert json.loads((out / "q" / "summary.json").read_text())["steps"] == 2  # the preset reached the run
    assert [jobs.classify(j).kind for j in plan] == ["done", "done"]
    cfg.write_text("steps: 5\n")
    assert jobs.classify(plan[1]).detail == "--steps saved 4, now 5"
    capsys.readouterr()


def test_a_rate_derived_from_clients_per_round_counts_as_the_same_arguments(tiny, capsys):
    """--clients-per-round m sets the saved --participation-rate to m / K: a finished run asked for again the same
    way is done (it was 'other arguments', so a grid with 16 clients, 4 a round, could never be continued)."""
    plan = [job(tiny, "m", "--num-clients", "8", "--clients-per-round", "2")]
    assert jobs.run_plan(plan, log_dir=tiny / "logs").status == {"m": "finished"}
    assert json.loads((tiny / "m" / "args.json").read_text())["args"]["participation_rate"] == 0.25
    assert jobs.classify(plan[0]).kind == "done"
    assert jobs.classify(job(tiny, "m", "--num-clients", "8", "--clients-per-round", "4")).kind == "other"
    capsys.readouterr()


def test_a_run_on_another_data_folder_is_not_done(tiny, capsys):
    """--data-dir may change on --resume (the data moved with its fingerprint checked), but a grid names its runs
    by their settings, not by the data folder it made: a run on another folder is another run."""
    plan = [job(tiny, "d", "--data-dir", "data/subset_2000")]
    assert jobs.run_plan(plan, log_dir=tiny / "logs").status == {"d": "finished"}
    assert jobs.classify(job(tiny, "d", "--data-dir", "data/subset_2000", "--device", "cpu")).kind == "done"
    assert jobs.classify(job(tiny, "d", "--data-dir", "data/subset_1000")).detail == \
        "--data-dir saved 'data/subset_2000', now 'data/subset_1000'"
    capsys.readouterr()


def test_failures_divergence_and_prerequisites(tiny, capsys):
    out = tiny
    plan = [job(out, "bad", "--fail"), job(out, "after-bad", after=("bad",)), job(out, "div", "--diverge"),
            job(out, "after-div", after=("div",))]
    outcome = jobs.run_plan(plan, parallel=1, log_dir=out / "logs")
    assert outcome.status == {"bad": "failed", "after-bad": "blocked", "div": "diverged", "after-div": "finished"}
    assert "--fail given" in outcome.messages["bad"]                     # the job's own one-line error
    assert not (out / "after-bad").exists()
    assert jobs.classify(plan[2]).kind == "done"                          # a diverged run is a result
    out_text = capsys.readouterr().out
    assert "1 failed" in out_text and "1 diverged" in out_text and "1 not run" in out_text


def test_a_run_another_process_holds_is_left_to_it_and_collected_later(tiny, capsys):
    """A run whose lock a live process holds (a run started by hand, another driver's job) is reported as running
    elsewhere, not started and not a failure; once that process ended, the same plan resumes or skips it."""
    out = tiny
    plan = [job(out, "held", "--steps", "40", "--sleep", "0.1"), job(out, "free")]
    hand = subprocess.Popen([sys.executable, jobs.script_path("tinyjob"), *plan[0].argv])
    try:
        deadline = time.monotonic() + 60
        while not (out / "held" / "pid.txt").exists():  # the lock is taken before pid.txt is written
            assert time.monotonic() < deadline and hand.poll() is None
            time.sleep(0.05)
        assert jobs.classify(plan[0]).kind == "running" and f"pid {hand.pid}" in jobs.classify(plan[0]).detail
        outcome = jobs.run_plan(plan, log_dir=out / "logs")
        assert outcome.status == {"held": "elsewhere", "free": "finished"} and outcome.exit_code() == 1
        assert f"pid {hand.pid}" in outcome.messages["held"] and not (out / "logs" / "held.log").exists()
        printed = capsys.readouterr().out
        assert "1 running in another process" in printed and "failed" not in printed
        assert "let the runs going on in another process end" in printed
    finally:
        hand.send_signal(signal.SIGINT)  # stops it resumable
        hand.wait(30)
    again = jobs.run_plan(plan, log_dir=out / "logs")  # resumed, or done before when it ended before the SIGINT
    assert again.status["held"] in ("finished", "done-before") and again.status["free"] == "done-before"
    assert json.loads((out / "held" / "summary.json").read_text())["steps"] == 40


def test_two_drivers_sharing_an_out_dir_split_the_plan_without_failures(tiny, capsys):
    """Two drivers on the same plan and --out-dir at once (to use two cores): every run is finished by exactly one
    of them and is running elsewhere or done before for the other; none fails, whatever the timing (a job started
    by both is refused by the run's lock in one, which the runner classifies as running elsewhere)."""
    import threading

    out = tiny
    plan = [job(out, f"j{i}", "--steps", "5", "--sleep", "0.05") for i in range(4)]
    results: list = [None, None]

    def drive(i: int) -> None:
        results[i] = jobs.run_plan(plan, log_dir=out / f"logs{i}")

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    a, b = (r.status for r in results)
    for name in a:
        assert sorted([a[name], b[name]]) in (["elsewhere", "finished"], ["done-before", "finished"]), (name, a, b)
        assert json.loads((out / name / "summary.json").read_text())["started_at_step"] == 0  # one run, not two
    capsys.readouterr()


def test_output_jobs_and_dry_run(tiny, capsys):
    out = tiny
    marker = out / "made" / "file.txt"
    plan = [jobs.Job("made", "tinyjob", ["--out-dir", str(out), "--run-name", "made", "--quiet"], output=marker)]
    dry = jobs.run_plan(plan, log_dir=out / "logs", dry_run=True)
    assert dry.status == {"made": "planned"} and "tinyjob.py" in capsys.readouterr().out and not out.exists()
    marker.parent.mkdir(parents=True)
    marker.write_text("x")
    assert jobs.run_plan(plan, log_dir=out / "logs").status == {"made": "done-before"}
    with pytest.raises(jobs.UsageError, match="twice"):
        jobs.run_plan(plan * 2, log_dir=out / "logs")


DRIVER = '''
import signal
import sys
from pathlib import Path
from common import jobs
# a driver started from a backgrounded shell (`cmd &`) inherits SIGINT ignored; this one is a terminal's
signal.signal(signal.SIGINT, signal.default_int_handler)
out = Path(sys.argv[1])
plan = [jobs.Job(n, "tinyjob", ["--steps", "200", "--sleep", "0.1", "--out-dir", str(out), "--run-name", n, "--quiet"])
        for n in ("x", "y")]
jobs.run_plan(plan, parallel=2, log_dir=out / "logs", progress_every=1)
'''


def _pids_when_started(out: Path, driver: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = [out / n / "pid.txt" for n in ("x", "y")]
        if all(f.is_file() and f.read_text() for f in files) and all((out / n / "checkpoint.pt").is_file()
                                                                     for n in ("x", "y")):
            return [int(f.read_text()) for f in files]
        assert driver.poll() is None, driver.communicate()
        time.sleep(0.2)
    raise AssertionError("the jobs did not start")


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_jobs_die_with_their_driver(tiny, how):
    """SIGKILL: the kernel kills the jobs (nobody is left writing); SIGINT (Ctrl-C): the driver stops them and
    exits 130, and the interrupted runs resume on the next invocation."""
    out = tiny
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    pids = _pids_when_started(out, driver)
    driver.send_signal(how)
    _, err = driver.communicate(timeout=60)
    assert all(_gone(pid) for pid in pids)
    if how == signal.SIGINT:
        assert driver.returncode == 130 and "2 interrupted" in err and "run the same command again" in err
        plan = [job(out, n, "--steps", "200", "--sleep", "0.1") for n in ("x", "y")]
        assert [jobs.classify(j).kind for j in plan] == ["resume", "resume"]
    assert not (out / "x" / "summary.json").exists()
    written = (out / "x" / "checkpoint.pt").stat().st_mtime_ns   # nobody writes any more
    time.sleep(1.0)
    assert (out / "x" / "checkpoint.pt").stat().st_mtime_ns == written and not (out / "x" / "summary.json").exists()


def test_draw_prints_the_command_and_reports_a_failed_figure_script(tmp_path, capsys, monkeypatch):
    """A grid's figure step: the line a user would type, then the script itself (from any working directory); a
    folder without runs makes the plot script end with its one-line error, which draw reports as False."""
    monkeypatch.chdir(tmp_path)
    assert jobs.draw("plots/plot_mamba.py", "--runs", str(tmp_path), "--out", str(tmp_path / "f")) is False
    line = f"$ python plots/plot_mamba.py --runs {tmp_path} --out {tmp_path / 'f'}"
    assert capsys.readouterr().out.splitlines()[0] == line
    assert not (tmp_path / "f").exists()


def test_a_finished_line_names_the_validation_metric_before_the_test_metric(tmp_path):
    """A selection stage's progress shows what it chooses on, not the test accuracy its runs also compute."""
    j = job(tmp_path, "sel")
    j.run_dir.mkdir(parents=True)
    (j.run_dir / "summary.json").write_text(json.dumps({"test_accuracy": 0.9, "final_val_accuracy": 0.8}))
    assert jobs._describe(j) == "; final_val_accuracy 0.8"
    (j.run_dir / "summary.json").write_text(json.dumps({"test_accuracy": 0.9}))
    assert jobs._describe(j) == "; test_accuracy 0.9"


def test_copy_records_copies_the_record_files_of_finished_runs_or_also_unfinished_ones(tmp_path):
    out, records = tmp_path / "out", tmp_path / "records"
    for name, files in {"done": ("args.json", "summary.json", "metrics.jsonl", "checkpoint.pt"),
                        "stopped": ("args.json", "metrics.jsonl", "checkpoint.pt"), "empty": ()}.items():
        (out / name).mkdir(parents=True)
        for f in files:
            (out / name / f).write_text(f"{name}/{f}")
    assert jobs.copy_records(out, records, ["done", "stopped", "empty", "missing"]) == 1
    assert sorted(p.name for p in (records / "done").iterdir()) == ["args.json", "metrics.jsonl", "summary.json"]
    assert not (records / "stopped").exists()
    assert jobs.copy_records(out, records, ["stopped", "empty"], unfinished=True) == 1
    assert sorted(p.name for p in (records / "stopped").iterdir()) == ["args.json", "metrics.jsonl"]
    assert (records / "done" / "summary.json").read_text() == "done/summary.json"


def test_run_study_copies_the_records_of_the_runs_that_are_results(tiny, tmp_path, capsys):
    out, records = tiny, tmp_path / "records"
    plan = [job(out, "ok"), job(out, "blew", "--diverge"), job(out, "bad", "--fail")]
    assert jobs.run_study(plan, records, dry_run=True, log_dir=out / "logs").exit_code(dry_run=True) == 0
    assert not records.exists()                                          # a dry run copies nothing
    outcome = jobs.run_study(plan, records, log_dir=out / "logs", title="study")
    assert outcome.status == {"ok": "finished", "blew": "diverged", "bad": "failed"}
    assert outcome.copied == 2 and outcome.exit_code() == 1              # a failed run: not complete
    assert sorted(p.name for p in records.iterdir()) == ["blew", "ok"]
    assert sorted(p.name for p in (records / "ok").iterdir()) == ["args.json", "metrics.jsonl", "summary.json"]
    assert f"2 finished runs' records in {records}" in capsys.readouterr().out
    again = jobs.run_study(plan[:2], records, log_dir=out / "logs")     # done before: copied again, exit 0
    assert again.copied == 2 and again.exit_code() == 0
    assert jobs.run_study(plan[:1], None, log_dir=out / "logs").copied is None
