"""lora_glue_fl/results.py on a small grid of records written here in run_grid.py's format (args.json, summary.json,
metrics.jsonl, the one-shot naive merges' fuse_manifest.json, selection.json, grid.json, the shards' label mixes):
the tables' numbers are the records' (paired differences, Holm over each declared family, the plateau rule, the
selection's edge), read through ``--records`` as from a grid's out-dir."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from common import results as RS
from common import stats
from lora_glue_fl import results as LR
from lora_glue_fl import run_grid

SEEDS = (0, 1, 2)
RATES = {"central": 0.001, "multi-round": 0.005, "one-shot": 0.002, "exact": 0.001}
SCORES = {"central": {"0.001": 0.878, "0.002": 0.866, "0.005": 0.806},
          "multi-round": {"0.001": 0.84, "0.002": 0.848, "0.005": 0.856},
          "one-shot": {"0.001": 0.862, "0.002": 0.866, "0.005": 0.848},
          "exact": {"0.0002": 0.826, "0.0005": 0.834, "0.001": 0.854, "0.002": 0.578, "0.005": 0.578}}
# per arm: dev accuracy of seed s = base + step * s; its selection curve climbs by `climb` a round after round 4
DEV = {"central": (0.84, 0.002), "svd_iid": (0.81, 0.003), "naive_iid": (0.812, 0.001), "exact_iid": (0.80, 0.004),
       "oneshot_iid": (0.80, 0.001), "oneshot-naive_iid": (0.76, 0.01), "svd_dir0.1": (0.78, 0.02),
       "naive_dir0.1": (0.79, -0.01), "oneshot_dir0.1": (0.79, 0.002), "oneshot-naive_dir0.1": (0.71, 0.02)}
CLIMB = {"exact_iid": 0.03}  # exact still climbs: its last third gains 0.06 > 1 sd (0.016)
SELECTION_N = 500


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _run(folder, name, script, args, summary, rows):
    _write(folder / name / "args.json", {"args": args, "script": script, "argv": []})
    _write(folder / name / "summary.json", {"status": "complete", **summary})
    (folder / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _common(seed: int, acc: float) -> dict:
    return {"task": "sst2", "main_metric": "accuracy", "majority": {"accuracy": 0.509}, "majority_label": 1,
            "selection_examples": SELECTION_N, "selection_majority": {"accuracy": 0.578}, "num_labels": 2,
            "cpu_seconds": 100.0 + seed, "wall_seconds": 120.0 + seed, "load_start": 1.0, "load_end": 1.5}


def write_grid(root, seeds=SEEDS) -> None:
    """A grid's out-dir in run_grid.py's layout and formats: the ``merges`` design at ``seeds``."""
    for arm, (base, step) in DEV.items():
        method, shard = LR.split(arm)
        for seed in seeds:
            acc = round(base + step * seed, 4)
            name = f"sst2_{arm}_s{seed}"
            if method == "central":
                rows = [{"epoch": e / 2, "train_loss": 0.5, "selection_accuracy": 0.85 + 0.004 * (e % 2)}
                        for e in range(1, 7)]
                rows[-1] |= {"accuracy": acc, "eval_loss": 0.4}
                _run(root, name, "lora_glue_fl/main_glue_lora",
                     {"seed": seed, "learning_rate": RATES["central"], "num_train_epochs": 3.0,
                      "per_device_train_batch_size": 4, "eval_every_epochs": 0.5},
                     {**_common(seed, acc), "method": "central_lora", "trainable_params": 74498,
                      "train_examples": 2000, "final": {k: v for k, v in rows[-1].items() if k != "epoch"}}, rows)
                continue
            if method == "oneshot-naive":
                _write(root / name / "adapter" / "fuse_manifest.json",
                       {"task": "sst2", "aggregation": "naive", "merge_rel_error": 0.55 + 0.01 * seed,
                        "final": {"accuracy": acc, "eval_loss": 0.5}, "main_metric": "accuracy",
                        "num_labels": 2, "trainable_params": 74498,
                        "adapters": [str(root / f"sst2_oneshot_{shard}_s{seed}/round_1/client_1/adapter")]})
                continue
            rounds, local = (1, 3.0) if method == "oneshot" else (6, 0.5)
            per_client = 375 if method == "oneshot" else 63
            shard_dir = root / "shards" / f"sst2_{shard}_k4_s{seed}"
            _write(shard_dir / "summary.json", {"client_indices": [list(range(500))] * 4,
                                                "size_per_client": [500] * 4, "total_train": 2000, "mode": shard,
                                                "label_histograms": [{"0": 546 if seed == 2 and "dir" in shard
                                                                      else 227, "1": 7 + 266 * (seed != 2)}] * 4})
            rows = []
            for r in range(1, rounds + 1):
                rows += [{"round": r, "client": k, "n": 500, "train_loss": 0.4, "steps": per_client,
                          "adapter_change": 0.1} for k in range(1, 5)]
                exact = method == "exact"
                rows.append({"round": r, "client": None, "fused_rank": 8 * 4 ** (r - 1) if exact else 8,
                             "client_trainable_params": 74498 if r == 1 or not exact else 3539714,
                             "round_bytes": 2_383_936 if r == 1 or not exact else 113_270_848,
                             "merge_rel_error": 0.0 if exact else 0.09, "train_loss": 0.4,
                             "selection_accuracy": round(0.84 + 0.002 * (r % 2) + CLIMB.get(arm, 0) * max(0, r - 4),
                                                         4)})
            rows[-1] |= {"accuracy": acc, "eval_loss": 0.4}
            final = {k: v for k, v in rows[-1].items() if k not in ("round", "client")}
            _run(root, name, "lora_glue_fl/fedavg_rounds",
                 {"seed": seed, "learning_rate": RATES[run_grid.FAMILY[method]], "aggregation": method if
                  method != "oneshot" else "svd", "rounds": rounds, "local_epochs": local, "batch_size": 4,
                  "shard_dir": str(shard_dir)},
                 {**_common(seed, acc), "aggregation": method, "num_clients": 4, "rounds_done": rounds,
                  "client_sizes": [500] * 4, "fused_rank": rows[-1]["fused_rank"], "final": final}, rows)
    for fam, scores in SCORES.items():
        for rate, score in scores.items():
            _run(root / "selection", f"sst2_{fam}_lr{rate}_s100", "lora_glue_fl/fedavg_rounds",
                 {"seed": 100, "learning_rate": float(rate)},
                 {**_common(100, 0), "final": {"selection_accuracy": score}}, [{"round": 1, "client": None,
                                                                                 "selection_accuracy": score}])
    picks = {fam: {"metric": "selection_accuracy", "scores": scores, "chosen": RATES[fam]} for fam, scores in
             SCORES.items()}
    picks["central"]["edge"], picks["multi-round"]["edge"] = "low", "high"
    _write(root / "selection.json", {"criterion": "best final selection accuracy", "tasks": {"sst2": picks}})
    _write(root / "grid.json", [{"argv": ["--sst2_design", "merges"], "cells": 40, "wall_seconds": 4371,
                                 "finished_at": "2026-11-29T00:50:00Z", "rates": {"sst2": RATES},
                                 "runs": {"finished": 64, "done-before": 0, "failed": 0, "other": 0}}])


@pytest.fixture
def grid(tmp_path):
    """The fake grid, read by the blocks in place of the committed records (what ``--records`` does)."""
    write_grid(tmp_path)
    RS.REDIRECTS[LR.RECORDS] = tmp_path
    yield tmp_path
    RS.REDIRECTS.clear()


def test_the_table_is_the_records_paired_differences_holm_over_the_declared_family(grid):
    table = LR.sst2_table()
    lines = table.splitlines()
    assert lines[2].startswith("| majority-class baseline | 0.509 |")
    assert [line.split(" | ")[0][2:] for line in lines[3:]] == [LR.label(a) for a in LR.ARMS]
    central = {s: 0.84 + 0.002 * s for s in SEEDS}
    svd = {s: 0.81 + 0.003 * s for s in SEEDS}
    d = stats.paired(svd, central)
    assert LR.findings()["svd_iid", "central"].paired.mean == pytest.approx(d.mean)
    # Holm over the 9 arms against centralized, not over the table's rows or the contrasts
    pairs = {a: ({s: DEV[a][0] + DEV[a][1] * s for s in SEEDS}, central) for a in LR.ARMS if a != "central"}
    diffs = {a: stats.paired(*p) for a, p in pairs.items()}
    holm = stats.holm(diffs)
    assert LR.findings()["svd_iid", "central"].claim == stats.claim(d, holm["svd_iid"], 9, 3)
    row = next(line for line in lines if line.startswith("| FedAvg, SVD merge, iid shards |"))
    assert RS.minus(stats.claim(d, holm["svd_iid"], 9, 3)[:-1]) in row
    assert "rate at the high edge of its grid" in row             # multi-round chose 5e-3, the largest it tried
    assert "1,512 (378)" in row and "1,500 (1,500)" in table      # compute: 4 x 6 x 63 steps, 63 a round each
    assert "unmatched compute" not in table                       # 1,512 vs 1,500: within 1 %
    exact = next(line for line in lines if line.startswith("| FedAvg, exact merge"))
    assert "74,498 → 3,539,714" in exact and "2.38 → 113.27" in exact and "3/3 still improving" in exact
    assert "as one-shot SVD" in table and "\u2212" in table and " -0." not in table


def test_the_contrasts_are_one_family_and_say_what_they_rule_out(grid):
    text = LR.contrast_table()
    assert "Holm over the 10 contrasts together" in text
    a = {s: DEV["exact_iid"][0] + DEV["exact_iid"][1] * s for s in SEEDS}
    b = {s: DEV["svd_iid"][0] + DEV["svd_iid"][1] * s for s in SEEDS}
    pairs = {(x, y): ({s: DEV[x][0] + DEV[x][1] * s for s in SEEDS}, {s: DEV[y][0] + DEV[y][1] * s for s in SEEDS})
             for x, y, _ in LR.CONTRASTS}
    holm = stats.holm({k: stats.paired(*p) for k, p in pairs.items()})
    d = stats.paired(a, b)
    claim = stats.claim(d, holm["exact_iid", "svd_iid"], 10, 3)
    if "no difference" in claim:
        assert f"rules out > {stats.ruled_out(d, 10):.3f}" in claim
    assert RS.minus(claim[:-1]) in text
    assert " ".join(f"{x:+.3f}" for x in d.diffs).replace("-", "\u2212") in text


def test_the_selection_marks_the_edge_and_the_noise(grid):
    text = LR.selection_table()
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert "**0.878**" in rows["central"] and "rate at the low edge of its grid" in rows["central"]
    assert "rate at the high edge" in rows["multi-round"] and "edge" not in rows["exact"]
    sd = math.sqrt(0.854 * 0.146 / SELECTION_N)
    assert f"+0.020 ({0.020 / sd:.1f} sd)" in rows["exact"]          # 0.854 over 0.834
    assert "500 sentences" in text and "| – |" in rows["central"]    # 2e-4: not in the central grid


def test_the_plateau_rule_can_fail_and_says_what_it_cannot_check(grid):
    judged = LR.plateau_of("exact_iid")
    assert {j.state for j, _ in judged.values()} == {"still improving"}
    assert all(g == pytest.approx(0.06) for _, g in judged.values())
    flat = LR.plateau_of("svd_iid")
    assert {j.state for j, _ in flat.values()} == {"at plateau"}
    assert {j.state for j, _ in LR.plateau_of("central").values()} == {"not checked"}
    assert {j.state for j, _ in LR.plateau_of("oneshot_iid").values()} == {"not checked"}
    text = LR.plateau_table()
    row = next(line for line in text.splitlines() if line.startswith("| FedAvg, exact merge"))
    assert "+0.060 +0.060 +0.060" in row and "3/3 still improving" in row
    assert "not checked" in next(line for line in text.splitlines() if line.startswith("| centralized LoRA"))
    # the tolerance: 1 sd of the selection split's sampling noise at the arm's accuracy, not a fixed 0.01
    assert f"| {math.sqrt(0.9 * 0.1 / SELECTION_N):.3f} |" in row     # exact ends at 0.90 on the selection split
    assert LR.tolerance("svd_iid") == pytest.approx(math.sqrt(0.84 * 0.16 / SELECTION_N))


def test_a_grid_out_dir_shows_through_records(tmp_path):
    """``python -m common.results --show`` with ``--records COMMITTED=YOURS`` writes the same block from an out-dir."""
    write_grid(tmp_path)
    run = subprocess.run([sys.executable, "-m", "common.results", "--show", "lora_glue_fl.sst2-table", "--records",
                          f"{LR.RECORDS}={tmp_path}"], cwd=RS.ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "| majority-class baseline | 0.509 |" in run.stdout and "FedAvg, exact merge" in run.stdout


def test_the_grid_copies_what_the_tables_read_and_nothing_else(tmp_path):
    """``run_grid.py --records``: each run's args, summary and metrics, the merges' manifests, selection.json,
    grid.json and the shards' label mixes, no adapter or checkpoint; the tables read from the copy equal the
    out-dir's."""
    from common import synthetic
    out, records, data = tmp_path / "out", tmp_path / "records", tmp_path / "data"
    shutil.copytree(synthetic.ensure("glue-sst2"), data / "glue_sst2")
    args = run_grid.get_args_parser().parse_args(
        ["--out-dir", str(out), "--real_data_dir", str(data), "--sst2_design", "merges", "--train_samples", "200",
         "--selection_samples", "40", "--seeds", *map(str, SEEDS)])
    write_grid(out)
    for junk in ("checkpoint.pt", "adapter/adapter_model.safetensors", "round_1/client_1/adapter/x.bin"):
        (out / "sst2_svd_iid_s0" / junk).parent.mkdir(parents=True, exist_ok=True)
        (out / "sst2_svd_iid_s0" / junk).write_bytes(b"\0" * 64)
    (out / "sst2_oneshot-naive_iid_s0" / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    cells = run_grid.cells(args, {"sst2": RATES}, write=False)
    n = run_grid.copy_records(out, records, cells, run_grid.selection_cells(args))
    assert n == 24 + 6 + 14    # the training runs, the one-shot naive merges, the selection runs
    files = {p.relative_to(records).as_posix() for p in records.rglob("*") if p.is_file()}
    assert {f.rsplit("/", 1)[-1] for f in files} == {"args.json", "summary.json", "metrics.jsonl",
                                                     "fuse_manifest.json", "selection.json", "grid.json"}
    assert "sst2_oneshot-naive_iid_s0/adapter/fuse_manifest.json" in files
    mix = json.loads((records / "shards" / "sst2_dir0.1_k4_s2" / "summary.json").read_text())
    assert "client_indices" not in mix and mix["label_histograms"][0] == {"0": 546, "1": 7}
    RS.REDIRECTS[LR.RECORDS] = out
    try:
        mine = {name: fn() for name, fn in LR.BLOCKS.items()}
        RS.REDIRECTS[LR.RECORDS] = records
        assert {name: fn() for name, fn in LR.BLOCKS.items()} == mine
    finally:
        RS.REDIRECTS.clear()


def test_without_records_every_block_says_so(tmp_path):
    """A record folder without a grid (no selection.json): each block says the records are not committed yet and
    names the commands that commit them, so the README never states numbers that have no record."""
    RS.REDIRECTS[LR.RECORDS] = tmp_path
    try:
        assert {fn() for fn in LR.BLOCKS.values()} == {LR.NOT_YET}
    finally:
        RS.REDIRECTS.clear()
    assert "--records lora_glue_fl/results/minilm_glue" in LR.NOT_YET and "common.results --write" in LR.NOT_YET
