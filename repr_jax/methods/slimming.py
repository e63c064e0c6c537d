"""Network Slimming (Liu et al., ICCV 2017), as method ``slimming``.

Sparsity training (§3.2, Eq. 1): L = Σ_(x,y) l(f(x, W), y) + λ Σ_{γ∈Γ} |γ| over the scale γ of
every BatchNorm that follows a prunable conv, optimised by sub-gradient descent (∂|γ|/∂γ =
sign γ; JAX's gradient of |·| is exactly that, 0 at 0). The penalty is a loss term while the
step is before ``prune_epoch`` (the sparsity phase; fine-tuning has none, as in the paper).
Channel pruning (§3.3): one *global* threshold — the ``fraction`` percentile of |γ| over all
eligible channels — prunes every channel below it and none above it (``rounds > 1``: the
percentile rises in equal steps, multi-pass slimming, §3.4); no layer keeps fewer than
``min_keep``, so when that binds fewer than ``fraction`` are pruned. Then the
network is exported smaller and fine-tuned. Their VGG setting: λ = 1e-4, 70 % of channels,
160 epochs of sparsity training and 160 of fine-tuning. For our post-activation CIFAR
ResNets only the first conv of each block is pruned (Liu et al. prune a pre-activation
ResNet through channel-selection layers, which these models do not have).

Deviations from the paper: ``min_keep`` (default 1; the paper can empty a layer, which no
export survives) and the ResNet rule above. ``fill_quota=true`` restores what this module
did before 2026-12-03: when ``min_keep`` spared channels below the threshold, channels
above it were pruned instead to reach ``fraction`` (6 of 4,224 channels differed on a
VGG-16 case).
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from repr_jax.layers import get_path
from repr_jax.masks import live_filters
from repr_jax.methods.base import register
from repr_jax.methods.structured import StructuredConfig, StructuredMethod, check_fraction
from repr_jax.ranking import select_drops


@dataclasses.dataclass(frozen=True)
class SlimmingConfig(StructuredConfig):
    name = "slimming"
    l1: float = dataclasses.field(default=1e-4, metadata={"help": "λ of the penalty λ·Σ|γ| during sparsity training"})
    fraction: float = dataclasses.field(default=0.7, metadata={
        "help": "global fraction of eligible channels pruned (the |γ| percentile threshold)"})
    fill_quota: bool = dataclasses.field(default=False, metadata={
        "help": "when min_keep spares channels below the threshold, prune channels above it instead "
                "(before 2026-12-03; the paper prunes by the threshold alone)"})

    def validate(self, run=None) -> None:
        super().validate(run)
        check_fraction("slimming.fraction", self.fraction)
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise ValueError(f"slimming.l1 must be finite and >= 0, got {self.l1}")


def bn_l1(params, layers) -> jnp.ndarray:
    """Σ_layers Σ_c |γ_c| over the BatchNorm scales of ``layers`` (Liu et al. 2017, Eq. 1)."""
    return sum(jnp.sum(jnp.abs(get_path(params, l.bn_path + ("scale",)))) for l in layers)


def round_fraction(total_fraction: float, round_: int, rounds: int) -> float:
    """Fraction of the *live* eligible channels to prune in ``round_`` so that after it a
    cumulative ``total_fraction · (round_ + 1) / rounds`` of all of them is gone."""
    done = total_fraction * round_ / rounds
    target = total_fraction * (round_ + 1) / rounds
    return (target - done) / (1.0 - done)


@register
class Slimming(StructuredMethod):
    """L1 on BatchNorm scales while training, then prune below a global |γ| threshold."""
    name = "slimming"
    config_class = SlimmingConfig
    summary = "Network Slimming: L1 on BatchNorm scales, global threshold (Liu et al. 2017), exported and fine-tuned"

    def __init__(self, config: SlimmingConfig, context):
        super().__init__(config, context)
        missing = [l.name for l in context.layers if l.bn_path is None]
        if missing:
            raise ValueError(f"slimming needs a BatchNorm after every prunable conv; {', '.join(missing[:3])} "
                             "have none (convnet: --batch-norm)")
        self.sparse_steps = config.prune_epoch * context.steps_per_epoch

    def loss_terms(self, inputs):
        if not self.config.l1 or not self.sparse_steps:
            return {}
        on = (inputs.state.step < self.sparse_steps).astype(jnp.float32)
        return {"bn_l1": on * self.config.l1 * bn_l1(inputs.params, self.context.layers)}

    def select(self, state, round_, inputs, key):
        del inputs, key
        layers = state.layers
        scores = {l.name: jnp.abs(get_path(state.params, l.bn_path + ("scale",))).astype(jnp.float32)
                  for l in layers}
        live = live_filters(state.masks, layers)
        exclude = tuple(n for n in live if n not in self.eligible)
        fraction = round_fraction(self.config.fraction, round_, self.config.rounds)
        new_live = select_drops({n: -s for n, s in scores.items()}, live, fraction, per_layer=False,
                                exclude=exclude, min_keep=self.config.min_keep, fill_quota=self.config.fill_quota)
        threshold = jnp.max(jnp.stack([jnp.max(jnp.where((live[n] > 0) & (new_live[n] <= 0), scores[n], -jnp.inf))
                                       for n in self.eligible]))
        return new_live, {"scores": scores, "threshold": threshold}


__all__ = ["Slimming", "SlimmingConfig", "bn_l1", "round_fraction"]
