"""ImageNet-style ResNets (He et al. 2016): ``resnet18``/``resnet34`` (basic blocks) and
``resnet50`` (bottlenecks), with projection shortcuts (1×1 conv + BN) wherever a block
changes width or stride.

Stages of 64/128/256/512 channels (×4 out of a bottleneck), [2,2,2,2] / [3,4,6,3] / [3,4,6,3]
blocks, global average pool, dense. The stem follows the input size, as is customary: for
inputs of at most 64×64 a 3×3 stride-1 conv and no max-pool (CIFAR-style: 11,173,962 /
21,282,122 / 23,520,842 parameters for 10 classes, the counts of the usual PyTorch CIFAR
ResNets); above, the paper's 7×7 stride-2 conv and 3×3 stride-2 max-pool. BatchNorm after
every conv, the downsampling stride on the 3×3 conv (torchvision's "ResNet v1.5"), He init.

Channel spec: any conv — ``stem``, ``layerS_blockB/conv1``, ``conv2``, ``conv3``,
``shortcut``. The block outputs (``conv2`` of a basic block, ``conv3`` of a bottleneck), the
projection shortcuts (and the stem, where an identity shortcut follows it) write into a
stage's residual stream and are tied there: an export shrinks them only together, when every
member of the stream has the same filter dead, so a spec gives them one width (each block's
own entry is read). Li et al.'s rule — prune the inner convs only — is what the structured
methods do by default.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from repr_jax.models.channels import check_names, width
from repr_jax.models.convnet import he_normal
from repr_jax.models.resnet import batch_norm

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _conv(features, size, stride, name):
    return nn.Conv(features, (size, size), (stride, stride), padding=size // 2, use_bias=False,
                   kernel_init=he_normal, name=name)


class Block(nn.Module):
    out: int                       # the block's output width (the stream's)
    stride: int
    inner: tuple[int, ...]         # inner widths: (conv1,) basic, (conv1, conv2) bottleneck
    project: bool                  # a 1×1 projection shortcut

    @nn.compact
    def __call__(self, x, train: bool):
        y = x
        if len(self.inner) == 1:   # basic: 3×3 (stride) → 3×3
            y = nn.relu(batch_norm(train, "conv1_bn")(_conv(self.inner[0], 3, self.stride, "conv1")(y)))
            y = batch_norm(train, "conv2_bn")(_conv(self.out, 3, 1, "conv2")(y))
        else:                      # bottleneck: 1×1 → 3×3 (stride) → 1×1
            y = nn.relu(batch_norm(train, "conv1_bn")(_conv(self.inner[0], 1, 1, "conv1")(y)))
            y = nn.relu(batch_norm(train, "conv2_bn")(_conv(self.inner[1], 3, self.stride, "conv2")(y)))
            y = batch_norm(train, "conv3_bn")(_conv(self.out, 1, 1, "conv3")(y))
        if self.project:
            x = batch_norm(train, "shortcut_bn")(_conv(self.out, 1, self.stride, "shortcut")(x))
        return nn.relu(x + y)


class ImageNetResNet(nn.Module):
    depth: int = 18
    num_classes: int = 10
    channels: tuple[tuple[str, int], ...] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        kind, counts = DEPTHS[self.depth]
        expansion = 4 if kind == "bottleneck" else 1
        blocks, c_in = [], 64
        for stage, n in enumerate(counts):
            base = 64 * 2 ** stage
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append((f"layer{stage + 1}_block{b}", base, stride, c_in != base * expansion or stride != 1))
                c_in = base * expansion
        last = "conv2" if kind == "basic" else "conv3"
        check_names(self.channels, ["stem"] + [f"{name}/{conv}" for name, *_ in blocks
                                               for conv in ("conv1", "conv2", "conv3", "shortcut")],
                    f"ResNet-{self.depth}")
        small = x.shape[1] <= 64
        stem = width(self.channels, "stem", 64)
        x = nn.relu(batch_norm(train, "stem_bn")(_conv(stem, 3 if small else 7, 1 if small else 2, "stem")(x)))
        if not small:
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for name, base, stride, project in blocks:
            inner = tuple(width(self.channels, f"{name}/conv{i}", base) for i in ((1,) if kind == "basic" else (1, 2)))
            out = width(self.channels, f"{name}/{last}", base * expansion)
            x = Block(out, stride, inner, project, name=name)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


__all__ = ["DEPTHS", "ImageNetResNet"]
