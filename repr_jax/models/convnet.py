"""The RePr paper's vanilla ConvNet C^n(F) (Prakash et al. 2019, §4) and the official code's.

``variant="paper"`` (the paper's description, §4): Img → [conv 3×3 (F filters, stride 1,
same) → (BatchNorm) → ReLU]^n → flatten → dense, He-normal conv kernels.

``variant="official"`` (iamaaditya/repr-ortho ``model.py``, TF-slim): [conv 5×5 with bias →
ReLU → max-pool 3×3, stride 2, SAME]^n → flatten → dense (C³(32): 4·4·32 = 512 → 10); every
kernel (convs and the dense head) drawn from a normal truncated at ±2σ with σ = 0.04,
biases 0 (TF's ``truncated_normal_initializer(stddev=0.04)``, slim's zero bias).

``variant="pool2"``: 5×5 convs each followed by a 2×2/2 max-pool, He init (what this
library called "official" before it matched the official code exactly).

Conv layers are named ``conv{i}`` and their BatchNorms ``conv{i}_bn`` (see
:mod:`repr_jax.layers`); ``channels`` gives any conv its own width (a pruned export).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from repr_jax.models.channels import check_names, width

VARIANTS = ("paper", "official", "pool2")
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def truncated_normal_004(key, shape, dtype=jnp.float32):
    """TF 1.x ``truncated_normal_initializer(stddev=0.04)``: N(0, 0.04²) redrawn outside ±2σ."""
    return 0.04 * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


class ConvNet(nn.Module):
    num_classes: int = 10
    depth: int = 3
    width: int = 32
    batch_norm: bool = False
    variant: str = "paper"
    channels: tuple[tuple[str, int], ...] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ConvNet variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        names = [f"conv{i}" for i in range(self.depth)]
        check_names(self.channels, names, f"C^{self.depth}")
        official = self.variant == "official"
        size = (3, 3) if self.variant == "paper" else (5, 5)
        init = truncated_normal_004 if official else he_normal
        for name in names:
            x = nn.Conv(width(self.channels, name, self.width), size, padding="SAME",
                        use_bias=not self.batch_norm, kernel_init=init, name=name)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"{name}_bn")(x)
            x = nn.relu(x)
            if official:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            elif self.variant == "pool2":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        dense = nn.Dense(self.num_classes, name="head", **({"kernel_init": init} if official else {}))
        return dense(x).astype(jnp.float32)
