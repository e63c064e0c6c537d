"""Network Trimming (Hu et al. 2016, arXiv 1607.03250), as method ``trimming``.

Average Percentage of Zeros of channel c (their Eq. 1):
APoZ_c = Σ_k Σ_j 1[O_c,j(k) = 0] / (N · M), over N validation images k and the M positions
j of the channel's output O_c after its ReLU (here a = ReLU(z), z the BatchNorm output, or
the conv's without BatchNorm; :func:`repr_jax.criteria.response_statistics`). Each round
trims, in every chosen layer, the ``fraction`` of its filters with the highest APoZ
(cumulative: round r leaves ⌊F (1 − fraction · r)⌋ of F), then retrains with the surviving
weights as initialisation (their finding: better than training the trimmed net from
scratch). Iterate "until accuracy drops": before trimming in round r ≥ 2 the network's
accuracy on the scoring images is compared with its accuracy before the first trim; once
it is more than ``tolerance`` below, trimming stops for the rest of the run (that round
and later ones prune nothing) and the network is fine-tuned as it is. The scoring images
are the held-out images (``data.holdout``), else a fixed sample of training images.

Deviations from the paper (Hu et al. 2016): trimming is per layer at a fixed ``fraction``
per round (they trim the channels above an APoZ threshold set per layer); the stopping rule compares accuracy on the scoring images,
not on a separate validation run; ``min_keep`` (≥ 1) keeps every layer exportable; the
trimmed network is exported smaller at the end (they count parameters).
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from repr_jax.criteria import response_statistics, scoring_batches
from repr_jax.masks import apply_masks, live_filters
from repr_jax.methods.base import register
from repr_jax.methods.structured import (StructuredConfig, StructuredMethod, check_fraction, keep_counts,
                                         keep_highest, match_layers)


@dataclasses.dataclass(frozen=True)
class TrimmingConfig(StructuredConfig):
    name = "trimming"
    fraction: float = dataclasses.field(default=0.1, metadata={
        "help": "fraction of each chosen layer's filters trimmed per round (highest APoZ first)"})
    layers: str = dataclasses.field(default="", metadata={
        "help": "layers to trim, fnmatch patterns (default: every eligible layer)"})
    tolerance: float = dataclasses.field(default=0.01, metadata={
        "help": "stop trimming once accuracy on the scoring images is this far below its value before the first trim"})
    criterion_batches: int = dataclasses.field(default=4, metadata={
        "help": "batches of held-out (else training) images APoZ and the accuracy are measured on"})

    def validate(self, run=None) -> None:
        super().validate(run)
        check_fraction("trimming.fraction", self.fraction)
        if self.fraction * self.rounds >= 1.0:
            raise ValueError(f"trimming.fraction × rounds = {self.fraction * self.rounds:g} would trim whole layers")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"trimming.tolerance must be finite and >= 0, got {self.tolerance}")
        if self.criterion_batches < 1:
            raise ValueError(f"trimming.criterion_batches must be >= 1, got {self.criterion_batches}")


def apoz(activations: jnp.ndarray) -> jnp.ndarray:
    """APoZ of each channel of post-ReLU ``activations`` (N, H, W, C): mean of 1[a = 0]."""
    return jnp.mean((activations <= 0).astype(jnp.float32), axis=tuple(range(activations.ndim - 1)))


@register
class Trimming(StructuredMethod):
    """Trim the highest-APoZ channels of chosen layers, retrain, repeat until accuracy drops."""
    name = "trimming"
    config_class = TrimmingConfig
    summary = "Network Trimming: iteratively remove the highest-APoZ channels (Hu et al. 2016), exported"

    def __init__(self, config: TrimmingConfig, context):
        super().__init__(config, context)
        chosen = match_layers(config.layers, self.eligible, "trimming.layers") if config.layers else set(self.eligible)
        self.ratios = {n: config.fraction * config.rounds for n in self.eligible if n in chosen}
        self.score_data = (None, None)
        images, labels = context.scoring_data()
        if images is not None:
            x, y = scoring_batches(images, labels, config.criterion_batches, context.batch_size,
                                   seed=context.seed + 1)
            self.score_data = (context.model_inputs(x), jnp.asarray(y))

    def init_method_state(self, params, key):
        return {"baseline_accuracy": jnp.zeros((), jnp.float32), "stopped": jnp.zeros((), jnp.float32)}

    def run_inputs(self):
        return self.score_data

    def select(self, state, round_, inputs, key):
        del key
        images, labels = inputs
        if images is None:
            raise ValueError("trimming needs images to measure APoZ on (MethodContext.train_images)")
        layers = state.layers
        live = live_filters(state.masks, layers)
        flat_x, flat_y = images.reshape((-1,) + images.shape[2:]), labels.reshape(-1)
        logits = state.apply_fn({"params": apply_masks(state.params, state.masks),
                                 "batch_stats": state.batch_stats}, flat_x, train=False)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == flat_y).astype(jnp.float32))
        ms = state.method_state
        baseline = accuracy if round_ == 0 else ms["baseline_accuracy"]
        stopped = jnp.maximum(ms["stopped"], (accuracy < baseline - self.config.tolerance).astype(jnp.float32))
        scores = response_statistics(state, layers, images, labels)["apoz"]
        keep = keep_counts({n: self.sizes[n] for n in self.ratios}, self.ratios,
                           (round_ + 1) / self.config.rounds, self.config.min_keep)
        new_live = {n: jnp.where(stopped > 0, live[n], keep_highest(-scores[n], live[n], keep[n]))
                    for n in keep}
        return new_live, {"scores": scores, "accuracy": accuracy, "baseline_accuracy": baseline,
                          "stopped": stopped,
                          "method_state": {"baseline_accuracy": baseline, "stopped": stopped}}


__all__ = ["Trimming", "TrimmingConfig", "apoz"]
