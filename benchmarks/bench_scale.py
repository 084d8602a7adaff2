"""Memory, checkpoints and round time of the real federated scripts at 100 / 1,000 / 10,000 clients, with the
per-client state in the client store (common.client_store): FedAvg, SCAFFOLD and persistent client AdamW,
--quick-sized models, 3 rounds, a checkpoint every round, each run in a fresh process (its peak RSS: VmHWM); then
each stateful run at its largest N killed (SIGKILL) in its second round and resumed, against the uninterrupted
run: metrics rows and the final global model bit for bit.

    python benchmarks/bench_scale.py                      # the measurement (5 CPU-minutes; 40 min on busy cores)
    python benchmarks/bench_scale.py --quick              # 100 vs 300 clients, no kill (about 2 minutes)
    python benchmarks/bench_scale.py --rows persist --json out.json

The rows (every client a real one, with data of its own; "state": what the store keeps per client):

  fedavg    llm_noniid/shakespeare.py --quick --population N: the character LSTM (64 units), N synthetic clients
            cut from the committed sample's real roles (three integers each), 10 a round (the cross-device
            cohort), at most 5 local SGD steps each: no per-client state; N = 100, 1,000, 10,000.
  scaffold  the same task with --algorithm scaffold: each client's c_i (4 bytes x |params|); a third of the
            population a round, so about 70 % of the clients hold a c_i after 3 rounds (1 - (2/3)^3).
  persist   mamba_fl/fed_avg.py --quick --num-clients N (client AdamW, --client-opt-state persist: its default):
            each client's AdamW moments (8 bytes x |params| + step counts) in the store; a third a round. N up
            to 1,000: --quick's data holds ~1,661 blocks of 64 tokens, so 10,000 clients would hold none (the
            synthetic population is Shakespeare's).

A third of the clients a round makes the stateful rows' rounds grow with N (their time is reported per round and
per client); the fedavg rows hold the cohort at 10, the setting where round time should stay flat in N.
Reported per run: peak RSS and its ratio to the same row at 100 clients, seconds per round and per client trained,
the checkpoint's size, the store's bytes on disk, the clients holding state at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import markdown_table, peak_rss_bytes, run_isolated

from common import checkpoint, cli, runlog

ROUNDS = 3
LOCAL_STEPS = 5  # Shakespeare's local SGD steps per client (uncapped, a client's epoch: ~1 s of the --quick LSTM)


def shakespeare(n: int, algorithm: str) -> list[str]:
    m = 10 if algorithm == "fedavg" else -(-n // 3)
    return ["--quick", "--population", str(n), "--clients-per-round", str(m), "--rounds", str(ROUNDS),
            "--eval-every", "1", "--max-local-steps", str(LOCAL_STEPS),
            *(["--algorithm", algorithm] if algorithm != "fedavg" else [])]


def mamba(n: int) -> list[str]:
    return ["--quick", "--num-clients", str(n), "--clients-per-round", str(-(-n // 3)), "--rounds", str(ROUNDS),
            "--eval-every", "1"]


SHAKESPEARE = "llm_noniid/shakespeare.py --quick --population N (LSTM 64)"
# row -> (script module, its run kind, argv for N clients, the N measured, --quick's N, the task in words)
ROWS = {
    "fedavg": ("llm_noniid.shakespeare", "llm_noniid/shakespeare", lambda n: shakespeare(n, "fedavg"),
               (100, 1000, 10_000), (100, 300), SHAKESPEARE + ", 10 a round"),
    "scaffold": ("llm_noniid.shakespeare", "llm_noniid/shakespeare", lambda n: shakespeare(n, "scaffold"),
                 (100, 1000), (100, 300), SHAKESPEARE + ", N/3 a round"),
    "persist": ("mamba_fl.fed_avg", "mamba_fl/fed_avg", mamba, (100, 1000), (100, 300),
                "mamba_fl/fed_avg.py --quick --num-clients N (AdamW persist), N/3 a round"),
}
KILLED = {"scaffold": 1000, "persist": 1000}  # the stateful runs killed and resumed (at their largest N)


def argv_of(row: str, n: int, out_dir: str, name: str, device: str) -> list[str]:
    return [*ROWS[row][2](n), "--quiet", "--out-dir", out_dir, "--run-name", name, "--device", device]


def one_run(row: str, n: int, out_dir: str, name: str, resume: bool, device: str = "cpu") -> dict:
    """Run ``row`` at ``n`` clients in this process; what it measured."""
    import importlib

    import torch

    torch.set_num_threads(1)
    script = importlib.import_module(ROWS[row][0])
    t0 = time.perf_counter()
    summary = script.main(argv_of(row, n, out_dir, name, device) + (["--resume"] if resume else []))
    wall = time.perf_counter() - t0
    path = Path(out_dir) / name
    state = checkpoint.load_checkpoint(path / runlog.CHECKPOINT_FILE, ROWS[row][1])
    tables = state["client_store"]["tables"]
    store = path / "client_state"
    trained = ROUNDS * (10 if row == "fedavg" else -(-n // 3))
    return {"row": row, "task": ROWS[row][5], "clients": n, "peak_rss_mb": peak_rss_bytes() / 2**20, "wall_s": wall,
            "round_s": summary["round_seconds"] / ROUNDS, "per_client_ms": 1e3 * summary["round_seconds"] / trained,
            "checkpoint_kb": (path / runlog.CHECKPOINT_FILE).stat().st_size / 1024,
            "store_mb": sum(f.stat().st_blocks * 512 for f in store.iterdir()) / 2**20 if store.is_dir() else 0.0,
            "with_state": max((len(t["clients"]) for t in tables.values()), default=0),
            "tables": sorted(tables)}


def rows_of(path: Path) -> list[str]:
    return (path / runlog.METRICS_FILE).read_text().splitlines()


def global_model(path: Path, kind: str) -> dict:
    return checkpoint.load_checkpoint(path / runlog.CHECKPOINT_FILE, kind)["global"]


def kill_and_resume(row: str, n: int, out_dir: str, full: dict, timeout: float, device: str) -> dict:
    """Start the run in a child, SIGKILL it halfway through its second round (after round 1's row, so after or
    while its checkpoint is written), resume it in a fresh process; compare with the uninterrupted run "full"."""
    import torch

    name = f"{row}_{n}_killed"
    path, kind = Path(out_dir) / name, ROWS[row][1]
    log = Path(out_dir) / f"{name}.stderr"
    with open(log, "w") as err:
        child = subprocess.Popen([sys.executable, __file__, "--one", row, str(n), out_dir, name, "--device", device],
                                 stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    while not ((path / runlog.METRICS_FILE).is_file() and rows_of(path)):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise RuntimeError(f"{name}: the run ended or stalled before its first round: {log.read_text()[-500:]}")
        time.sleep(0.05)
    time.sleep(full["round_s"] / 2)  # into round 2: some of its clients' rows are written, its checkpoint is not
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    saved = path / runlog.CHECKPOINT_FILE
    at = checkpoint.load_checkpoint(saved, kind)["round"] if saved.is_file() else 0  # 0: it starts over
    resumed = run_isolated([__file__, "--one", row, str(n), out_dir, name, "--resume", "--device", device],
                           timeout=timeout)
    ref = Path(out_dir) / f"{row}_{n}"
    want, got = global_model(ref, kind), global_model(path, kind)
    same_model = want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    return {"row": row, "clients": n, "killed_after_round": at, "metrics_equal": rows_of(path) == rows_of(ref),
            "model_equal": same_model, "resume_wall_s": resumed["wall_s"]}


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--quick", action="store_true", help="100 vs 300 clients per row, no kill")
    p.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS), help="which rows")
    p.add_argument("--no-kill", action="store_true", help="leave out the killed and resumed runs")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    p.add_argument("--json", default=None, help="write the results here too")
    p.add_argument("--device", default="cpu", help="the scripts' --device (run_all.py passes it)")
    p.add_argument("--one", nargs=4, metavar=("ROW", "N", "OUT_DIR", "NAME"), help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> dict:
    a = cli.parse(get_args_parser(), argv)
    if a.one:  # a child process: one run, its JSON on the last line
        print(json.dumps(one_run(a.one[0], int(a.one[1]), a.one[2], a.one[3], a.resume, a.device)))
        return {}
    results, kills, t0 = [], [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for row in a.rows:
            for n in ROWS[row][4] if a.quick else ROWS[row][3]:
                results.append(run_isolated([__file__, "--one", row, str(n), tmp, f"{row}_{n}", "--device", a.device],
                                            timeout=a.timeout))
                print(json.dumps(results[-1]), flush=True)
            if row in KILLED and not (a.quick or a.no_kill):
                full = next(r for r in results if r["row"] == row and r["clients"] == KILLED[row])
                kills.append(kill_and_resume(row, KILLED[row], tmp, full, a.timeout, a.device))
                print(json.dumps(kills[-1]), flush=True)
    for r in results:
        base = next(b for b in results if b["row"] == r["row"] and b["clients"] == min(ROWS[r["row"]][3]))
        r["rss_vs_100"] = r["peak_rss_mb"] / base["peak_rss_mb"]
    print(markdown_table(
        ["row", "clients", "with state", "peak RSS MB", "vs 100", "s / round", "ms / client", "checkpoint KB",
         "store MB", "wall s"],
        [[r["row"], f"{r['clients']:,}", f"{r['with_state']:,}", f"{r['peak_rss_mb']:.1f}", f"{r['rss_vs_100']:.3f}",
          f"{r['round_s']:.2f}", f"{r['per_client_ms']:.1f}", f"{r['checkpoint_kb']:.1f}", f"{r['store_mb']:.1f}",
          f"{r['wall_s']:.1f}"] for r in results]))
    if kills:
        print(markdown_table(["row", "clients", "killed after round", "metrics equal", "model equal", "resume s"],
                             [[k["row"], f"{k['clients']:,}", k["killed_after_round"], k["metrics_equal"],
                               k["model_equal"], f"{k['resume_wall_s']:.1f}"] for k in kills]))
    command = " ".join(["python benchmarks/bench_scale.py", *(sys.argv[1:] if argv is None else argv)])
    out = {"results": results, "kills": kills, "rounds": ROUNDS, "threads": 1, "cpu": runlog.processor(),
           "command": command, "wall_s": time.perf_counter() - t0}  # run_all --reuse says what measured its rows
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
