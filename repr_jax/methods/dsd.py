"""DSD: Dense–Sparse–Dense training (Han et al., ICLR 2017), as method ``dsd``.

Three phases of one run (Alg. 1), epochs 0-based:

* **dense** ``[0, dense_epochs)``: ordinary training;
* **sparse** ``[dense_epochs, dense_epochs + sparse_epochs)``: before its first epoch each
  kernel keeps its ``round((1 − s)·n)`` largest-magnitude weights (``s = sparsity``, per
  layer, §2: "the k-th largest weight as threshold"); the rest are masked to 0 and the
  surviving weights retrain under the mask;
* **re-dense** (to the end): the mask is removed; the pruned weights restart from 0 (they
  are 0 and their optimizer moments were zeroed at the prune) and the whole network
  retrains with the learning rate scaled by ``redense_lr_scale`` (the paper: "the learning
  rate 1/10 of the original").

The learning rate of the dense and sparse phases is the run's schedule. ``kinds`` selects
conv, dense or all kernels (the paper prunes every layer). Pruning and re-densifying change
mask values only: one compilation of the train step.

Deviations from the paper (Han et al. 2017): the sparsity is applied per layer with one
``sparsity`` for all layers (they choose it per model); the re-dense phase
restarts the pruned weights from 0 with fresh optimizer moments and, under Adam, a fresh
per-element step count (``optim.adam_step_count=element``; before 2026-12-03 the shared
count made their first steps ≈ 3.2× a fresh Adam's); one dense–sparse–dense cycle per
run (they sometimes iterate DSD).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.layers import get_path, replace_path
from repr_jax.masks import with_masks
from repr_jax.methods.base import Event, Method, MethodConfig, Phase, register
from repr_jax.methods.weights import KINDS, density_record, magnitude_topk_mask, model_kernels


@dataclasses.dataclass(frozen=True)
class DSDConfig(MethodConfig):
    name = "dsd"
    dense_epochs: int = dataclasses.field(default=1, metadata={"help": "epochs of the first dense phase"})
    sparse_epochs: int = dataclasses.field(default=1, metadata={"help": "epochs of the sparse phase"})
    sparsity: float = dataclasses.field(default=0.3, metadata={
        "help": "fraction of each kernel's weights removed in the sparse phase"})
    redense_lr_scale: float = dataclasses.field(default=0.1, metadata={
        "help": "learning-rate scale of the re-dense phase (the paper: 1/10)"})
    kinds: str = dataclasses.field(default="all", metadata={"help": "kernels made sparse: all, conv or dense"})

    def validate(self, run=None) -> None:
        if self.dense_epochs < 0 or self.sparse_epochs < 1:
            raise ValueError(f"dsd needs dense_epochs >= 0 and sparse_epochs >= 1, got "
                             f"{self.dense_epochs} and {self.sparse_epochs}")
        if not (math.isfinite(self.sparsity) and 0.0 < self.sparsity < 1.0):
            raise ValueError(f"dsd.sparsity must be in (0, 1), got {self.sparsity}")
        if not (math.isfinite(self.redense_lr_scale) and self.redense_lr_scale > 0):
            raise ValueError(f"dsd.redense_lr_scale must be finite and > 0, got {self.redense_lr_scale}")
        if self.kinds not in KINDS:
            raise ValueError(f"unknown dsd.kinds {self.kinds!r}; choose from {', '.join(KINDS)}")
        if run is not None and run.epochs <= self.dense_epochs + self.sparse_epochs:
            raise ValueError(f"dsd: --epochs must exceed dense_epochs + sparse_epochs = "
                             f"{self.dense_epochs + self.sparse_epochs} (a re-dense phase), got {run.epochs}")


@register
class DSD(Method):
    """Dense → sparse (top-|w| mask per kernel) → re-dense (mask removed, lower learning rate)."""
    name = "dsd"
    config_class = DSDConfig
    summary = "DSD (Han et al. 2017): dense, sparse (magnitude mask), re-dense (pruned weights restart at 0)"

    def __init__(self, config: DSDConfig, context):
        config.validate()
        super().__init__(config, context)
        self.paths = model_kernels(context, config.kinds, "dsd")
        self.sparse_start = config.dense_epochs
        self.redense_start = config.dense_epochs + config.sparse_epochs
        self._sparsify_jit = jax.jit(self._sparsify)
        self._redense_jit = jax.jit(self._redense)

    def element_masks(self, params):
        return tuple(p for p, _ in self.paths)

    def phase(self, epoch: int) -> Phase:
        if epoch < self.sparse_start:
            return Phase("dense", 0)
        if epoch < self.redense_start:
            return Phase("sparse", 1)
        return Phase("redense", 2, lr_scale=self.config.redense_lr_scale)

    def _sparsify(self, state):
        masks = state.masks
        for path, _ in self.paths:
            keep = magnitude_topk_mask(get_path(state.params, path), self.config.sparsity)
            masks = replace_path(masks, path, lambda m, k=keep: (m * k).astype(m.dtype))
        return with_masks(state, masks), {"density": density_record(masks, self.paths)}

    def _redense(self, state):
        masks = state.masks
        zero_before = {"/".join(p[:-1]): jnp.sum(get_path(state.params, p) == 0) for p, _ in self.paths}
        for path, _ in self.paths:
            masks = replace_path(masks, path, lambda m: jnp.ones_like(m))
        # params stay as they are: the pruned ones are exactly 0, their moments too (with_masks
        # zeroed both at the sparse prune), so they restart from zero
        return state.replace(masks=masks), {"density": density_record(masks, self.paths),
                                            "restarted_from_zero": zero_before}

    def before_epoch(self, state, epoch: int, inputs=None):
        if epoch == self.sparse_start:
            state, arrays = self._sparsify_jit(state)
            return state, [Event("sparsify", epoch + 1, 1, arrays)]
        if epoch == self.redense_start:
            state, arrays = self._redense_jit(state)
            return state, [Event("redense", epoch + 1, 2, arrays)]
        return state, []

    def record(self, event: Event) -> dict:
        a = jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), event.arrays)
        return {"event": event.kind, "epoch": event.epoch, "round": event.round, "method": self.name,
                "sparsity": self.config.sparsity, **a}

    def describe(self, record: dict) -> list[str]:
        """One line when the kernels go sparse and one when they go dense again."""
        if record.get("event") == "sparsify":
            return [f"dsd sparse phase (before epoch {record['epoch']}): the {100 * record['sparsity']:.0f} % "
                    "smallest-magnitude weights of each kernel masked"]
        if record.get("event") == "redense":
            return [f"dsd re-dense phase (before epoch {record['epoch']}): every weight trains again, the pruned "
                    "ones from 0 with fresh optimizer state"]
        return []


__all__ = ["DSD", "DSDConfig"]
