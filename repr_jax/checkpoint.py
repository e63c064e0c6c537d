"""Checkpoints of the whole TrainState with orbax ``CheckpointManager``.

One checkpoint per epoch under ``<run>/checkpoints/<epoch>``; the last ``keep`` and the
best (highest test accuracy) are preserved. Writes are atomic (orbax writes to a temporary
directory and renames), so a killed run never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

from pathlib import Path

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from repr_jax.state import TrainState


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3):
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=keep),
                policies.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1,
                               keep_checkpoints_without_metrics=False),
            ]),
            enable_async_checkpointing=False, create=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def save(self, epoch: int, state: TrainState, metrics: dict, extra: dict) -> None:
        """Save the state after ``epoch`` (1-based count of finished epochs)."""
        items = ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            extra=ocp.args.JsonSave(extra))
        self.manager.save(epoch, args=items, metrics={"test_accuracy": float(metrics["test_accuracy"])})
        self.manager.wait_until_finished()

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def best_epoch(self) -> int | None:
        return self.manager.best_step()

    def restore(self, template: TrainState, epoch: int | None = None) -> tuple[TrainState, dict]:
        """Restore into the structure of ``template`` (a freshly created state)."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError("no checkpoint to restore")
        target = flax.serialization.to_state_dict(template)
        # An explicit sharding onto this process's first device: a checkpoint written on a
        # GPU restores on a CPU-only machine (and vice versa) instead of failing on topology.
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=here), target)
        out = self.manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
        return flax.serialization.from_state_dict(template, out["state"]), dict(out["extra"])

    def close(self) -> None:
        self.manager.close()
