"""Pure, jitted training and evaluation on a device-resident data set.

An epoch is a shuffled ``(steps, batch)`` index array over the device-resident data; each
step gathers its batch on device, so the host only dispatches (asynchronously) and reads
metrics every ``log_every`` steps for the progress bar. The step compiles once per run:
masks and re-initialisation change values, never shapes.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import optax

from repr_jax.layers import ConvLayer
from repr_jax.masks import masked_updates
from repr_jax.ortho import orthogonality_penalty
from repr_jax.pipeline import augment, epoch_indices, eval_indices, normalize
from repr_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "sgd"          # "sgd" (momentum) or "adam"
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4      # L2 on kernels (conv and dense), decoupled from Adam
    schedule: str = "cosine"        # "constant", "cosine" or "step"
    warmup_epochs: int = 0
    step_epochs: tuple[int, ...] = ()  # "step": multiply by step_factor at these epochs
    step_factor: float = 0.1


def learning_rate_schedule(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """An optax schedule over optimizer steps."""
    total = max(steps_per_epoch * epochs, 1)
    warm = cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.learning_rate, max(total - warm, 1))
    elif cfg.schedule == "step":
        main = optax.piecewise_constant_schedule(
            cfg.learning_rate, {max(e * steps_per_epoch - warm, 1): cfg.step_factor
                                for e in cfg.step_epochs})
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose constant, cosine or step")
    if warm:
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warm), main], [warm])
    return main


def _is_kernel(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(cfg: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
    """masked → (weight decay + SGD momentum | AdamW) → masked; call ``update(..., masks=...)``."""
    if cfg.optimizer == "sgd":
        core = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=_is_kernel),
                           optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.optimizer == "adam":  # decoupled weight decay (AdamW)
        core = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_is_kernel)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")
    return optax.chain(masked_updates(), core, masked_updates())


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _forward(state, params, images, train):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if train:
        logits, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]
    return state.apply_fn(variables, images, train=False), state.batch_stats


def train_step(state: TrainState, images, labels, key, *,
               layers: tuple[ConvLayer, ...], ortho_lambda: float = 0.0):
    """One optimizer step on a uint8 batch (augmented and normalised here)."""
    x = normalize(augment(key, images))

    def loss_fn(params):
        logits, stats = _forward(state, params, x, train=True)
        loss = jnp.mean(cross_entropy(logits, labels))
        total = loss
        if ortho_lambda:
            total = total + ortho_lambda * orthogonality_penalty(params, state.masks, layers)
        return total, (loss, logits, stats)

    (_, (loss, logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, masks=state.masks)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state)
    metrics = {"loss": loss * labels.shape[0], "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
               "count": jnp.asarray(labels.shape[0], jnp.float32)}
    return new, metrics


@functools.partial(jax.jit, static_argnames=("layers", "ortho_lambda"), donate_argnums=(0, 1))
def train_step_indexed(state: TrainState, totals, images, labels, batch_index, key, *,
                       layers: tuple[ConvLayer, ...], ortho_lambda: float = 0.0):
    """Gather the batch on device, step, and add its metrics to the running ``totals``.

    Called once per step from the host with no synchronisation in between: dispatch is
    asynchronous, so the host only queues work. (A ``lax.scan`` over steps was measured
    ~35× slower per step on XLA:CPU with jaxlib 0.10, so the epoch is not one scanned program.)
    """
    state, m = train_step(state, images[batch_index], labels[batch_index],
                          jax.random.fold_in(key, state.step), layers=layers,
                          ortho_lambda=ortho_lambda)
    return state, jax.tree_util.tree_map(jnp.add, totals, m)


@functools.partial(jax.jit, donate_argnums=(1,))
def eval_step(state: TrainState, totals, images, labels, batch_index, weights):
    """Add one padded batch's loss / correct / count (eval-mode network) to ``totals``."""
    logits, _ = _forward(state, state.params, normalize(images[batch_index]), train=False)
    y = labels[batch_index]
    m = {"loss": jnp.sum(cross_entropy(logits, y) * weights),
         "correct": jnp.sum((jnp.argmax(logits, -1) == y) * weights), "count": jnp.sum(weights)}
    return jax.tree_util.tree_map(jnp.add, totals, m)


def run_epoch(state: TrainState, images, labels, key, *, batch_size: int, layers,
              ortho_lambda: float = 0.0, progress=None, log_every: int = 20):
    """Train one epoch; returns ``(state, {"loss", "accuracy", "images_per_second", …})``."""
    idx = epoch_indices(key, images.shape[0], batch_size)
    totals = {"loss": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
    start = time.perf_counter()
    for i in range(idx.shape[0]):
        state, totals = train_step_indexed(state, totals, images, labels, idx[i], key,
                                           layers=layers, ortho_lambda=ortho_lambda)
        if progress is not None:
            progress.update(1)
            if (i + 1) % log_every == 0 or i + 1 == idx.shape[0]:
                count = float(totals["count"])
                progress.set_postfix(loss=f"{float(totals['loss']) / count:.3f}",
                                     acc=f"{float(totals['correct']) / count:.3f}")
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    count = float(totals["count"])
    return state, {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count,
                   "images_per_second": count / seconds, "train_seconds": seconds}


def evaluate(state: TrainState, images, labels, batch_size: int = 500) -> dict:
    """Test loss and accuracy over every example (padded last batch is weighted out)."""
    idx, w = eval_indices(images.shape[0], min(batch_size, images.shape[0]))
    totals = {"loss": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
    for i in range(idx.shape[0]):
        totals = eval_step(state, totals, images, labels, idx[i], w[i])
    count = float(totals["count"])
    return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}
