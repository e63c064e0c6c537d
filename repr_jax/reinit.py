"""Null-space re-initialisation of dropped filters (Prakash et al. 2019, §5, "Reinitialization").

For one layer with W (F × D, D = kh·kw·c_in) the current filters, S the filters saved when
they were dropped and ``keep`` the live mask, the constraint set is

    C = {kept rows of W} ∪ {dropped rows of S}         (always F rows)

and each dropped filter gets a new direction in span(C)^⊥, the new directions mutually
orthogonal. Algorithm (no D × D complete QR): block Gram–Schmidt with
re-orthogonalisation (BCGS2, a QR factorisation) turns the F constraint rows into an
orthonormal basis Q of span(C) (dependent rows give zero columns, so they claim no
direction), then one Gaussian vector per dropped filter is orthonormalised against Q and
the new filters before it — the same null space a complete QR gives, in O(D·F²) matmul
work that batches under ``vmap``.

Scale: each new filter gets the mean L2 norm of the layer's kept filters that are not all
zero (a dead kept filter would shrink the new ones), else of the saved filters, else √2 —
He-normal's expected norm. The paper does not say how re-initialised filters are scaled:
this is our choice.

Fallback when the complement is too small (F + n_drop > D; e.g. a first layer of 32 filters
× 27 weights): only the ``D − n_drop`` most-overlapping constraint rows — highest RePr score
O_f among the rows of C — are kept as constraints, so the new filters are still orthogonal
to the rows that crowd the space most and mutually orthogonal. If n_drop > D, the first D
new filters are orthonormal and the rest are normalised random vectors. The rule
is deterministic given the key; outputs are always finite.

``style="reimpl"`` follows the public PyTorch reimplementation siahuat0727/RePr
(``main.py: reinitialize``, ``utils.py: qr_null``) instead: every row of C is a constraint
(no budget), each new filter is a *unit* null-space vector with every weight clamped to
±1/√D (PyTorch's default conv bound), and where the null space runs out — the first conv's
27 weights under 32 filters, always — the remaining dropped filters (in index order) are
drawn U(±1/√D). One deviation: the reimplementation takes the trailing columns of scipy's
pivoted full QR as its null-space basis, we take random orthonormal vectors of the same
null space (a basis of it is arbitrary either way).
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from repr_jax.layers import ConvLayer, replace_path, shape_groups, stack_leaves
from repr_jax.ortho import filter_rows, normalize_rows

_TINY = 1e-12
STYLES = ("paper", "reimpl")


def _mean_norm(rows, weights):
    """Mean L2 norm of the rows with weight 1 and a non-zero norm (0 when there are none)."""
    norms = jnp.linalg.norm(rows, axis=-1)
    weights = weights * (norms > _TINY)
    count = jnp.sum(weights)
    return jnp.where(count > 0, jnp.sum(norms * weights) / jnp.maximum(count, 1.0), 0.0)


def _gram_schmidt_block(vectors, use, tol):
    """CGS2 inside one small block (D × b): columns orthonormalised in order; unused or
    dependent columns (residual below ``tol`` × input norm) come out as zero."""
    d, b = vectors.shape

    def body(j, carry):
        q, ok = carry
        v = vectors[:, j]
        for _ in range(2):
            v = v - q @ (q.T @ v)
        norm = jnp.linalg.norm(v)
        keep = use[j] & (norm > tol * jnp.linalg.norm(vectors[:, j])) & (norm > _TINY)
        q = q.at[:, j].set(jnp.where(keep, v / jnp.where(keep, norm, 1.0), 0.0))
        return q, ok.at[j].set(keep)

    return jax.lax.fori_loop(0, b, body, (jnp.zeros_like(vectors), jnp.zeros((b,), bool)))


def _orthonormalize(vectors, use, basis=None, tol: float = 1e-5, block: int = 64):
    """Block classical Gram–Schmidt with re-orthogonalisation (BCGS2).

    Columns of ``vectors`` (D × K) are processed in blocks of ``block``: each block is
    projected off ``basis`` (D × B, orthonormal or zero columns) and off the blocks already
    produced with matmuls, then orthonormalised inside the block; with several blocks the
    whole step runs twice so that small residuals cannot leave a column tilted towards
    earlier blocks. Columns with
    ``use[j] == False`` or linearly dependent ones come out as zero, so they never claim a
    direction. Returns (Q, ok), Q of shape D × K and ok marking the kept columns. BLAS-3
    work and ⌈K/block⌉ passes over Q — unlike XLA:CPU's QR (slow) or LAPACK calls after a
    batched matmul (which fail to compile under the YNNPACK CPU flag).
    """
    d, k = vectors.shape
    block = min(block, k)
    n_blocks = -(-k // block)
    padded = n_blocks * block
    v_all = jnp.pad(vectors, ((0, 0), (0, padded - k)))
    use_all = jnp.pad(use, (0, padded - k))
    basis = jnp.zeros((d, 0), vectors.dtype) if basis is None else basis

    def project(x, q):
        return x - q @ (q.T @ x)

    def body(b, carry):
        q, ok = carry
        vb = jax.lax.dynamic_slice_in_dim(v_all, b * block, block, axis=1)
        ub = jax.lax.dynamic_slice_in_dim(use_all, b * block, block)
        for _ in range(1 if n_blocks == 1 else 2):
            for _ in range(2):
                vb = project(project(vb, basis), q)
            vb, ub = _gram_schmidt_block(vb, ub, tol)
        q = jax.lax.dynamic_update_slice_in_dim(q, vb, b * block, axis=1)
        ok = jax.lax.dynamic_update_slice_in_dim(ok, ub, b * block, axis=0)
        return q, ok

    q, ok = jax.lax.fori_loop(0, n_blocks, body,
                              (jnp.zeros_like(v_all), jnp.zeros((padded,), bool)))
    return q[:, :k], ok[:k]


def orthogonal_reinit(key: jax.Array, kernel: jax.Array, keep: jax.Array,
                      saved_kernel: jax.Array, style: str = "paper") -> jax.Array:
    """Kernel with each ``keep == False`` filter replaced by a new null-space filter.

    Args:
      key: PRNG key for the random directions.
      kernel: current ``(kh, kw, c_in, F)`` kernel (dropped filters may be zero).
      keep: ``(F,)`` bool/0-1, True for filters kept unchanged.
      saved_kernel: the kernel when the filters were dropped; its dropped rows are
        constraints too, so no filter comes back as (a multiple of) its old self.
      style: ``paper`` (scaled to the kept filters' mean norm, budgeted fallback) or
        ``reimpl`` (unit vectors clamped to ±1/√D, uniform fallback): module docstring.

    Returns the new kernel, same shape and dtype; kept filters are bit-identical.
    """
    if style not in STYLES:
        raise ValueError(f"unknown re-initialisation style {style!r}; choose from {', '.join(STYLES)}")
    chex.assert_equal_shape([kernel, saved_kernel])
    chex.assert_shape(keep, (kernel.shape[-1],))
    f, d = kernel.shape[-1], kernel.size // kernel.shape[-1]
    w = filter_rows(kernel).astype(jnp.float32)
    s = filter_rows(saved_kernel).astype(jnp.float32)
    keep = jnp.asarray(keep) > 0
    drop = ~keep
    n_drop = jnp.sum(drop)
    constraints = jnp.where(keep[:, None], w, s)                         # (F, D)

    # Constraint budget: all F rows if there is room, else the most-overlapping D − n_drop.
    budget = jnp.clip(d - n_drop, 0, f) if style == "paper" else f
    c_hat = normalize_rows(constraints)
    overlap = jnp.sum(jnp.abs(c_hat @ c_hat.T - jnp.eye(f)), axis=-1)
    by_overlap = jnp.argsort(-overlap, stable=True)
    chosen = jnp.zeros((f,), bool).at[by_overlap].set(jnp.arange(f) < budget)
    q_c, _ = _orthonormalize(constraints.T, chosen)                      # basis of span(C)

    # One random vector per dropped filter, orthonormalised against span(C) and each other.
    g = jax.random.normal(key, (d, f), jnp.float32)
    q_new, ok = _orthonormalize(g, drop, basis=q_c)
    if style == "reimpl":
        bound = 1.0 / jnp.sqrt(jnp.float32(d))
        uniform = jax.random.uniform(jax.random.fold_in(key, 1), (f, d), jnp.float32, -bound, bound)
        new_rows = jnp.where(ok[:, None], jnp.clip(q_new.T, -bound, bound), uniform)
    else:
        fallback = normalize_rows(g.T).T                                 # only if n_drop > room
        directions = jnp.where(ok[None, :], q_new, fallback).T           # (F, D)
        scale = _mean_norm(w, keep.astype(jnp.float32))
        scale = jnp.where(scale > _TINY, scale, _mean_norm(s, drop.astype(jnp.float32)))
        scale = jnp.where(scale > _TINY, scale, jnp.sqrt(2.0))
        new_rows = directions * scale
    rows = jnp.where(keep[:, None], w, new_rows)
    rows = jnp.where(jnp.isfinite(rows), rows, 0.0)
    out = rows.T.reshape(kernel.shape).astype(kernel.dtype)
    return jnp.where(keep, kernel, out)


@functools.partial(jax.jit, static_argnames=("layers", "style"))
def reinit_layers(key: jax.Array, params, saved_params, keep: dict[str, jax.Array],
                  layers: tuple[ConvLayer, ...], style: str = "paper"):
    """Params with the dropped filters of every layer re-initialised (kernels only).

    One jitted program: same-shaped layers are stacked and processed by one ``vmap`` of
    :func:`orthogonal_reinit` (its ``style``) per shape group. ``keep[name]`` is the live
    mask at re-initialisation time; the key of group g's i-th layer is
    ``split(fold_in(key, g), len(group))[i]``.
    """
    for g, group in enumerate(shape_groups(layers).values()):
        keys = jax.random.split(jax.random.fold_in(key, g), len(group))
        keeps = jnp.stack([keep[l.name] for l in group])
        new = jax.vmap(functools.partial(orthogonal_reinit, style=style))(
            keys, stack_leaves(params, group), keeps, stack_leaves(saved_params, group))
        for i, layer in enumerate(group):
            params = replace_path(params, layer.path + ("kernel",), lambda _, v=new[i]: v)
    return params
