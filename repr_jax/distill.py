"""Knowledge distillation (Hinton, Vinyals & Dean 2015) as a loss term any method can add.

With a teacher's logits ``t`` and the student's ``s`` on the same (augmented) batch, at
temperature ``T`` and weight ``α``, the student minimises (§2; the ``T²`` keeps the soft
term's gradients at the scale of the hard term's when ``T`` changes)::

    L = (1 − α) · CE(softmax(s), y) + α · T² · KL(softmax(t / T) ‖ softmax(s / T))

The train step always adds the cross-entropy with weight 1, so the reported loss term is
``kd = α · (T² · KL − CE)``; ``loss + kd`` is the ``L`` above.

Settings (``--set kd.teacher=RUN_DIR --set kd.temperature=4 --set kd.alpha=0.9``): the teacher
is any run directory (its latest checkpoint, masked parameters, eval-mode BatchNorm; any
architecture); ``{seed}`` in the path is replaced by the student's seed. Its variables ride in
the train state (``TrainState.teacher``, never checkpointed — a resumed run loads the teacher
again) and the settings in the static ``TrainState.distill``, so every method's jitted step
sees them without new arguments.

Deviations from the paper (Hinton et al. 2015): none in the loss; the teacher sees the
student's augmented batch (the paper uses the transfer set as is), and its BatchNorm is in
eval mode.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class KDConfig:
    teacher: str = dataclasses.field(default="", metadata={
        "help": "run directory of the teacher (its latest checkpoint; '{seed}' is replaced by the seed); '' = no distillation"})
    temperature: float = dataclasses.field(default=4.0, metadata={"help": "softmax temperature T of the soft targets"})
    alpha: float = dataclasses.field(default=0.9, metadata={
        "help": "weight α of the soft term; the hard cross-entropy gets 1 − α"})

    def teacher_dir(self, seed: int) -> str:
        return self.teacher.replace("{seed}", str(seed))

    def validate(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"kd.temperature must be finite and > 0, got {self.temperature}")
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"kd.alpha must be in [0, 1], got {self.alpha}")


@dataclasses.dataclass(frozen=True, eq=False)
class Distiller:
    """What the train step needs besides the teacher's variables (static, compared by identity)."""
    apply_fn: Callable
    temperature: float
    alpha: float


def soft_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """Batch mean of ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al. 2015, §2)."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
    return temperature ** 2 * jnp.mean(kl)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                      temperature: float = 4.0, alpha: float = 0.9) -> jax.Array:
    """Hinton et al.'s loss for your own loop: ``(1 − α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖
    softmax(s/T))``, batch mean (``teacher_logits`` from your teacher in eval mode)."""
    import optax
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(student_logits.astype(jnp.float32), labels))
    return (1.0 - alpha) * ce + alpha * soft_kl(student_logits, jax.lax.stop_gradient(teacher_logits), temperature)


def kd_term(distill: Distiller, teacher_variables, images, logits, cross_entropy) -> jax.Array:
    """``α · (T²·KL − CE)`` for a batch of normalised ``images`` (the teacher in eval mode, no
    gradient through it)."""
    teacher_logits = jax.lax.stop_gradient(distill.apply_fn(teacher_variables, images, train=False))
    return distill.alpha * (soft_kl(logits, teacher_logits, distill.temperature) - cross_entropy)


def check_teacher(config) -> None:
    """``RunError`` (one line) unless ``config.kd.teacher`` names a run directory of a model
    with this run's classes (no data read, nothing restored)."""
    from repr_jax.errors import RunError
    from repr_jax.run_dir import read_config
    source = config.kd.teacher_dir(config.seed)
    if not source:
        return
    if not (Path(source) / "config.json").exists():
        raise RunError(f"--set kd.teacher={source}: no repr-jax run there (no config.json)")
    classes = read_config(Path(source)).num_classes
    if classes != config.num_classes:
        raise RunError(f"--set kd.teacher={source}: it predicts {classes} classes, this run {config.num_classes}")


def attach_teacher(config, state):
    """``state`` with the teacher of ``config.kd`` (none: unchanged). ``RunError`` if the teacher
    cannot be restored or does not take this data set's images."""
    from repr_jax.errors import RunError
    from repr_jax.experiment import build_model, restore_run
    from repr_jax.masks import apply_masks
    source = config.kd.teacher_dir(config.seed)
    if not source:
        return state
    check_teacher(config)
    try:
        t_config, arch, _, t_state = restore_run(source, "latest")
    except (RunError, ValueError, OSError) as err:
        raise RunError(f"--set kd.teacher={source}: cannot restore it: {err}") from None
    model = build_model(t_config, arch)
    variables = {"params": apply_masks(t_state.params, t_state.masks), "batch_stats": t_state.batch_stats}
    variables = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), variables)
    return state.replace(teacher=variables,
                         distill=Distiller(model.apply, config.kd.temperature, config.kd.alpha))


__all__ = ["distillation_loss", "Distiller", "KDConfig", "attach_teacher", "check_teacher", "kd_term", "soft_kl"]
