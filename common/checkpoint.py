"""CONTRACT STUB (to be implemented): atomic writes and checkpoint files.

atomic_write_bytes(path, data); atomic_write_json(path, obj); atomic_write_text(path, s)
save_checkpoint(path, state: dict, kind: str); load_checkpoint(path, kind: str) -> dict
  (CheckpointError, a UsageError, for truncated, foreign or wrong-kind files)
"""
