"""Optimisers and learning-rate schedules (optax), including a method's learning-rate phases.

``make_optimizer`` chains the masking transform of :mod:`repr_jax.masks` around SGD or
AdamW, whose state does not move where the masks are 0 (:func:`frozen_where_masked`), with
Adam's step count kept per parameter element (:func:`scale_by_adam_per_element`) so that a
re-initialised filter restarts as under a fresh Adam. ``learning_rate_schedule`` is the run's schedule over optimizer steps;
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

from typing import NamedTuple

from repr_jax.masks import masked_updates

SCHEDULES = ("constant", "cosine", "step", "exponential")
RESTARTS = ("constant", "cosine", "linear")
ADAM_STEP_COUNTS = ("element", "shared")


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
    adam_step_count: str = _help("element", "adam: element (a step count per parameter, reset with a revived "
                                            "filter's moments: it restarts as under a fresh Adam) or shared "
                                            "(optax's one count; run directories written before 2026-12-03)")

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose {', '.join(SCHEDULES)}")
        if self.schedule == "exponential" and not (
                self.decay_steps >= 1 and math.isfinite(self.decay_rate) and 0 < self.decay_rate <= 1):
            raise ValueError(f"exponential schedule needs decay_steps >= 1 and decay_rate in (0, 1], "
                             f"got {self.decay_steps} and {self.decay_rate}")
        if self.adam_step_count not in ADAM_STEP_COUNTS:
            raise ValueError(f"unknown optim.adam_step_count {self.adam_step_count!r}; choose "
                             f"{', '.join(ADAM_STEP_COUNTS)}")


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


class ScaleByAdamPerElementState(NamedTuple):
    count: optax.Params   # int32, one per parameter element
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_per_element(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam's scaling (Kingma & Ba 2015, Alg. 1) with a step count per parameter element:

        t ← t + 1,  m ← β₁ m + (1 − β₁) g,  v ← β₂ v + (1 − β₂) g²
        u = m̂ / (√v̂ + ε),  m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)     (t, m, v per element)

    The same arithmetic as ``optax.scale_by_adam``, whose one count is shared by every
    parameter; with a count per element, an element whose ``(t, m, v)`` are reset to 0 —
    a filter RePr re-initialises (Prakash et al. 2019 §5 reset "their training-specific
    parameters from … Adam"), a weight DSD re-densifies — takes exactly the steps a fresh
    Adam would take for the same gradients. With a shared count t ≫ 1 its bias correction
    is ≈ 1 while m, v restart from 0, and its first step is 1/√(1 − β₂) · (1 − β₁) ≈ 3.2× a
    fresh Adam's. Costs one int32 per parameter."""
    def init_fn(params):
        zeros = lambda dtype: jax.tree_util.tree_map(lambda p: jnp.zeros(jnp.shape(p), dtype), params)  # noqa: E731
        return ScaleByAdamPerElementState(count=zeros(jnp.int32), mu=zeros(jnp.float32), nu=zeros(jnp.float32))

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree_util.tree_map(lambda g, m: (1 - b1) * g + b1 * m, updates, state.mu)
        nu = jax.tree_util.tree_map(lambda g, v: (1 - b2) * (g ** 2) + b2 * v, updates, state.nu)
        count = jax.tree_util.tree_map(lambda t: t + 1, state.count)
        out = jax.tree_util.tree_map(
            lambda m, v, t: (m / (1 - b1 ** t).astype(m.dtype)) / (jnp.sqrt(v / (1 - b2 ** t).astype(v.dtype)) + eps),
            mu, nu, count)
        return out, ScaleByAdamPerElementState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def frozen_where_masked(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` whose state stands still where this step's update masks are 0.

    A dropped filter (RePr ``zero`` mode), a frozen one (``freeze`` mode, JST's unsampled
    channels during search, Han et al.'s frozen layer type) gets no update — the masking
    transform zeroes it — and with this neither does its momentum, Adam moments or step
    count: ``s' = where(mask, inner's new state, s)`` per element, so a frozen filter's
    momentum does not decay and weight decay does not accumulate into it (without it a
    trace went 2.36 → 0.49 in 20 frozen steps). Masks broadcast onto each state leaf as onto
    its parameter (a ``(F,)`` filter mask onto the last axis, a scalar: unmasked); leaves
    that are not parameter-shaped (optax's shared counts) always advance."""
    def update_fn(updates, state, params=None, *, masks=None, **extra_args):
        del extra_args
        new_updates, new_state = inner.update(updates, state, params)
        if masks is None:
            return new_updates, new_state
        keep = optax.tree_utils.tree_map_params(
            inner, lambda leaf, m: jnp.broadcast_to(m, jnp.shape(leaf)) > 0, new_state, masks,
            transform_non_params=lambda leaf: jnp.ones(jnp.shape(leaf), bool))
        return new_updates, jax.tree_util.tree_map(jnp.where, keep, new_state, state)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def make_optimizer(cfg: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
    """masked → (weight decay + SGD momentum | AdamW), its state frozen where masked → masked;
    call ``update(..., masks=...)``. AdamW is ``optax.adamw``'s chain (Adam scaling, decoupled
    weight decay on kernels, learning rate) with :func:`scale_by_adam_per_element` unless
    ``adam_step_count="shared"``."""
    if cfg.optimizer == "sgd":
        core = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=_is_kernel),
                           optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.optimizer == "adam" and cfg.adam_step_count == "shared":
        core = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_is_kernel)
    elif cfg.optimizer == "adam":  # decoupled weight decay (AdamW)
        core = optax.chain(scale_by_adam_per_element(),
                           optax.add_decayed_weights(cfg.weight_decay, mask=_is_kernel),
                           optax.scale_by_learning_rate(schedule))
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")
    return optax.chain(masked_updates(), frozen_where_masked(core), masked_updates())


__all__ = ["ADAM_STEP_COUNTS", "OptimConfig", "RESTARTS", "SCHEDULES", "frozen_where_masked",
           "learning_rate_schedule", "make_optimizer", "phased_schedule", "scale_by_adam_per_element"]
