"""One training run with its run directory: the only place in the package that trains and logs.

:func:`run` = :func:`start` (every setting checked — against the model too — and the run
directory examined before any data is read; then data loaded and checked, method and
train state built, the directory created or the run resumed from its newest usable
checkpoint) → :func:`train_epochs` (per epoch: the method's ``before_epoch`` transition,
the jitted epoch, evaluation, ``after_epoch``, one line of ``metrics.jsonl``, the method's
events into ``pruning.jsonl``, a checkpoint) → :func:`finish` (``summary.json`` and
plots). The runner knows no method by name: everything method-specific comes through
:class:`repr_jax.methods.base.Method`.

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
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.checkpoint import Checkpointer
from repr_jax.config import RunConfig
from repr_jax.data import Cifar, DataError, load_cifar
from repr_jax.distill import attach_teacher, check_teacher
from repr_jax.errors import Diverged, Interrupted, NonFiniteError, RunError
from repr_jax.masks import live_filters
from repr_jax.methods.base import MethodContext, create_method
from repr_jax.models import from_architecture, input_shape_of
from repr_jax.optim import learning_rate_schedule, make_optimizer, phased_schedule
from repr_jax.parallel import batch_sharding, data_mesh, replicate
from repr_jax.pipeline import normalize
from repr_jax.plots import dataset_label, plot_curves, plot_pruned_per_layer
from repr_jax.run_dir import (check_data, check_run_dir, create_run_dir, finite_row, read_architecture,
                              read_config, read_jsonl, read_summary, record_extension, write_json, write_jsonl)
from repr_jax.run_lock import RunLock
from repr_jax.state import create_train_state
from repr_jax.train import evaluate, loss_term_names, run_epoch, train_step_indexed


def build_model(config: RunConfig, architecture: dict | None = None):
    """The Flax module of ``config`` (or of an ``architecture.json``); ``RunError`` for bad names."""
    try:
        return from_architecture(architecture or config.architecture())
    except ValueError as err:
        raise RunError(str(err)) from None


def build_method(config: RunConfig, model, architecture: dict, train_images: int,
                 data: Cifar | None = None):
    """The run's method, given what it may know about the run (data only when training):
    the model traced on the architecture's input shape, scoring images preprocessed as the
    train step preprocesses its batches (:func:`repr_jax.pipeline.normalize`)."""
    context = MethodContext.for_model(
        model, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
        train_images=None if data is None else data.train_x,
        train_labels=None if data is None else data.train_y,
        heldout_images=None if data is None else data.held_x,
        heldout_labels=None if data is None else data.held_y,
        architecture=architecture, train_size=train_images, input_shape=input_shape_of(architecture),
        preprocess=normalize)
    return create_method(config.method, context)


def initial_state(config: RunConfig, train_images: int, model=None, method=None):
    """``(model, lr schedule, fresh TrainState)`` for ``config`` and a training-set size; the
    schedule includes the method's learning-rate phases."""
    model = build_model(config) if model is None else model
    method = method or build_method(config, model, config.architecture(), train_images)
    steps_per_epoch = train_images // config.batch_size
    schedule = phased_schedule(learning_rate_schedule(config.optim, steps_per_epoch, config.epochs),
                               [method.phase(e) for e in range(config.epochs)], steps_per_epoch)
    tx = make_optimizer(config.optim, schedule)
    return model, schedule, create_train_state(model, tx, config.seed, method=method)


def warm_start(config: RunConfig, state):
    """``state`` with the parameters (masked) and BatchNorm statistics of the run directory
    ``config.init_from`` (its latest checkpoint); ``RunError`` if there is none or its
    shapes differ. The optimizer state, masks and method state stay fresh."""
    source = config.init_from_dir()
    if not source:
        return state
    from repr_jax.masks import apply_masks
    if not (Path(source) / "config.json").exists():
        raise RunError(f"--set init_from={source}: no repr-jax run there (no config.json)")
    try:
        _, src = load_run_state(source, "latest")
    except (RunError, ValueError) as err:
        raise RunError(f"--set init_from={source}: cannot restore it: {err}") from None
    params = apply_masks(src.params, src.masks)
    for name, mine, theirs in (("params", state.params, params), ("batch_stats", state.batch_stats, src.batch_stats)):
        a = jax.tree_util.tree_map(jnp.shape, mine)
        b = jax.tree_util.tree_map(jnp.shape, theirs)
        if a != b:
            raise RunError(f"--set init_from={source}: its {name} do not match this model "
                           f"({config.model.name} with model.channels={config.model.channels!r})")
    copy = lambda t: jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), t)   # noqa: E731
    return state.replace(params=copy(params), batch_stats=copy(src.batch_stats))


def load_run_data(config: RunConfig, data: Cifar | None = None) -> Cifar:
    """The run's data: loaded (or ``data``), validation split and fixed-seed slices applied
    (after the source's checks); its ``fingerprint`` is the source's."""
    if data is None:
        data = load_cifar(config.data.dataset, config.data.dir)  # DataError propagates: one line
    data = dataclasses.replace(data, fingerprint=data.source_fingerprint())
    if config.data.val_split:
        if config.data.val_split >= len(data.train_y):
            raise RunError(f"--val-split {config.data.val_split} leaves no training image of {len(data.train_y)}")
        data = data.split_validation(config.data.val_split)
    if config.data.holdout:
        if config.data.holdout >= len(data.train_y):
            raise RunError(f"data.holdout {config.data.holdout} leaves no training image of {len(data.train_y)}")
        data = data.hold_out(config.data.holdout)
    return data.subset(config.data.train_limit, config.data.test_limit, seed=config.seed)


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def state_is_finite(state) -> bool:
    """Whether params, batch stats and the method's parameters hold only finite numbers."""
    return bool(_all_finite((state.params, state.batch_stats, state.method_params)))


def restore_run(run_dir: str | Path, epoch: int | str | None = None):
    """``(RunConfig, architecture, method, TrainState)`` of a saved run: the state restored
    from its checkpoint ``epoch`` — an epoch number, ``"latest"`` (the default), ``"best"``
    (highest test accuracy, the earliest such epoch: ``summary.json``'s ``best_epoch``) or
    ``"finite"`` (the newest whose parameters are all finite) — into a template rebuilt from
    its ``config.json`` and ``architecture.json``; the method is built without data. A
    damaged or edited file of the run is a one-line ``RunError`` naming it."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    arch = read_architecture(run_dir, config)
    summary = read_summary(run_dir)
    train_images = int(summary.get("train_images", config.data.train_limit or 50_000))
    try:
        model = build_model(config, arch)
        method = build_method(config, model, arch, train_images)
        _, _, template = initial_state(config, train_images, model, method)
    except (ValueError, KeyError, TypeError) as err:
        raise RunError(f"{run_dir / 'architecture.json'} and config.json do not describe a model this version "
                       f"builds ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    ckpt = Checkpointer(run_dir / "checkpoints", keep=config.keep_checkpoints, writer=False)
    try:
        if epoch == "finite":
            state, _, _, _ = ckpt.restore_newest(template, accept=state_is_finite)
        else:
            number = (ckpt.best_epoch(read_jsonl(run_dir / "metrics.jsonl")) if epoch == "best" else
                      ckpt.latest_epoch() if epoch in (None, "latest") else epoch)
            if number not in ckpt.epochs():
                raise RunError(f"{run_dir} has no checkpoint {epoch!r} (kept: {ckpt.epochs()})")
            try:
                state, _ = ckpt.restore(template, number)
            except Exception as err:   # damaged, or saved from another architecture
                raise RunError(f"the checkpoint of epoch {number} in {run_dir} does not restore into the model "
                               f"of its config.json / architecture.json ({' '.join(str(err).split())[:200]})") from None
    finally:
        ckpt.close()
    return config, arch, method, state


def load_run_state(run_dir: str | Path, epoch: int | str | None = None):
    """``(RunConfig, TrainState)`` of a saved run (see :func:`restore_run` for ``epoch``)."""
    config, _, _, state = restore_run(run_dir, epoch)
    return config, state


@dataclasses.dataclass
class Session:
    """A run in progress: its settings, data on device, method, state and logs so far."""
    config: RunConfig
    out: Path
    data: Cifar
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


def device_mesh(config: RunConfig):
    """The run's data-parallel mesh (None on one device); ``RunError`` if it cannot be built."""
    if config.devices == 1:
        return None
    try:
        mesh = data_mesh(config.devices)
    except ValueError as err:
        raise RunError(str(err)) from None
    if config.batch_size % mesh.size:
        raise RunError(f"--batch-size {config.batch_size} is not divisible by the {mesh.size} devices")
    return None if mesh.size == 1 else mesh


def start(config: RunConfig, data: Cifar | None = None, arrays: tuple | None = None) -> Session:
    """Check settings and the run directory, load data, build method and state, create or
    resume the run directory (nothing is written before every check has passed).

    The run directory is locked (:class:`repr_jax.run_lock.RunLock`) before its state is
    read, for as long as the session lives (:func:`close`). A resume reads and checks
    everything — settings, data fingerprint, logs, the newest checkpoint that restores —
    before it changes anything, so a resume that fails leaves the run as it was.

    ``arrays``: the data set already on device (train x/y, test x/y) when the caller shares
    one copy between runs (:mod:`repr_jax.population`)."""
    config.validate()
    mesh = device_mesh(config)
    model = build_model(config)  # bad names fail before any data is read
    try:   # the method against the model (criterion needs BatchNorm, min_keep, ...), no data yet
        build_method(config, model, config.architecture(), config.data.train_limit or 50_000)
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
    lock = RunLock(config.out)
    if config.resume and (Path(config.out) / "config.json").exists():
        lock.acquire()   # before the run's files are read: no other process changes them meanwhile
    try:
        return _start_locked(config, model, mesh, lock, data, arrays)
    except BaseException:
        lock.release()
        raise


def _resume_point(out: Path, ckpt: Checkpointer, template) -> tuple:
    """``(state, extra, epoch, skipped, metrics, events)`` of the newest usable checkpoint of
    the run in ``out``, with its logs up to that epoch, checked against each other; reads
    only (``RunError`` names what is damaged). No checkpoint: ``(template, {}, 0, [], [], [])``."""
    metrics, events = read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "pruning.jsonl")
    if not ckpt.epochs():
        return template, {}, 0, [], [], []
    state, extra, _, skipped = ckpt.restore_newest(template)
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


def _start_locked(config: RunConfig, model, mesh, lock: RunLock, data: Cifar | None, arrays) -> Session:
    resuming = check_run_dir(config)
    data = load_run_data(config, data)
    if len(data.train_y) < config.batch_size:
        raise RunError(f"--batch-size {config.batch_size} exceeds the {len(data.train_y)} training images")
    try:
        method = build_method(config, model, config.architecture(), len(data.train_y), data)
        _, schedule, state = initial_state(config, len(data.train_y), model, method)
    except ValueError as err:
        raise RunError(str(err)) from None
    out = Path(config.out)
    if not (resuming and any((out / "checkpoints").glob("[0-9]*"))):
        state = warm_start(config, state)
    state = attach_teacher(config, state)
    # committed to its device(s) from the start, as a restored state is: fresh and resumed
    # runs then build the same programs (one compilation cache entry serves both)
    state = replicate(state, mesh) if mesh is not None else jax.device_put(state, jax.devices()[0])
    metrics, events, start_epoch, prior_seconds = [], [], 0, 0.0
    if resuming:
        check_data(out, data.fingerprint)
        reader = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints, writer=False)
        try:
            state, extra, start_epoch, skipped, metrics, events = _resume_point(out, reader, state)
        finally:
            reader.close()
        # every check has passed: from here on the run directory changes
        ckpt = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
        for bad, reason in skipped:
            print(f"warning: the checkpoint of epoch {bad} could not be restored ({reason}); "
                  f"set aside in {out / 'damaged_checkpoints'}", file=sys.stderr)
        ckpt.set_aside([bad for bad, _ in skipped], out / "damaged_checkpoints")
        prior_seconds = float(extra.get("wall_seconds", 0.0))
        if not (out / "architecture.json").exists():   # written before the file existed
            write_json(out / "architecture.json", config.architecture())
        saved_epochs = read_config(out).epochs
        if config.epochs > saved_epochs:     # --resume --epochs N: train the run further
            record_extension(out, config.epochs)
            (out / "summary.json").unlink(missing_ok=True)   # no longer complete
            print(f"extending {out} from {saved_epochs} to {config.epochs} epochs", file=sys.stderr)
        if start_epoch:
            print(f"resuming from epoch {start_epoch} ({out})", file=sys.stderr)
    else:
        create_run_dir(config, data.fingerprint, lock)
        ckpt = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
    session = Session(config, out, data, method, schedule, state, ckpt, arrays=(), terms=(),
                      metrics=metrics, events=events, start_epoch=start_epoch, prior_seconds=prior_seconds,
                      mesh=mesh, lock=lock)
    if not config.quiet:   # where the run writes, before the first epoch (it may take a while)
        print(f"run directory: {out} ({config.epochs - start_epoch} epoch(s) to train; metrics.jsonl "
              "grows by a line per epoch)", flush=True)
    if config.tensorboard:
        from repr_jax.tensorboard import TensorBoardLog
        session.tensorboard = TensorBoardLog(out, session.start_epoch)
    session.arrays = arrays if arrays is not None else replicate(
        tuple(jnp.asarray(a) for a in (data.train_x, data.train_y, data.test_x, data.test_y)), mesh)
    session.inputs = replicate(jax.tree_util.tree_map(jnp.asarray, method.run_inputs()), mesh)
    session.terms = loss_term_names(session.state, *session.arrays[:2], batch_size=config.batch_size,
                                    layers=session.state.layers, ortho_lambda=config.ortho_loss,
                                    method=method)
    return session


def close(s: Session) -> None:
    """End a session's hold on its run directory: checkpoints closed, lock released (also
    after a failure; safe to call twice)."""
    s.ckpt.close()
    if s.lock is not None:
        s.lock.release()


def _non_finite(train_m: dict, test_m: dict) -> str | None:
    values = {"train_loss": train_m["loss"], "test_loss": test_m["loss"],
              **{f"loss term {k}": v for k, v in train_m.get("loss_terms", {}).items()}}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    return ", ".join(bad) if bad else None


def _diverge(s: Session, epoch: int, quantity: str) -> None:
    """Stop the run at 0-based ``epoch``: summary.json says why; the newest checkpoint kept
    (written after the last finite epoch) is the state to go back to."""
    last = s.ckpt.latest_epoch()
    s.ckpt.close()
    if s.tensorboard is not None:
        s.tensorboard.close()
    finite = [m for m in s.metrics if "non_finite" not in m]
    summary = {"status": "diverged", "diverged_epoch": epoch + 1, "non_finite": quantity,
               "last_finite_checkpoint": last,
               "last_finite_test_accuracy": finite[-1]["test_accuracy"] if finite else None,
               **_summary_fields(s)}
    write_json(s.out / "summary.json", summary)
    kept = f"kept the checkpoint of epoch {last}" if last else "no finite checkpoint was written"
    raise Diverged(f"the run diverged at epoch {epoch + 1}: {quantity} not finite; stopped and {kept} "
                   f"(summary.json: status diverged)", epoch + 1, quantity, summary)


def _progress_bar(config: RunConfig, epoch: int, phase: str, steps: int):
    """A tqdm bar over the epoch's training images (img/s, as the epoch line reports), the ETA
    averaged over the whole epoch; none with ``--quiet`` or when stderr is not a terminal
    (a log file under nohup would fill with redrawn bars)."""
    if config.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=steps * config.batch_size, unit="img", smoothing=0.0,
                desc=f"epoch {epoch + 1}/{config.epochs} [{phase}]", leave=False, dynamic_ncols=True)


def train_epochs(s: Session) -> None:
    """Every remaining epoch: transitions, training, evaluation, logs and a checkpoint each."""
    config, method = s.config, s.method
    train_x, train_y, test_x, test_y = s.arrays
    layers = s.state.layers
    total_filters = sum(layer.num_filters for layer in layers)
    root = jax.random.wrap_key_data(jnp.array(s.state.rng, copy=True))  # the state is donated
    started = time.perf_counter()
    step_sharding = batch_sharding(s.mesh, config.batch_size)
    eval_sharding = batch_sharding(s.mesh, min(config.eval_batch_size, len(test_y)))
    for epoch in range(s.start_epoch, config.epochs):
        s.epoch = epoch
        phase = method.phase(epoch)
        s.state, before = method.before_epoch(s.state, epoch, s.inputs)
        try:
            for event in before:
                method.check_event(event)
        except NonFiniteError as err:
            _diverge(s, epoch, str(err))
        progress = _progress_bar(config, epoch, phase.name, len(train_y) // config.batch_size)
        s.state, train_m = run_epoch(s.state, train_x, train_y, jax.random.fold_in(root, epoch),
                                     batch_size=config.batch_size, layers=layers,
                                     ortho_lambda=config.ortho_loss, method=method, terms=s.terms,
                                     progress=progress, augmentation=config.data.augment,
                                     batch_sharding=step_sharding)
        if progress is not None:
            progress.close()
        test_m = evaluate(s.state, test_x, test_y, config.eval_batch_size, method=method,
                          batch_sharding=eval_sharding)
        live = live_filters(s.state.masks, layers)  # as trained and evaluated this epoch
        live_count = int(sum(float(jnp.sum(v)) for v in live.values()))
        bad = _non_finite(train_m, test_m)
        after = []
        if bad is None:
            s.state, after = method.after_epoch(s.state, epoch, s.inputs)
            try:
                for event in after:
                    method.check_event(event)
            except NonFiniteError as err:
                bad = str(err)
        bad = bad or (None if state_is_finite(s.state) else "parameters")   # what the checkpoint would hold
        log_epoch(s, s.state, epoch, train_m, test_m, before + after, bad,
                  live=(live_count, total_filters), elapsed=s.prior_seconds + time.perf_counter() - started)
    s.ckpt.close()


def log_epoch(s: Session, state, epoch: int, train_m: dict, test_m: dict, events: list, bad: str | None,
              *, live: tuple[int, int], elapsed: float) -> None:
    """After 0-based ``epoch``: the method's events into ``pruning.jsonl``, one line of
    ``metrics.jsonl``, then stop (``bad`` names what is not finite) or checkpoint ``state``."""
    config, phase = s.config, s.method.phase(epoch)
    records = [s.method.record(event) for event in events]
    s.events += records
    seed = f"seed {config.seed} " if s.population > 1 else ""
    for line in (line for record in records for line in s.method.describe(record)):
        if line.startswith("warning:"):
            print(f"warning: {seed}{line[len('warning: '):]}", file=sys.stderr, flush=True)
        elif not config.quiet:
            print(f"{seed}{line}", flush=True)
    row = {"epoch": epoch + 1, "phase": phase.name, "round": phase.round,
           "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"],
           "test_loss": test_m["loss"], "test_accuracy": test_m["accuracy"],
           "learning_rate": float(s.schedule(int(state.step))),
           "images_per_second": train_m["images_per_second"],
           "epoch_seconds": train_m["train_seconds"], "elapsed_seconds": elapsed,
           "live_filters": live[0], "total_filters": live[1]}
    if "loss_terms" in train_m:
        row["loss_terms"] = train_m["loss_terms"]
    s.metrics.append(finite_row(row))
    write_jsonl(s.out / "metrics.jsonl", s.metrics)
    if s.tensorboard is not None:
        s.tensorboard.write(s.metrics[-1])
    if s.events:
        write_jsonl(s.out / "pruning.jsonl", s.events)
    if bad is not None:
        _diverge(s, epoch, bad)
    s.ckpt.save(epoch + 1, state, {"test_accuracy": row["test_accuracy"]},
                {"epochs_done": epoch + 1, "wall_seconds": row["elapsed_seconds"], "events": len(s.events)})
    if not config.quiet:
        print(f"{seed}epoch {epoch + 1:3d} [{phase.name:4s}] train {100 * row['train_accuracy']:5.2f}% "
              f"test {100 * row['test_accuracy']:5.2f}% loss {row['train_loss']:.3f} "
              f"{row['images_per_second']:.0f} img/s live {live[0]}/{live[1]}", flush=True)


def _summary_fields(s: Session) -> dict:
    config, metrics, events = s.config, s.metrics, s.events
    return {
        "method": config.method.name, "model": config.model.name, "dataset": config.data.dataset,
        "data_source": s.data.source, "train_images": int(len(s.data.train_y)),
        "test_images": int(len(s.data.test_y)), "epochs": config.epochs,
        "wall_seconds": metrics[-1]["elapsed_seconds"] if metrics else 0.0,
        "train_step_compilations_this_process": int(train_step_indexed._cache_size()),
        "drops": sum(e["event"] == "drop" for e in events),
        "reinits": sum(e["event"] == "reinit" for e in events),
    }


def finish(s: Session, extra: dict | None = None) -> dict:
    """``summary.json`` (returned; ``extra`` added to it), ``curves.png`` and, with drops,
    ``pruned_per_layer.png``."""
    config, metrics, events = s.config, s.metrics, s.events
    if s.tensorboard is not None:
        s.tensorboard.close()
    best = max(metrics, key=lambda m: m["test_accuracy"])
    if getattr(s.method, "exports_at_end", False):   # structured methods end in a smaller model
        from repr_jax.compress.export import ExportError
        from repr_jax.compress.run_export import export_session
        try:
            report = export_session(s)
            extra = {**(extra or {}), "export": {k: report[k] for k in (
                "params_before", "params_after", "flops_before", "flops_after", "params_ratio",
                "flops_ratio", "inference_speedup", "max_abs_logit_difference", "channels")}}
        except ExportError as err:
            extra = {**(extra or {}), "export_error": str(err)}
    extra = {**(extra or {}), **s.method.final_report(s.state, s.out)}
    summary = {
        "status": "completed", **_summary_fields(s),
        "final_test_accuracy": metrics[-1]["test_accuracy"],
        "best_test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
        "final_train_accuracy": metrics[-1]["train_accuracy"],
        "median_images_per_second": float(np.median([m["images_per_second"] for m in metrics])),
        **(extra or {}),
    }
    write_json(s.out / "summary.json", summary)
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


def run(config: RunConfig, data: Cifar | None = None) -> dict:
    """Train as configured; returns the summary dict (also written to ``summary.json``) —
    with ``config.seeds > 1``, :func:`repr_jax.population.run_population`'s summary of every
    seed's run.

    ``data`` replaces loading from ``config.data.dir`` (benchmarks, notebooks); the
    validation split and slices of ``config`` still apply.
    """
    if config.seeds > 1:
        from repr_jax.population import run_population
        return run_population(config, data)
    session = start(config, data)
    try:
        try:
            train_epochs(session)
        except KeyboardInterrupt:
            raise Interrupted.during(session) from None
        return finish(session)
    finally:
        close(session)


__all__ = ["Diverged", "RunConfig", "RunError", "DataError", "Session", "build_method", "build_model", "close",
           "device_mesh", "finish", "initial_state", "warm_start", "load_run_data", "log_epoch", "load_run_state", "restore_run", "run", "start",
           "state_is_finite", "train_epochs"]
