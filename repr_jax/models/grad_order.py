"""Ordering a layer's backward pass for XLA:CPU's scheduler: parameter gradient first.

A layer's backward pass computes two things from its output gradient ``g``: the input
gradient ``dx`` (which the next layer down needs at once) and the parameter gradient ``dk``
(needed only by the optimizer, at the very end). XLA:CPU's scheduler, even the
memory-optimised one, computes ``dx`` and defers ``dk`` — and with it keeps ``g`` and the
layer's saved input alive until the end of the backward pass. In MobileNetV2's train step
(64×64, batch 50) the kernel gradients of every 1×1 and depthwise conv ran after the whole
backward pass, so every block's activations and output gradients were alive at once: 2.86 GiB
of temporaries (``compiled.memory_analysis()``; the buffer assignment's live ranges named
them). ``jax.lax.optimization_barrier((dx, dk))`` did not change the schedule (2.86 GiB);
making ``dx`` depend on ``dk`` as data did: 2.03 GiB, and the step no slower
(``benchmarks/RESULTS.md`` §8f).

:func:`after` returns ``x`` unchanged in value but computed from ``deps`` too:
``x + 0 · Σ deps``. For finite ``deps`` that adds an exact zero (a ``-0.0`` element of ``x``
becomes ``+0.0``, which no later sum or product tells apart). A non-finite parameter gradient
makes ``x`` NaN — the gradient is non-finite already then, and the run diverges either way.
XLA does not fold ``0 · s`` for floats (it would be wrong for ``s = inf``), so the dependency
survives compilation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def after(x: jax.Array, *deps: jax.Array) -> jax.Array:
    """``x``, made to depend on every array in ``deps`` so that a scheduler computes them
    first (module docstring): ``x + 0 · Σ_d Σ d``."""
    total = sum(jnp.sum(d).astype(x.dtype) for d in deps)
    return x + jnp.zeros((), x.dtype) * total


__all__ = ["after"]
