"""Checkpoints of the whole TrainState with orbax ``CheckpointManager``.

One checkpoint per epoch under ``<run>/checkpoints/<epoch>``; the last ``keep`` and the
best (highest test accuracy) are preserved. Writes are atomic (orbax writes to a temporary
directory and renames), so a killed run never leaves a half-written checkpoint behind.

Checkpoints written before methods carried their own state held RePr's snapshot as a
top-level ``snapshot`` (the whole params tree) and no ``method_*`` fields; they restore
into today's state with the snapshot's conv kernels moved to ``method_state["snapshot"]``.
"""
from __future__ import annotations

from pathlib import Path

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from repr_jax.layers import get_path
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
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()})

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
        saved = self.manager.item_metadata(epoch)["state"].tree
        legacy = "snapshot" in saved and "method_state" not in saved
        if legacy:
            target = {k: v for k, v in target.items() if not k.startswith("method_")}
            target["snapshot"] = target["params"]
        out = self.manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract_here(target)), extra=ocp.args.JsonRestore()))
        restored = dict(out["state"])
        if legacy:
            restored = _from_legacy(restored, template)
        return flax.serialization.from_state_dict(template, restored), dict(out["extra"])

    def close(self) -> None:
        self.manager.close()


def _abstract_here(tree):
    """Shapes and dtypes of ``tree`` on this process's first device: an explicit sharding
    makes a checkpoint written on a GPU restore on a CPU-only machine (and vice versa)
    instead of failing on topology."""
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype,
                                       sharding=here), tree)


def save_variables(directory: str | Path, variables: dict) -> None:
    """Write a model's ``{"params", "batch_stats"}`` (e.g. an exported smaller model)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(directory).absolute(), variables)
    checkpointer.wait_until_finished()
    checkpointer.close()


def restore_variables(directory: str | Path, template: dict) -> dict:
    """Read what :func:`save_variables` wrote, into the structure of ``template`` (arrays or
    shapes, e.g. ``jax.eval_shape(model.init, …)``)."""
    checkpointer = ocp.StandardCheckpointer()
    try:
        return checkpointer.restore(Path(directory).absolute(), _abstract_here(template))
    finally:
        checkpointer.close()


def _from_legacy(restored: dict, template: TrainState) -> dict:
    """A pre-``method_state`` checkpoint's tree in today's layout (see module docstring)."""
    snapshot = restored.pop("snapshot")
    current = flax.serialization.to_state_dict(template)
    method_state = current["method_state"]
    if "snapshot" in method_state:
        method_state = dict(method_state, snapshot=jax.tree_util.tree_map_with_path(
            lambda path, _: get_path(snapshot, tuple(k.key for k in path)), method_state["snapshot"]))
    return {**restored, "method_state": method_state, "method_params": current["method_params"],
            "method_opt_state": current["method_opt_state"]}
