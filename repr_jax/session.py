"""One training run in progress: its :class:`Session`, from :func:`start` to :func:`finish`.

:func:`start` (every setting checked — against the model too — and the run directory locked
and examined before any data is read; then data loaded and checked, method and train state
built, the directory created or the run resumed from its newest usable checkpoint) →
:func:`train_epochs` (per epoch: the method's ``before_epoch`` transition, the jitted epoch,
evaluation, ``after_epoch``, one line of ``metrics.jsonl``, the method's events into
``pruning.jsonl``, a checkpoint) → :func:`finish` (``summary.json``, the export of a method
that exports, plots) → :func:`close`. The runner knows no method by name: everything
method-specific comes through :class:`repr_jax.methods.base.Method`. The epoch loop is
:mod:`repr_jax.epoch_loop`'s, the one :mod:`repr_jax.population` runs K sessions with.

Failure behaviour (exit codes in :mod:`repr_jax.errors`): an existing run is never
overwritten — it is resumed (``resume=True``, same settings, same data) or refused with
:class:`RunError`. A loss, a parameter or a criterion score that is NaN or infinite stops
the run (:class:`~repr_jax.errors.Diverged`): that epoch's checkpoint is not written, so
the newest one kept is the last finite state, and ``summary.json`` says
``"status": "diverged"``. The check costs one scalar read per epoch (the epoch's reduced
metrics and one ``isfinite`` reduction of the parameters), never one per step.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.checkpoint import Checkpointer
from repr_jax.config import RunConfig
from repr_jax.data import Dataset
from repr_jax import epoch_position
from repr_jax.epoch_loop import OneRun, epoch_loop, summary_fields
from repr_jax.epoch_position import EpochPosition
from repr_jax.models.user import channels_warning, is_reference
from repr_jax.errors import RunError, UnreadableImage
from repr_jax.parallel import (agree_settings, data_mesh, is_main_process, local_copy, replicate,
                               sync_processes)
from repr_jax.plots import dataset_label, plot_curves, plot_pruned_per_layer
from repr_jax.run_dir import (STREAM_STOP, check_data, check_run_dir, create_run_dir, read_config, read_jsonl,
                              record_extension, torn_tail, write_json)
from repr_jax.run_lock import RunLock
from repr_jax.run_state import (build_method, build_model, initial_state, load_run_data,
                                preprocessing, warm_start)
from repr_jax.teacher import attach_teacher, check_teacher
from repr_jax.train import loss_term_names


@dataclasses.dataclass
class Session:
    """A run in progress: its settings, data on device, method, state and logs so far."""
    config: RunConfig
    out: Path
    data: Dataset
    method: object
    schedule: object
    state: object
    ckpt: Checkpointer
    arrays: tuple
    terms: tuple[str, ...]
    metrics: list
    events: list
    start_epoch: int = 0
    prior_seconds: float = 0.0
    mesh: object = None          # a jax.sharding.Mesh when the batch is split over devices
    inputs: object = ()          # the method's run_inputs(), on device
    population: int = 1          # seeds trained together with this one (repr_jax.population)
    tensorboard: object = None   # a repr_jax.tensorboard.TensorBoardLog with tensorboard=true
    lock: RunLock | None = None  # held while the session lives (repr_jax.run_lock)
    epoch: int = 0               # the 0-based epoch being trained (for an interruption's message)
    main: bool = True            # this process writes the run directory (repr_jax.parallel.is_main_process)
    preprocess: object = None    # the batches' repr_jax.data.pipeline.Preprocessing (run_state.preprocessing)
    created: bool = False        # this process created the run directory (a fresh run, not a resume)
    in_epoch: Checkpointer | None = None   # mid-epoch checkpoints, with checkpoint_every (repr_jax.epoch_position)
    position: EpochPosition | None = None  # where a resume continues inside its first epoch


def device_mesh(config: RunConfig):
    """The run's data-parallel mesh (None on one device); ``RunError`` if it cannot be built."""
    if jax.process_count() > 1 and config.devices != 0:
        raise RunError(f"a run of {jax.process_count()} processes splits every batch over all their devices: "
                       f"pass --devices 0 (got --devices {config.devices})")
    if config.devices == 1:
        return None
    try:
        mesh = data_mesh(config.devices)
    except ValueError as err:
        raise RunError(str(err)) from None
    if config.batch_size % mesh.size:
        raise RunError(f"--batch-size {config.batch_size} is not divisible by the {mesh.size} devices")
    return None if mesh.size == 1 else mesh


def start(config: RunConfig, data: Dataset | None = None, arrays: tuple | None = None) -> Session:
    """Check settings and the run directory, load data, build method and state, create or
    resume the run directory (nothing is written before every check has passed).

    The run directory is locked (:class:`repr_jax.run_lock.RunLock`) before its state is
    read, for as long as the session lives (:func:`close`). A resume reads and checks
    everything — settings, data fingerprint, logs, the newest checkpoint that restores —
    before it changes anything, so a resume that fails leaves the run as it was.

    ``arrays``: the data set already on device (train x/y, test x/y) when the caller shares
    one copy between runs (:mod:`repr_jax.population`)."""
    config.validate()
    # every process of a multi-process run: the same settings (each host may keep its data elsewhere)
    agree_settings({k: v for k, v in config.to_dict().items() if k not in ("quiet", "data")}
                   | {"data": {k: v for k, v in config.to_dict()["data"].items() if k != "dir"}})
    mesh = device_mesh(config)
    model = build_model(config)  # bad names fail before any data is read
    check_fits_memory(model, config)   # before anything is traced or allocated
    try:   # the method against the model (criterion needs BatchNorm, min_keep, ...), no data yet
        probe = build_method(config, model, config.architecture(), config.data.train_limit or 50_000)
    except ValueError as err:
        raise RunError(str(err)) from None
    source = config.init_from_dir()
    if source and not (Path(source) / "config.json").exists():
        raise RunError(f"--set init_from={source}: no repr-jax run there (no config.json)")
    check_teacher(config)
    if config.tensorboard:
        from repr_jax.tensorboard import check_available
        try:
            check_available()
        except ImportError as err:
            raise RunError(str(err)) from None
    main = is_main_process()
    lock = RunLock(config.out) if main else None   # the other processes of a run write nothing there
    if main and config.resume and (Path(config.out) / "config.json").exists():
        lock.acquire()   # before the run's files are read: no other process changes them meanwhile
    try:
        return _start_locked(config, model, mesh, lock, data, arrays)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _resume_point(out: Path, ckpt: Checkpointer, template) -> tuple:
    """``(state, extra, epoch, skipped, metrics, events)`` of the newest usable checkpoint of
    the run in ``out``, with its logs up to that epoch, checked against each other; reads
    only (``RunError`` names what is damaged). No checkpoint: ``(template, {}, 0, [], [], [])``
    (refused when ``metrics.jsonl`` holds more than epoch 1's row, written before its checkpoint)."""
    metrics, events = read_jsonl(out / "metrics.jsonl", True), read_jsonl(out / "pruning.jsonl", True)
    if not ckpt.epochs():
        # the history says epochs were trained: restarting would silently overwrite it — unless
        # it is only epoch 1's row, written just before its checkpoint (a stop in between)
        crashed_in_first_save = ckpt.directory.is_dir() and [m["epoch"] for m in metrics] == [1]
        if metrics and not crashed_in_first_save:
            raise RunError(f"{out} records {len(metrics)} trained epoch(s) in metrics.jsonl but holds no checkpoint "
                           f"to resume from ({out / 'checkpoints'} is empty or missing); nothing was changed — to "
                           "train it again from the start, remove the run directory or choose a new --out")
        return template, {}, 0, [], [], []
    logged = 0   # the epochs metrics.jsonl holds completely, 1..logged
    while logged + 1 in {m["epoch"] for m in metrics}:
        logged += 1
    # a checkpoint newer than a torn last row (or event) cannot be resumed faithfully: start from
    # the one before it, setting it aside; none left: start again from epoch 0
    limit = logged if torn_tail(out / "metrics.jsonl") else None
    ahead = [(e, "its metrics.jsonl row was cut short") for e in ckpt.epochs() if limit is not None and e > limit]
    torn_events = torn_tail(out / "pruning.jsonl")
    while True:
        if not [e for e in ckpt.epochs() if limit is None or e <= limit]:
            return template, {}, 0, ahead, [], []
        state, extra, epoch, skipped = ckpt.restore_newest(template, max_epoch=limit)
        expected = int(extra.get("events", 0))
        if torn_events and expected > len([e for e in events if e["epoch"] <= int(extra["epochs_done"])]):
            ahead.append((epoch, "its pruning.jsonl event was cut short"))
            limit = epoch - 1
            continue
        break
    skipped = ahead + skipped
    done = int(extra["epochs_done"])
    metrics = [m for m in metrics if m["epoch"] <= done]
    events = [e for e in events if e["epoch"] <= done]   # 1-based
    if [m["epoch"] for m in metrics] != list(range(1, done + 1)):
        raise RunError(f"{out / 'metrics.jsonl'} lacks rows of epochs 1-{done}, which the checkpoint of epoch "
                       f"{done} needs (deleted or edited); the run cannot be resumed faithfully")
    if "events" in extra and len(events) != int(extra["events"]):
        raise RunError(f"{out / 'pruning.jsonl'} holds {len(events)} events up to epoch {done}, the checkpoint "
                       f"recorded {extra['events']} (deleted or edited); the run cannot be resumed faithfully")
    return state, extra, done, skipped, metrics, events


def _start_locked(config: RunConfig, model, mesh, lock: RunLock | None, data: Dataset | None, arrays) -> Session:
    main = lock is not None
    out = Path(config.out)
    # the main process checks the directory; the others wait until it has decided, read-only
    resuming = check_run_dir(config) if main else None
    sync_processes("repr_jax: run directory checked")
    if not main:
        resuming = bool(config.resume and (out / "config.json").exists())
    if not resuming:
        config.check_new_run()
    data = load_run_data(config, data)
    # the data's image shape and class count, recorded in config.json; the model is built for them
    try:
        config = config.with_data_shape(data.image_shape, data.num_classes)
    except RunError as err:
        raise RunError(f"{err} ({data.source})") from None
    model = build_model(config)
    if data.train_count < config.batch_size:
        raise RunError(f"--batch-size {config.batch_size} exceeds the {data.train_count} training images")
    try:
        method = build_method(config, model, config.architecture(), data.train_count, data)
        _, schedule, state = initial_state(config, data.train_count, model, method)
    except ValueError as err:
        raise RunError(str(err)) from None
    if main and not resuming and getattr(method, "exports_at_end", False) and is_reference(config.model.name):
        line = channels_warning(config.model.name, config.num_classes, data.image_shape, method.context.layers)
        if line:   # said now, not after the last epoch
            print(f"warning: {line}", file=sys.stderr, flush=True)
    if not (resuming and any((out / "checkpoints").glob("[0-9]*"))):
        state = warm_start(config, state)
    state = attach_teacher(config, state)
    # committed to its device(s) from the start, as a restored state is: fresh and resumed
    # runs then build the same programs (one compilation cache entry serves both)
    state = replicate(state, mesh) if mesh is not None else jax.device_put(state, jax.devices()[0])
    metrics, events, start_epoch, prior_seconds, position = [], [], 0, 0.0, None
    if resuming:
        check_data(out, data.fingerprint, data.fingerprint_with)
        reader = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints, writer=False)
        try:
            state, extra, start_epoch, skipped, metrics, events = _resume_point(out, reader, state)
        finally:
            reader.close()
        # every check has passed: from here on the run directory changes
        sync_processes("repr_jax: resume point read")      # every process has read it unchanged
        ckpt = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
        prior_seconds = float(extra.get("wall_seconds", 0.0))
        inside, position, problem = epoch_position.read(out, state, start_epoch)
        if position is not None:
            state, prior_seconds = inside, position.wall_seconds
        if main:
            if problem:
                print(f"warning: {problem}; epoch {start_epoch + 1} starts over", file=sys.stderr)
            for bad, reason in skipped:
                print(f"warning: the checkpoint of epoch {bad} could not be restored ({reason}); "
                      f"set aside in {out / 'damaged_checkpoints'}", file=sys.stderr)
            ckpt.set_aside([bad for bad, _ in skipped], out / "damaged_checkpoints")
            if not (out / "architecture.json").exists():   # written before the file existed
                write_json(out / "architecture.json", config.architecture())
            saved_epochs = read_config(out).epochs
            if config.epochs > saved_epochs:     # --resume --epochs N: train the run further
                record_extension(out, config.epochs)
                (out / "summary.json").unlink(missing_ok=True)   # no longer complete
                print(f"extending {out} from {saved_epochs} to {config.epochs} epochs", file=sys.stderr)
            if position is not None:
                print(f"resuming inside epoch {start_epoch + 1} after batch {position.batches} ({out})",
                      file=sys.stderr)
            elif start_epoch:
                print(f"resuming from epoch {start_epoch} ({out})", file=sys.stderr)
    else:
        if main:
            create_run_dir(config, data.fingerprint, lock)
        sync_processes("repr_jax: run directory created")
        ckpt = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
    in_epoch = None
    if config.checkpoint_every:
        in_epoch = epoch_position.writer(out, position, main)
        sync_processes("repr_jax: mid-epoch checkpoints opened")
        batches = data.train_count // config.batch_size
        if main and config.checkpoint_every >= batches:
            print(f"warning: --checkpoint-every {config.checkpoint_every} is not below the epoch's {batches} "
                  "batches: no position inside an epoch is saved (the epoch checkpoints are)", file=sys.stderr)
    session = Session(config, out, data, method, schedule, state, ckpt, arrays=(), terms=(),
                      metrics=metrics, events=events, start_epoch=start_epoch, prior_seconds=prior_seconds,
                      mesh=mesh, lock=lock, main=main, preprocess=preprocessing(config, data),
                      created=main and not resuming, in_epoch=in_epoch, position=position)
    try:
        _prepare(session, config, data, method, arrays, mesh)
    except BaseException:
        discard_unstarted(session)
        raise
    return session


def _prepare(session: Session, config: RunConfig, data: Dataset, method, arrays, mesh) -> None:
    """The session's device data, method inputs and loss-term names (after its directory exists)."""
    out, main = session.out, session.main
    if main and not config.quiet:   # where the run writes, before the first epoch (it may take a while)
        print(f"run directory: {out} ({config.epochs - session.start_epoch} epoch(s) to train; metrics.jsonl "
              "grows by a line per epoch)", flush=True)
    if config.tensorboard and main:
        from repr_jax.tensorboard import TensorBoardLog
        session.tensorboard = TensorBoardLog(out, session.start_epoch)
    session.arrays = arrays if arrays is not None else replicate(
        tuple(jnp.asarray(a) for a in (data.train_x, data.train_y, data.test_x, data.test_y)), mesh)
    session.inputs = replicate(jax.tree_util.tree_map(jnp.asarray, method.run_inputs()), mesh)
    session.terms = loss_term_names(session.state, *session.arrays[:2], batch_size=config.batch_size,
                                    layers=session.state.layers, ortho_lambda=config.ortho_loss,
                                    method=method, preprocess=session.preprocess)


def discard_unstarted(s: Session) -> None:
    """After a failure: remove the run directory this process created when no epoch of it was
    recorded (nothing in it but its settings), so the same ``--out`` can be retried. A resumed
    run, or one with a recorded epoch, is left as it is."""
    import shutil
    if not (s.created and s.main) or s.metrics or (s.out / "metrics.jsonl").exists():
        return
    if s.in_epoch is not None and s.in_epoch.epochs():   # a mid-epoch checkpoint to resume from
        return
    close(s)
    shutil.rmtree(s.out, ignore_errors=True)
    s.created = False


def check_fits_memory(model, config: RunConfig) -> None:
    """``RunError`` (one line) before anything is traced or allocated, when the model's
    parameters alone — held about four times over in training (parameters, gradients, an
    optimizer moment, masks) — exceed the memory this process may use (the host's RAM, its
    cgroup limit and RLIMIT_AS on a CPU; the device's on an accelerator)."""
    import numpy as np

    from repr_jax.shapes import example_shape, model_variable_shapes
    try:
        shapes = model_variable_shapes(model, example_shape(config.input_shape))
    except Exception:   # the model's own failure is reported where it is built and run
        return
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes.get("params", {})))
    need, limit = 4 * 4 * count, memory_limit()
    if limit and need > limit:
        raise RunError(f"{config.model.name}: {count:,} parameters need about {need / 2**30:.1f} GiB to train "
                       f"(parameters, gradients, an optimizer moment, masks), more than the {limit / 2**30:.1f} GiB "
                       "this process may use; choose a smaller model (--width) or a larger machine")


def memory_limit() -> int | None:
    """Bytes this process may allocate: the accelerator's memory, else the least of the host's
    RAM, the cgroup's limit and RLIMIT_AS (None when none is known)."""
    import os
    import resource
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = getattr(device, "memory_stats", lambda: None)() or {}
        return stats.get("bytes_limit")
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            limits.append(int(text))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) if limits else None


def close(s: Session) -> None:
    """End a session's hold on its run directory: checkpoints closed, lock released (also
    after a failure; safe to call twice)."""
    s.ckpt.close()
    if s.in_epoch is not None:
        s.in_epoch.close()
    if s.lock is not None:
        s.lock.release()


def train_epochs(s: Session) -> None:
    """Every remaining epoch of one run (:func:`repr_jax.epoch_loop.epoch_loop`); raises
    :class:`~repr_jax.errors.Diverged` when it stops on a non-finite value."""
    try:
        diverged = epoch_loop([s], OneRun(s))
    except UnreadableImage as err:
        raise stopped_at_unreadable_image([s], err) from None
    if diverged:
        raise diverged[s.config.seed]


def stopped_at_unreadable_image(sessions: list[Session], err: UnreadableImage) -> UnreadableImage:
    """After a streamed image could not be decoded: ``stream_stop.json`` in every session's
    run directory, so that a ``--resume`` accepts the data with that file repaired
    (:func:`repr_jax.run_dir.check_data`), and the error to raise, saying what to do. Written
    by whichever process met the file (in a multi-process run each reads only its rows of
    every batch; the run directory is on storage they share)."""
    if sessions[0].data.fingerprint_with is None:
        return err
    for s in sessions:
        write_json(s.out / STREAM_STOP, {"file": err.name, "epoch": len(s.metrics),
                                         "others": s.data.fingerprint_with(sizes={err.name: -1})})
    done = len(sessions[0].metrics)
    resume = f"--resume continues after epoch {done}" if done else "run it again"
    return UnreadableImage(f"{err}; replace it with a readable image of the same name and {resume}", err.name)


def finish(s: Session, extra: dict | None = None) -> dict:
    """``summary.json`` (returned; ``extra`` added to it), ``curves.png`` and, with drops,
    ``pruned_per_layer.png``."""
    config, metrics, events = s.config, s.metrics, s.events
    if s.tensorboard is not None:
        s.tensorboard.close()
    if not s.main:   # another process of a multi-process run: process 0 writes and reports
        return {"status": "completed", "process": jax.process_index(), "run_directory": str(s.out),
                "written_by": "process 0"}
    best = max(metrics, key=lambda m: m["test_accuracy"])
    if jax.process_count() > 1:   # process 0 alone computes the export and the final report
        s = dataclasses.replace(s, state=local_copy(s.state))
    if getattr(s.method, "exports_at_end", False):   # structured methods end in a smaller model
        from repr_jax.compress.export import ExportError
        from repr_jax.export_runs import export_session
        try:
            report = export_session(s)
            extra = {**(extra or {}), "export": {k: report[k] for k in (
                "params_before", "params_after", "flops_before", "flops_after", "params_ratio",
                "flops_ratio", "inference_speedup", "max_abs_logit_difference", "channels")}}
            for line in report.get("warnings", []):
                print(f"warning: {line}", file=sys.stderr, flush=True)
        except ExportError as err:
            extra = {**(extra or {}), "export_error": str(err)}
            print(f"warning: the run completed, its export failed: {err} (summary.json: export_error)",
                  file=sys.stderr, flush=True)
    extra = {**(extra or {}), **s.method.final_report(s.state, s.out)}
    summary = {
        "status": "completed", **summary_fields(s),
        "final_test_accuracy": metrics[-1]["test_accuracy"],
        "best_test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
        "final_train_accuracy": metrics[-1]["train_accuracy"],
        "median_images_per_second": float(np.median([m["images_per_second"] for m in metrics])),
        **(extra or {}),
    }
    write_json(s.out / "summary.json", summary)
    epoch_position.finished(s.out)
    drops = [e for e in events if e["event"] == "drop" and "layers" in e]   # RePr-shaped drop lines
    try:
        plot_curves(metrics, s.out / "curves.png",
                    f"{config.model.name} {config.method.name} ({dataset_label(config.data.dataset, s.data.source)})",
                    reinit_epochs=[e["epoch"] for e in events if e["event"] == "reinit"])
        if drops:
            plot_pruned_per_layer(drops, s.out / "pruned_per_layer.png",
                                  "per-layer" if getattr(config.method, "per_layer", False) else "global")
    except OSError as err:  # the run is complete and summarised; only a figure is missing
        raise RunError(f"cannot write plots to {s.out}: {err.strerror or err} (the run itself is complete)") from None
    return summary


__all__ = ["Session", "close", "device_mesh", "finish", "start", "stopped_at_unreadable_image", "train_epochs"]
