"""Null-space re-initialisation of dropped filters (Prakash et al. 2019, §5, "Reinitialization").

For one layer with W (F × D, D = kh·kw·c_in) the current filters, S the filters saved when
they were dropped and ``keep`` the live mask, the constraint set is

    C = {kept rows of W} ∪ {dropped rows of S}         (always F rows)

and each dropped filter gets a new direction in span(C)^⊥, the new directions mutually
orthogonal. Algorithm (no D × D complete QR): a reduced QR of Cᵀ (D × F) gives a basis Q of
span(C); random Gaussian vectors G are projected off it twice, ``G ← G − Q (Qᵀ G)``, then a
reduced QR of the projected G orders the dropped filters first and keeps its first columns.

Scale: each new filter gets the mean L2 norm of the layer's kept filters (the mean norm of
the saved filters if none is kept, √2 — He-normal's expected norm — if all are zero).

Fallback when the complement is too small (F + n_drop > D; e.g. a first layer of 32 filters
× 27 weights): only the ``D − n_drop`` most-overlapping constraint rows — highest RePr score
O_f among the rows of C — are kept as constraints, so the new filters are still orthogonal
to the rows that crowd the space most and mutually orthogonal. If n_drop > D, the first D
new filters are orthonormal and the rest are normalised projected random vectors. The rule
is deterministic given the key; outputs are always finite.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from repr_jax.layers import ConvLayer, get_path, replace_path, shape_groups
from repr_jax.ortho import filter_rows, normalize_rows

_TINY = 1e-12


def _mean_norm(rows, weights):
    norms = jnp.linalg.norm(rows, axis=-1)
    count = jnp.sum(weights)
    return jnp.where(count > 0, jnp.sum(norms * weights) / jnp.maximum(count, 1.0), 0.0)


def orthogonal_reinit(key: jax.Array, kernel: jax.Array, keep: jax.Array,
                      saved_kernel: jax.Array) -> jax.Array:
    """Kernel with each ``keep == False`` filter replaced by a new null-space filter.

    Args:
      key: PRNG key for the random directions.
      kernel: current ``(kh, kw, c_in, F)`` kernel (dropped filters may be zero).
      keep: ``(F,)`` bool/0-1, True for filters kept unchanged.
      saved_kernel: the kernel when the filters were dropped; its dropped rows are
        constraints too, so no filter comes back as (a multiple of) its old self.

    Returns the new kernel, same shape and dtype; kept filters are bit-identical.
    """
    f, d = kernel.shape[-1], kernel.size // kernel.shape[-1]
    dtype = kernel.dtype
    w = filter_rows(kernel).astype(jnp.float32)
    s = filter_rows(saved_kernel).astype(jnp.float32)
    keep = jnp.asarray(keep) > 0
    n_drop = jnp.sum(~keep)
    constraints = jnp.where(keep[:, None], w, s)                         # (F, D)

    # Constraint budget: all F rows if there is room, else the most-overlapping D − n_drop.
    budget = jnp.clip(d - n_drop, 0, f)
    c_hat = normalize_rows(constraints)
    overlap = jnp.sum(jnp.abs(c_hat @ c_hat.T - jnp.eye(f)), axis=-1)
    by_overlap = jnp.argsort(-overlap, stable=True)
    chosen = jnp.zeros((f,), bool).at[by_overlap].set(jnp.arange(f) < budget)
    order = jnp.argsort(~chosen, stable=True)                            # chosen rows first
    k = min(f, d)
    q, _ = jnp.linalg.qr(constraints[order].T)                           # (D, k) reduced
    q = q * (jnp.arange(k) < jnp.minimum(budget, k))[None, :]

    g = jax.random.normal(key, (d, f), jnp.float32)
    g = g - q @ (q.T @ g)
    g = g - q @ (q.T @ g)                                                # re-orthogonalise
    slots = jnp.argsort(keep, stable=True)                               # dropped filters first
    g = g[:, slots]
    q2, _ = jnp.linalg.qr(g[:, :k])                                      # (D, k)
    spare = normalize_rows(g[:, k:].T).T                                 # only if F > D
    directions = jnp.concatenate([q2, spare], axis=1)                    # (D, F) by slot
    new_rows = jnp.zeros((f, d), jnp.float32).at[slots].set(directions.T)

    scale = _mean_norm(w, keep.astype(jnp.float32))
    scale = jnp.where(scale > _TINY, scale, _mean_norm(s, (~keep).astype(jnp.float32)))
    scale = jnp.where(scale > _TINY, scale, jnp.sqrt(2.0))
    rows = jnp.where(keep[:, None], w, new_rows * scale)
    rows = jnp.where(jnp.isfinite(rows), rows, 0.0)
    out = rows.T.reshape(kernel.shape).astype(dtype)
    return jnp.where(keep, kernel, out)


@jax.jit
def _reinit_group(keys, kernels, keeps, saved):
    return jax.vmap(orthogonal_reinit)(keys, kernels, keeps, saved)


def reinit_layers(key: jax.Array, params, saved_params, keep: dict[str, jax.Array],
                  layers: tuple[ConvLayer, ...]):
    """Params with the dropped filters of every layer re-initialised (kernels only).

    Same-shaped layers are stacked and processed by one vmapped, jitted call per shape
    group (one jit per group: a single jit holding several batched QR groups has hung on
    XLA:CPU). ``keep[name]`` is the live mask at re-initialisation time.
    """
    groups = list(shape_groups(layers).values())
    for g, group in enumerate(groups):
        stack = lambda tree, leaf: jnp.stack([get_path(tree, l.path + (leaf,)) for l in group])
        keys = jax.random.split(jax.random.fold_in(key, g), len(group))
        keeps = jnp.stack([keep[l.name] for l in group])
        new = _reinit_group(keys, stack(params, "kernel"), keeps, stack(saved_params, "kernel"))
        for i, layer in enumerate(group):
            params = replace_path(params, layer.path + ("kernel",), lambda _, v=new[i]: v)
    return params
