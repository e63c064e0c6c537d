"""A model's structure, traced once per process: its channel graph and its variables' shapes.

Both depend on the module and the input shape only, never on parameter values, so they are
kept per structure (Torch-Pruning builds its dependency graph from one traced call; here a
second export, criterion or method setup on the same architecture reuses the first trace):
:func:`channel_graph` (the :class:`~repr_jax.compress.graph.ChannelGraph`, keyed by the module,
the variables' shapes and dtypes and the input shape) and :func:`variable_shapes` (what
``model.init`` would create, as ``jax.ShapeDtypeStruct`` leaves). A Linen module is keyed by
its fields (``repr``: two modules built alike share an entry); any other object (an NNX
adapter) by identity, kept alive by its entry. :func:`forget_graphs` empties both caches.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.compress.graph import ChannelGraph, trace_channel_graph

CACHE_SIZE = 16
_graphs: dict = {}        # structure key → (model, ChannelGraph)
_shapes: dict = {}        # (module type, fields, input shape) → variables' shapes


def _module_key(model):
    return ("linen", type(model), repr(model)) if isinstance(model, nn.Module) else ("object", id(model))


def _remember(cache: dict, key, value, size: int):
    if len(cache) >= size:
        cache.pop(next(iter(cache)))        # the oldest entry
    cache[key] = value
    return value


def channel_graph(model, variables, input_shape, dense_units: bool = False) -> ChannelGraph:
    """The channel graph of ``model`` with variables of these shapes on inputs of
    ``input_shape`` (a batch of one: ``(1, H, W, C)``; multiply–adds are per example) —
    :func:`~repr_jax.compress.graph.trace_channel_graph` (``dense_units``: dense layers'
    units as sources too), traced once per structure."""
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    shapes = jax.tree_util.tree_map(lambda x: (tuple(np.shape(x)), str(getattr(x, "dtype", ""))), variables)
    key = (_module_key(model), jax.tree_util.tree_structure(variables),
           tuple(jax.tree_util.tree_leaves(shapes)), tuple(input_shape), bool(dense_units))
    hit = _graphs.get(key)
    if hit is not None and (key[0][0] == "linen" or hit[0] is model):
        return hit[1]
    graph = trace_channel_graph(model, variables, input_shape, dense_units)
    return _remember(_graphs, key, (model, graph), CACHE_SIZE)[1]


def variable_shapes(model, input_shape):
    """``model.init``'s variables as ``jax.ShapeDtypeStruct`` leaves on inputs of
    ``input_shape`` (one abstract trace per Linen module structure; other models each time)."""
    key = _module_key(model) + (tuple(input_shape),)
    if key[0] == "linen" and key in _shapes:
        return _shapes[key]
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False))
    return _remember(_shapes, key, shapes, 4 * CACHE_SIZE) if key[0] == "linen" else shapes


def forget_graphs() -> None:
    """Empty both caches (e.g. to time a first export)."""
    _graphs.clear()
    _shapes.clear()


__all__ = ["CACHE_SIZE", "channel_graph", "forget_graphs", "variable_shapes"]
