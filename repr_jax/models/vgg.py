"""CIFAR VGG-16 with BatchNorm.

13 conv 3×3 (no bias) → BatchNorm → ReLU layers in five blocks (64, 128, 256, 512, 512
channels), 2×2 max-pool after each block, then a head on the 512-d feature:

* ``variant="paper"`` (the default): one dense 512 → 10 — the CIFAR VGG-16 of Torch-Pruning's
  and Network Slimming's code, 14,724,042 parameters;
* ``variant="li"``: Li et al. (2017) §4.1's, "Batch Normalization after each convolutional
  layer and the first linear layer": dense 512 → 512 → BatchNorm → ReLU → dense 512 → 10,
  14,987,722 parameters (their Table 1: 1.5e7; VGG-16-A exports to 5,397,034).

``channels`` gives any conv (``conv0`` … ``conv12``) its own width.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from repr_jax.models.channels import check_names, width
from repr_jax.models.convnet import he_normal

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG_VARIANTS = ("paper", "li")


class VGG(nn.Module):
    num_classes: int = 10
    config: tuple = VGG16
    channels: tuple[tuple[str, int], ...] = ()
    variant: str = "paper"

    @nn.compact
    def __call__(self, x, train: bool = False):
        convs = sum(item != "M" for item in self.config)
        check_names(self.channels, [f"conv{i}" for i in range(convs)], "VGG")
        i = 0
        for item in self.config:
            if item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = nn.Conv(width(self.channels, f"conv{i}", item), (3, 3), padding=1, use_bias=False,
                        kernel_init=he_normal, name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"conv{i}_bn")(x)
            x = nn.relu(x)
            i += 1
        x = x.reshape(x.shape[0], -1)
        if self.variant == "li":
            x = nn.Dense(512, name="fc")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="fc_bn")(x))
        elif self.variant != "paper":
            raise ValueError(f"unknown vgg16 variant {self.variant!r}; choose from {', '.join(VGG_VARIANTS)}")
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)
