"""run_grid.py's choice on synthetic selection runs (lora_glue_fl commits none): the mean over the selection seeds
decides, a tie goes to the smaller rate, each family on its own grid; the same choices whatever implementation
chooses."""
from __future__ import annotations

import json

from lora_glue_fl import glue_tasks, run_grid


def test_the_mean_over_selection_seeds_picks_each_familys_rate(tmp_path):
    args = run_grid.get_args_parser().parse_args(["--out-dir", str(tmp_path), "--tasks", "sst2", "mrpc",
                                                  "--sst2_design", "merges", "--select_seeds", "100", "101",
                                                  "--lr_grid", "1e-3", "2e-3", "5e-3",
                                                  "--exact_lr_grid", "2e-4", "5e-4", "1e-3"])
    # per family: {rate: (seed 100, seed 101)}; seed 100 alone would choose otherwise in every family
    scores = {"central": {1e-3: (0.90, 0.70), 2e-3: (0.85, 0.84), 5e-3: (0.70, 0.70)},
              "multi-round": {1e-3: (0.80, 0.80), 2e-3: (0.70, 0.90), 5e-3: (0.60, 0.60)},   # a tie: 1e-3
              "one-shot": {1e-3: (0.50, 0.50), 2e-3: (0.55, 0.60), 5e-3: (0.60, 0.50)},
              "exact": {2e-4: (0.70, 0.72), 5e-4: (0.60, 0.90), 1e-3: (0.72, 0.60)}}
    for task in args.tasks:
        key = "selection_" + glue_tasks.get_task(task).main_metric
        for family in run_grid.families_of(args, task):
            for lr, by_seed in scores[family].items():
                for seed, v in zip(args.select_seeds, by_seed):
                    folder = tmp_path / "selection" / f"{task}_{family}_lr{lr:g}_s{seed}"
                    folder.mkdir(parents=True)
                    (folder / "summary.json").write_text(json.dumps({"final": {key: v}}))
    chosen = run_grid.choose(args)
    assert chosen == {"sst2": {"central": 2e-3, "multi-round": 1e-3, "one-shot": 2e-3, "exact": 5e-4},
                      "mrpc": {"central": 2e-3, "multi-round": 1e-3}}
    record = json.loads((tmp_path / "selection.json").read_text())["tasks"]
    assert record["sst2"]["exact"]["scores"]["0.0005"] == 0.75 and record["mrpc"]["central"]["chosen"] == 2e-3
    # the multi-round rate is the smallest tried: selection.json says so (the grid does not extend)
    assert record["sst2"]["multi-round"]["edge"] == "low" and "edge" not in record["sst2"]["central"]
