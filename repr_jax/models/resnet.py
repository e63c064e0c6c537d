"""CIFAR ResNet-20/32/56/110 (He et al. 2016, §4.2).

conv 3×3 (16) → 3 stages of n basic blocks (16, 32, 64 channels; depth = 6n + 2) →
global average pool → dense. Shortcuts use option A (identity, stride-2 subsampling and
zero-padded channels), giving ResNet-20 its 0.27 M parameters. Every conv is followed by
BatchNorm (``<conv>_bn``) and is prunable; dropping the second conv's filter of a block
leaves the shortcut's channel alive.

Channel spec: only the first conv of each block (``stage{s}_block{b}/conv1``) may change
width. The stem conv and every block's second conv write into the residual stream, which
the option-A shortcuts add and zero-pad channel by channel, so their widths are tied to the
stage width (the rule Li et al. 2017 apply: prune only the first conv of each block).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from repr_jax.models.channels import check_names, width
from repr_jax.models.convnet import he_normal

RESIDUAL_RULE = "the stem and each block's conv2 are tied to the residual stream; resize conv1 only"


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """The zoo's BatchNorm (momentum 0.9, batch statistics in training)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)


class BasicBlock(nn.Module):
    channels: int
    stride: int = 1
    inner: int | None = None      # conv1's width (default: ``channels``)

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.Conv(self.inner or self.channels, (3, 3), (self.stride, self.stride), padding=1,
                    use_bias=False, kernel_init=he_normal, name="conv1")(x)
        y = nn.relu(batch_norm(train, "conv1_bn")(y))
        y = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False,
                    kernel_init=he_normal, name="conv2")(y)
        y = batch_norm(train, "conv2_bn")(y)
        if self.stride != 1 or x.shape[-1] != self.channels:  # option A shortcut
            # lax.slice, as x[:, ::s, ::s] lowers on jax >= 0.9.1 (earlier jax makes it a gather,
            # which the channel graph of repr_jax.compress has no rule for)
            x = jax.lax.slice(x, (0, 0, 0, 0), x.shape, (1, self.stride, self.stride, 1))
            extra = self.channels - x.shape[-1]
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(x + y)


class CifarResNet(nn.Module):
    depth: int = 20
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32, 64)
    channels: tuple[tuple[str, int], ...] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
        n = (self.depth - 2) // 6
        blocks = [(s, b, f"stage{s + 1}_block{b}") for s in range(len(self.widths)) for b in range(n)]
        check_names(self.channels, [f"{name}/conv1" for *_, name in blocks],
                    f"ResNet-{self.depth}", RESIDUAL_RULE)
        x = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False,
                    kernel_init=he_normal, name="conv0")(x)
        x = nn.relu(batch_norm(train, "conv0_bn")(x))
        for stage, b, name in blocks:
            stride = 2 if stage > 0 and b == 0 else 1
            inner = width(self.channels, f"{name}/conv1", self.widths[stage])
            x = BasicBlock(self.widths[stage], stride, inner, name=name)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)
