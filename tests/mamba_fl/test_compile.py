"""mamba_fl with --compile (backend aot_eager: the same graphs as inductor, no code generation, so the test
stays fast on a CPU): same metrics as the eager run, and a compiled run may be resumed without the flag."""
from __future__ import annotations

import json

import pytest
import torch

from mamba_fl import fed_avg


def test_fedavg_compiled_matches_eager_and_resumes_without_the_flag(tiny, out_dir):
    eager = fed_avg.main(tiny("--run-name", "eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    comp = fed_avg.main(tiny("--run-name", "comp", "--compile", "--compile-backend", "aot_eager"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the forward really was compiled
    again = fed_avg.main(tiny("--run-name", "comp", "--resume"))  # --compile may differ on resume
    assert again["rounds_done"] == 2 and again["final_val_ppl"] == comp["final_val_ppl"]
    rows = {name: [json.loads(x) for x in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("eager", "comp")}
    for a, b in zip(rows["eager"], rows["comp"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert comp["final_val_ppl"] == pytest.approx(eager["final_val_ppl"], rel=1e-5)
