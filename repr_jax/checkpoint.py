"""Checkpoints of the whole TrainState with orbax ``CheckpointManager``.

One checkpoint per epoch under ``<run>/checkpoints/<epoch>``; the last ``keep`` and the
best are preserved. The best is the epoch of the highest test accuracy, the *earliest* such
epoch on a tie — the epoch ``summary.json`` names as ``best_epoch`` — chosen by
:func:`best_key` both for preservation and for :meth:`Checkpointer.best_epoch` (orbax's own
``best_step()`` returns the latest step without a ``best_fn``, and without one it stores
no metrics, so before this a "best" checkpoint was neither known nor preserved).

Writes are atomic (orbax writes to a temporary directory and renames; leftovers of an
interrupted write are removed on the next start), so a killed run never leaves a
half-written checkpoint behind. A write that fails (disk
full, permissions) is a one-line :class:`~repr_jax.errors.RunError` and the earlier
checkpoints stay as they were. :meth:`Checkpointer.restore_newest` falls back to the newest
checkpoint that restores when a later one is damaged.

Every checkpoint carries a SHA-256 of each of its arrays (bytes, dtype and shape) in its
JSON ``extra`` (``checksums``); a restore recomputes them and refuses a checkpoint whose
arrays changed on disk — flipped bytes that still decode would otherwise restore silently
(a NaN loss in ``evaluate``, a diverged ``--resume``). Such a checkpoint is damaged like a
truncated one: a resume sets it aside and continues from the newest one that verifies.
Checkpoints written before the checksums existed restore unverified.

Checkpoints written before methods carried their own state held RePr's snapshot as a
top-level ``snapshot`` (the whole params tree) and no ``method_*`` fields; they restore
into today's state with the snapshot's conv kernels moved to ``method_state["snapshot"]``.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from repr_jax.errors import RunError
from repr_jax.layers import get_path


def _reason(err: BaseException) -> str:
    """The cause of an I/O failure in a few words: the OS error underneath, also when
    tensorstore wraps it (``... [os_error_code='28']`` → "No space left on device")."""
    while err.__cause__ is not None or err.__context__ is not None:   # the OS error underneath
        if isinstance(err, OSError) and err.strerror:
            break
        err = err.__cause__ or err.__context__
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    code = re.search(r"os_error_code='(\d+)'", str(err))
    if code:
        return os.strerror(int(code.group(1)))
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


@contextlib.contextmanager
def _interrupts_deferred():
    """Let a checkpoint write finish before Ctrl-C takes effect: SIGINT during the block is
    remembered and raised as ``KeyboardInterrupt`` right after it (a write interrupted midway
    is discarded by orbax, but its threads print tracebacks when the process exits). Only in
    the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    # SIGTERM too where Python handles it (a multi-process run makes it a Ctrl-C: repr_jax.parallel)
    signals = [signal.SIGINT] + [signal.SIGTERM] * callable(signal.getsignal(signal.SIGTERM))
    previous = {s: signal.signal(s, lambda *_: caught.append(True)) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _stderr_held():
    """Hold what is written to file descriptor 2 while the block runs and replay it after a
    success. When a write fails, orbax's and tensorstore's threads print a dozen tracebacks
    there (some from C++); after a failure they are dropped for the caller's one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        gc.collect()   # abandoned asyncio tasks log "exception was never retrieved" when collected
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if not failed:
            held.seek(0)
            text = held.read()
            if text:
                sys.stderr.write(text.decode(errors="replace"))
        held.close()


def checksums(tree) -> dict[str, str]:
    """``{array path: SHA-256 of its dtype, shape and bytes}`` of every array leaf of ``tree``."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not hasattr(leaf, "shape"):
            continue
        a = np.ascontiguousarray(np.asarray(leaf))
        digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
        out[jax.tree_util.keystr(path)] = digest.hexdigest()
    return out


def verify(tree, expected: dict[str, str], epoch: int) -> None:
    """``ValueError`` naming the first array of ``tree`` whose checksum is not ``expected``'s."""
    got = checksums(tree)
    for key, value in expected.items():
        if got.get(key) != value:
            raise ValueError(f"the checkpoint of epoch {epoch} is damaged: {key} does not match the checksum "
                             "written with it")


def best_key(metrics: dict) -> tuple[float, int]:
    """Order of checkpoints by quality: higher test accuracy, then the earlier epoch.
    ``metrics`` is what :meth:`Checkpointer.save` stored (checkpoints written before the
    epoch was stored count as epoch 0; the step number breaks their ties)."""
    return float(metrics["test_accuracy"]), -int(metrics.get("epoch", 0))


class Checkpointer:
    """The checkpoints of one run. ``writer=False`` opens them for reading only: nothing in
    the directory is created, cleaned up or deleted (what evaluation, export, a teacher or
    ``init_from`` and a resume's checks use). ``ranked=False``: the last ``keep`` only, no
    metrics (the mid-epoch positions of :mod:`repr_jax.epoch_position`, numbered by step)."""

    def __init__(self, directory: str | Path, keep: int = 3, *, writer: bool = True, ranked: bool = True):
        if ranked:
            ranking = dict(preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=keep),
                policies.BestN(get_metric_fn=best_key, n=1, keep_checkpoints_without_metrics=False),
            ]),
                # orbax stores a step's metrics only when it tracks a best_fn (else BestN sees none)
                best_fn=lambda m: m["test_accuracy"], best_mode="max")
        else:
            ranking = dict(preservation_policy=policies.LatestN(n=keep))
        self.ranked = ranked
        options = ocp.CheckpointManagerOptions(**ranking, enable_async_checkpointing=False, create=writer,
                                               cleanup_tmp_directories=writer)
        self.directory = Path(directory).absolute()
        try:
            self.manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()})
        except OSError as err:
            raise RunError(f"cannot use checkpoint directory {self.directory}: {_reason(err)}") from None

    def save(self, epoch: int, state, metrics: dict | None, extra: dict) -> None:
        """Save the state after ``epoch`` (1-based count of finished epochs; for an unranked
        checkpointer any increasing number, ``metrics`` None)."""
        saved = _saved_part(state)
        items = ocp.args.Composite(
            state=ocp.args.StandardSave(saved),
            extra=ocp.args.JsonSave({**extra, "checksums": checksums(saved)}))
        try:
            with _interrupts_deferred(), _stderr_held():
                # checkpoints at or after this one belong to a future the run went back from (a
                # population rewound to the epoch every seed holds): orbax would keep them and
                # silently decline this save
                for newer in [s for s in self.manager.all_steps() if s >= epoch]:
                    self.manager.delete(newer)
                ranks = {"test_accuracy": float(metrics["test_accuracy"]), "epoch": int(epoch)} if self.ranked else None
                if not self.manager.save(epoch, args=items, metrics=ranks):
                    raise RunError(f"orbax declined to save step {epoch} (not after {self.latest_epoch()})")
                self.manager.wait_until_finished()
        except Exception as err:   # the I/O boundary: disk full, permissions, a vanished directory
            kept = [s for s in self.manager.all_steps() if s != epoch]
            resume = f"--resume continues from epoch {max(kept)}" if kept else "no earlier checkpoint"
            raise RunError(f"cannot write the checkpoint of epoch {epoch} in {self.directory}: "
                           f"{_reason(err)} ({resume})") from None

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def best_epoch(self, logged: list[dict] | None = None) -> int | None:
        """The kept epoch of the highest test accuracy (the earliest on a tie; :func:`best_key`).
        Checkpoints written before their metrics were stored are ranked by ``logged`` (the
        run's ``metrics.jsonl`` rows) when given. None when nothing ranks them."""
        steps = self.manager.all_steps()
        scored = [(best_key(m), -epoch) for epoch in steps if (m := self.manager.metrics(epoch)) is not None]
        if not scored and logged:
            scored = [(best_key({"test_accuracy": row["test_accuracy"], "epoch": row["epoch"]}), -row["epoch"])
                      for row in logged if row.get("epoch") in steps and row.get("test_accuracy") is not None]
        return -max(scored)[1] if scored else None

    def epochs(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def is_legacy(self, epoch: int) -> bool:
        """Whether checkpoint ``epoch`` predates ``method_state`` (its missing parts are then
        taken from the template's values, so the template must be a concrete state)."""
        saved = self.manager.item_metadata(epoch)["state"].tree
        return "snapshot" in saved and "method_state" not in saved

    def restore(self, template, epoch: int | None = None) -> tuple:
        """Restore into the structure of ``template`` (a freshly created state, or its
        ``jax.eval_shape`` — no values needed unless :meth:`is_legacy`), each array laid out as
        the template's is: on this process's first device, or replicated over a device mesh
        when the template was (:func:`repr_jax.parallel.replicate`)."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError("no checkpoint to restore")
        target = _saved_part(template)
        saved = self.manager.item_metadata(epoch)["state"].tree
        legacy = "snapshot" in saved and "method_state" not in saved
        if legacy:
            target = {k: v for k, v in target.items() if not k.startswith("method_")}
            target["snapshot"] = target["params"]
        _check_shapes(saved, target)
        try:
            with _stderr_held():   # a failed read leaves orbax coroutines that print tracebacks
                out = self.manager.restore(epoch, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract_like(target)), extra=ocp.args.JsonRestore()))
        except Exception as err:
            # TensorStore failing on bytes that no longer decode (flipped inside a compressed
            # chunk, a torn file) is damage like a failed checksum, not another architecture
            if "TensorStore" in str(err) or "DATA_LOSS" in str(err):
                raise ValueError(f"the checkpoint of epoch {epoch} is damaged: its arrays cannot be read "
                                 f"({' '.join(str(err).split())[:160]})") from None
            raise
        restored = dict(out["state"])
        extra = dict(out["extra"])
        if "checksums" in extra:
            verify(restored, extra.pop("checksums"), epoch)
        if legacy:
            restored = _from_legacy(restored, template)
        restored["teacher"] = flax.serialization.to_state_dict(template)["teacher"]
        return flax.serialization.from_state_dict(template, restored), extra

    def restore_newest(self, template, accept=None, max_epoch: int | None = None):
        """``(state, extra, epoch, skipped)``: the newest checkpoint (of an epoch up to
        ``max_epoch``, when given) that restores (and that ``accept(state)`` accepts, when
        given), ``skipped`` listing ``(epoch, reason)`` for each newer one that failed.
        ``RunError`` if none is usable."""
        skipped = []
        for epoch in reversed([e for e in self.epochs() if max_epoch is None or e <= max_epoch]):
            try:
                state, extra = self.restore(template, epoch)
            except Exception as err:   # a damaged checkpoint: try the one before
                skipped.append((epoch, _reason(err)))
                continue
            if accept is not None and not accept(state):
                skipped.append((epoch, "not accepted"))
                continue
            return state, extra, epoch, skipped
        detail = "; ".join(f"epoch {e}: {r}" for e, r in skipped) or "none saved"
        raise RunError(f"no usable checkpoint in {self.directory} ({detail})")

    def set_aside(self, epochs, destination: Path) -> None:
        """Move the checkpoints of ``epochs`` (damaged ones) out of the way, into ``destination``:
        the run continues from an earlier epoch and will write these epochs again."""
        import shutil
        for epoch in epochs:
            Path(destination).mkdir(parents=True, exist_ok=True)
            target = Path(destination) / str(epoch)
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(self.directory / str(epoch)), str(target))
        if epochs:
            self.manager.reload()

    def discard(self) -> None:
        """Delete every checkpoint (superseded mid-epoch positions; every process calls it)."""
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def close(self) -> None:
        self.manager.close()


def _check_shapes(saved, target) -> None:
    """``ValueError`` naming the first array whose saved shape differs from the model's (a
    checkpoint of another architecture), before orbax is asked to read anything."""
    shapes = {jax.tree_util.keystr(path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(saved) if hasattr(leaf, "shape")}
    for path, leaf in jax.tree_util.tree_leaves_with_path(target):
        key = jax.tree_util.keystr(path)
        if key in shapes and shapes[key] != tuple(np.shape(leaf)):
            raise ValueError(f"saved {key} has shape {shapes[key]}, the model's is {tuple(np.shape(leaf))}")


def _saved_part(state) -> dict:
    """What a checkpoint holds: the state without a distillation teacher (restored from its
    own run directory instead)."""
    tree = dict(flax.serialization.to_state_dict(state))
    tree.pop("teacher", None)
    return tree


def _abstract_like(tree):
    """Shapes, dtypes and shardings of ``tree``'s arrays (a fresh template: its shardings are
    this machine's); leaves that are not device arrays go to the first device."""
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype,
                                       sharding=x.sharding if isinstance(x, jax.Array) else here), tree)


def _abstract_here(tree):
    """Shapes and dtypes of ``tree`` on this process's first device: an explicit sharding
    makes a checkpoint written on a GPU restore on a CPU-only machine (and vice versa)
    instead of failing on topology."""
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype,
                                       sharding=here), tree)


def _this_process_only() -> ocp.options.MultiprocessingOptions:
    """Orbax options for a write or read by this process alone, with no barrier across the
    processes of a multi-process run (the export that process 0 writes at its end)."""
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def save_variables(directory: str | Path, variables: dict) -> None:
    """Write a model's ``{"params", "batch_stats"}`` (e.g. an exported smaller model), by this
    process alone — in a multi-process run, process 0 with arrays it holds whole (no barrier
    with the other processes; orbax writes the arrays of host copies from process 0 only)."""
    if jax.process_count() > 1:   # orbax writes one process's device arrays only as global arrays
        if jax.process_index() != 0:
            raise ValueError("save_variables in a multi-process run writes from process 0 only")
        variables = jax.device_get(variables)
    checkpointer = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
    checkpointer.save(Path(directory).absolute(), variables)
    checkpointer.wait_until_finished()
    checkpointer.close()


def restore_variables(directory: str | Path, template: dict) -> dict:
    """Read what :func:`save_variables` wrote, into the structure of ``template`` (arrays or
    shapes, e.g. ``jax.eval_shape(model.init, …)``), by this process alone."""
    checkpointer = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
    try:
        return checkpointer.restore(Path(directory).absolute(), _abstract_here(template))
    finally:
        checkpointer.close()


def _from_legacy(restored: dict, template) -> dict:
    """A pre-``method_state`` checkpoint's tree in today's layout (see module docstring)."""
    snapshot = restored.pop("snapshot")
    current = flax.serialization.to_state_dict(template)
    method_state = current["method_state"]
    if "snapshot" in method_state:
        method_state = dict(method_state, snapshot=jax.tree_util.tree_map_with_path(
            lambda path, _: get_path(snapshot, tuple(k.key for k in path)), method_state["snapshot"]))
    return {**restored, "method_state": method_state, "method_params": current["method_params"],
            "method_opt_state": current["method_opt_state"]}
