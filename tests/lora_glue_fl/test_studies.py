"""lora_glue_fl/studies.py against the grid that runs it: run_grid.py's defaults are the declared ones, and the runs
it plans for a study's design and seeds are that study's arms and seeds, no more and no fewer (a twin of
--budget_check is none of them); a --budget_check twin judges exactly the arms of the twinned cells."""
from __future__ import annotations

import shutil

from common import synthetic
from lora_glue_fl import run_grid, studies


def test_the_grid_defaults_are_the_declared_ones():
    args = run_grid.get_args_parser().parse_args([])
    assert (args.seeds, args.select_seeds, args.extend) == (list(studies.SEEDS), list(studies.SELECT_SEEDS),
                                                            studies.EXTEND)
    assert (args.lr_grid, args.exact_lr_grid) == (list(studies.LR_GRID), list(studies.EXACT_LR_GRID))
    assert (args.rounds, args.local_epochs, args.train_pooler) == (studies.ROUNDS, studies.LOCAL_EPOCHS,
                                                                   list(studies.TRAIN_POOLER))
    grids = run_grid.grids(args)   # the selection: every family of the default design, on its own grid
    assert list(grids) == [("sst2", f) for f in ("central", "multi-round", "one-shot")]
    assert {g.values for g in grids.values()} == {studies.LR_GRID} and grids["sst2", "central"].split == "selection"


def test_the_grid_plans_each_study_arm_by_arm_and_seed_by_seed(tmp_path):
    real = tmp_path / "real"
    for task in ("sst2", "mrpc"):
        shutil.copytree(synthetic.ensure(f"glue-{task}"), real / f"glue_{task}")
    rates = dict.fromkeys(studies.FAMILY.values(), 1e-3)
    for task, design in (("sst2", "merges"), ("mrpc", "small")):
        declared = studies.STUDIES[task]
        args = run_grid.get_args_parser().parse_args(
            ["--out-dir", str(tmp_path / "grid"), "--real_data_dir", str(real), "--tasks", task,
             f"--{task}_design", design, "--seeds", *map(str, declared.seeds), "--train_samples", "200",
             "--mrpc_train_samples", "200", "--selection_samples", "40", "--min_per_label", "2", "--budget_check"])
        planned = [j.name for j in run_grid.jobs_of(run_grid.cells(args, {task: rates}, write=False))]
        runs = {}
        for name in planned:
            arm, seed = name.split("_", 1)[1].rsplit("_s", 1)
            runs.setdefault(arm, set()).add(int(seed))
        twins = {a for a in runs if a.split("_")[0].endswith(studies.TWIN_SUFFIX)}
        assert {a.name for a in declared.arms} == set(runs) - twins
        assert twins == {studies.twin_arm(a.name) for a in declared.arms if studies.has_twin(a.name)}
        assert all(seeds == set(declared.seeds) for seeds in runs.values())
        flags = {a.name: a.flags for a in declared.arms}   # the pooler flag where the grid trains it
        assert all(("--train_pooler" in f) == (task in studies.TRAIN_POOLER) for f in flags.values())
