"""A 1×1 convolution that is fast on XLA:CPU: one matrix product over the flattened pixels.

A 1×1 conv with stride 1 and no padding (``nn.Conv(F, (1, 1))``) is, for every pixel,

    y[n, h, w, f] = Σ_c x[n, h, w, c] · K[0, 0, c, f]  (+ b[f]),

i.e. ``x.reshape(-1, C) @ K[0, 0]`` reshaped back. XLA:CPU lowers the convolution's kernel
gradient (a contraction over batch, height and width) through a convolution whose operands it
first transposes to a channel-major layout — in MobileNetV2's train step those transposes
took a quarter of the time (``benchmarks/RESULTS.md`` §8e). Written as a matrix product,
autodiff gives two more matrix products on the same row-major ``(N·H·W, C)`` views and no
transpose: fwd + bwd of a 128×32×32 layer 144 → 24 channels took 29 ms against the
convolution's 55 ms on a 2-core Zen 4 EPYC (24 → 144: 30 vs 47 ms). The layer calls
:func:`pointwise`, the same products with the backward pass ordered for XLA:CPU's scheduler
(:mod:`repr_jax.models.grad_order`).

:class:`PointwiseConv` has ``nn.Conv``'s parameters, named and shaped the same — ``kernel``
``(1, 1, C, F)`` and ``bias`` ``(F,)`` — so checkpoints, the channel graph, pruning, export and
shrinking see the same layer. ``impl="auto"`` uses the matrix product on the CPU and the
convolution elsewhere; while the channel graph traces a model
(:func:`repr_jax.layers.reference_convs`) the layer is the convolution, whose rule the graph
knows. Both give the same outputs to float32 round-off (``tests/test_depthwise.py``).
Deviation from ``nn.Conv``: strides, padding, dilation and groups are not taken (a strided
1×1 conv is ``nn.Conv``'s).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from repr_jax.layers import use_reference_convs
from repr_jax.models.grad_order import after

IMPLS = ("auto", "matmul", "lax")


def pointwise_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The 1×1 conv of ``x`` (``(..., C)``) with ``kernel`` ``(1, 1, C, F)`` as one matrix
    product of the flattened pixels (module docstring)."""
    flat = x.reshape(-1, x.shape[-1]) @ kernel[0, 0].astype(x.dtype)
    return flat.reshape(*x.shape[:-1], kernel.shape[-1])


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`pointwise_matmul` with its backward pass written out — the kernel's gradient
    ``xᵀ·g`` and the input's ``g·Kᵀ``, the matrix products autodiff derives — computing the
    input's gradient after the kernel's (:func:`repr_jax.models.grad_order.after`): XLA:CPU
    otherwise defers every kernel gradient to the end of the backward pass and keeps each
    layer's input and output gradient alive until then."""
    return pointwise_matmul(x, kernel)


def _pointwise_fwd(x, kernel):
    return pointwise_matmul(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, g):
    x, kernel = residuals
    flat_x, flat_g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dk = (flat_x.T @ flat_g).astype(kernel.dtype)[None, None]
    dx = (flat_g @ kernel[0, 0].astype(g.dtype).T).reshape(x.shape).astype(x.dtype)
    return after(dx, dk), dk


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def pointwise_lax(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The same 1×1 conv of NHWC ``x`` through ``lax.conv_general_dilated``."""
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class PointwiseConv(nn.Module):
    """A 1×1 conv with ``nn.Conv``'s parameters (module docstring)."""
    features: int
    use_bias: bool = False
    impl: str = "auto"
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        if self.impl not in IMPLS:
            raise ValueError(f"unknown pointwise impl {self.impl!r}; choose from {', '.join(IMPLS)}")
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), jnp.float32)
        matmul = self.impl == "matmul" or (self.impl == "auto" and jax.default_backend() == "cpu")
        y = (pointwise_lax if use_reference_convs() or not matmul else pointwise)(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(y.dtype)
        return y


__all__ = ["IMPLS", "PointwiseConv", "pointwise", "pointwise_lax", "pointwise_matmul"]
