"""The RePr paper's vanilla ConvNet C^n(F) (Prakash et al. 2019, §4) and the official code's.

``variant="paper"`` (the paper's description, §4): Img → [conv 3×3 (F filters, stride 1,
same) → (BatchNorm) → ReLU]^n → flatten → dense, He-normal conv kernels.

``variant="official"`` (iamaaditya/repr-ortho ``model.py``, TF-slim): [conv 5×5 with bias →
ReLU → max-pool 3×3, stride 2, SAME]^n → flatten → dense (C³(32): 4·4·32 = 512 → 10); every
kernel (convs and the dense head) drawn from a normal truncated at ±2σ with σ = 0.04,
biases 0 (TF's ``truncated_normal_initializer(stddev=0.04)``, slim's zero bias).

``variant="pool2"``: 5×5 convs each followed by a 2×2/2 max-pool, He init (what this
library called "official" before it matched the official code exactly).

``variant="vanilla"``: the public PyTorch reimplementation's ``Vanilla`` (siahuat0727/RePr
``models/vanilla.py`` at every commit since 2019-03-16, the code behind its README's
results): [conv 3×3, padding 1, with bias → ReLU]^n → flatten → dense 32·32·32 → 10, every
weight and bias drawn as PyTorch's default does, U(±1/√fan_in) (``kaiming_uniform_(a=√5)``
and the bias rule of ``nn.Conv2d`` / ``nn.Linear``). The same graph as ``paper``; only the
initialisation differs. ``variant="vanilla_pool"``: its first commit (2019-03-15): the same
with a 2×2/2 max-pool after every ReLU, 4·4·32 = 512 → 10. The flatten order is NHWC here,
NCHW in PyTorch: a fixed permutation of the head's rows, the same distribution.

Regularised heads (DropConnect vs Dropout, Wan et al. 2013): ``hidden = H > 0`` inserts a
fully connected ReLU layer of H units (``hidden``) between the flatten and the head;
``dropout = r`` drops its outputs at rate r (Flax ``Dropout``, stream ``"dropout"``);
``dropconnect = r`` drops its *connections* at rate r (keep probability p = 1 − r,
:class:`repr_jax.models.dropconnect.DropConnectDense`, stream ``"dropconnect"``), with
``dropconnect_mode`` ``example`` (a mask per example, the paper's) or ``batch``, and
``dropconnect_inference`` ``moment`` (the paper's moment matching) or ``mean``, and
``dropconnect_bias`` (the bias dropped too, the paper's; architectures written before it
existed read as ``False``, what they trained with). Without a hidden layer,
``dropconnect`` applies to the head itself (identity activation: moment matching is exact).

Conv layers are named ``conv{i}`` and their BatchNorms ``conv{i}_bn`` (see
:mod:`repr_jax.layers`); ``channels`` gives any conv its own width (a pruned export).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from repr_jax.models.channels import check_names, width
from repr_jax.models.dropconnect import INFERENCE, DropConnectDense, identity

VARIANTS = ("paper", "official", "pool2", "vanilla", "vanilla_pool")
DROPCONNECT_MODES = ("example", "batch")
HEAD_OPTIONS = {"hidden": 0, "dropout": 0.0, "dropconnect": 0.0, "dropconnect_mode": "example",
                "dropconnect_inference": "moment", "dropconnect_bias": False}   # the plain head; as read
# from an architecture without the key (the bias was never dropped before the option existed)
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def truncated_normal_004(key, shape, dtype=jnp.float32):
    """TF 1.x ``truncated_normal_initializer(stddev=0.04)``: N(0, 0.04²) redrawn outside ±2σ."""
    return 0.04 * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


# PyTorch's default: kaiming_uniform_(a=√5) = U(±√(6 / ((1 + 5)·fan_in))) = U(±1/√fan_in)
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
    """PyTorch's default bias of a conv / linear layer with ``fan_in`` inputs: U(±1/√fan_in)."""
    bound = 1.0 / fan_in ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class ConvNet(nn.Module):
    num_classes: int = 10
    depth: int = 3
    width: int = 32
    batch_norm: bool = False
    variant: str = "paper"
    channels: tuple[tuple[str, int], ...] = ()
    hidden: int = 0
    dropout: float = 0.0
    dropconnect: float = 0.0
    dropconnect_mode: str = "example"
    dropconnect_inference: str = "moment"
    dropconnect_bias: bool = False

    def _check_head(self):
        if self.hidden < 0 or not (0.0 <= self.dropout < 1.0) or not (0.0 <= self.dropconnect < 1.0):
            raise ValueError(f"convnet head: hidden >= 0 and dropout, dropconnect in [0, 1) needed, got "
                             f"{self.hidden}, {self.dropout}, {self.dropconnect}")
        if self.dropout and not self.hidden:
            raise ValueError("convnet dropout needs a hidden layer (model.hidden > 0)")
        if self.dropconnect_mode not in DROPCONNECT_MODES or self.dropconnect_inference not in INFERENCE:
            raise ValueError(f"convnet dropconnect_mode must be one of {', '.join(DROPCONNECT_MODES)} and "
                             f"dropconnect_inference one of {', '.join(INFERENCE)}")

    def _dropconnect(self, features, activation, name, **init):
        return DropConnectDense(features, keep=1.0 - self.dropconnect, activation=activation,
                                per_example=self.dropconnect_mode == "example",
                                inference=self.dropconnect_inference, drop_bias=self.dropconnect_bias,
                                name=name, **init)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ConvNet variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        names = [f"conv{i}" for i in range(self.depth)]
        check_names(self.channels, names, f"C^{self.depth}")
        official = self.variant == "official"
        torch_init = self.variant in ("vanilla", "vanilla_pool")
        size = (3, 3) if self.variant in ("paper", "vanilla", "vanilla_pool") else (5, 5)
        init = truncated_normal_004 if official else torch_default_kernel if torch_init else he_normal
        for name in names:
            bias = {"bias_init": torch_default_bias(size[0] * size[1] * x.shape[-1])} if torch_init else {}
            x = nn.Conv(width(self.channels, name, self.width), size, padding="SAME",
                        use_bias=not self.batch_norm, kernel_init=init, name=name, **bias)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"{name}_bn")(x)
            x = nn.relu(x)
            if official:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            elif self.variant in ("pool2", "vanilla_pool"):
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        self._check_head()
        def dense_init(fan_in):
            if torch_init:
                return {"kernel_init": init, "bias_init": torch_default_bias(fan_in)}
            return {"kernel_init": init} if official else {}
        if self.hidden:
            if self.dropconnect:
                x = self._dropconnect(self.hidden, nn.relu, "hidden", **dense_init(x.shape[-1]))(x, train)
            else:
                x = nn.relu(nn.Dense(self.hidden, name="hidden", **dense_init(x.shape[-1]))(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        elif self.dropconnect:
            return self._dropconnect(self.num_classes, identity, "head",
                                     **dense_init(x.shape[-1]))(x, train).astype(jnp.float32)
        dense = nn.Dense(self.num_classes, name="head", **dense_init(x.shape[-1]))
        return dense(x).astype(jnp.float32)
