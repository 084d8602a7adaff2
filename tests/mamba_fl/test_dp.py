"""fed_avg.py under DP (common/privacy.py): --dp-epsilon solves z and the run ends at epsilon <= the target;
every update clipped within C; epsilon per evaluation row."""
from __future__ import annotations

import pytest
from dpcases import check_run, log_clips

from common import dp
from mamba_fl import fed_avg

pytest.importorskip("dp_accounting")


def test_dp_epsilon_is_reached_and_updates_clipped(tiny, out_dir, monkeypatch):
    log = log_clips(monkeypatch)
    s = fed_avg.main(tiny("--dp-clip", "0.05", "--dp-epsilon", "3", "--run-name", "e", rounds=3))
    rows = check_run(out_dir / "e", log, 1.0, 2)
    assert len(rows) == 3 and 2.9 < s["dp_epsilon"] <= 3  # the smallest z (within 1e-4) reaching 3
    assert s["dp_noise"] == dp.noise_for_epsilon(3, 1 / 2 ** 1.1, 1.0, 3)
