"""Han et al.'s (2015) MNIST anchors, as in their Table 1 (the Caffe reference models).

* ``lenet300`` — LeNet-300-100: flatten → dense 300 → ReLU → dense 100 → ReLU → dense
  ``num_classes``; 266,610 parameters on 28×28×1 inputs (Han et al.: "267K").
* ``lenet5`` — LeNet-5 (Caffe's): conv1 20 5×5 VALID → 2×2 max-pool → conv2 50 5×5 VALID →
  2×2 max-pool → flatten → dense 500 → ReLU → dense ``num_classes``; 431,080 parameters on
  28×28×1 (Han et al.: "431K"). As in Caffe's model there is no nonlinearity after the convs.

LeNet-300-100 also takes Wan et al.'s (2013) regularisers on its two hidden layers (fc1, fc2):
``dropout = r`` (Flax ``Dropout`` on their outputs) or ``dropconnect = r`` (their connections
dropped, :class:`repr_jax.models.dropconnect.DropConnectDense`; ``dropconnect_mode``,
``dropconnect_inference``, ``dropconnect_bias`` as for ``convnet``). Wan et al.'s MNIST nets
were 784-800-800-10 with the regulariser on the hidden layers; here it is Han et al.'s
784-300-100-10.

Both take any input size (the first dense layer follows the flattened size) and a channel
spec: ``conv1``/``conv2`` (LeNet-5's filters) and ``fc1``/``fc2`` (the hidden units), so a
model whose filters or dead hidden units were removed is rebuilt smaller. He-normal init.
Deviation: Caffe initialises with Xavier; He-normal is this zoo's default for every model.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from repr_jax.models.channels import check_names, width
from repr_jax.models.convnet import DROPCONNECT_MODES, he_normal
from repr_jax.models.dropconnect import INFERENCE, DropConnectDense


class LeNet300(nn.Module):
    num_classes: int = 10
    channels: tuple[tuple[str, int], ...] = ()
    dropout: float = 0.0
    dropconnect: float = 0.0
    dropconnect_mode: str = "example"
    dropconnect_inference: str = "moment"
    dropconnect_bias: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_names(self.channels, ("fc1", "fc2"), "LeNet-300-100")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.dropconnect < 1.0):
            raise ValueError(f"LeNet-300-100: dropout and dropconnect must be in [0, 1), got {self.dropout}, "
                             f"{self.dropconnect}")
        if self.dropconnect_mode not in DROPCONNECT_MODES or self.dropconnect_inference not in INFERENCE:
            raise ValueError(f"LeNet-300-100 dropconnect_mode must be one of {', '.join(DROPCONNECT_MODES)} and "
                             f"dropconnect_inference one of {', '.join(INFERENCE)}")
        x = x.reshape(x.shape[0], -1)
        for name, units in (("fc1", 300), ("fc2", 100)):
            units = width(self.channels, name, units)
            if self.dropconnect:
                x = DropConnectDense(units, keep=1.0 - self.dropconnect, activation=nn.relu,
                                     per_example=self.dropconnect_mode == "example",
                                     inference=self.dropconnect_inference, drop_bias=self.dropconnect_bias,
                                     kernel_init=he_normal, name=name)(x, train)
            else:
                x = nn.relu(nn.Dense(units, kernel_init=he_normal, name=name)(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


class LeNet5(nn.Module):
    num_classes: int = 10
    channels: tuple[tuple[str, int], ...] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_names(self.channels, ("conv1", "conv2", "fc1"), "LeNet-5")
        if min(x.shape[1:3]) < 16:   # 5x5 VALID, 2x2 pool, 5x5 VALID, 2x2 pool leave nothing below 16
            raise ValueError(f"LeNet-5 needs images of at least 16x16 (two 5x5 VALID convs, two 2x2 pools), "
                             f"got {x.shape[1]}x{x.shape[2]}")
        for name, filters in (("conv1", 20), ("conv2", 50)):
            x = nn.Conv(width(self.channels, name, filters), (5, 5), padding="VALID", kernel_init=he_normal,
                        name=name)(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(width(self.channels, "fc1", 500), kernel_init=he_normal, name="fc1")(x))
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


__all__ = ["LeNet300", "LeNet5"]
