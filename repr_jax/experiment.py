"""One training run with its run directory: the only place in the package that does I/O.

``<out>/config.json`` every setting (seed and library versions included),
``metrics.jsonl`` one line per epoch (with the RePr phase), ``pruning.jsonl`` one line per
drop / re-initialisation, ``checkpoints/`` (orbax), ``summary.json``, ``curves.png`` and,
for RePr, ``pruned_per_layer.png``. An existing run is never overwritten: it is resumed
(``resume=True``, same settings) or refused with :class:`RunError`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.checkpoint import Checkpointer
from repr_jax.criteria import check_applicable, get_criterion, scoring_batches
from repr_jax.data import Cifar, DataError, load_cifar
from repr_jax.masks import live_filters
from repr_jax.methods import ReprConfig, create_method
from repr_jax.models import create_model
from repr_jax.plots import plot_curves, plot_pruned_per_layer
from repr_jax.state import create_train_state
from repr_jax.train import (OptimConfig, evaluate, learning_rate_schedule, make_optimizer,
                            run_epoch, train_step_indexed)

# Settings that do not change the result: a resumed run may differ in these.
_NON_SEMANTIC = {"out", "resume", "quiet", "keep_checkpoints", "data_dir"}


class RunError(ValueError):
    """Bad settings or a run directory that cannot be used; message is one line."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out: str
    model: str = "convnet"
    dataset: str = "cifar10"
    data_dir: str | None = None
    method: str = "standard"
    epochs: int = 100
    batch_size: int = 128
    seed: int = 0
    optim: OptimConfig = OptimConfig()
    repr: ReprConfig = ReprConfig()
    ortho_loss: float = 0.0
    convnet_depth: int = 3
    convnet_width: int = 32
    convnet_batch_norm: bool = False
    convnet_variant: str = "paper"
    val_split: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    eval_batch_size: int = 500
    keep_checkpoints: int = 3
    resume: bool = False
    quiet: bool = False

    def validate(self) -> None:
        if self.epochs < 1:
            raise RunError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise RunError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.method == "repr" and self.epochs < self.repr.iterations * (self.repr.s1 + self.repr.s2):
            need = self.repr.iterations * (self.repr.s1 + self.repr.s2)
            raise RunError(f"RePr schedule needs at least N·(S1+S2) = {need} epochs, got --epochs {self.epochs}")
        if not 0.0 <= self.repr.drop_fraction < 1.0:
            raise RunError(f"--repr-drop must be in [0, 1), got {self.repr.drop_fraction}")
        if self.ortho_loss < 0:
            raise RunError(f"--ortho-loss must be >= 0, got {self.ortho_loss}")
        try:
            self.repr.validate()
        except ValueError as err:
            raise RunError(str(err)) from None

    @classmethod
    def from_dict(cls, saved: dict) -> "RunConfig":
        """Inverse of :meth:`to_dict` (a ``config.json``'s ``config``); unknown keys are refused."""
        saved = dict(saved)
        optim = dict(saved.pop("optim", {}))
        if "step_epochs" in optim:
            optim["step_epochs"] = tuple(optim["step_epochs"])
        try:
            return cls(optim=OptimConfig(**optim), repr=ReprConfig(**saved.pop("repr", {})), **saved)
        except TypeError as err:
            raise RunError(f"config.json does not match this version of repr-jax: {err}") from None

    def to_dict(self) -> dict:
        """JSON-shaped settings (tuples as lists), comparable with a saved config.json."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "jax_backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()],
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    for pkg in ("repr-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _semantic(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _NON_SEMANTIC}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def prepare_run_dir(config: RunConfig) -> tuple[Path, bool]:
    """Create or validate the run directory; returns (path, resuming)."""
    out = Path(config.out)
    cfg_path = out / "config.json"
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not cfg_path.exists():
            raise RunError(f"--out {out} is not empty and holds no repr-jax run; choose a new --out")
        try:
            old = json.loads(cfg_path.read_text())["config"]
        except (json.JSONDecodeError, KeyError) as err:
            raise RunError(f"--out {out} has an unreadable config.json ({err}); choose a new --out") from None
        if not config.resume:
            raise RunError(f"--out {out} already holds a run; pass --resume to continue it or choose a new --out")
        if _semantic(old) != _semantic(config.to_dict()):
            diff = sorted(k for k in set(_semantic(old)) | set(_semantic(config.to_dict()))
                          if _semantic(old).get(k) != _semantic(config.to_dict()).get(k))
            raise RunError(f"--out {out} holds a different run (settings differ: {', '.join(diff)})")
        if (out / "summary.json").exists():
            raise RunError(f"the run in {out} is already complete")
        return out, True
    out.mkdir(parents=True, exist_ok=True)
    _write_json(cfg_path, {"config": config.to_dict(), "versions": _versions()})
    return out, False


def build_model(config: RunConfig):
    """The Flax module ``config`` names (``ValueError`` for unknown names/options)."""
    options = ({"depth": config.convnet_depth, "width": config.convnet_width,
                "batch_norm": config.convnet_batch_norm, "variant": config.convnet_variant}
               if config.model == "convnet" else {})
    return create_model(config.model, num_classes=10 if config.dataset == "cifar10" else 100,
                        **options)


def initial_state(config: RunConfig, train_images: int, model=None):
    """``(model, lr schedule, fresh TrainState)`` for ``config`` and a training-set size."""
    model = build_model(config) if model is None else model
    steps_per_epoch = train_images // config.batch_size
    schedule = learning_rate_schedule(config.optim, steps_per_epoch, config.epochs)
    return model, schedule, create_train_state(model, make_optimizer(config.optim, schedule), config.seed)


def load_run_data(config: RunConfig, data: Cifar | None = None) -> Cifar:
    """The run's data: loaded (or ``data``), validation split and fixed-seed slices applied."""
    if data is None:
        data = load_cifar(config.dataset, config.data_dir)  # DataError propagates: one line
    if config.val_split:
        data = data.split_validation(config.val_split)
    return data.subset(config.train_limit, config.test_limit, seed=config.seed)


def _method(config: RunConfig, model, state, data: Cifar):
    """The training method, with a RePr criterion's scoring batches and initialiser."""
    if config.method != "repr":
        return create_method(config.method)
    check_applicable(config.repr.criterion, state.layers)
    score_data = None
    if get_criterion(config.repr.criterion).needs_data:
        x, y = scoring_batches(data.train_x, data.train_y, config.repr.criterion_batches,
                               config.batch_size, seed=config.seed + 1)
        score_data = (jnp.asarray(x), jnp.asarray(y))
    init_params = None
    if config.repr.reinit == "random":
        zeros = jnp.zeros((1,) + data.train_x.shape[1:], jnp.float32)
        init_params = jax.jit(lambda key: model.init(key, zeros, train=False)["params"])
    return create_method("repr", config.repr, score_data=score_data, init_params=init_params)


def load_run_state(run_dir: str | Path, epoch: int | None = None):
    """``(RunConfig, TrainState)`` of a saved run, restored from its checkpoint at ``epoch``
    (default: the latest kept) into a state rebuilt from its ``config.json``."""
    run_dir = Path(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    config = RunConfig.from_dict(saved)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    train_images = int(summary.get("train_images", config.train_limit or 50_000))
    _, _, template = initial_state(config, train_images)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=config.keep_checkpoints)
    try:
        state, _ = ckpt.restore(template, epoch)
    finally:
        ckpt.close()
    return config, state


def run(config: RunConfig, data: Cifar | None = None) -> dict:
    """Train as configured; returns the summary dict (also written to ``summary.json``).

    ``data`` replaces loading from ``config.data_dir`` (benchmarks, notebooks); the
    validation split and slices of ``config`` still apply.
    """
    config.validate()
    try:
        model = build_model(config)  # bad names fail before any data is read
    except ValueError as err:
        raise RunError(str(err)) from None
    data = load_run_data(config, data)
    if len(data.train_y) < config.batch_size:
        raise RunError(f"--batch-size {config.batch_size} exceeds the {len(data.train_y)} training images")
    try:
        model, schedule, state = initial_state(config, len(data.train_y), model)
        method = _method(config, model, state, data)
    except ValueError as err:
        raise RunError(str(err)) from None
    out, resuming = prepare_run_dir(config)

    steps_per_epoch = len(data.train_y) // config.batch_size
    layers = state.layers
    ckpt = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
    start_epoch, prior_seconds = 0, 0.0
    metrics = _read_jsonl(out / "metrics.jsonl")
    events = _read_jsonl(out / "pruning.jsonl")
    if resuming and ckpt.latest_epoch() is not None:
        state, extra = ckpt.restore(state)
        start_epoch, prior_seconds = int(extra["epochs_done"]), float(extra["wall_seconds"])
    metrics = [m for m in metrics if m["epoch"] <= start_epoch]
    events = [e for e in events if e["epoch"] <= start_epoch]  # 1-based, like metrics

    train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
    test_x, test_y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)
    root = jax.random.wrap_key_data(jnp.array(state.rng, copy=True))  # state is donated
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        phase = method.phase(epoch)
        state, record = method.before_epoch(state, epoch)
        if record:
            events.append(record)
        progress = None
        if not config.quiet:
            from tqdm import tqdm
            progress = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs} [{phase.name}]",
                            leave=False, dynamic_ncols=True)
        state, train_m = run_epoch(state, train_x, train_y, jax.random.fold_in(root, epoch),
                                   batch_size=config.batch_size, layers=layers,
                                   ortho_lambda=config.ortho_loss, progress=progress)
        if progress is not None:
            progress.close()
        test_m = evaluate(state, test_x, test_y, config.eval_batch_size)
        live = live_filters(state.masks, layers)  # as trained and evaluated this epoch
        live_count = int(sum(float(jnp.sum(v)) for v in live.values()))
        state, record = method.after_epoch(state, epoch)
        if record:
            events.append(record)
        total = sum(layer.num_filters for layer in layers)
        row = {"epoch": epoch + 1, "phase": phase.name, "round": phase.round,
               "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"],
               "test_loss": test_m["loss"], "test_accuracy": test_m["accuracy"],
               "learning_rate": float(schedule(int(state.step))),
               "images_per_second": train_m["images_per_second"],
               "epoch_seconds": train_m["train_seconds"],
               "elapsed_seconds": prior_seconds + time.perf_counter() - started,
               "live_filters": live_count, "total_filters": total}
        metrics.append(row)
        _write_jsonl(out / "metrics.jsonl", metrics)
        if events:
            _write_jsonl(out / "pruning.jsonl", events)
        ckpt.save(epoch + 1, state, {"test_accuracy": row["test_accuracy"]},
                  {"epochs_done": epoch + 1, "wall_seconds": row["elapsed_seconds"]})
        if config.quiet is False:
            print(f"epoch {epoch + 1:3d} [{phase.name:4s}] train {100 * row['train_accuracy']:5.2f}% "
                  f"test {100 * row['test_accuracy']:5.2f}% loss {row['train_loss']:.3f} "
                  f"{row['images_per_second']:.0f} img/s live {live_count}/{total}", flush=True)
    ckpt.close()

    best = max(metrics, key=lambda m: m["test_accuracy"])
    summary = {
        "method": config.method, "model": config.model, "dataset": config.dataset,
        "data_source": data.source, "train_images": int(len(data.train_y)),
        "test_images": int(len(data.test_y)), "epochs": config.epochs,
        "final_test_accuracy": metrics[-1]["test_accuracy"],
        "best_test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
        "final_train_accuracy": metrics[-1]["train_accuracy"],
        "wall_seconds": metrics[-1]["elapsed_seconds"],
        "median_images_per_second": float(np.median([m["images_per_second"] for m in metrics])),
        "train_step_compilations_this_process": int(train_step_indexed._cache_size()),
        "drops": sum(e["event"] == "drop" for e in events),
        "reinits": sum(e["event"] == "reinit" for e in events),
    }
    _write_json(out / "summary.json", summary)
    plot_curves(metrics, out / "curves.png", f"{config.model} {config.method} ({config.dataset})")
    drops = [e for e in events if e["event"] == "drop"]
    if drops:
        plot_pruned_per_layer(drops, out / "pruned_per_layer.png",
                              "per-layer" if config.repr.per_layer else "global")
    return summary


__all__ = ["RunConfig", "RunError", "DataError", "build_model", "initial_state",
           "load_run_data", "load_run_state", "prepare_run_dir", "run"]
