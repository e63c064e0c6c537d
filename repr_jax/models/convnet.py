"""The RePr paper's vanilla ConvNet C^n(F) (Prakash et al. 2019, §4).

Img → [conv 3×3 (F filters, stride 1, same) → (BatchNorm) → ReLU]^n → flatten → dense.
``variant="official"`` is the official code's version: 5×5 convs, each followed by a 2×2
max-pool. Conv layers are named ``conv{i}`` and their BatchNorms ``conv{i}_bn`` (see
:mod:`repr_jax.layers`); ``channels`` gives any conv its own width (a pruned export).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from repr_jax.models.channels import check_names, width

he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class ConvNet(nn.Module):
    num_classes: int = 10
    depth: int = 3
    width: int = 32
    batch_norm: bool = False
    variant: str = "paper"  # "paper": 3×3 convs; "official": 5×5 conv + 2×2 max-pool
    channels: tuple[tuple[str, int], ...] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant not in ("paper", "official"):
            raise ValueError(f"unknown ConvNet variant {self.variant!r}")
        names = [f"conv{i}" for i in range(self.depth)]
        check_names(self.channels, names, f"C^{self.depth}")
        size = (3, 3) if self.variant == "paper" else (5, 5)
        for name in names:
            x = nn.Conv(width(self.channels, name, self.width), size, padding="SAME",
                        use_bias=not self.batch_norm, kernel_init=he_normal, name=name)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"{name}_bn")(x)
            x = nn.relu(x)
            if self.variant == "official":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)
