"""A run directory's model, method and train state — rebuilt from its files, or built for a
new run from its settings (host side, no training): the functions the runner, evaluation,
export, the sensitivity analysis and a distillation teacher share.

:func:`build_model` and :func:`build_method` (the run's :class:`~repr_jax.methods.base.Method`,
given what it may know of the run), :func:`initial_state` (the train state and learning-rate
schedule), :func:`warm_start` (``init_from``), :func:`load_run_data` (the data with the run's
splits and slices; :func:`load_source` the source alone), :func:`preprocessing` (its
augmentation and normalisation), :func:`restore_run` / :func:`load_run_state` (any kept
checkpoint of a run directory), :func:`state_is_finite`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from repr_jax.checkpoint import Checkpointer
from repr_jax.config import RunConfig
from repr_jax.data import Dataset, load_data
from repr_jax.data.sources import parse_image_size
from repr_jax.errors import DataError, RunError
from repr_jax.methods.base import MethodContext, create_method
from repr_jax.models import from_architecture, input_shape_of
from repr_jax.optim import learning_rate_schedule, make_optimizer, phased_schedule
from repr_jax.data.pipeline import PYTORCH_CIFAR_STD, Preprocessing, crop_padding
from repr_jax.run_dir import read_architecture, read_config, read_jsonl, read_summary
from repr_jax.state import create_train_state
from repr_jax.data.streaming import load_streamed_folder, stream_from_memory


def build_model(config: RunConfig, architecture: dict | None = None):
    """The Flax module of ``config`` (or of an ``architecture.json``); ``RunError`` for bad names."""
    try:
        return from_architecture(architecture or config.architecture())
    except ValueError as err:
        raise RunError(str(err)) from None


def build_method(config: RunConfig, model, architecture: dict, train_images: int,
                 data: Dataset | None = None):
    """The run's method, given what it may know about the run (data only when training):
    the model traced on the architecture's input shape, scoring images normalised as the
    train step normalises its batches (:func:`preprocessing`)."""
    context = MethodContext.for_model(
        model, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
        train_images=None if data is None else data.train_x,
        train_labels=None if data is None else data.train_y,
        heldout_images=None if data is None else data.held_x,
        heldout_labels=None if data is None else data.held_y,
        architecture=architecture, train_size=train_images, input_shape=input_shape_of(architecture),
        preprocess=preprocessing(config, data))
    return create_method(config.method, context)


def preprocessing(config: RunConfig, data: Dataset | None = None) -> Preprocessing:
    """The run's augmentation and normalisation (:class:`repr_jax.data.pipeline.Preprocessing`):
    ``data.normalization`` ``auto`` standardises with CIFAR's published statistics for
    cifar10/cifar100 (what every earlier run used) and with the training split's otherwise,
    ``train`` always with the training split's (:meth:`repr_jax.data.Dataset.stats`), ``none``
    divides by 255 only, ``pytorch-cifar`` uses kuangliu/pytorch-cifar's constants
    (:data:`repr_jax.data.pipeline.PYTORCH_CIFAR_STD`); the crop padding is ``data.crop_pad`` or, when -1, proportional to
    the image (:func:`repr_jax.data.pipeline.crop_padding`). Without ``data``: from the recorded
    input shape, CIFAR's statistics (enough to trace the model)."""
    h, w, c = data.image_shape if data is not None else config.input_shape
    norm = config.data.normalization
    cifar = config.data.dataset in ("cifar10", "cifar100") and c == 3
    if norm == "none":
        mean, std = (0.0,) * c, (1.0,) * c
    elif norm == "pytorch-cifar":
        if c != 3:
            raise ValueError(f"data.normalization=pytorch-cifar needs 3-channel images, got {c}")
        mean, std = Preprocessing().mean, PYTORCH_CIFAR_STD
    elif data is None or (norm == "auto" and cifar):
        base = Preprocessing()
        mean, std = (base.mean, base.std) if c == 3 else ((0.5,) * c, (0.25,) * c)
    else:
        mean, std = data.stats()
    pad = crop_padding(h, w) if config.data.crop_pad < 0 else config.data.crop_pad
    return Preprocessing(tuple(mean), tuple(std), pad, config.data.flip)


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
        _, src = load_run_state(source, "latest", trust_model=config.model.name)   # the run's own model
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


def load_source(config: RunConfig) -> Dataset:
    """The run's data source (``data.dataset``, ``data.dir``, ``data.image_size``), whole and
    checked (:func:`repr_jax.data.load_data`; ``DataError``: one line) — or, with
    ``data.stream`` on a folder, its training split streamed from disk
    (:func:`repr_jax.data.streaming.load_streamed_folder`)."""
    if config.data.stream and config.data.dataset == "folder":   # the training split stays on disk
        if not config.data.dir:
            raise DataError("data.stream=true reads --data-dir: an extracted folder of train/<class>/<image>")
        return load_streamed_folder(config.data.dir, config.batch_size, seed=config.seed,
                                    image_size=parse_image_size(config.data.image_size),
                                    workers=config.data.stream_workers or None)
    return load_data(config.data.dataset, config.data.dir, parse_image_size(config.data.image_size))


def load_run_data(config: RunConfig, data: Dataset | None = None) -> Dataset:
    """The run's data: loaded (or ``data``), validation split and fixed-seed slices applied
    (after the source's checks); its ``fingerprint`` and statistics are the source's. With
    ``data.stream``, a training split held in memory is then streamed from host memory
    (:func:`repr_jax.data.streaming.stream_from_memory`)."""
    if data is None:
        data = load_source(config)
    data = dataclasses.replace(data, fingerprint=data.source_fingerprint()).with_stats()
    if config.data.val_split:
        if config.data.val_split >= len(data.train_y):
            raise RunError(f"--val-split {config.data.val_split} leaves no training image of {len(data.train_y)}")
        data = data.split_validation(config.data.val_split)
    if config.data.holdout:
        if config.data.holdout >= len(data.train_y):
            raise RunError(f"data.holdout {config.data.holdout} leaves no training image of {len(data.train_y)}")
        data = data.hold_out(config.data.holdout)
    data = data.subset(config.data.train_limit, config.data.test_limit, seed=config.seed)
    if config.data.stream and data.stream is None:   # batches gathered on the host, not the device
        data = stream_from_memory(data, config.batch_size, seed=config.seed,
                                  workers=config.data.stream_workers or None)
    return data


@jax.jit
def all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def state_is_finite(state) -> bool:
    """Whether params, batch stats and the method's parameters hold only finite numbers."""
    return bool(all_finite((state.params, state.batch_stats, state.method_params)))


def restore_run(run_dir: str | Path, epoch: int | str | None = None, trust_model=None):
    """``(RunConfig, architecture, method, TrainState)`` of a saved run: the state restored
    from its checkpoint ``epoch`` — an epoch number, ``"latest"`` (the default), ``"best"``
    (highest test accuracy, the earliest such epoch: ``summary.json``'s ``best_epoch``) or
    ``"finite"`` (the newest whose parameters are all finite) — into a template rebuilt from
    its ``config.json`` and ``architecture.json``; the method is built without data. A
    damaged or edited file of the run is a one-line ``RunError`` naming it. A run whose model
    is the user's code (``FILE.py:FACTORY``) is built only when ``trust_model`` is that
    reference (or True), or the process trusts it (:func:`repr_jax.models.user.trust`):
    nothing read from a run directory alone runs code."""
    from repr_jax.models.user import check_trusted, is_reference
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    arch = read_architecture(run_dir, config)
    for name in {config.model.name, str(arch.get("name", ""))}:
        if is_reference(name):
            try:
                check_trusted(name, run_dir, trust_model)
            except ValueError as err:
                raise RunError(str(err)) from None
    summary = read_summary(run_dir)
    train_images = int(summary.get("train_images", config.data.train_limit or 50_000))
    try:
        model = build_model(config, arch)
        method = build_method(config, model, arch, train_images)
        template = _abstract_state(config, train_images, model, method)
    except (ValueError, KeyError, TypeError) as err:
        raise RunError(f"{run_dir / 'architecture.json'} and config.json do not describe a model this version "
                       f"builds ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    ckpt = Checkpointer(run_dir / "checkpoints", keep=config.keep_checkpoints, writer=False)
    try:
        if template is None or any(ckpt.is_legacy(e) for e in ckpt.epochs()):
            _, _, template = initial_state(config, train_images, model, method)   # values needed
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
                reason = " ".join(str(err).split())[:300]
                if "is damaged" in reason:
                    raise RunError(f"{run_dir}: {reason} (kept: {ckpt.epochs()}; --step names another)") from None
                raise RunError(f"the checkpoint of epoch {number} in {run_dir} does not restore into the model "
                               f"of its config.json / architecture.json ({reason[:200]})") from None
    finally:
        ckpt.close()
    return config, arch, method, state


def _abstract_state(config: RunConfig, train_images: int, model, method):
    """The fresh train state's shapes and dtypes (``jax.eval_shape``: nothing initialised or
    compiled — a restore needs no more), or None when a method's setup cannot be traced."""
    try:
        return jax.eval_shape(lambda: initial_state(config, train_images, model, method)[2])
    except jax.errors.JAXTypeError:       # host-side work on values in a method's setup
        return None


def load_run_state(run_dir: str | Path, epoch: int | str | None = None, trust_model=None):
    """``(RunConfig, TrainState)`` of a saved run (see :func:`restore_run` for ``epoch`` and
    ``trust_model``)."""
    config, _, _, state = restore_run(run_dir, epoch, trust_model)
    return config, state


__all__ = ["all_finite", "build_method", "build_model", "initial_state", "load_run_data", "load_run_state", "load_source",
           "preprocessing",
           "restore_run", "state_is_finite", "warm_start"]
