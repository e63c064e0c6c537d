"""Which convolutions are prunable, addressed by their path in the params pytree.

A prunable layer is any Flax convolution (a params dict holding a 4-D ``kernel`` of shape
``(kh, kw, c_in, F)``), whatever its name. Its optional ``bias`` is the sibling leaf. Its
BatchNorm is found from the model's channel graph (:func:`coupled_layers`), never from
names: the normalisation module whose ``scale``, ``bias`` (params) and ``mean``, ``var``
(batch stats) are indexed one-to-one by this conv's output channels — wherever it sits
(``conv → BatchNorm``, ``conv → ReLU → BatchNorm``) and whatever it is called
(``BatchNorm_0`` in a user's Linen model, ``bn1`` in NNX). Masks, scores and
re-initialisation all address filter ``f`` of a layer as ``kernel[..., f]``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One prunable conv: where its parameters live and its kernel shape."""
    name: str                      # "stage1_block0/conv1"
    path: tuple[str, ...]          # params path of the conv module
    bn_path: tuple[str, ...] | None
    has_bias: bool
    shape: tuple[int, int, int, int]

    @property
    def num_filters(self) -> int:
        return self.shape[-1]

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.shape[:-1]))


def prunable_convs(params: Mapping[str, Any], batch_dims: int = 0) -> tuple[ConvLayer, ...]:
    """Every conv in the order of the params' names (Flax sorts them: ``conv10`` before
    ``conv2``), without BatchNorm; :func:`coupled_layers` gives the forward pass's order.
    ``batch_dims``: leading axes every leaf carries (1 for a population of seeds stacked on
    axis 0); shapes exclude them."""
    found: list[ConvLayer] = []

    def walk(node, path):
        for key, child in node.items():
            if not isinstance(child, Mapping):
                continue
            kernel = child.get("kernel")
            if kernel is not None and len(getattr(kernel, "shape", ())) == 4 + batch_dims:
                found.append(ConvLayer(
                    name="/".join(path + (key,)), path=path + (key,), bn_path=None,
                    has_bias="bias" in child, shape=tuple(int(d) for d in kernel.shape[batch_dims:])))
            else:
                walk(child, path + (key,))

    walk(params, ())
    return tuple(found)


def coupled_layers(params: Mapping[str, Any], graph) -> tuple[ConvLayer, ...]:
    """:func:`prunable_convs` with each conv's BatchNorm found in ``graph`` (a
    :class:`repr_jax.compress.graph.ChannelGraph` of the model): the module whose params
    ``scale`` and ``bias`` and batch stats ``mean`` and ``var`` each have an axis indexed
    by exactly this conv's channels, channel i by filter i alone (a depthwise conv: by exactly
    its output's sources, filter i tied to the input channel i it filters). A normalisation
    that mixes several sources (after a residual sum) belongs to no single conv. In the order
    of ``graph.layers`` — the forward pass's, the first conv first."""
    produced = {use.produced_by: use.sources for use in graph.uses if use.produced_by is not None}
    layers = []
    for layer in prunable_convs(params):
        one_to_one = tuple(frozenset([(layer.name, i)]) for i in range(layer.num_filters))
        output = produced.get(layer.name, one_to_one)
        owned = {(use.collection, use.path) for use in graph.uses if use.sources == output}
        bn = next((path[:-1] for collection, path in sorted(owned, key=lambda cp: len(cp[1]))
                   if collection == "params" and path[-1] == "scale"
                   and {("params", path[:-1] + ("bias",)), ("batch_stats", path[:-1] + ("mean",)),
                        ("batch_stats", path[:-1] + ("var",))} <= owned), None)
        layers.append(dataclasses.replace(layer, bn_path=bn))
    rank = {name: i for i, name in enumerate(graph.layers)}
    return tuple(sorted(layers, key=lambda l: rank.get(l.name, len(rank))))


def get_path(tree: Mapping[str, Any], path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def replace_path(tree: Mapping[str, Any], path: tuple[str, ...], fn) -> dict:
    """A copy of the nested dict ``tree`` with the sub-tree at ``path`` replaced by ``fn(sub)``."""
    if not path:
        return fn(tree)
    out = dict(tree)
    out[path[0]] = replace_path(tree[path[0]], path[1:], fn)
    return out


def channel_leaves(layer: ConvLayer) -> list[tuple[str, tuple[str, ...]]]:
    """(collection, path) of every leaf whose last axis is this layer's filter axis."""
    leaves = [("params", layer.path + ("kernel",))]
    if layer.has_bias:
        leaves.append(("params", layer.path + ("bias",)))
    if layer.bn_path is not None:
        leaves += [("params", layer.bn_path + ("scale",)), ("params", layer.bn_path + ("bias",))]
    return leaves


def shape_groups(layers: tuple[ConvLayer, ...]) -> dict[tuple, list[ConvLayer]]:
    """Layers grouped by kernel shape (each group is stacked and processed by one vmap)."""
    groups: dict[tuple, list[ConvLayer]] = {}
    for layer in layers:
        groups.setdefault(layer.shape, []).append(layer)
    return groups


def stack_leaves(tree: Mapping[str, Any], layers, leaf: str = "kernel"):
    """``tree``'s ``leaf`` of each layer stacked on a new leading axis (one shape group)."""
    import jax.numpy as jnp
    return jnp.stack([get_path(tree, layer.path + (leaf,)) for layer in layers])


def response_site(layer: ConvLayer) -> tuple[str, ...]:
    """Module path whose output is a filter's response: its BatchNorm, else the conv itself."""
    return layer.bn_path if layer.bn_path is not None else layer.path


_INTERCEPTS: list = []   # (sites, fn) of the intercept_outputs blocks entered (NNX models read it)


def active_intercepts() -> tuple:
    """The ``(sites, fn)`` of every :func:`intercept_outputs` block being run (innermost last)."""
    return tuple(_INTERCEPTS)


@contextlib.contextmanager
def intercept_outputs(sites: Mapping[tuple[str, ...], str], fn):
    """Context manager: inside it, the output of each module at a path in ``sites`` becomes
    ``fn(sites[path], output)`` — for Linen modules via :func:`flax.linen.intercept_methods`,
    for NNX modules (:mod:`repr_jax.models.nnx_adapter`) by replacing those submodules of
    the call's copy — so any model works unchanged. Used for scoring probes and for a
    method's channel gates."""
    import flax.linen as nn

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        name = sites.get(tuple(context.module.path))
        return out if name is None else fn(name, out)

    _INTERCEPTS.append((dict(sites), fn))
    try:
        with nn.intercept_methods(interceptor):
            yield
    finally:
        _INTERCEPTS.pop()


_REFERENCE_CONVS = [0]   # > 0 while reference_convs() is active


@contextlib.contextmanager
def reference_convs():
    """Within the block, layers with a faster formulation of a convolution (the shifted
    multiply–add depthwise conv, :class:`repr_jax.models.depthwise.DepthwiseConv`) compute it
    with ``lax.conv_general_dilated`` instead: the same function, in the form the channel
    graph (:mod:`repr_jax.compress.graph`) has a rule for."""
    _REFERENCE_CONVS[0] += 1
    try:
        yield
    finally:
        _REFERENCE_CONVS[0] -= 1


def use_reference_convs() -> bool:
    """Whether :func:`reference_convs` is active."""
    return _REFERENCE_CONVS[0] > 0
