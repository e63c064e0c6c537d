"""Optional TensorBoard scalars beside ``metrics.jsonl`` (``--set tensorboard=true``; needs
``pip install -e ".[tensorboard]"``, i.e. tensorboardX).

Each epoch's ``metrics.jsonl`` row becomes scalars at step = epoch (1-based): ``train/loss``,
``train/accuracy``, ``test/loss``, ``test/accuracy``, ``learning_rate``, ``live_filters``,
``images_per_second`` and ``loss_terms/<name>``. Events go to ``<run>/tensorboard/``; a
resumed run starts a new event file that purges the epochs after its checkpoint from the
older ones (TensorBoard's ``purge_step``), so a curve never shows an epoch twice.
"""
from __future__ import annotations

import time
from pathlib import Path

SCALARS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "test_loss": "test/loss",
           "test_accuracy": "test/accuracy", "learning_rate": "learning_rate", "live_filters": "live_filters",
           "images_per_second": "images_per_second"}


def check_available() -> None:
    """``ImportError`` with the install command when tensorboardX is missing."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ImportError("tensorboard=true needs tensorboardX: pip install -e \".[tensorboard]\"") from None


class TensorBoardLog:
    """Writes epoch rows into ``run_dir/tensorboard``, synchronously: every event is on disk
    when :meth:`write` returns (tensorboardX's ``SummaryWriter`` queues events for a background
    thread, which a killed run would lose), one file per process."""

    def __init__(self, run_dir, start_epoch: int = 0):
        import os

        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        directory = Path(run_dir) / "tensorboard"
        directory.mkdir(parents=True, exist_ok=True)
        self.writer = EventsWriter(str(directory / "events"), filename_suffix=f".{os.getpid()}")
        if start_epoch:   # TensorBoard drops the older files' events from this step on
            self.writer.write_event(Event(wall_time=time.time(), step=start_epoch + 1,
                                          session_log=SessionLog(status=SessionLog.START)))
        self.writer.flush()

    def write(self, row: dict) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar
        step = int(row["epoch"])
        values = {tag: row[key] for key, tag in SCALARS.items() if row.get(key) is not None}
        values.update({f"loss_terms/{name}": v for name, v in (row.get("loss_terms") or {}).items() if v is not None})
        for tag, value in values.items():
            self.writer.write_event(Event(wall_time=time.time(), step=step, summary=scalar(tag, float(value))))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


__all__ = ["SCALARS", "TensorBoardLog", "check_available"]
