"""The RePr paper's vanilla ConvNet C^n(F) (Prakash et al. 2019, §4).

Img → [conv 3×3 (F filters, stride 1, same) → (BatchNorm) → ReLU]^n → flatten → dense.
``variant="official"`` is the official code's version: 5×5 convs, each followed by a 2×2
max-pool. Conv layers are named ``conv{i}`` and their BatchNorms ``conv{i}_bn`` (see
:mod:`repr_jax.layers`).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class ConvNet(nn.Module):
    num_classes: int = 10
    depth: int = 3
    width: int = 32
    batch_norm: bool = False
    variant: str = "paper"  # "paper": 3×3 convs; "official": 5×5 conv + 2×2 max-pool

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant not in ("paper", "official"):
            raise ValueError(f"unknown ConvNet variant {self.variant!r}")
        size = (3, 3) if self.variant == "paper" else (5, 5)
        for i in range(self.depth):
            x = nn.Conv(self.width, size, padding="SAME", use_bias=not self.batch_norm,
                        kernel_init=he_normal, name=f"conv{i}")(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                 name=f"conv{i}_bn")(x)
            x = nn.relu(x)
            if self.variant == "official":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)
