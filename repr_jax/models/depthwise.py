"""A depthwise convolution that is fast on XLA:CPU: the shifted multiply–add form.

A depthwise conv (one k×k filter per channel: ``nn.Conv(C, (k, k), feature_group_count=C)``)
is, for output position (h, w) and channel c,

    y[n, h, w, c] = Σ_{i<kh, j<kw} x̃[n, s·h + i, s·w + j, c] · K[i, j, 0, c]  (+ b[c]),

with x̃ the zero-padded input and s the stride. XLA:CPU lowers the grouped convolution
(``feature_group_count = C``) to a slow path — forward and backward, 2–4× slower than the
same sum written as kh·kw strided slices of x̃ multiplied by a broadcast filter tap and added
(issue 43's measurement on a 2-core EPYC; ``benchmarks/`` measures it). :class:`DepthwiseConv`
computes that sum (``impl="shifted"``) or calls ``lax.conv_general_dilated`` (``"lax"``);
``"auto"`` picks the shifted form on the CPU and the convolution elsewhere (cuDNN's depthwise
kernels). Both give the same outputs and gradients to float32 round-off (the summation order
differs; ``tests/test_depthwise.py`` checks it against the convolution).

The parameters are ``nn.Conv``'s, named and shaped the same — ``kernel`` ``(kh, kw, 1, C)``
and ``bias`` ``(C,)`` — so checkpoints, the channel graph, pruning, export and shrinking see
the same layer. While the channel graph traces a model (:func:`repr_jax.layers.reference_convs`)
the layer uses the convolution, whose rule the graph knows; the function is the same.
Deviation from ``nn.Conv``: a channel multiplier (``features`` ≠ input channels) and
dilation are not supported here (use ``nn.Conv``).
"""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from repr_jax.layers import use_reference_convs
from repr_jax.models.grad_order import after

IMPLS = ("auto", "shifted", "lax")


def depthwise_shifted(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                      padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The depthwise conv of NHWC ``x`` with ``kernel`` ``(kh, kw, 1, C)`` as a sum of strided
    slices of the padded input times one filter tap each (module docstring)."""
    kh, kw = kernel.shape[:2]
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            window = jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1,
                                                      xp.shape[3]), (1, sh, sw, 1))
            term = window * kernel[i, j, 0].astype(x.dtype)
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
              padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """:func:`depthwise_shifted` with a backward pass that keeps only ``x`` and ``kernel``:
    autodiff of the shifted form would keep every one of the kh·kw shifted windows until the
    backward pass (9 copies of each depthwise input in a 3×3 layer — MobileNetV2 at 64×64
    needed 16 GiB); here the windows are formed again inside the backward pass, where the
    kernel's gradient consumes them at once; the input's gradient is computed after the
    kernel's (:func:`repr_jax.models.grad_order.after`), so XLA:CPU does not keep ``g`` and
    ``x`` alive until the end of the backward pass."""
    return depthwise_shifted(x, kernel, strides, padding)


def _depthwise_fwd(x, kernel, strides, padding):
    return depthwise_shifted(x, kernel, strides, padding), (x, kernel)


def _depthwise_bwd(strides, padding, residuals, g):
    x, kernel = residuals
    _, dx = jax.vjp(lambda a: depthwise_shifted(a, kernel, strides, padding), x)
    _, dk = jax.vjp(lambda k: depthwise_shifted(x, k, strides, padding), kernel)
    dk = dk(g)[0]
    return after(dx(g)[0], dk), dk   # the kernel's gradient first: g is freed early (grad_order)


depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_lax(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                  padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The same depthwise conv through ``lax.conv_general_dilated`` (``feature_group_count = C``)."""
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])


def _pairs(value) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(value, int):
        return (value, value), (value, value)
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in value)


class DepthwiseConv(nn.Module):
    """A depthwise conv with ``nn.Conv``'s parameters (module docstring). ``padding``: an int
    (that many zeros on every side, as ``nn.Conv(padding=1)``), ``"SAME"``, or per-axis
    pairs."""
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: int | str | tuple = 1
    use_bias: bool = False
    impl: str = "auto"
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    def resolved_padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.padding == "SAME":
            return tuple(((k - 1) // 2, k // 2) for k in self.kernel_size)
        return _pairs(self.padding)

    @nn.compact
    def __call__(self, x):
        if self.impl not in IMPLS:
            raise ValueError(f"unknown depthwise impl {self.impl!r}; choose from {', '.join(IMPLS)}")
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, 1, channels), jnp.float32)
        padding = self.resolved_padding()
        if self.padding == "SAME" and any(s != 1 for s in self.strides):
            # XLA's SAME with a stride pads to ceil(H / s) outputs; derive the pads the way it does
            padding = tuple(_same_pads(size, k, s) for size, k, s in zip(x.shape[1:3], self.kernel_size, self.strides))
        shifted = self.impl == "shifted" or (self.impl == "auto" and jax.default_backend() == "cpu")
        y = (depthwise_lax if use_reference_convs() or not shifted else depthwise)(
            x, kernel, tuple(self.strides), tuple(tuple(p) for p in padding))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (channels,), jnp.float32).astype(y.dtype)
        return y


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


__all__ = ["IMPLS", "DepthwiseConv", "depthwise", "depthwise_lax", "depthwise_shifted"]
