"""Masks of any granularity: the masks tree, the optax transform that respects it, drop and revive.

``TrainState.masks`` has the structure of ``params``; each leaf's mask broadcasts onto it:
  * a scalar ``()`` — the leaf is not masked (value 1);
  * a filter mask ``(F,)`` — for a prunable conv (see :mod:`repr_jax.layers`) its kernel,
    bias and following BatchNorm scale/bias hold the same 0/1 vector, broadcast onto each
    leaf's last (filter) axis;
  * an element mask, the leaf's own shape — any leaf (conv or dense kernels) whose path a
    method asks for in :func:`init_masks` (Han et al. 2015 magnitude pruning, DSD).
A conv kernel with an element mask still carries its filters: a filter is live while any of
its elements is, dropping it zeroes all of them and reviving it sets all of them to 1.
Pruning only ever changes mask values, never shapes, so a jitted train step compiled once
serves the whole run.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from repr_jax.layers import ConvLayer, channel_leaves, get_path, replace_path


def init_masks(params, layers: tuple[ConvLayer, ...], element: tuple[tuple[str, ...], ...] = ()):
    """All-ones masks tree: ``(F,)`` for each prunable conv's channel leaves, the leaf's shape
    for every params path in ``element``, ``()`` elsewhere."""
    masks = jax.tree_util.tree_map(lambda _: jnp.ones((), jnp.float32), params)
    for layer in layers:
        for _, path in channel_leaves(layer):
            masks = replace_path(masks, path, lambda _, f=layer.num_filters: jnp.ones((f,), jnp.float32))
    for path in element:
        leaf = get_path(params, tuple(path))
        masks = replace_path(masks, tuple(path), lambda _, s=jnp.shape(leaf): jnp.ones(s, jnp.float32))
    return masks


def filter_live(mask) -> jax.Array:
    """``(F,)`` live filters of a kernel mask, filter- or element-shaped."""
    if jnp.ndim(mask) <= 1:
        return mask
    return jnp.any(mask != 0, axis=tuple(range(mask.ndim - 1))).astype(jnp.float32)


def live_filters(masks, layers: tuple[ConvLayer, ...]) -> dict[str, jax.Array]:
    """``{layer name: (F,) mask}`` read from each conv's kernel mask (a filter with an element
    mask is live while any of its elements is)."""
    return {layer.name: filter_live(get_path(masks, layer.path + ("kernel",))) for layer in layers}


def _set_filters(old, live):
    """Filter mask ``live`` onto an ``old`` leaf mask: a vector is replaced; an element mask
    keeps its pattern in filters live before and after, is 1 in revived filters, 0 in dead."""
    if jnp.ndim(old) <= 1:
        return jnp.array(live, copy=True)  # a buffer per leaf: the state is donated
    was_live = filter_live(old) > 0
    return jnp.where(live > 0, jnp.where(was_live, old, 1.0), 0.0).astype(old.dtype)


def with_live_filters(masks, layers: tuple[ConvLayer, ...], live: dict[str, jax.Array],
                      kernel_only: bool = False):
    """Write per-layer ``(F,)`` live filters onto kernel, bias and BatchNorm scale/bias masks
    (onto the kernel masks alone with ``kernel_only``: a dropped filter's bias and BatchNorm
    parameters then keep training, as in the PyTorch reimplementation siahuat0727/RePr)."""
    for layer in layers:
        if layer.name in live:
            value = jnp.asarray(live[layer.name], jnp.float32)
            for _, path in channel_leaves(layer):
                if kernel_only and path != layer.path + ("kernel",):
                    continue
                masks = replace_path(masks, path, lambda old, v=value: _set_filters(old, v))
    return masks


def with_element_mask(masks, path: tuple[str, ...], mask):
    """Masks with the element mask of the params leaf at ``path`` replaced by ``mask`` (same
    shape as the leaf, which :func:`init_masks` must have given an element mask)."""
    old = get_path(masks, tuple(path))
    mask = jnp.asarray(mask, jnp.float32)
    if jnp.shape(old) != jnp.shape(mask):
        raise ValueError(f"element mask for {'/'.join(path)} has shape {jnp.shape(mask)}, "
                         f"the masks tree holds {jnp.shape(old)} (declare it in init_masks)")
    return replace_path(masks, tuple(path), lambda _: mask)


def apply_masks(tree, masks):
    """``tree ⊙ masks`` leaf by leaf for 0/1 masks: entries whose mask is 0 become 0 (masks
    broadcast onto the filter axis); a leaf whose mask is a scalar is unmasked and passes
    through untouched.

    A select, ``where(m > 0, x, 0)``, not the product ``x · m``: XLA:CPU fuses a product
    into the conv weight-gradient that feeds it and lost 4× of a C³(32) train step's speed
    to that fusion (jaxlib 0.10.2 with YNNPACK fusion, ``benchmarks/run.py --only
    train_step`` on a 2-core CPU: masked 99 vs unmasked 389 img/s); with the select, 343 vs
    351 img/s (``benchmarks/RESULTS.md`` §3b).
    """
    return jax.tree_util.tree_map(
        lambda x, m: x if jnp.ndim(m) == 0 else jnp.where(m > 0, x, jnp.zeros((), x.dtype)), tree, masks)


class MaskedUpdatesState(NamedTuple):
    """Stateless: the masks arrive with each update call."""


def masked_updates() -> optax.GradientTransformationExtraArgs:
    """Zero the updates of dropped filters: ``u ← u ⊙ m``.

    The masks are passed at update time as the extra argument ``masks`` (a tree like
    ``params``), so they live in the train state rather than in the optimizer. Placed both
    first (gradients of dead filters never enter momentum or Adam moments) and last (weight
    decay and any moment residue never reach dead parameters), it keeps dropped parameters
    exactly 0 through any optax chain. ``optax.masked`` cannot do this: it masks whole leaves.
    """

    def init_fn(params):
        del params
        return MaskedUpdatesState()

    def update_fn(updates, state, params=None, *, masks=None, **extra_args):
        del params, extra_args
        if masks is None:
            return updates, state
        return apply_masks(updates, masks), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_moments(tx: optax.GradientTransformation, opt_state, factors):
    """Multiply every params-shaped part of ``opt_state`` (momentum, Adam μ/ν…) by ``factors``."""
    return optax.tree_utils.tree_map_params(
        tx, lambda moment, f: moment * f.astype(moment.dtype), opt_state, factors,
        transform_non_params=lambda x: x)


def with_masks(state, masks):
    """Install a new masks tree: masked parameters and their optimizer moments become 0."""
    return state.replace(params=apply_masks(state.params, masks), masks=masks,
                         opt_state=scale_moments(state.tx, state.opt_state, masks))


def drop_filters(state, layers: tuple[ConvLayer, ...], live: dict[str, jax.Array], kernel_only: bool = False):
    """Install new per-layer live filters: zero the dropped parameters (kernels alone with
    ``kernel_only``, see :func:`with_live_filters`) and their optimizer moments."""
    return with_masks(state, with_live_filters(state.masks, layers, live, kernel_only))


def revive_filters(state, layers: tuple[ConvLayer, ...], revived: dict[str, jax.Array],
                   new_params, reset_bias: bool = True):
    """Bring filters back: take their kernels from ``new_params``, reset BatchNorm and moments.

    For each revived channel (``revived[name][f] == 1``): the kernel comes from
    ``new_params``, the conv bias is 0 (kept as it is with ``reset_bias=False``: a frozen
    filter's bias, as the official RePr code leaves it), BatchNorm γ = 1, β = 0, running
    mean 0, variance 1, and every optimizer moment of those parameters is 0 (Prakash et al.
    2019, §5: "their training-specific parameters from BatchNorm and Adam"). Masks become 1.
    """
    params, stats = state.params, state.batch_stats
    live = live_filters(state.masks, layers)
    for layer in layers:
        if layer.name not in revived:
            continue
        r = jnp.asarray(revived[layer.name], jnp.float32)
        new_kernel = get_path(new_params, layer.path + ("kernel",))
        params = replace_path(params, layer.path + ("kernel",),
                              lambda k, n=new_kernel, r=r: jnp.where(r > 0, n, k))
        resets = [(layer.path + ("bias",), 0.0)] if layer.has_bias and reset_bias else []
        if layer.bn_path is not None:
            resets += [(layer.bn_path + ("scale",), 1.0), (layer.bn_path + ("bias",), 0.0)]
            for leaf, value in (("mean", 0.0), ("var", 1.0)):
                stats = replace_path(stats, layer.bn_path + (leaf,),
                                     lambda s, r=r, v=value: jnp.where(r > 0, v, s))
        for path, value in resets:
            params = replace_path(params, path, lambda p, r=r, v=value: jnp.where(r > 0, v, p))
        live[layer.name] = jnp.maximum(live[layer.name], r)
    masks = with_live_filters(state.masks, layers, live)
    keep_moments = with_live_filters(
        jax.tree_util.tree_map(jnp.ones_like, state.masks), layers,
        {name: 1.0 - jnp.asarray(r, jnp.float32) for name, r in revived.items()})
    return state.replace(params=params, batch_stats=stats, masks=masks,
                         opt_state=scale_moments(state.tx, state.opt_state, keep_moments))
