"""The job runner of every grid script: a plan of runs, ``--jobs`` at a time, one definition of done.

    plan = [jobs.Job(name, "mamba_fl.fed_avg", [*flags, "--out-dir", out, "--run-name", name]), ...]
    outcome = jobs.run_plan(plan, parallel=args.jobs, log_dir=out / "logs", next_step="python plots/...")

A job is one ``python <script> <flags>`` in a process of its own, writing the run directory
``<--out-dir>/<--run-name>``, which ``classify`` finds to be

* ``done``: a finished (or diverged) run with the same arguments: skipped;
* ``resume``: an interrupted run with the same arguments: run with ``--resume``;
* ``extend``: (``extend=True`` jobs) the same run but shorter (a run-length flag): run with ``--resume --extend``;
* ``other``: a run with other arguments: reported with the differences, never started, left as it is;
* ``running``: a live process holds its lock (another driver's job, or a run started by hand): left to it, reported
  as running elsewhere (not a failure); rerunning the command once it ended collects it;
* ``new``: absent or empty: run.

A job is classified again just before it starts, and a job that fails while another process holds its run's lock
is that other run's, not a failure: two drivers sharing an ``--out-dir`` (to use more cores) split the plan
between them, each reporting the other's runs as running elsewhere.

"Same arguments": the script's parser applied to the job's flags equals args.json flag by flag (but
``runlog.DEFAULT_IGNORE_ON_RESUME``; a flag args.json lacks counts as at its default, a None one is not compared).
A job that writes no run directory names its ``output`` file instead (done when it exists, else run with
``again`` flags). Jobs may wait for others (``after``). Logs go to ``<log_dir>/<name>.log``. Ctrl-C (or SIGTERM:
a ``nohup ... &`` driver ignores SIGINT) sends running jobs SIGINT (they stay resumable), then kills those that
linger; on Linux the kernel also kills every job when the driver dies. Rerunning the command continues the grid.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from common import flags, runlog
from common.checkpoint import round_trip_json
from common.config import parse_with_config
from common.errors import EXIT_BUSY, EXIT_DIVERGED, UsageError, check

# what a job may change without changing its run; unlike a resume, not --data-dir: a grid's runs are named by
# their settings, not by the data folder it made for them (another --train_samples is another subset folder)
IGNORED = (frozenset(runlog.DEFAULT_IGNORE_ON_RESUME) - {"data_dir"}) | frozenset(runlog.ALWAYS_IGNORED)
STOP_GRACE_SECONDS = 10.0  # after Ctrl-C, how long running jobs get to stop before they are killed
_DONE = ("done-before", "finished", "diverged")  # the statuses of a job whose run is a result
_ENDED = ("finished", "diverged", "failed", "blocked", "elsewhere")  # the statuses progress lines count as ended
_NOT_HERE = ("failed", "other", "blocked", "elsewhere")  # a job that waits for one of these is not run


@dataclasses.dataclass
class Job:
    """One script invocation of a plan: ``name`` unique in it, ``script`` the module (e.g. "mamba_fl.fed_avg"),
    ``argv`` its flags; the other fields as the module doc says (``label``: the name in progress lines)."""

    name: str
    script: str
    argv: list[str]
    output: Path | None = None
    again: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    extend: bool = False
    label: str = ""

    @property
    def run_dir(self) -> Path | None:
        if self.output is not None:
            return None
        return Path(_flag_value(self.argv, "--out-dir", "runs")) / _flag_value(self.argv, "--run-name", self.name)

    def command(self, extra: Sequence[str] = ()) -> list[str]:
        return [sys.executable, script_path(self.script), *self.argv, *extra]


RECORD_FILES = ("args.json", "summary.json", "metrics.jsonl")  # what a study commits of a run: no checkpoint


def copy_records(out_dir: str | os.PathLike, records: str | os.PathLike, names: Sequence[str], *,
                 unfinished: bool = False) -> int:
    """Copy the record files (``RECORD_FILES``) of the runs ``names`` from ``out_dir`` to ``records``, a study's
    committed folder; how many runs. Only runs with a summary.json, or with ``unfinished`` every run with an
    args.json (a run that stopped without writing its summary keeps its arguments and metrics)."""
    done = 0
    for name in names:
        run, dest = Path(out_dir) / name, Path(records) / name
        if not (run / ("args.json" if unfinished else "summary.json")).is_file():
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for f in RECORD_FILES:
            if (run / f).is_file():
                shutil.copyfile(run / f, dest / f)
        done += 1
    return done


def _flag_value(argv: Sequence[str], flag: str, default: str) -> str:
    """The last value given for ``flag`` (either spelling, ``--flag V`` or ``--flag=V``)."""
    names = {flag, "--" + flag[2:].replace("-", "_")}
    value = default
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.split("=", 1)[0] in names and "=" in a:
            value = a.split("=", 1)[1]
    return value


def script_path(module: str) -> str:
    """The file of ``module`` (found without importing it), relative to the working directory when inside it."""
    spec = importlib.util.find_spec(module)
    check(spec is not None and spec.origin is not None, f"no script {module}")
    path = Path(spec.origin)
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


def draw(script: str, *flags: str) -> bool:
    """Run a figure script of the repository (``plots/<name>.py``) as the line it prints first, ``$ python script
    flags``; False when it failed (its own error is on the lines above)."""
    print(f"$ python {script} {' '.join(flags)}", flush=True)
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / script), *flags], check=False).returncode == 0


def expected_args(job: Job) -> tuple[dict, object]:
    """The job's arguments as args.json would hold them (its script's parser, presets and YAML, then its
    ``resolve_args`` where it derives flags from others before recording them), and the parser."""
    module = importlib.import_module(job.script)
    parser = module.get_args_parser()
    args = parse_with_config(parser, job.argv)
    if hasattr(module, "resolve_args"):
        module.resolve_args(args)
    if hasattr(args, "num_clients"):
        with contextlib.suppress(UsageError):  # the rate the script derives from the count (a bad count: its error)
            flags.resolve_clients_per_round(args)
    return runlog.portable(round_trip_json(vars(args))), parser


def check_job(job: Job) -> None:
    """``job``'s arguments checked as its script checks them before it reads data or writes anything: its parser
    (presets, YAML, every number finite and in its range), then its ``resolve_args`` and ``check_args`` where it
    has them (a script's checks of its arguments alone). In this process: nothing runs, nothing is written; a
    ``UsageError`` with the script's own message otherwise."""
    module = importlib.import_module(job.script)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            args = parse_with_config(module.get_args_parser(), job.argv)
    except SystemExit:  # argparse's error: "prog: error: what", printed
        lines = [ln for ln in said.getvalue().splitlines() if ln.strip()]
        raise UsageError(lines[-1].split(": error: ", 1)[-1] if lines else "its arguments are refused") from None
    for hook in ("resolve_args", "check_args"):
        if hasattr(module, hook):
            getattr(module, hook)(args)


def check_plan(plan: Sequence[Job], title: str = "grid") -> None:
    """Every job of ``plan`` checked (``check_job``) before any runs: the first refused one ends the grid in one
    line naming it (``UsageError``). A grid calls it on each stage's plan (``run_plan`` does) and, before its first
    stage, on the later stages' runs as they can be planned (a choice still to be made: at each candidate)."""
    seen = set()
    for job in plan:
        same = (job.script, tuple(job.argv))  # a job planned twice (at two candidates of another arm's choice)
        if same in seen:
            continue
        seen.add(same)
        try:
            check_job(job)
        except UsageError as e:
            raise UsageError(f"{title}: run {job.name} ({job.script}) would be refused: {e}; nothing was run") \
                from None


@dataclasses.dataclass
class State:
    kind: str          # new | resume | extend | done | other | running
    detail: str = ""   # for "other": the differences; for "done": the status; for "running": the lock's holder


def classify(job: Job) -> State:
    """What the job's run directory (or output) holds now, as the module doc defines it."""
    if job.output is not None:
        return State("done") if job.output.is_file() else State("new")
    path = job.run_dir
    holder = runlog.held_by(path) if path.is_dir() else None
    if holder is not None:
        return State("running", holder)
    if not path.is_dir() or not any(p.name != runlog.LOCK_FILE for p in path.iterdir()):
        return State("new")
    saved = (runlog.read_object(path / runlog.ARGS_FILE) or {}).get("args")
    if not isinstance(saved, dict):
        return State("other", f"no readable {runlog.ARGS_FILE} (not a run directory of this grid)")
    wanted, parser = expected_args(job)
    diffs, shorter = [], []
    for key, value in wanted.items():
        if value is None or key in IGNORED:
            continue
        old = runlog.portable(round_trip_json(saved.get(key, parser.get_default(key))))  # an older record: absolute
        if old == value:
            continue
        if (job.extend and key in runlog.LENGTH_FLAGS and isinstance(old, (int, float))
                and isinstance(value, (int, float)) and old < value):
            shorter.append(key)
            continue
        diffs.append(f"--{key.replace('_', '-')} saved {old!r}, now {value!r}")
    if diffs:
        return State("other", "; ".join(diffs))
    if shorter:
        return State("extend", ", ".join(shorter))
    summary = summary_of(job)
    if summary is not None and summary.get("status", "complete") in ("complete", "diverged"):
        return State("done", summary.get("status", "complete"))
    return State("resume")


def summary_of(job: Job) -> dict | None:
    """The job's summary.json (None for an output job or an unfinished run)."""
    return None if job.run_dir is None else runlog.read_object(job.run_dir / runlog.SUMMARY_FILE)


def _die_with_driver():
    """preexec_fn (Linux): the kernel sends the job SIGKILL when the driver dies, however it dies."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the driver died before prctl: nobody would kill us later
        os._exit(1)


def _start(job: Job, extra: list[str], log_dir: Path, env: dict) -> subprocess.Popen:
    cmd = job.command(extra)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{job.name}.log", "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        # a session of its own: a Ctrl-C at the terminal reaches the driver only, which stops every job once
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True,
                                preexec_fn=_die_with_driver if sys.platform.startswith("linux") else None)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    """SIGINT to every running job (it stays resumable), SIGKILL after ``STOP_GRACE_SECONDS`` to those left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@dataclasses.dataclass
class Outcome:
    """``status[name]``: done-before, finished, diverged, failed, other, blocked, interrupted or planned (dry run);
    ``copied``: how many runs' records ``run_study`` copied to the study's folder."""

    status: dict[str, str]
    messages: dict[str, str]
    seconds: float
    copied: int | None = None  # runs whose records ``run_study`` copied to the study's folder

    def names(self, *statuses: str) -> list[str]:
        return [n for n, s in self.status.items() if s in statuses]

    @property
    def complete(self) -> bool:
        return all(s in _DONE for s in self.status.values())

    def exit_code(self, dry_run: bool = False) -> int:
        """A study script's exit status: 0 when every run is a result (or nothing ran: a dry run), else 1."""
        return 0 if dry_run or self.complete else 1


def run_study(plan: Sequence[Job], records: str | os.PathLike | None, *, dry_run: bool = False,
              unfinished: bool = False, **run) -> Outcome:
    """A study's runs from start to committed records: ``run_plan(plan, dry_run=dry_run, **run)``, then (not in a
    dry run) the records of every run that is a result (finished, diverged or done before) copied to ``records``,
    its committed folder (``copy_records``; ``unfinished``: also a run that stopped without a summary), with a line
    saying how many. ``records`` None copies nothing."""
    outcome = run_plan(plan, dry_run=dry_run, **run)
    if dry_run or records is None:
        return outcome
    ended = {j.name: j for j in plan if outcome.status.get(j.name) in _DONE}
    n = sum(copy_records(j.run_dir.parent, records, [name], unfinished=unfinished) for name, j in ended.items()
            if j.run_dir is not None)
    print(f"{n} finished runs' records in {records}", flush=True)
    return dataclasses.replace(outcome, copied=n)


def run_plan(plan: Sequence[Job], *, parallel: int = 1, log_dir: str | os.PathLike, threads: int = 1,
             dry_run: bool = False, next_step: str = "", progress_every: float = 10.0,
             title: str = "grid") -> Outcome:
    """Run every job of ``plan`` not done yet, ``parallel`` at a time, printing progress and a summary."""
    check(parallel >= 1, f"--jobs must be at least 1, got {parallel}")
    check(threads >= 1, f"--threads must be at least 1, got {threads}")
    names = [j.name for j in plan]
    twice = sorted({n for n in names if names.count(n) > 1})
    check(not twice, f"the plan names a run twice: {twice}")
    check_plan(plan, title)
    log_dir = Path(log_dir)
    t0 = time.monotonic()
    status: dict[str, str] = {}
    messages: dict[str, str] = {}
    todo: list[tuple[Job, list[str]]] = []
    for job in plan:
        state = classify(job)
        if _settled(job, state, status, messages):
            continue
        if job.output is not None:  # its folder holding something: a partial output (e.g. an interrupted merge)
            folder = job.output.parent
            todo.append((job, list(job.again) if folder.is_dir() and any(folder.iterdir()) else []))
        else:
            todo.append((job, ["--resume", "--extend"] if state.kind == "extend" else ["--resume"]))
    others = [name for name, s in status.items() if s == "other"]
    away = [name for name, s in status.items() if s == "elsewhere"]  # the rest of status: done-before
    print(f"{title}: {len(plan)} runs: {len(status) - len(others) - len(away)} done before, {len(todo)} to run"
          + (f", {len(others)} holding other arguments (not run)" if others else "")
          + (f", {len(away)} running in another process" if away else ""), flush=True)
    for name in others + away:
        print(f"  {messages[name]}", flush=True)
    if dry_run:
        for job, extra in todo:
            status[job.name] = "planned"
            print(" ".join(job.command(extra)), flush=True)
        return Outcome(status, messages, time.monotonic() - t0)

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running: dict[subprocess.Popen, tuple[Job, float]] = {}
    waiting = list(todo)
    durations: list[float] = []
    total = len(todo)
    last_progress = time.monotonic()

    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:  # a SIGTERM stops the grid like Ctrl-C: jobs are stopped, not orphaned
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while waiting or running:
            for item in list(waiting):
                job, extra = item
                if len(running) >= parallel:
                    break
                if any(status.get(a) in _NOT_HERE for a in job.after):
                    waiting.remove(item)
                    status[job.name] = "blocked"
                    away = [a for a in job.after if status.get(a) == "elsewhere"]
                    messages[job.name] = (f"not run: it needs {', '.join(job.after)}, which did not finish"
                                          + (f" here ({', '.join(away)} running in another process)" if away
                                             else ""))
                    continue
                if all(status.get(a) in _DONE for a in job.after):
                    waiting.remove(item)
                    extra = _still_to_run(job, extra, status, messages)  # another driver may have taken it since
                    if extra is None:
                        print(f"  {job.label or job.name}: {_WORDS[status[job.name]]}"
                              f"{' (' + messages[job.name] + ')' if job.name in messages else ''}", flush=True)
                        continue
                    running[_start(job, extra, log_dir, env)] = (job, time.monotonic())
            if not running and waiting:  # only jobs waiting for ones outside the plan
                for job, _ in waiting:
                    status[job.name] = "blocked"
                    messages[job.name] = f"not run: it needs {', '.join(job.after)}, which is not in the plan"
                break
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                job, started = running.pop(proc)
                seconds = time.monotonic() - started
                durations.append(seconds)
                rc = proc.returncode  # a diverged run is a result of the grid, not a failure
                status[job.name] = {0: "finished", EXIT_DIVERGED: "diverged"}.get(rc, "failed")
                after = classify(job) if status[job.name] == "failed" and job.run_dir is not None else None
                if after is not None and (after.kind in ("running", "done") or rc == EXIT_BUSY):
                    # refused because another process (a second driver) was writing the run, or has finished it
                    status[job.name] = "done-before" if after.kind == "done" else "elsewhere"
                    if after.kind != "done":
                        messages[job.name] = _elsewhere(job, after.detail if after.kind == "running" else "")
                elif status[job.name] == "failed":
                    messages[job.name] = (f"exit {rc}: {_last_line(log_dir / f'{job.name}.log')} "
                                          f"(log: {log_dir / f'{job.name}.log'})")
                print(f"[{_ended(status)}/{total}] {job.label or job.name}: {status[job.name]}"
                      f"{' (' + messages[job.name] + ')' if job.name in messages else ''} in {_minutes(seconds)}"
                      f"{_describe(job)}", flush=True)
                last_progress = time.monotonic()
            if running and time.monotonic() - last_progress >= progress_every:
                print(_progress(status, total, running, waiting, durations, parallel, t0), flush=True)
                last_progress = time.monotonic()
    except KeyboardInterrupt:
        print(f"{title}: interrupted; stopping {len(running)} running job(s)", file=sys.stderr, flush=True)
        _stop(list(running))
        for job, _ in [*running.values(), *waiting]:
            status.setdefault(job.name, "interrupted")
        print(_summary(title, Outcome(status, messages, time.monotonic() - t0), ""), file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        for proc in running:  # an unexpected error in the driver: no job may outlive it
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcome = Outcome(status, messages, time.monotonic() - t0)
    print(_summary(title, outcome, next_step), flush=True)
    return outcome


_WORDS = {"finished": "finished now", "done-before": "done before", "diverged": "diverged", "failed": "failed",
          "other": "holding other arguments", "elsewhere": "running in another process", "blocked": "not run",
          "interrupted": "interrupted"}


def _elsewhere(job: Job, holder: str) -> str:
    if not holder:  # it refused to start while another process wrote the run, which has ended since
        return f"{job.run_dir} was being written by another process when it started; left to it"
    return f"{job.run_dir} is being written by another process ({holder}); left to it"


def _still_to_run(job: Job, extra: list[str], status: dict, messages: dict) -> list[str] | None:
    """The flags to start ``job`` with now, classified again (another driver sharing the out-dir may have started
    or finished it since the plan was made); None, with its status set, when there is nothing to start."""
    if job.output is not None:
        return extra
    state = classify(job)
    if _settled(job, state, status, messages):
        return None
    # a new run starts without --resume: should another driver finish it meanwhile, the run refuses to start
    return {"resume": ["--resume"], "extend": ["--resume", "--extend"]}.get(state.kind, [])


def _settled(job: Job, state: State, status: dict, messages: dict) -> bool:
    """Set ``job``'s status (and message) when ``state`` leaves nothing to run: done before, holding other
    arguments, or running in another process; False when it is to run."""
    if state.kind == "done":
        status[job.name] = "done-before"
    elif state.kind == "other":
        status[job.name] = "other"
        messages[job.name] = f"{job.run_dir} holds a run with other arguments ({state.detail}); left as it is"
    elif state.kind == "running":
        status[job.name], messages[job.name] = "elsewhere", _elsewhere(job, state.detail)
    else:
        return False
    return True


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _describe(job: Job) -> str:
    s = summary_of(job)
    if not s:
        return ""
    metric, final = s.get("main_metric"), s.get("final")
    if isinstance(metric, str) and isinstance(final, dict) and isinstance(final.get(metric), (int, float)):
        return f"; {metric} {final[metric]:.4g}"
    # validation first: what a selection stage chooses on
    for key in ("final_val_ppl", "final_val_accuracy", "final_ppl", "test_accuracy", "accuracy", "eval_accuracy"):
        if isinstance(s.get(key), (int, float)):
            return f"; {key} {s[key]:.4g}"
    return ""


def _ended(status: dict[str, str]) -> int:
    return sum(s in _ENDED for s in status.values())


def _progress(status, total, running, waiting, durations, parallel, t0) -> str:
    left = len(waiting) + len(running)
    if durations:  # remaining jobs at the mean duration so far, ``parallel`` at a time
        mean = sum(durations) / len(durations)
        run_left = sum(max(0.0, mean - (time.monotonic() - s)) for _, s in running.values())
        eta = f"ETA ~{_minutes((run_left + len(waiting) * mean) / min(parallel, max(1, left)))}"
    else:
        eta = "ETA after the first run ends"
    names = ", ".join(j.name for j, _ in list(running.values())[:3]) + (" ..." if len(running) > 3 else "")
    return (f"  {time.strftime('%H:%M:%S')} {_ended(status)}/{total} ended, {len(running)} running ({names}), "
            f"{len(waiting)} waiting; {_minutes(time.monotonic() - t0)} so far, {eta}")


def _summary(title: str, outcome: Outcome, next_step: str) -> str:
    parts = [f"{len(outcome.names(key))} {word}" for key, word in _WORDS.items() if outcome.names(key)]
    lines = [f"{title} summary: {len(outcome.status)} runs: {', '.join(parts) or 'nothing to do'}; "
             f"{_minutes(outcome.seconds)}"]
    lines += [f"  {name}: {outcome.messages.get(name, '')}" for name in outcome.names(*_NOT_HERE)]
    if outcome.complete and next_step:
        lines.append(f"next: {next_step}")
    elif not outcome.complete:
        why = []
        if outcome.names("other"):
            why.append("move or remove the directories holding other arguments (or give another --out-dir)")
        if outcome.names("failed"):
            why.append("fix what the failed runs' logs say")
        if outcome.names("elsewhere"):
            why.append("let the runs going on in another process end")
        lines.append("next: " + ("; ".join(why) + ", then " if why else "")
                     + "run the same command again: finished runs are skipped, interrupted ones resumed")
    return "\n".join(lines)
