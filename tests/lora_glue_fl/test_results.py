"""lora_glue_fl/results.py on a small grid of records written here in run_grid.py's format (args.json, summary.json,
metrics.jsonl, the one-shot naive merges' fuse_manifest.json, selection.json, grid.json, the shards' label mixes):
the tables' numbers are the records' (paired differences, Holm over each declared family, the plateau rule, the
selection's edge, the majority baseline), read through ``--records`` as from a grid's out-dir. The grid holds both
studies: SST-2 (run_grid.py's ``merges`` design, dev accuracy) and MRPC (``small``, dev F1 and accuracy, the summary
keys main_glue_lora.py and fedavg_rounds.py write for it: final.f1, majority.f1, selection_f1)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from common import results as RS
from common import stats, study
from lora_glue_fl import results as LR
from lora_glue_fl import run_grid, studies

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
# MRPC: per arm and dev metric, seed s scores base + step * s; the majority class (always "paraphrase") scores
# F1 0.812, accuracy 0.684: centralized and the Dirichlet arms beat it in both in every seed, the iid arms' F1 in one
MRPC_RATES = {"central": 0.001, "multi-round": 0.002}
MRPC_SCORES = {"central": {"0.001": 0.829, "0.002": 0.806, "0.005": 0.802},
               "multi-round": {"0.001": 0.804, "0.002": 0.805, "0.005": 0.780}}
MRPC_DEV = {"central": {"f1": (0.838, 0.004), "accuracy": (0.760, 0.006)},
            "svd_iid": {"f1": (0.805, 0.004), "accuracy": (0.700, 0.002)},
            "naive_iid": {"f1": (0.814, -0.003), "accuracy": (0.690, 0.004)},
            "svd_dir0.1": {"f1": (0.820, 0.003), "accuracy": (0.720, 0.001)},
            "naive_dir0.1": {"f1": (0.818, 0.006), "accuracy": (0.710, 0.006)}}
MRPC_CLIMB = {"naive_dir0.1": 0.02}  # its last third gains 0.04 > 1 sd (0.015)
GRID = ({"argv": ["--sst2_design", "merges"], "cells": 40, "wall_seconds": 4371, "finished_at": "2026-11-29T00:50:00Z",
         "rates": {"sst2": RATES}, "runs": {"finished": 64, "done-before": 0, "failed": 0, "other": 0}},
        {"argv": ["--tasks", "mrpc", "--seeds", "0", "1", "2"], "cells": 15, "wall_seconds": 4410,
         "finished_at": "2026-11-30T00:10:00Z", "rates": {"mrpc": MRPC_RATES},
         "runs": {"finished": 21, "done-before": 0, "failed": 0, "other": 0}})  # grid.json: one invocation a task
MAJORITY = {"sst2": ({"accuracy": 0.509}, {"accuracy": 0.578}),  # (dev, selection split)
            "mrpc": ({"accuracy": 0.684, "f1": 0.812}, {"accuracy": 0.67, "f1": 0.802})}


def dev_of(task: str, arm: str, seed: int) -> dict:
    """{metric: the fake run's final dev score}."""
    spec = {m: DEV[arm] for m in ("accuracy",)} if task == "sst2" else MRPC_DEV[arm]
    return {m: round(base + step * seed, 4) for m, (base, step) in spec.items()}


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _run(folder, name, script, args, summary, rows):
    _write(folder / name / "args.json", {"args": args, "script": script, "argv": []})
    _write(folder / name / "summary.json", {"status": "complete", **summary})
    (folder / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _common(task: str, seed: int) -> dict:
    dev, select = MAJORITY[task]
    return {"task": task, "main_metric": LR.METRIC[task], "majority": dev, "majority_label": 1,
            "selection_examples": SELECTION_N, "selection_majority": select, "num_labels": 2,
            "cpu_seconds": 100.0 + seed, "wall_seconds": 120.0 + seed, "load_start": 1.0, "load_end": 1.5}


def write_grid(root, seeds=SEEDS, tasks=("sst2", "mrpc")) -> None:
    """A grid's out-dir in run_grid.py's layout and formats: SST-2's ``merges`` design at ``seeds``, MRPC's
    ``small`` design at seeds 0-2 (``tasks``: which of the two)."""
    picked = {}
    for task in tasks:
        sst2 = task == "sst2"
        params = 74498 if sst2 else 222338  # MRPC trains the pooler too
        rates, grids = (RATES, SCORES) if sst2 else (MRPC_RATES, MRPC_SCORES)
        for arm in (DEV if sst2 else MRPC_DEV):
            method, shard = studies.split(arm)
            for seed in (seeds if sst2 else SEEDS):
                final = dev_of(task, arm, seed)
                name = f"{task}_{arm}_s{seed}"
                if method == "central":
                    rows = [{"epoch": e / 2, "train_loss": 0.5, "selection_accuracy": 0.85 + 0.004 * (e % 2)}
                            | ({} if sst2 else {"selection_f1": 0.83}) for e in range(1, 7)]
                    rows[-1] |= {**final, "eval_loss": 0.4}
                    _run(root, name, "lora_glue_fl/main_glue_lora",
                         {"seed": seed, "learning_rate": rates["central"], "num_train_epochs": 3.0,
                          "per_device_train_batch_size": 4, "eval_every_epochs": 0.5},
                         {**_common(task, seed), "method": "central_lora", "trainable_params": params,
                          "train_examples": 2000, "final": {k: v for k, v in rows[-1].items() if k != "epoch"}},
                         rows)
                    continue
                if method == "oneshot-naive":
                    _write(root / name / "adapter" / "fuse_manifest.json",
                           {"task": task, "aggregation": "naive", "merge_rel_error": 0.55 + 0.01 * seed,
                            "final": {**final, "eval_loss": 0.5}, "main_metric": LR.METRIC[task],
                            "num_labels": 2, "trainable_params": params,
                            "adapters": [str(root / f"{task}_oneshot_{shard}_s{seed}/round_1/client_1/adapter")]})
                    continue
                rounds, local = (1, 3.0) if method == "oneshot" else (6, 0.5)
                per_client = 375 if method == "oneshot" else 63
                shard_dir = root / "shards" / f"{task}_{shard}_k4_s{seed}"
                mix = ({"0": 546 if seed == 2 and "dir" in shard else 227, "1": 7 + 266 * (seed != 2)} if sst2 else
                       {"0": 198 if "dir" in shard else 170, "1": 376 if "dir" in shard else 330})
                _write(shard_dir / "summary.json", {"client_indices": [list(range(500))] * 4,
                                                    "size_per_client": [500] * 4, "total_train": 2000, "mode": shard,
                                                    "label_histograms": [mix] * 4})
                climb = (CLIMB if sst2 else MRPC_CLIMB).get(arm, 0)
                rows = []
                for r in range(1, rounds + 1):
                    rows += [{"round": r, "client": k, "n": 500, "train_loss": 0.4, "steps": per_client,
                              "adapter_change": 0.1} for k in range(1, 5)]
                    exact = method == "exact"
                    rows.append({"round": r, "client": None, "fused_rank": 8 * 4 ** (r - 1) if exact else 8,
                                 "client_trainable_params": params if r == 1 or not exact else 3539714,
                                 "round_bytes": 2_383_936 if r == 1 or not exact else 113_270_848,
                                 "merge_rel_error": 0.0 if exact else 0.09, "train_loss": 0.4,
                                 "selection_accuracy": round(0.84 + 0.002 * (r % 2) + climb * max(0, r - 4), 4)}
                                | ({} if sst2 else {"selection_f1": 0.81}))
                rows[-1] |= {**final, "eval_loss": 0.4}
                _run(root, name, "lora_glue_fl/fedavg_rounds",
                     {"seed": seed, "learning_rate": rates[studies.FAMILY[method]],
                      "aggregation": method if method != "oneshot" else "svd", "rounds": rounds,
                      "local_epochs": local, "batch_size": 4, "shard_dir": str(shard_dir)},
                     {**_common(task, seed), "aggregation": method, "num_clients": 4, "rounds_done": rounds,
                      "client_sizes": [500] * 4, "fused_rank": rows[-1]["fused_rank"],
                      "final": {k: v for k, v in rows[-1].items() if k not in ("round", "client")}}, rows)
        metric = "selection_" + LR.METRIC[task]
        for fam, scores in grids.items():
            for rate, score in scores.items():
                _run(root / "selection", f"{task}_{fam}_lr{rate}_s100", "lora_glue_fl/fedavg_rounds",
                     {"seed": 100, "learning_rate": float(rate)},
                     {**_common(task, 100), "final": {metric: score}}, [{"round": 1, "client": None, metric: score}])
        for fam, scores in grids.items():   # run_grid.py's record: a setting per task/family, its edge (if any)
            g = study.Grid("--learning_rate", tuple(map(float, scores)), "final." + metric, "max", split="selection")
            pick = g.choose({float(r): [x] for r, x in scores.items()})
            assert pick.value == rates[fam]
            picked[f"{task}/{fam}"] = study.choice_record(g, pick)
    _write(root / "selection.json", study.selection_record("minilm_glue", "best final selection metric", picked,
                                                           seeds=[100]))
    _write(root / "grid.json", [g for g in GRID if set(g["rates"]) <= set(tasks)])


@pytest.fixture
def grid(tmp_path):
    """The fake grid, read by the blocks in place of the committed records (what ``--records`` does)."""
    write_grid(tmp_path)
    RS.REDIRECTS[LR.RECORDS] = tmp_path
    yield tmp_path
    RS.REDIRECTS.clear()


def test_the_table_is_the_records_paired_differences_holm_over_the_declared_family(grid):
    table = LR.dev_table()
    lines = table.splitlines()
    assert lines[2].startswith("| majority-class baseline | 0.509 |")
    assert [line.split(" | ")[0][2:] for line in lines[3:]] == [LR.label(a) for a in studies.ARMS]
    central = {s: 0.84 + 0.002 * s for s in SEEDS}
    svd = {s: 0.81 + 0.003 * s for s in SEEDS}
    d = stats.paired(svd, central)
    assert LR.findings()["svd_iid", "central"].paired.mean == pytest.approx(d.mean)
    # Holm over the 9 arms against centralized, not over the table's rows or the contrasts
    pairs = {a: ({s: DEV[a][0] + DEV[a][1] * s for s in SEEDS}, central) for a in studies.ARMS if a != "central"}
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
             for x, y, _ in studies.CONTRASTS}
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


def test_a_rate_without_a_score_shows_why(grid):
    """A candidate selection.json scores with a word (a diverged run) shows the word, and no margin counts it."""
    path = grid / study.SELECTION_FILE
    record = study.read_selection(path)
    record["choices"]["sst2/exact"]["scores"]["0.0005"] = "diverged"
    _write(path, record)
    rows = {line.split(" | ")[0][2:]: line for line in LR.selection_table().splitlines() if line.startswith("| ")}
    assert "| diverged |" in rows["exact"] and "| +0.028 (" in rows["exact"]   # 0.854 over 0.826, 5e-4 left out
    assert study.chosen(study.read_selection(path), "mrpc/") == MRPC_RATES


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
    grid.json and the shards' label mixes, no adapter or checkpoint; the tables read from the copy (SST-2's and
    MRPC's) equal the out-dir's."""
    from common import synthetic
    out, records, data = tmp_path / "out", tmp_path / "records", tmp_path / "data"
    for task in ("sst2", "mrpc"):
        shutil.copytree(synthetic.ensure(f"glue-{task}"), data / f"glue_{task}")
    args = run_grid.get_args_parser().parse_args(
        ["--out-dir", str(out), "--real_data_dir", str(data), "--sst2_design", "merges", "--train_samples", "200",
         "--mrpc_train_samples", "200", "--selection_samples", "40", "--seeds", *map(str, SEEDS), "--tasks", "sst2",
         "mrpc"])
    write_grid(out)
    for junk in ("checkpoint.pt", "adapter/adapter_model.safetensors", "round_1/client_1/adapter/x.bin"):
        (out / "sst2_svd_iid_s0" / junk).parent.mkdir(parents=True, exist_ok=True)
        (out / "sst2_svd_iid_s0" / junk).write_bytes(b"\0" * 64)
    (out / "sst2_oneshot-naive_iid_s0" / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    cells = run_grid.cells(args, {"sst2": RATES, "mrpc": MRPC_RATES}, write=False)
    n = run_grid.copy_records(out, records, cells, run_grid.selection_cells(args))
    assert n == 24 + 6 + 14 + 15 + 6   # SST-2's training runs, one-shot naive merges and selection runs; MRPC's
    files = {p.relative_to(records).as_posix() for p in records.rglob("*") if p.is_file()}
    assert {f.rsplit("/", 1)[-1] for f in files} == {"args.json", "summary.json", "metrics.jsonl",
                                                     "fuse_manifest.json", "selection.json", "grid.json"}
    assert {"sst2_oneshot-naive_iid_s0/adapter/fuse_manifest.json", "mrpc_naive_dir0.1_s2/summary.json"} <= files
    mix = json.loads((records / "shards" / "sst2_dir0.1_k4_s2" / "summary.json").read_text())
    assert "client_indices" not in mix and mix["label_histograms"][0] == {"0": 546, "1": 7}
    RS.REDIRECTS[LR.RECORDS] = out
    try:
        mine = {name: fn() for name, fn in LR.BLOCKS.items()}
        RS.REDIRECTS[LR.RECORDS] = records
        assert {name: fn() for name, fn in LR.BLOCKS.items()} == mine
    finally:
        RS.REDIRECTS.clear()
    assert "MRPC dev F1" in mine["mrpc-table"] and "SST-2 dev accuracy" in mine["sst2-table"]


def test_without_records_every_block_says_so(tmp_path):
    """A record folder without a grid (no selection.json): each block says the records are not committed yet and
    names the commands that commit them, so the README never states numbers that have no record; MRPC's blocks say
    so, with MRPC's command, until selection.json holds MRPC."""
    RS.REDIRECTS[LR.RECORDS] = tmp_path
    try:
        said = {name: fn() for name, fn in LR.BLOCKS.items()}
        assert {v for k, v in said.items() if not k.startswith("mrpc-")} == {LR.NOT_YET}
        assert {v for k, v in said.items() if k.startswith("mrpc-")} == {LR.not_yet("mrpc")}
        write_grid(tmp_path, tasks=("sst2",))
        said = {name: fn() for name, fn in LR.BLOCKS.items()}
        assert {v for k, v in said.items() if k.startswith("mrpc-")} == {LR.not_yet("mrpc")}
        assert LR.NOT_YET not in said.values() and len(LR.BLOCKS) == 9 + 8
    finally:
        RS.REDIRECTS.clear()
    assert "--records lora_glue_fl/results/minilm_glue" in LR.NOT_YET and "common.results --write" in LR.NOT_YET
    assert "--tasks mrpc --seeds 0 1 2 --records" in LR.not_yet("mrpc")


# ------------------------------------------------------------------------------------------------- MRPC
def mrpc(arm: str, metric: str = "f1") -> dict:
    return {s: dev_of("mrpc", arm, s)[metric] for s in SEEDS}


def test_mrpc_table_is_f1_against_centralized_holm_over_its_four_arms_with_the_majority_first(grid):
    lines = LR.dev_table("mrpc").splitlines()
    assert lines[0].startswith("| MRPC dev F1 | mean ± sd (n = 3) | accuracy, mean ± sd | − centralized, paired by "
                               "seed [95% CI], Holm over the 4 arms |")
    assert lines[2].startswith("| majority-class baseline | 0.812 | 0.684 |")   # F1, then accuracy
    assert [line.split(" | ")[0][2:] for line in lines[3:]] == [LR.label(a) for a in LR.arms("mrpc")]
    fed = [a for a in LR.arms("mrpc") if a != "central"]
    assert fed == ["svd_iid", "naive_iid", "svd_dir0.1", "naive_dir0.1"]          # studies.SMALL
    diffs = {a: stats.paired(mrpc(a), mrpc("central")) for a in fed}
    holm = stats.holm(diffs)
    for a in fed:
        found = LR.findings("mrpc")[a, "central"]
        assert found.paired.mean == pytest.approx(diffs[a].mean)
        assert found.claim == stats.claim(diffs[a], holm[a], 4, 3)              # not over SST-2's 9 arms
    row = next(line for line in lines if line.startswith("| FedAvg, naive A/B averaging, iid shards |"))
    acc = stats.summarize(mrpc("naive_iid", "accuracy").values())
    assert f"| {acc.mean:.3f} ± {acc.sd:.3f} |" in row and "1,512 (378)" in row and "222,338" in row
    assert RS.minus(stats.claim(diffs["naive_iid"], holm["naive_iid"], 4, 3)[:-1]) in row
    assert "rate at the low edge" in lines[3] and "edge" not in row            # central 1e-3; multi-round 2e-3
    assert "3/3 still improving" in next(line for line in lines if "naive A/B averaging, Dirichlet" in line)


def test_mrpc_contrasts_are_their_own_family_svd_naive_and_skew(grid):
    assert [(a, b) for a, b, _ in LR.contrasts("mrpc")] == [("svd_iid", "naive_iid"), ("svd_dir0.1", "naive_dir0.1"),
                                                            ("svd_iid", "svd_dir0.1")]
    diffs = {(a, b): stats.paired(mrpc(a), mrpc(b)) for a, b, _ in LR.contrasts("mrpc")}
    holm = stats.holm(diffs)
    text = LR.contrast_table("mrpc")
    assert text.startswith("MRPC dev F1, a − b paired by seed, Holm over the 3 contrasts together")
    for k, d in diffs.items():
        claim = stats.claim(d, holm[k], 3, 3)
        assert LR.findings("mrpc")[k].claim == claim and RS.minus(claim[:-1]) in text
        if "no difference" in claim:
            assert f"rules out > {stats.ruled_out(d, 3):.3f}" in claim
    assert "no difference after Holm over 3" in text                            # SVD − naive: within 0.01
    per_seed = [mrpc("svd_iid")[s] - mrpc("svd_dir0.1")[s] for s in SEEDS]
    assert " ".join(f"{x:+.3f}" for x in per_seed).replace("-", "\u2212") in text


def test_mrpc_findings_put_every_arm_against_the_majority_in_f1_and_accuracy(grid):
    text = LR.mrpc_findings()
    first = text.splitlines()[0]
    assert "always predicting “paraphrase”" in first and "dev F1 0.812, accuracy 0.684" in first
    central = stats.summarize(mrpc("central").values())
    assert f"centralized LoRA F1 {central.mean:.3f} ± {central.sd:.3f}" in first
    # above the majority in both metrics: centralized and the Dirichlet arms in every seed, the iid arms' F1 in one
    assert "centralized LoRA F1" in first and ", 3 of 3;" in first
    assert first.count(", 1 of 3") == 2
    assert first.endswith("not in every seed: FedAvg, SVD merge, iid shards; FedAvg, naive A/B averaging, iid "
                          "shards. Every verdict below is in dev F1.")
    assert LR.said("svd_dir0.1", task="mrpc") in text and LR.said("svd_iid", "naive_iid", "mrpc") in text
    assert "**Label skew**" in text and LR.said("svd_iid", "svd_dir0.1", "mrpc") in text
    assert "Centralized runs (one local run decayed to 0)" in text and "reads accuracy, not the reported F1" in text
    assert "one-shot" not in text.lower()                                        # MRPC's design has none


def test_mrpc_plateau_reads_selection_accuracy_and_its_binomial_noise(grid):
    judged = LR.plateau_of("naive_dir0.1", "mrpc")
    assert {j.state for j, _ in judged.values()} == {"still improving"}
    assert all(g == pytest.approx(0.04) for _, g in judged.values())
    assert LR.tolerance("naive_dir0.1", "mrpc") == pytest.approx(math.sqrt(0.88 * 0.12 / SELECTION_N))
    assert {j.state for j, _ in LR.plateau_of("svd_iid", "mrpc").values()} == {"at plateau"}
    text = LR.plateau_table("mrpc")
    assert "The rule reads accuracy, not the reported F1" in text and "(centralized) satisfies" in text
    assert "reads accuracy" not in LR.plateau_table()                             # SST-2 reports accuracy


def test_mrpc_selection_is_on_f1_without_a_binomial_sd(grid):
    text = LR.selection_table("mrpc")
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert text.startswith("Final selection-split F1 of every rate (500 pairs held out of training")
    assert "**0.829**" in rows["central"] and "| +0.023 |" in rows["central"] and " sd)" not in text
    assert "**0.805**" in rows["multi-round"] and "| +0.001 |" in rows["multi-round"]
    assert text.endswith("The selection split's majority class scores 0.802; rates that end there (a constant "
                         "prediction): central 0.005.")


def test_grid_time_says_each_tasks_runs(grid):
    text = LR.grid_time()
    assert "`--tasks mrpc --seeds 0 1 2` 73.5 min wall" in text
    assert "SST-2, the 14 selection runs" in text and "MRPC, the 6 selection runs" in text
    assert "the 15 reported training runs" in text and "the 24 reported training runs" in text


# ------------------------------------------------------------------------------------------------- second budget
def write_twins(root, gains: dict, task: str = "sst2", epochs: float = 2.0) -> None:
    """Each centralized run of ``gains`` {seed: gain} again as run_grid.py --budget_check writes it
    (``<task>_central-x2_s<seed>``, ``epochs`` x the epochs, the same rate), its final selection accuracy the run's
    plus ``gain``."""
    for seed, gain in gains.items():
        src, dst = root / f"{task}_central_s{seed}", root / f"{task}_{studies.TWIN}_s{seed}"
        shutil.copytree(src, dst)
        record = json.loads((dst / "args.json").read_text())
        record["args"]["num_train_epochs"] *= epochs
        _write(dst / "args.json", record)
        summary = json.loads((dst / "summary.json").read_text())
        summary["final"]["selection_accuracy"] = round(summary["final"]["selection_accuracy"] + gain, 4)
        summary["final"][LR.METRIC[task]] += 0.05   # a twin's dev score: in no table
        _write(dst / "summary.json", summary)
        rows = [json.loads(x) for x in (src / "metrics.jsonl").read_text().splitlines()]
        rows = rows + [{**r, "epoch": r["epoch"] + rows[-1]["epoch"]} for r in rows]
        rows[-1]["selection_accuracy"] = summary["final"]["selection_accuracy"]
        (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def twinned(tmp_path):
    """The fake grid and its centralized twins: SST-2 seed 0 gains 0.03 (> 1 sd, 0.016 at 0.85 on 500 sentences),
    seed 1 0.01 (within), seed 2 none; MRPC every seed within (0.004)."""
    write_grid(tmp_path)
    write_twins(tmp_path, {0: 0.03, 1: 0.01})
    write_twins(tmp_path, {s: 0.004 for s in SEEDS}, "mrpc")
    RS.REDIRECTS[LR.RECORDS] = tmp_path
    yield tmp_path
    RS.REDIRECTS.clear()


def test_a_centralized_run_is_judged_against_its_twin_at_twice_the_epochs(twinned):
    sd = math.sqrt(0.85 * 0.15 / SELECTION_N)   # the split's sampling sd at centralized's final 0.85
    judged = LR.plateau_of("central")
    assert [j.state for j, _ in judged.values()] == ["still improving", "at plateau", "not checked"]
    assert [g for _, g in judged.values()] == [pytest.approx(0.03), pytest.approx(0.01), None]
    assert judged[0][0].reason == f"+0.03 at twice the epochs > 1 sd ({sd:.3g})" and judged[2][0].reason == \
        "decayed schedule"
    assert studies.BUDGET.check_budget == "twice the epochs" and "twice the epochs" in studies.BUDGET.rule
    assert {j.state for j, _ in LR.plateau_of("central", "mrpc").values()} == {"at plateau"}
    assert {j.state for j, _ in LR.plateau_of("oneshot_iid").values()} == {"not checked"}   # no second budget built
    text = LR.plateau_table()
    row = next(line for line in text.splitlines() if line.startswith("| centralized LoRA"))
    assert row == (f"| centralized LoRA | +0.030 +0.010 – | {sd:.3f} | 1/3 still improving; plateau not checked for "
                   "1/3 (decayed schedule) |")
    assert "and by a centralized run's twin at twice the epochs" in text
    assert "without a second budget (centralized without a twin, one-shot) satisfies" in text
    assert "only centralized runs were run past their budget (twice the epochs, seeds 0, 1), so no other arm is " \
           "shown to be at its plateau beyond its budget." in text
    assert "no arm was run past its budget" not in text
    mrpc_text = LR.plateau_table("mrpc")   # every MRPC seed has its twin: no run is left unchecked
    assert "| centralized LoRA | +0.004 +0.004 +0.004 |" in mrpc_text and "at plateau by this rule (3/3)" in mrpc_text
    assert "not checked" not in mrpc_text and "Only centralized runs were run past their budget" in mrpc_text
    line = next(x for x in LR.mrpc_findings().splitlines() if x.startswith("- **Plateau**"))
    assert "centralized: its twin at twice the epochs against the run; tolerance" in line
    assert "at it by this rule: centralized LoRA; FedAvg" in line and "not checked" not in line
    assert "Only centralized runs ran past their budget (twice the epochs, seeds 0, 1, 2)." in line
    line = next(x for x in LR.sst2_findings().splitlines() if x.startswith("- **Plateau**"))
    assert "still improving: centralized LoRA (1/3 still improving; plateau not checked for 1/3" in line
    assert "Centralized without a twin and one-shot runs (one local run decayed to 0) are not checked, and only " \
           "centralized runs ran past their budget (twice the epochs, seeds 0, 1)." in line
    assert "reference; 1/3 still improving" in LR.dev_table()   # the reference's note beside its verdicts


def test_the_twin_is_no_arm_of_any_table(twinned, tmp_path_factory):
    """With twins every block but the plateau's and the grid time's is the same as without them: the twin is in no
    study, table, comparison or count of reported runs."""
    assert studies.TWIN not in LR.arms() and studies.TWIN not in LR.reported("mrpc")
    assert all(studies.TWIN not in (c.arm, c.reference) for s in studies.STUDIES.values() for c in s.comparisons)
    assert sorted(LR.twins()) == [0, 1] and LR.runs(studies.TWIN)   # read only as the centralized runs' budget
    with_twins = {name: fn() for name, fn in LR.BLOCKS.items()}
    plain = tmp_path_factory.mktemp("plain")
    write_grid(plain)
    RS.REDIRECTS[LR.RECORDS] = plain
    without = {name: fn() for name, fn in LR.BLOCKS.items()}
    changed = {k for k in LR.BLOCKS if with_twins[k] != without[k]}
    # the plateau's blocks, the reading's plateau line, the reference's note in the dev tables, the runs' time
    assert changed == {"plateau", "mrpc-plateau", "sst2-findings", "mrpc-findings", "sst2-table", "mrpc-table",
                       "grid-time"}
    assert [x for x in with_twins["sst2-table"].splitlines() if "centralized" not in x] == \
        [x for x in without["sst2-table"].splitlines() if "centralized" not in x]   # the twin's dev score in no row
    assert "budget" in without["plateau"] and "no arm was run past its budget" in without["plateau"]
    assert "the 2 centralized runs at twice the epochs (--budget_check)" in with_twins["grid-time"]
    for name in with_twins:
        assert "central-x2" not in with_twins[name]


def test_a_twin_that_is_not_twice_the_run_is_refused(tmp_path):
    write_grid(tmp_path, tasks=("sst2",))
    write_twins(tmp_path, {0: 0.01}, epochs=3.0)
    RS.REDIRECTS[LR.RECORDS] = tmp_path
    try:
        with pytest.raises(Exception, match="sst2_central-x2_s0 is not sst2_central_s0 at 2x the epochs"):
            LR.plateau_of("central")
    finally:
        RS.REDIRECTS.clear()


def write_oneshot_twins(root, gains: dict, shard: str = "iid", naive_gains: dict | None = None,
                        scored: tuple[int, ...] | None = None) -> None:
    """Each one-shot run of ``gains`` {seed: gain} again as run_grid.py --budget_check writes it
    (``sst2_oneshot-x2_<shard>_s<seed>``: its clients at twice the local epochs, the same rate; its final selection
    accuracy the run's plus ``gain``) and its naive merge (``sst2_oneshot-naive-x2_...``, ``naive_gains`` over the
    original merge's); the original naive merges of ``scored`` (default: those seeds) score the selection split, as
    fedavg_merge.py --do_eval now does (0.83)."""
    for seed, gain in gains.items():
        src, dst = root / f"sst2_oneshot_{shard}_s{seed}", root / f"sst2_oneshot-x2_{shard}_s{seed}"
        shutil.copytree(src, dst)
        record = json.loads((dst / "args.json").read_text())
        record["args"]["local_epochs"] *= 2
        _write(dst / "args.json", record)
        summary = json.loads((dst / "summary.json").read_text())
        summary["final"]["selection_accuracy"] = round(summary["final"]["selection_accuracy"] + gain, 4)
        _write(dst / "summary.json", summary)
        naive = json.loads((root / f"sst2_oneshot-naive_{shard}_s{seed}/adapter/fuse_manifest.json").read_text())
        naive["final"]["selection_accuracy"] = round(0.83 + (naive_gains or {}).get(seed, 0.0), 4)
        _write(root / f"sst2_oneshot-naive-x2_{shard}_s{seed}/adapter/fuse_manifest.json", naive)
    for seed in (gains if scored is None else scored):
        f = root / f"sst2_oneshot-naive_{shard}_s{seed}/adapter/fuse_manifest.json"
        naive = json.loads(f.read_text())
        naive["final"]["selection_accuracy"] = 0.83
        _write(f, naive)


def test_a_one_shot_run_and_its_naive_merge_are_judged_against_their_twins(tmp_path):
    """--budget_check's one-shot twins: the SVD run against the run with its clients at twice the local epochs, the
    naive merge against the naive merge of those clients, on the selection split (1 sd of its noise); a seed without
    a twin, or whose original naive merge did not score the split, stays not checked; the twins are in no table."""
    write_grid(tmp_path)
    plain = tmp_path.parent / (tmp_path.name + "-plain")
    write_grid(plain)
    write_oneshot_twins(tmp_path, {0: 0.03, 1: 0.005}, naive_gains={0: 0.004, 1: -0.01}, scored=(0,))
    RS.REDIRECTS[LR.RECORDS] = tmp_path
    try:
        assert sorted(LR.twins(arm="oneshot_iid")) == [0, 1] and sorted(LR.twins(arm="oneshot-naive_iid")) == [0]
        assert studies.twin_arm("oneshot-naive_iid") == "oneshot-naive-x2_iid" and LR.twins(arm="svd_iid") == {}
        judged = LR.plateau_of("oneshot_iid")
        assert [j.state for j, _ in judged.values()] == ["still improving", "at plateau", "not checked"]
        assert [g for _, g in judged.values()][:2] == [pytest.approx(0.03), pytest.approx(0.005)]
        naive = LR.plateau_of("oneshot-naive_iid")
        assert [j.state for j, _ in naive.values()] == ["at plateau", "not checked", "not checked"]
        assert naive[0][1] == pytest.approx(0.004)
        assert LR.tolerance("oneshot-naive_iid") == pytest.approx(math.sqrt(0.83 * 0.17 / SELECTION_N))
        text = LR.plateau_table()
        row = next(x for x in text.splitlines() if x.startswith("| one-shot, SVD merge, iid shards"))
        assert "+0.030 +0.005 –" in row and "1/3 still improving; plateau not checked for 1/3" in row
        assert "one-shot, SVD merge, Dirichlet" in text and "only one-shot runs (seeds 0, 1) were run past their " \
            "budget (twice the (local) epochs)" in text
        assert "and by a one-shot run's twin at twice the (local) epochs" in text
        assert "(centralized, one-shot without a twin) satisfies" in text
        assert "the 2 one-shot runs at twice the epochs (--budget_check)" in LR.grid_time()
        table = LR.dev_table()   # the twins in no row; the one-shot arms' notes say what their twins found
        assert "-x2" not in table and "0.770 ± 0.010 (n=3) | −0.072 [−0.092, −0.052] (n=3; p_Holm = 0.016 over " \
            "9; plateau not checked for 2/3 (decayed schedule)) |" in table
        RS.REDIRECTS[LR.RECORDS] = plain
        assert len(LR.dev_table().splitlines()) == len(table.splitlines())
    finally:
        RS.REDIRECTS.clear()
