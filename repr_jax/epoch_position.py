"""Checkpoints inside an epoch: the state, the epoch's running sums and the input's position.

An epoch checkpoint (``checkpoints/<epoch>``, :mod:`repr_jax.checkpoint`) is written when an
epoch ends; on ImageNet-sized data an epoch is hours, and a run killed near its end would
train it again. With ``checkpoint_every=N`` (``--checkpoint-every N``) the run also saves,
after every N-th batch of each epoch (counted from the epoch's start; not after its last,
which the epoch checkpoint follows), an :class:`EpochPosition` into
``<run>/checkpoints_in_epoch/<step>`` (the newest one kept): the whole train state after the step, the epoch's running sums
(loss, correct, count, loss terms — float32 values, stored exactly), the method's events of
the epoch's start (its ``before_epoch`` transition has run and is not run again), the
seconds trained so far, and where the input stands — the batch count and, for a streamed
folder, the Grain iterator's own state (``DatasetIterator.get_state()``: the next batch of
the epoch's fixed order, the same whatever the number of reading threads). ``--resume``
restores the newest epoch checkpoint, then the position if it continues that epoch, and
trains on from the next batch: the result is bit-identical to a run never stopped (the
step's random key is ``fold_in(epoch key, step)``; tests/test_epoch_position.py kills a run
with SIGKILL between two positions).

Not covered: ``--seeds K`` (K > 1) refuses ``checkpoint_every`` (the vmapped and looped
populations keep per-epoch checkpoints only).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np

from repr_jax.checkpoint import Checkpointer

DIRECTORY = "checkpoints_in_epoch"


@dataclasses.dataclass(frozen=True)
class EpochPosition:
    """Where a run stood inside 0-based ``epoch`` after ``batches`` training steps of it."""
    epoch: int
    batches: int
    totals: dict            # the epoch's running sums, name → float (float32 values)
    records: list           # the method's before_epoch events of this epoch, as pruning.jsonl records
    epoch_seconds: float    # training seconds of this epoch so far
    wall_seconds: float     # the run's wall time so far (elapsed_seconds of metrics.jsonl)
    iterator: dict | None = None   # a streamed epoch's Grain iterator state after ``batches`` batches

    def extra(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_extra(cls, extra: dict) -> "EpochPosition":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in extra.items() if k in fields})

    def device_totals(self) -> dict:
        """The running sums as the step's float32 scalars, values restored exactly."""
        import jax.numpy as jnp
        return {k: jnp.asarray(np.float32(v)) for k, v in self.totals.items()}


@contextlib.contextmanager
def _absl_quiet():
    """absl's (orbax's) warnings held back: a position directory that a kill left half deleted
    is skipped, not news."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def finished(run_dir: Path) -> None:
    """After the run's last epoch: its (empty) positions directory removed."""
    try:
        (Path(run_dir) / DIRECTORY).rmdir()
    except OSError:   # absent, or not empty (a position kept for a reason): left as it is
        pass


def host_totals(totals: dict) -> dict:
    """Device running sums → JSON-safe floats (a float32 is exact in a Python float)."""
    return {k: float(np.asarray(v)) for k, v in totals.items()}


def writer(run_dir: Path, keep_from: EpochPosition | None, main: bool) -> Checkpointer:
    """The run's mid-epoch checkpointer. Unless a resume continues from one of its positions
    (``keep_from``), what the directory holds is stale (positions of epochs already ended, or
    from beyond the checkpoint a resume went back to) and is removed first, by the main
    process (call :func:`repr_jax.parallel.sync_processes` before the others open it)."""
    directory = Path(run_dir) / DIRECTORY
    if keep_from is None and main and directory.exists():
        shutil.rmtree(directory)
    with _absl_quiet():
        return Checkpointer(directory, keep=1, ranked=False)


def read(run_dir: Path, template, epochs_done: int) -> tuple:
    """``(state, position, problem)``: the newest mid-epoch checkpoint of ``run_dir`` when it
    continues epoch ``epochs_done`` (0-based: the first epoch the epoch checkpoints lack)
    from ``template`` (the state of that epoch checkpoint), else ``(None, None, None)``;
    ``(None, None, reason)`` when it cannot be restored (damaged: the epoch starts over)."""
    directory = Path(run_dir) / DIRECTORY
    if not directory.is_dir():
        return None, None, None
    with _absl_quiet():   # a step half deleted by a kill (the previous position) makes orbax log
        reader = Checkpointer(directory, keep=1, writer=False, ranked=False)
        try:
            steps = reader.epochs()
            if not steps:
                return None, None, None
            try:
                state, extra = reader.restore(template, steps[-1])
            except Exception as err:   # damaged: the epoch restarts from its epoch checkpoint
                reason = " ".join(str(err).split())
                reason = reason if len(reason) <= 160 else reason[:157] + "..."
                return None, None, f"the position saved at step {steps[-1]} could not be restored ({reason})"
            position = EpochPosition.from_extra(extra)
            if position.epoch != epochs_done or int(np.asarray(state.step)) <= int(np.asarray(template.step)):
                return None, None, None
            return state, position, None
        finally:
            reader.close()


__all__ = ["DIRECTORY", "EpochPosition", "finished", "host_totals", "read", "writer"]
