"""Experiment grids for llm_noniid, run in-process one after another, skipping runs already complete.

    python llm_noniid/run_experiments.py --mode quick --out-dir runs/llm_noniid/synthetic -- --quick
    python llm_noniid/run_experiments.py --mode failure --out-dir runs/llm_noniid/synthetic -- --quick
    python llm_noniid/run_experiments.py --mode analyze --out-dir runs/llm_noniid/synthetic

Modes:
  quick   : fedavg / fedprox / scaffold x iid / topic_skew / style_skew / token_skew, --rounds rounds, seeds.
  main    : the same algorithms and partitions x participation 0.3 / 0.5 / 1.0 x seeds 0 1 2, 50 rounds.
  failure : FedAvg, topic skew alpha 0.01, participation 0.1, learning rate 1e-3, 5 local epochs (the
            source's failure setting), next to the same FedAvg run on an iid split for contrast.
  analyze : figures (plots/plot_llm_noniid.py) and report.md with the tables and detected failure modes.
Arguments after ``--`` (or any flag this script does not know) are passed to every train.py run, e.g.
``--data ag_news --data-dir DIR --model tiny-gpt2 --lora-r 0``. ``--split-csv FILE`` first splits one AG News
CSV (e.g. the real test split) into train.csv / test.csv under <out-dir>/data and trains on that.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from common import cli
from llm_noniid import data as D
from llm_noniid import failure, train

ALGORITHMS = ("fedavg", "fedprox", "scaffold")
PARTITIONS = {"iid": [], "topic_skew": ["--alpha", "0.1"], "style_skew": ["--style-criterion", "length"],
              "token_skew": ["--token-skew", "frequency"]}
# the source's failure setting: AdamW at 20x its default learning rate, 5 epochs on one client per round
FAILURE = ["--algorithm", "fedavg", "--partition", "topic_skew", "--alpha", "0.01", "--participation-rate", "0.1",
           "--local-optimizer", "adamw", "--learning-rate", "1e-3", "--local-epochs", "5"]
FAILURE_CONTRAST = [*FAILURE[:2], "--partition", "iid", *FAILURE[6:]]


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    p.add_argument("--mode", required=True, help="quick | main | failure | analyze")
    p.add_argument("--out-dir", default="runs/llm_noniid", help="root of this grid's run directories and report")
    p.add_argument("--rounds", type=int, default=None, help="rounds per run (default: quick 8, main 50, failure 15)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: main 0,1,2, others 0)")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset of the algorithms")
    p.add_argument("--partitions", default=",".join(PARTITIONS), help="comma-separated subset of the partitions")
    p.add_argument("--failure-local-steps", type=int, default=40,
                   help="cap on local steps per round in the failure grid (5 epochs on a big client is hundreds)")
    p.add_argument("--split-csv", default=None, help="one AG News CSV to split 90/10 into train/valid first")
    p.add_argument("--title", default=None, help="heading of the analyze report")
    return p


def _csv(text: str, allowed, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    for t in items:
        cli.check(t in allowed, f"{flag} {t!r} is unknown; expected a subset of {','.join(allowed)}")
    return items


def grid(mode: str, args) -> list[tuple[str, list[str]]]:
    """(sub-folder, train.py argv) of every run of ``mode``."""
    seeds = [int(s) for s in (args.seeds or ("0,1,2" if mode == "main" else "0")).split(",")]
    rounds = args.rounds or {"quick": 8, "main": 50, "failure": 15}[mode]
    algos = _csv(args.algorithms, ALGORITHMS, "--algorithms")
    parts = _csv(args.partitions, PARTITIONS, "--partitions")
    runs = []
    for seed in seeds:
        common = ["--num-rounds", str(rounds), "--seed", str(seed)]
        if mode == "failure":
            cap = ["--max-local-steps", str(args.failure_local_steps)]
            runs += [("failure", FAILURE + cap + common), ("failure", FAILURE_CONTRAST + cap + common)]
            continue
        for rate in (["0.3", "0.5", "1.0"] if mode == "main" else ["1.0"]):
            for part in parts:
                for algo in algos:
                    runs.append((mode, ["--algorithm", algo, "--partition", part, *PARTITIONS[part],
                                        "--participation-rate", rate, *common]))
    return runs


def run_grid(mode: str, args, passthrough: list[str]) -> list[dict]:
    out = Path(args.out_dir)
    if args.split_csv:
        data_dir = D.split_ag_news_csv(args.split_csv, out / "data", valid_fraction=0.1, seed=0)
        passthrough = ["--data", "ag_news", "--data-dir", str(data_dir), *passthrough]
    summaries = []
    todo = grid(mode, args)
    for i, (sub, run_argv) in enumerate(todo, 1):
        # the grid's own settings come last so they win over the pass-through defaults
        argv = [*passthrough, *run_argv, "--out-dir", str(out / sub), "--quiet"]
        name = train.default_run_name(train.parse_with_config(train.get_args_parser(), argv, {"quick": train.QUICK}))
        summary_path = out / sub / name / "summary.json"
        if summary_path.is_file():
            s = json.loads(summary_path.read_text())
            num_rounds = int(run_argv[run_argv.index("--num-rounds") + 1])
            if s.get("status") in ("complete", "diverged") and s.get("num_rounds") == num_rounds:
                print(f"[{i}/{len(todo)}] {sub}/{name}: done, skipped")
                summaries.append(s)
                continue
        s = train.main([*argv, "--resume"])
        print(f"[{i}/{len(todo)}] {sub}/{name}: {s['status']}, final ppl {s['final_val_ppl']:.2f}, "
              f"modes {s['failure_modes'] or '-'}, {s['wall_seconds']:.0f}s", flush=True)
        summaries.append(s)
    return summaries


# ----------------------------------------------------------------------------- analyze
def _fmt(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if n > 1 else f"{mean:.4g}"


def report(out_dir: Path, title: str | None = None) -> str:
    """Markdown: per grid folder, a table (partition x algorithm) of final / best perplexity, relative client
    divergence and the failure modes detected on the curves (mode@first round, per seed), then the figures."""
    from plots import plot_llm_noniid as PL
    from plots import runs as R

    cli.check(any(R.find_runs(out_dir / sub, "*") for sub in ("quick", "main", "failure")),
              f"no runs under {out_dir}/quick, /main or /failure; run --mode quick / main / failure first")
    lines = [f"## {title or 'llm_noniid results: ' + out_dir.name}", ""]
    for sub in ("quick", "main", "failure"):
        runs = R.load_runs(out_dir / sub, "*")
        if not runs:
            continue
        figs = PL.make_figures(out_dir / sub, out_dir / "figures" / sub)
        a0 = runs[0]["args"]
        heading = (f"### {sub} grid ({len(runs)} runs; data {a0.get('data')}, model {a0.get('model')}, "
                   f"lora_r {a0.get('lora_r')}, {a0.get('num_clients')} clients, {a0.get('local_optimizer')} "
                   f"lr {a0.get('learning_rate'):g})")
        columns = ("| participation | partition | algorithm | seeds | rounds | final ppl | best ppl | "
                   "client divergence (rel) | failure modes (first round) |")
        lines += [heading, "", columns,
                  "|---|---|---|---|---|---|---|---|---|"]
        for (p, part, algo), g in sorted(PL.grouped(runs).items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                   PL._algo_key(kv[0][2]))):
            modes: dict[str, list] = {}
            for r in g:  # detected again from the curves, so every run is judged by the current rules
                for m, at in failure.detect(r["rows"]).items():
                    modes.setdefault(m, []).append(at)
            mode_txt = ", ".join(f"{m}@{'/'.join(map(str, v))}" for m, v in sorted(modes.items())) or "none"
            done = [r["summary"]["rounds_done"] for r in g if r.get("summary")]
            lines.append(f"| {p:g} | {part} | {algo} | {len(g)} | {'/'.join(map(str, sorted(set(done)))) or '-'} | "
                         f"{_fmt(*R.summary_stats(g, 'final_val_ppl'))} | "
                         f"{_fmt(*R.summary_stats(g, 'best_val_ppl'))} | "
                         f"{_fmt(*R.summary_stats(g, 'final_client_divergence_rel'))} | {mode_txt} |")
        lines += [""] + [f"![{Path(f).stem}](figures/{sub}/{Path(f).name})" for f in figs] + [""]
    text = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def main(argv=None) -> dict:
    parser = get_args_parser()
    args, passthrough = parser.parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"]
    cli.check(args.mode in ("quick", "main", "failure", "analyze"),
              f"--mode {args.mode!r} is unknown; expected quick, main, failure or analyze")
    if args.mode == "analyze":
        text = report(Path(args.out_dir), args.title)
        print(text)
        return {"report": str(Path(args.out_dir) / "report.md")}
    summaries = run_grid(args.mode, args, passthrough)
    return {"runs": len(summaries), "complete": sum(s["status"] == "complete" for s in summaries),
            "diverged": sum(s["status"] == "diverged" for s in summaries)}


if __name__ == "__main__":
    cli.run(main)
