"""MobileNetV2 (Sandler et al. 2018, Table 2) for small inputs: inverted residual blocks.

Each block: 1×1 *expand* conv to t·C_in channels (absent when t = 1) → BN → ReLU6 → 3×3
*depthwise* conv (one filter per channel, stride s) → BN → ReLU6 → 1×1 *project* conv to C
→ BN (linear bottleneck), plus the input when s = 1 and C_in = C. The paper's settings
(t, C, n, s): (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1),
a 32-filter 3×3 stem, a 1280-filter 1×1 last conv, global average pool, dense. 2,236,682
parameters for 10 classes (torchvision's ``mobilenet_v2(num_classes=10)`` has the same).

Deviations for 32×32 inputs, as customary on CIFAR: the stem and the second stage use stride
1 (the paper's 2 and 2 are for 224×224), so the last feature map is 4×4 instead of 7×7. No
dropout before the classifier (the paper's 0.2 is ImageNet's); He-normal init. The depthwise
convs are :class:`repr_jax.models.depthwise.DepthwiseConv` — ``nn.Conv``'s parameters, the
shifted multiply–add form on the CPU (XLA:CPU's grouped convolution is slow), and the 1×1
convs :class:`repr_jax.models.pointwise.PointwiseConv` — a matrix product on the CPU (XLA:CPU
transposes every activation for a convolution's kernel gradient). Its train and
evaluation programs compile with the XLA:CPU options it declares (``cpu_compiler_options``:
YNN fusion for reductions only, the memory-optimised scheduler; :mod:`repr_jax.xla_options`).

Channel spec: ``blockI/expand`` (the hidden width; the depthwise conv follows it — its
channels are its input's), ``blockI/project``, ``stem`` and ``last``. In the channel graph a
depthwise channel is tied to the expand channel feeding it, and the project convs of a
stage are tied by the residual sums, so an export removes an expand channel only with its
depthwise filter, and a residual stream's channels not at all (see
:mod:`repr_jax.compress.graph`).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from repr_jax.models.channels import check_names, width
from repr_jax.models.convnet import he_normal
from repr_jax.models.depthwise import DepthwiseConv
from repr_jax.models.pointwise import PointwiseConv
from repr_jax.models.resnet import batch_norm

SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    out: int                  # project width C
    stride: int
    hidden: int | None        # expand width t·C_in (None: no expand conv, t = 1)
    residual: bool

    @nn.compact
    def __call__(self, x, train: bool):
        h = x
        if self.hidden is not None:
            h = nn.relu6(batch_norm(train, "expand_bn")(PointwiseConv(self.hidden, kernel_init=he_normal, name="expand")(h)))
        c = h.shape[-1]
        h = DepthwiseConv((3, 3), (self.stride, self.stride), padding=1, use_bias=False, kernel_init=he_normal,
                          name="dw")(h)
        h = nn.relu6(batch_norm(train, "dw_bn")(h))
        h = batch_norm(train, "project_bn")(PointwiseConv(self.out, kernel_init=he_normal, name="project")(h))
        return x + h if self.residual else h


class MobileNetV2(nn.Module):
    num_classes: int = 10
    channels: tuple[tuple[str, int], ...] = ()

    # XLA:CPU options for its train/eval programs (repr_jax.xla_options): YNN fusion for the
    # reductions only (its elementwise fusions held 14.2 GiB of temporaries for the gradient at
    # 64×64, batch 50; without YNN reductions XLA:CPU's tree-reduction reduce-windows are slow)
    # and the memory-optimised scheduler: 2.7 GiB, and a 2.9× faster step (benchmarks/RESULTS.md §8b);
    # 2.0 GiB with its convs' backward passes ordered (repr_jax.models.grad_order, §8f).
    cpu_compiler_options = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
                            "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}

    @nn.compact
    def __call__(self, x, train: bool = False):
        blocks = []
        c_in = 32
        for stage, (t, c, n, s) in enumerate(SETTINGS):
            for j in range(n):
                stride = s if j == 0 and stage not in (0, 1) else 1   # CIFAR: stage 2 keeps 32×32 too
                blocks.append((f"block{len(blocks)}", t, c, stride, c_in))
                c_in = c
        names = ["stem", "last"] + [f"{b[0]}/{part}" for b in blocks for part in ("expand", "dw", "project")]
        check_names(self.channels, names, "MobileNetV2")
        x = nn.Conv(width(self.channels, "stem", 32), (3, 3), padding=1, use_bias=False, kernel_init=he_normal,
                    name="stem")(x)
        x = nn.relu6(batch_norm(train, "stem_bn")(x))
        for name, t, c, stride, c_in in blocks:
            hidden = None if t == 1 else width(self.channels, f"{name}/expand", t * c_in)
            x = InvertedResidual(width(self.channels, f"{name}/project", c), stride, hidden,
                                 residual=stride == 1 and c_in == c, name=name)(x, train)
        x = nn.relu6(batch_norm(train, "last_bn")(PointwiseConv(width(self.channels, "last", 1280), kernel_init=he_normal,
                                                         name="last")(x)))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


__all__ = ["MobileNetV2", "SETTINGS"]
