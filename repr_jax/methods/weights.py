"""What the weight-level methods (``han``, ``dsd``) share: which kernels carry element masks,
magnitude thresholds, dead-unit removal along the channel graph, and the CSR storage report
written at the end of a run.

A *kernel* here is every params leaf named ``kernel`` — conv ``(kh, kw, c_in, F)`` and dense
``(in, out)`` alike (Han et al. 2015 prune both). ``kinds`` selects ``all``, ``conv`` or
``dense``. The masks are element masks (:mod:`repr_jax.masks`): pruning changes their values
and zeroes the pruned weights and their optimizer moments; shapes never change.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.layers import get_path, replace_path

KINDS = ("all", "conv", "dense")


def kernel_paths(params, kinds: str = "all") -> tuple[tuple[tuple[str, ...], str], ...]:
    """``((path, "conv" | "dense"), …)`` of every kernel leaf of the selected ``kinds``, in
    params order."""
    if kinds not in KINDS:
        raise ValueError(f"unknown kernel kinds {kinds!r}; choose from {', '.join(KINDS)}")
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(str(getattr(p, "key", p)) for p in path)
        ndim = len(jnp.shape(leaf))
        if keys[-1] == "kernel" and ndim in (2, 4):
            kind = "conv" if ndim == 4 else "dense"
            if kinds in ("all", kind):
                found.append((keys, kind))
    return tuple(found)


def model_kernels(context, kinds: str, method: str):
    """:func:`kernel_paths` of the context's model (shapes only, nothing computed);
    ``ValueError`` naming ``method`` when it has none of ``kinds``."""
    shapes = context.variable_shapes()["params"]
    paths = kernel_paths(shapes, kinds)
    if not paths:
        raise ValueError(f"{method}: the model has no {kinds} kernels")
    return paths


def magnitude_threshold_mask(weights: jax.Array, mask: jax.Array, quality) -> tuple[jax.Array, jax.Array]:
    """Han et al. (2015, §3.3): keep a connection while ``|w| ≥ q · std(W)``.

    ``std`` is over the layer's whole kernel as it stands (pruned entries are 0 and count),
    so the threshold of a later iteration is taken on the pruned layer. Returns
    ``(new mask, threshold)``; a pruned entry never comes back (``new ≤ mask``)."""
    w = jnp.where(mask > 0, weights, 0.0).astype(jnp.float32)
    threshold = quality * jnp.std(w)
    return jnp.where((jnp.abs(w) >= threshold) & (mask > 0), 1.0, 0.0).astype(mask.dtype), threshold


def magnitude_topk_mask(weights: jax.Array, sparsity: float) -> jax.Array:
    """DSD's sparse phase (Han et al. 2017, Alg. 1): keep the ``round((1 − s)·n)`` entries of
    largest ``|w|`` (ties towards the lower flat index); ``s`` is the fraction removed."""
    flat = jnp.abs(weights.reshape(-1)).astype(jnp.float32)
    keep = int(round((1.0 - sparsity) * flat.size))
    order = jnp.argsort(-flat, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(flat.size))
    return (rank < keep).astype(jnp.float32).reshape(weights.shape)


# ----------------------------------------------------------------------------- dead units
def channel_links(graph) -> tuple:
    """For each kernel input axis fed by prunable convs: ``(kernel path, axis, size, ((producer,
    in_idx, out_idx), …), fixed)`` — producer filter ``out_idx[k]`` feeds input index
    ``in_idx[k]`` (a residual sum feeds one index from several producers); ``fixed`` marks
    inputs with a source that is never pruned (the image, a padded shortcut)."""
    from repr_jax.compress.graph import FIXED
    out = []
    for use in graph.uses:
        if use.collection != "params" or use.path[-1] != "kernel" or use.produced_by is not None:
            continue
        pairs: dict[str, list] = {}
        for i, sources in enumerate(use.sources):
            for src in sources:
                if src != FIXED:
                    pairs.setdefault(src[0], []).append((i, src[1]))
        fixed = np.array([FIXED in s or not s for s in use.sources])
        out.append((use.path, use.axis, len(use.sources), tuple((p, np.array([a for a, _ in v]), np.array([b for _, b in v]))
                                              for p, v in pairs.items()), fixed))
    return tuple(out)


def _slice_alive(mask: jax.Array, axis: int, size: int) -> jax.Array:
    """``(size,)``: whether each index of ``axis`` still has a non-zero connection."""
    if jnp.ndim(mask) < 2:                 # a filter mask: inputs are never cut individually
        return jnp.ones((size,), jnp.float32)
    others = tuple(a for a in range(mask.ndim) if a != axis)
    return jnp.any(mask != 0, axis=others).astype(jnp.float32)


def output_alive(masks, links, live: dict) -> dict:
    """``{conv: (F,)}`` 1 where a filter still has an outgoing connection: some kernel that
    reads it keeps a non-zero weight on that input (Han et al. 2015, §3.4: a neuron with no
    output connections is dead). A conv nothing reads keeps all its filters."""
    alive = {name: jnp.zeros_like(v) for name, v in live.items()}
    read = set()
    for path, axis, size, pairs, _ in links:
        slice_alive = _slice_alive(get_path(masks, path), axis, size)
        for producer, in_idx, out_idx in pairs:
            if producer in alive:
                read.add(producer)
                alive[producer] = alive[producer].at[out_idx].max(slice_alive[in_idx])
    return {n: (a if n in read else jnp.ones_like(a)) for n, a in alive.items()}


def cut_dead_inputs(masks, links, live: dict):
    """Zero every kernel input slice all of whose sources are dead filters (their output is
    exactly 0 — a dropped filter's BatchNorm scale and shift are masked too), so the weights
    on them stop counting as stored connections."""
    for path, axis, _, pairs, fixed in links:
        mask = get_path(masks, path)
        if jnp.ndim(mask) < 2:
            continue
        alive = jnp.asarray(fixed, jnp.float32)
        for producer, in_idx, out_idx in pairs:
            alive = alive.at[in_idx].max(live[producer][out_idx] if producer in live else 1.0)
        shape = [1] * mask.ndim
        shape[axis] = mask.shape[axis]
        masks = replace_path(masks, path, lambda m, a=alive.reshape(shape): m * a.astype(m.dtype))
    return masks


# ----------------------------------------------------------------------------- records / reports
def density_record(masks, paths) -> dict:
    """``{layer: fraction of its kernel's connections kept}`` (arrays; pure)."""
    return {"/".join(p[:-1]): jnp.mean((get_path(masks, p) != 0).astype(jnp.float32)) for p, _ in paths}


def write_storage_report(state, out) -> dict:
    """``storage.json`` / ``storage.md`` in run directory ``out``: dense vs CSR bytes of the
    masked parameters (:func:`repr_jax.compress.csr.storage_report`); returns the totals."""
    from repr_jax.compress.csr import storage_markdown, storage_report
    from repr_jax.masks import apply_masks
    params = jax.device_get(apply_masks(state.params, state.masks))
    report = storage_report(params)
    (out / "storage.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "storage.md").write_text("# CSR storage (Han et al. 2015; relative indices: 8-bit conv, "
                                    "5-bit dense)\n\n" + storage_markdown(report) + "\n")
    return report["total"]


__all__ = ["KINDS", "channel_links", "cut_dead_inputs", "density_record", "kernel_paths",
           "magnitude_threshold_mask", "magnitude_topk_mask", "model_kernels", "output_alive", "write_storage_report"]
