"""Knowledge distillation (Hinton, Vinyals & Dean 2015) as a loss term any method can add.

With a teacher's logits ``t`` and the student's ``s`` on the same (augmented) batch, at
temperature ``T`` and weight ``α``, the student minimises (§2; the ``T²`` keeps the soft
term's gradients at the scale of the hard term's when ``T`` changes)::

    L = (1 − α) · CE(softmax(s), y) + α · T² · KL(softmax(t / T) ‖ softmax(s / T))

The train step always adds the cross-entropy with weight 1, so the reported loss term is
``kd = α · (T² · KL − CE)``; ``loss + kd`` is the ``L`` above.

Settings (``--set kd.teacher=RUN_DIR --set kd.temperature=4 --set kd.alpha=0.9``): the teacher
is any run directory (loaded by :mod:`repr_jax.teacher`) (its latest checkpoint, masked parameters, eval-mode BatchNorm; any
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


__all__ = ["Distiller", "KDConfig", "distillation_loss", "kd_term", "soft_kl"]
