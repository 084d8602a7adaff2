"""CONTRACT STUB (to be implemented): the run directory."""
from __future__ import annotations

class RunDir:
    """<out_dir>/<run_name>/ with args.json, metrics.jsonl, summary.json, checkpoint.pt, artifacts.

    RunDir(out_dir, run_name, args: dict, resume=False, is_main=True, ignore_on_resume=(...))
      .path; .log(row: dict) appends one JSON line; .rows() -> list[dict]
      .save_checkpoint(state: dict) atomic (records number of metric rows); .load_checkpoint() -> dict | None
         (on resume, metric rows beyond the checkpoint are trimmed; differing args -> UsageError)
      .write_summary(summary: dict) atomic, adds wall_seconds; .artifact(name) -> Path
    """
