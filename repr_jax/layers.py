"""Which convolutions are prunable, addressed by their path in the params pytree.

A prunable layer is any Flax ``Conv`` (a params dict holding a 4-D ``kernel`` of shape
``(kh, kw, c_in, F)``). Its optional ``bias`` is the sibling leaf, and its BatchNorm is the
sibling module named ``<conv name>_bn`` (scale/bias in ``params``, mean/var in
``batch_stats``) — the naming every model in :mod:`repr_jax.models` follows. Masks, scores
and re-initialisation all address filter ``f`` of a layer as ``kernel[..., f]``.
"""
from __future__ import annotations

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
    """Every prunable conv in definition order (the first conv first). ``batch_dims``: leading
    axes every leaf carries (1 for a population of seeds stacked on axis 0); shapes exclude them."""
    found: list[ConvLayer] = []

    def walk(node, path):
        for key, child in node.items():
            if not isinstance(child, Mapping):
                continue
            kernel = child.get("kernel")
            if kernel is not None and getattr(kernel, "ndim", 0) == 4 + batch_dims:
                bn = node.get(f"{key}_bn")
                found.append(ConvLayer(
                    name="/".join(path + (key,)), path=path + (key,),
                    bn_path=path + (f"{key}_bn",) if isinstance(bn, Mapping) else None,
                    has_bias="bias" in child, shape=tuple(int(d) for d in kernel.shape[batch_dims:])))
            else:
                walk(child, path + (key,))

    walk(params, ())
    return tuple(found)


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


def intercept_outputs(sites: Mapping[tuple[str, ...], str], fn):
    """Context manager: inside it, the output of each module at a path in ``sites`` becomes
    ``fn(sites[path], output)`` (via :func:`flax.linen.intercept_methods`, so any model
    works unchanged). Used for scoring probes and for a method's channel gates."""
    import flax.linen as nn

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        name = sites.get(tuple(context.module.path))
        return out if name is None else fn(name, out)

    return nn.intercept_methods(interceptor)
