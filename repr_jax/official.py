"""The official RePr code's ranking metric and re-initialisation (iamaaditya/repr-ortho).

The paper (Prakash et al. 2019, Eq. 3) and the official code compute different things; both
are here so that either can be run (:mod:`repr_jax.ortho` holds the paper's O_f).

**Metric** (``ranking.py: inter_ortho``). With W the ``(kh·kw·c_in, F)`` kernel matrix (one
column per filter) and Ŵ = W / ‖W‖_F normalised as a *whole* (``tf.nn.l2_normalize`` without
an axis),

    P = ŴᵀŴ − diag(ŴᵀŴ),        s_f = | (1/F) Σ_j P[j, f] |,

the absolute value of the *signed* mean projection of the other filters on f (the paper
takes |·| element-wise and normalises each filter). Filters are ranked over the whole
network, highest s_f dropped first; the number dropped is ``int(p · n)``.

**Re-initialisation** (``ortho.py: get_ortho_weights``). A = W / ‖W‖_F reshaped to
``(rows, F)`` — when rows < F the flat tensor is reshaped to ``(F, rows)`` instead (a
reshape, not a transpose, as the official code does) —, then the reduced QR A = QR with
each column of Q multiplied by sign(R_jj), Q transposed back in the rows < F case. Dropped
filter f becomes ``gain · Q[:, f]``; the other filters are unchanged. The result stays
close to the filter's old direction (Q's first columns span the same space as W's) and has
unit norm, unlike the null-space re-initialisation of :mod:`repr_jax.reinit`.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from repr_jax.layers import ConvLayer, shape_groups, stack_leaves

_EPS = 1e-12   # tf.nn.l2_normalize's epsilon on the squared norm


def _whole_normalised(kernel: jax.Array) -> jax.Array:
    x = kernel.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x), _EPS))


def official_orthogonality(kernel: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The official code's per-filter score ``(F,)`` (module docstring); higher = drop first.

    Args:
      kernel: a Flax conv kernel ``(kh, kw, c_in, F)``.
      mask: optional ``(F,)`` live filters: dead filters' columns are zeroed before the
        normalisation, the mean runs over live filters, dead filters score 0. Without a
        mask (or all live) this is exactly the official score.
    """
    chex.assert_rank(kernel, 4)
    w = jnp.reshape(kernel.astype(jnp.float32), (-1, kernel.shape[-1]))
    count = jnp.asarray(kernel.shape[-1], jnp.float32)
    if mask is not None:
        live = (jnp.asarray(mask) > 0).astype(jnp.float32)
        w = w * live[None, :]
        count = jnp.maximum(jnp.sum(live), 1.0)
    w_hat = _whole_normalised(w)
    p = w_hat.T @ w_hat
    p = p - jnp.diag(jnp.diag(p))
    score = jnp.abs(jnp.sum(p, axis=0) / count)
    return score if mask is None else score * live


def official_reinit(kernel: jax.Array, dropped: jax.Array, gain: float = 1.0) -> jax.Array:
    """The official re-initialisation (module docstring): dropped filters (``dropped[f]``
    true) become ``gain`` × column f of the sign-fixed reduced QR of the whole-normalised
    kernel matrix; kept filters are returned unchanged. Pure; jit/vmap-able."""
    chex.assert_rank(kernel, 4)
    shape = kernel.shape
    cols = shape[-1]
    rows = shape[0] * shape[1] * shape[2]
    a = _whole_normalised(kernel)
    flat = jnp.reshape(a, (cols, rows) if rows < cols else (rows, cols))
    q, r = jnp.linalg.qr(flat, mode="reduced")
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    if rows < cols:
        q = q.T
    new = jnp.reshape(gain * q, shape).astype(kernel.dtype)
    return jnp.where(jnp.asarray(dropped, bool), new, kernel)


def official_score_layers(params, masks, layers: tuple[ConvLayer, ...]) -> dict[str, jax.Array]:
    """:func:`official_orthogonality` of every prunable conv, vmapped per kernel shape."""
    from repr_jax.ortho import score_layers
    return score_layers(params, masks, layers, metric=official_orthogonality)


def official_reinit_layers(params, dropped: dict[str, jax.Array], layers: tuple[ConvLayer, ...],
                           gain: float = 1.0):
    """``params`` with :func:`official_reinit` applied to every conv in ``dropped``
    (``{layer: (F,) bool}``); same-shaped layers are vmapped together."""
    from repr_jax.layers import replace_path
    todo = tuple(l for l in layers if l.name in dropped)
    for group in shape_groups(todo).values():
        kernels = stack_leaves(params, group)
        drop = jnp.stack([jnp.asarray(dropped[l.name], bool) for l in group])
        new = jax.vmap(lambda k, d: official_reinit(k, d, gain))(kernels, drop)
        for i, layer in enumerate(group):
            params = replace_path(params, layer.path + ("kernel",), lambda _, v=new[i]: v)
    return params


__all__ = ["official_orthogonality", "official_reinit", "official_reinit_layers", "official_score_layers"]
