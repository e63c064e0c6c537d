"""Optimisers and learning-rate schedules (optax), including a method's learning-rate phases.

``make_optimizer`` chains the masking transform of :mod:`repr_jax.masks` around SGD or
AdamW. ``learning_rate_schedule`` is the run's schedule over optimizer steps;
``phased_schedule`` applies a method's :class:`~repr_jax.methods.base.Phase` learning-rate
settings on top of it, so the whole run's rate is one pure function of the step count,
evaluated inside the jitted step like any optax schedule (no recompilation at a phase
change, and a checkpoint's optimizer step count is all a resume needs).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from repr_jax.masks import masked_updates

SCHEDULES = ("constant", "cosine", "step", "exponential")
RESTARTS = ("constant", "cosine", "linear")


def _help(default, text):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = _help("sgd", "sgd (momentum) or adam (AdamW)")
    learning_rate: float = _help(0.05, "peak learning rate (the CLI's default depends on model and "
                                       "optimizer, see --lr)")
    momentum: float = _help(0.9, "SGD momentum (0: plain SGD)")
    nesterov: bool = _help(False, "Nesterov momentum")
    weight_decay: float = _help(5e-4, "L2 on conv and dense kernels (decoupled for adam)")
    schedule: str = _help("cosine", "constant, cosine (to 0 at the last epoch), step or exponential")
    warmup_epochs: int = _help(0, "linear warm-up epochs")
    step_epochs: tuple[int, ...] = _help((), "step schedule: epochs at which the rate is multiplied "
                                             "by step_factor (comma-separated)")
    step_factor: float = _help(0.1, "step schedule: the factor")
    decay_steps: int = _help(25000, "exponential schedule: optimizer steps per decay by decay_rate")
    decay_rate: float = _help(0.5, "exponential schedule: lr · decay_rate^(step / decay_steps)")
    staircase: bool = _help(True, "exponential schedule: decay in whole steps (floor of step / decay_steps)")

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose {', '.join(SCHEDULES)}")
        if self.schedule == "exponential" and not (
                self.decay_steps >= 1 and math.isfinite(self.decay_rate) and 0 < self.decay_rate <= 1):
            raise ValueError(f"exponential schedule needs decay_steps >= 1 and decay_rate in (0, 1], "
                             f"got {self.decay_steps} and {self.decay_rate}")


def learning_rate_schedule(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """An optax schedule over optimizer steps."""
    total = max(steps_per_epoch * epochs, 1)
    warm = cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.learning_rate, max(total - warm, 1))
    elif cfg.schedule == "exponential":   # TF's exponential_decay (the official RePr code's)
        main = optax.exponential_decay(cfg.learning_rate, cfg.decay_steps, cfg.decay_rate,
                                       staircase=cfg.staircase)
    elif cfg.schedule == "step":
        main = optax.piecewise_constant_schedule(
            cfg.learning_rate, {max(e * steps_per_epoch - warm, 1): cfg.step_factor
                                for e in cfg.step_epochs})
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose {', '.join(SCHEDULES)}")
    if warm:
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warm), main], [warm])
    return main


def _restart(kind: str, peak: float, steps: int) -> optax.Schedule:
    if kind == "constant":
        return optax.constant_schedule(peak)
    if kind == "cosine":
        return optax.cosine_decay_schedule(peak, max(steps, 1))
    if kind == "linear":
        return optax.linear_schedule(peak, 0.0, max(steps, 1))
    raise ValueError(f"unknown learning-rate restart {kind!r}; choose {', '.join(RESTARTS)}")


def phased_schedule(base: optax.Schedule, phases, steps_per_epoch: int) -> optax.Schedule:
    """The run's schedule with each epoch's phase applied (``phases[e]`` for epoch ``e``).

    Consecutive equal phases form a stretch starting at step s₀ and lasting n steps. In a
    stretch, lr(t) = scale · base(t), or with ``lr_restart = (kind, peak)``
    lr(t) = scale · restart(t − s₀) where restart decays from ``peak`` over n steps. When no
    phase changes the rate, ``base`` itself is returned (bit-identical runs).
    """
    for p in phases:
        if not (math.isfinite(p.lr_scale) and p.lr_scale >= 0):
            raise ValueError(f"phase {p.name!r}: learning-rate scale must be finite and >= 0, got {p.lr_scale}")
        if p.lr_restart is not None and p.lr_restart[0] not in RESTARTS:
            raise ValueError(f"phase {p.name!r}: unknown learning-rate restart {p.lr_restart[0]!r}")
    if all(p.lr_scale == 1.0 and p.lr_restart is None for p in phases):
        return base
    stretches: list[list] = []                      # [first epoch, epochs, phase]
    for epoch, p in enumerate(phases):
        if stretches and stretches[-1][2] == p:
            stretches[-1][1] += 1
        else:
            stretches.append([epoch, 1, p])
    pieces = []
    for first, length, p in stretches:
        start = first * steps_per_epoch
        if p.lr_restart is None:
            pieces.append((start, lambda t, s=p.lr_scale: s * base(t)))
        else:
            inner = _restart(p.lr_restart[0], float(p.lr_restart[1]), length * steps_per_epoch)
            pieces.append((start, lambda t, s=p.lr_scale, inner=inner, t0=start: s * inner(t - t0)))
    starts = tuple(s for s, _ in pieces)
    branches = [lambda t, fn=fn: jnp.asarray(fn(t), jnp.float32) for _, fn in pieces]

    def schedule(count):
        count = jnp.asarray(count)
        index = jnp.clip(jnp.sum(count >= jnp.asarray(starts)) - 1, 0, len(branches) - 1)
        return jax.lax.switch(index, branches, count)

    return schedule


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


__all__ = ["OptimConfig", "RESTARTS", "SCHEDULES", "learning_rate_schedule", "make_optimizer",
           "phased_schedule"]
