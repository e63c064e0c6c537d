"""The RePr inter-filter orthogonality metric (Prakash et al. 2019, §5, Eq. 3).

For a conv kernel ``(kh, kw, c_in, F)`` let W be the F × (kh·kw·c_in) matrix whose rows are
the flattened filters and Ŵ its row-normalised copy. Then

    P = |Ŵ Ŵᵀ − I|,        O_f = Σ_j P[f, j] / J,

with J the number of filters. A high O_f means filter f overlaps many others: it is the
most redundant and is dropped first. With a mask, only live filters enter P and J.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import chex

from repr_jax.layers import ConvLayer, shape_groups, stack_leaves
from repr_jax.masks import filter_live

_EPS = 1e-12


def filter_rows(kernel: jax.Array) -> jax.Array:
    """Flax kernel ``(kh, kw, c_in, F)`` → W, one flattened filter per row ``(F, kh·kw·c_in)``."""
    chex.assert_rank(kernel, 4)
    return jnp.reshape(kernel, (-1, kernel.shape[-1])).T


def normalize_rows(w: jax.Array) -> jax.Array:
    """Rows scaled to unit length; all-zero rows stay zero (no NaN, finite gradients)."""
    sq = jnp.sum(w * w, axis=-1, keepdims=True)
    safe = jnp.where(sq > _EPS, sq, 1.0)
    return jnp.where(sq > _EPS, w * jax.lax.rsqrt(safe), 0.0)


def overlap_matrix(kernel: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """P = |Ŵ Ŵᵀ − I| (F × F); rows and columns of masked filters are 0.

    A zero filter's diagonal entry is |0 − 1| = 1, as the formula gives.
    """
    w_hat = normalize_rows(filter_rows(kernel).astype(jnp.float32))
    p = jnp.abs(w_hat @ w_hat.T - jnp.eye(w_hat.shape[0], dtype=w_hat.dtype))
    if mask is not None:
        live = (jnp.asarray(mask) > 0).astype(p.dtype)
        p = p * live[:, None] * live[None, :]
    return p


def filter_orthogonality(kernel: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Per-filter RePr score O_f = Σ_j P[f, j] / J, shape ``(F,)``; higher = drop first.

    Args:
      kernel: a Flax conv kernel ``(kh, kw, c_in, F)``.
      mask: optional ``(F,)`` 0/1 live-filter mask. Only live filters count in P and in J;
        dead filters score 0 (rankings ignore them anyway).
    """
    p = overlap_matrix(kernel, mask)
    if mask is None:
        count = jnp.asarray(kernel.shape[-1], p.dtype)
    else:
        count = jnp.maximum(jnp.sum(jnp.asarray(mask) > 0), 1).astype(p.dtype)
    return jnp.sum(p, axis=-1) / count


@functools.partial(jax.jit, static_argnames=("layers", "metric"))
def score_layers(params, masks, layers: tuple[ConvLayer, ...], metric=filter_orthogonality) -> dict[str, jax.Array]:
    """O_f (or another per-kernel ``metric(kernel, live) → (F,)``, e.g. the official code's)
    for every prunable conv at once: same-shaped layers stacked, one vmap per shape.

    Returns ``{layer name: (F,) scores}``; one jitted program for the whole network.
    """
    scores = {}
    for group in shape_groups(layers).values():
        kernels = stack_leaves(params, group)
        live = jax.vmap(filter_live)(stack_leaves(masks, group))
        out = jax.vmap(metric)(kernels, live)
        scores.update({layer.name: out[i] for i, layer in enumerate(group)})
    return scores


def orthogonality_penalty(params, masks, layers: tuple[ConvLayer, ...]) -> jax.Array:
    """Σ_layers Σ_f O_f over live filters: the optional regulariser λ·Σ P (paper's "OL")."""
    return sum(jnp.sum(s) for s in score_layers(params, masks, layers).values())
