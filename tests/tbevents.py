"""Reading a run's TensorBoard event files back, for the tests that check what ``common.tracking`` logged."""
from __future__ import annotations

import os
from pathlib import Path

from common.tracking import TENSORBOARD_DIR


def event_files(run_path: str | os.PathLike) -> list[Path]:
    """The TensorBoard event files of a run directory."""
    return sorted((Path(run_path) / TENSORBOARD_DIR).glob("events.out.tfevents.*"))


def read_scalars(run_path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from a run's TensorBoard event files (TFRecord framing read here, only
    ``tensorboard``'s protobuf classes needed: no TensorFlow, no absl)."""
    import struct

    from tensorboard.compat.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in event_files(run_path):
        data = f.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            record = data[pos + 12:pos + 12 + length]  # after the length and its CRC; a data CRC follows
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for v in event.summary.value:
                value = v.simple_value if v.HasField("simple_value") else (
                    float(v.tensor.float_val[0]) if v.tensor.float_val else None)
                if value is not None:
                    out.setdefault(v.tag, []).append((int(event.step), float(value)))
    return out
