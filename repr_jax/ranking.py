"""Turn per-filter scores into new live-filter masks (global or per-layer ranking).

Convention: a higher score means "drop first" (criteria whose natural order is the other
way negate their scores). The number dropped is ``floor(p · n + 0.5)`` (or ``int(p · n)``,
the official code's, with ``rounding="floor"``) where n counts the
live filters of the eligible layers (all prunable layers except the excluded ones) —
network-wide for the global ranking (Prakash et al. 2019, §5: "ranked globally"), per layer
for the per-layer ranking. No layer falls below ``min_keep`` live filters (default 1, so
no layer ever dies). When that cap binds in the per-layer ranking, that layer drops fewer.
In the global ranking, ``fill_quota=True`` (RePr: "drop the worst p %") drops the
next-ranked filters of other layers instead, so the count stays ⌊p·n⌉; ``fill_quota=False``
is a threshold (Network Slimming, Liu et al. 2017 §3.3: every channel below the global
percentile is pruned, none above it) and drops fewer. Callers count the drops from the
returned masks.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.masks import live_filters
from repr_jax.ortho import score_layers


@functools.partial(jax.jit, static_argnames=("names", "per_layer", "exclude", "min_keep", "rounding", "fill_quota"))
def _select(scores, live, fraction, names, per_layer, exclude, min_keep, rounding="nearest", fill_quota=True):
    sizes = [scores[n].shape[0] for n in names]
    layer_id = jnp.asarray(np.repeat(np.arange(len(names)), sizes))
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    eligible_layer = jnp.asarray([n not in exclude for n in names])
    s = jnp.concatenate([scores[n].astype(jnp.float32) for n in names])
    alive = jnp.concatenate([live[n] for n in names]) > 0
    eligible = alive & eligible_layer[layer_id]
    s = jnp.where(eligible, s, -jnp.inf)

    # One global sort (highest first; ineligible filters sort last as -inf). A filter's rank
    # inside its layer is the running count of its layer's filters before it in that order.
    order = jnp.argsort(-s, stable=True)
    lid = layer_id[order]
    onehot = (lid[:, None] == jnp.arange(len(names))[None, :]).astype(jnp.int32)
    rank_in_layer = jnp.take_along_axis(jnp.cumsum(onehot, axis=0), lid[:, None], axis=1)[:, 0] - 1
    live_count = jax.ops.segment_sum(eligible.astype(jnp.int32), layer_id, len(names))
    cap = jnp.maximum(live_count - min_keep, 0)
    droppable = eligible[order] & (rank_in_layer < cap[lid])
    half = 0.5 if rounding == "nearest" else 0.0
    if per_layer:
        quota = jnp.floor(fraction * live_count + half).astype(jnp.int32)
        drop_sorted = droppable & (rank_in_layer < quota[lid])
    else:
        quota = jnp.floor(fraction * jnp.sum(eligible) + half).astype(jnp.int32)
        counted = droppable if fill_quota else eligible[order]   # threshold: the top quota, capped
        drop_sorted = droppable & (jnp.cumsum(counted) - 1 < quota)
    drop = jnp.zeros_like(eligible).at[order].set(drop_sorted)
    new_live = (alive & ~drop).astype(jnp.float32)
    return {n: new_live[offsets[i]: offsets[i] + sizes[i]] for i, n in enumerate(names)}


ROUNDINGS = ("nearest", "floor")


def select_drops(scores: dict, live: dict, fraction: float, *, per_layer: bool = False,
                 exclude: tuple[str, ...] = (), min_keep: int = 1, rounding: str = "nearest",
                 fill_quota: bool = True) -> dict:
    """New ``{layer: (F,) 0/1}`` live masks after dropping the highest-scoring ``fraction``.

    Args:
      scores: ``{layer: (F,)}``, higher = drop first. Already-dead filters are ignored.
      live: ``{layer: (F,)}`` current live masks (same keys).
      fraction: p in [0, 1]; drops ``floor(p·n + 0.5)`` of n eligible live filters, or
        ``floor(p·n)`` with ``rounding="floor"`` (the official code's ``int(p·n)``).
      per_layer: rank within each layer instead of globally.
      exclude: layer names never pruned (e.g. the first conv).
      min_keep: minimum live filters left in every layer.
      fill_quota: global ranking only — when ``min_keep`` spares filters inside the quota,
        drop the next-ranked ones instead (True) or drop fewer (False: a threshold).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drop fraction must be in [0, 1], got {fraction}")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; choose from {', '.join(ROUNDINGS)}")
    names = tuple(scores)
    return _select(scores, {n: live[n] for n in names}, jnp.float32(fraction), names=names,
                   per_layer=per_layer, exclude=tuple(exclude), min_keep=int(min_keep), rounding=rounding,
                   fill_quota=bool(fill_quota))


@functools.partial(jax.jit, static_argnames=("layers", "per_layer", "exclude", "min_keep"))
def rank_by_orthogonality(params, masks, fraction, *, layers, per_layer: bool = False,
                          exclude: tuple[str, ...] = (), min_keep: int = 1):
    """RePr's drop step as one jitted program: O_f for every layer, then the ranking.

    Returns ``(scores, new_live)``, both ``{layer name: (F,)}``; see :func:`select_drops`.
    """
    scores = score_layers(params, masks, layers)
    names = tuple(layer.name for layer in layers)
    new_live = _select(scores, live_filters(masks, layers), jnp.asarray(fraction, jnp.float32),
                       names=names, per_layer=per_layer, exclude=tuple(exclude), min_keep=min_keep)
    return scores, new_live
