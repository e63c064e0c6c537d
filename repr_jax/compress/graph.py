"""The channel graph of a model, derived from its jaxpr (not written per model).

For every prunable conv (see :mod:`repr_jax.layers`) we need the parameter axes that its
output channels index: its own kernel's output axis and bias, its BatchNorm's scale, bias,
mean and variance, the next conv's input axis, the dense head's rows after a flatten (the
H·W·F interleaving), and every channel tied to it by a residual sum. Torch-Pruning finds
these with a dependency graph over autograd (Fang et al. 2023, DepGraph); here the same
graph comes from an abstract interpretation of the eval-mode forward pass's jaxpr.

Each value of the jaxpr is tracked as one of
  * an *activation*: for each index of its last (channel) axis, the set of sources that feed
    it — ``(conv name, channel)`` pairs, or :data:`FIXED` for anything never removed (image
    channels, dense outputs, zero-padded shortcut channels);
  * a *parameter expression*: the parameter leaves it is built from and which leaf axis each
    of its dimensions indexes (so ``rsqrt(var + eps) * scale`` broadcast to ``(1,1,1,C)``
    is still known to be indexed by channel);
  * a constant.
A parameter expression combined elementwise with an activation records a :class:`Use` —
that leaf's axis is indexed by the activation's channels. Convolutions record their kernel's
input axis (indexed by the input's sources) and output axis (new sources, one per filter);
a depthwise conv ties each output channel to the sources of its input channel and to its own
filter (:func:`_depthwise`); ``dot_general`` records the dense kernel's rows; ``reshape``
maps flattened features back to channels; ``add`` unions the sources of a residual sum; a channel-axis ``pad`` (the option-A
shortcut) marks the channels it shifts as :data:`FIXED`-tied, because removing one would
change the padding, which the model cannot express. A primitive without a rule raises
:class:`GraphError` naming it, so an unsupported model fails loudly instead of exporting
something wrong. Multiply–adds of convs and dense layers are counted on the way.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:   # jax >= 0.4.36 moved the jaxpr types here
    from jax.extend.core import Literal
except ImportError:   # pragma: no cover
    from jax.core import Literal

from repr_jax.layers import get_path, prunable_convs

FIXED = ("<fixed>", -1)
Source = tuple[str, int]


class GraphError(ValueError):
    """The model uses an operation the channel graph has no rule for."""


@dataclasses.dataclass(frozen=True)
class Use:
    """Leaf ``collection/path`` has its axis ``axis`` indexed by channels: index i is fed by
    ``sources[i]``. ``produced_by`` names the conv when this is its kernel's output axis."""
    collection: str
    path: tuple[str, ...]
    axis: int
    sources: tuple[frozenset, ...]
    produced_by: str | None = None

    @property
    def leaf(self) -> str:
        return "/".join((self.collection,) + self.path)


@dataclasses.dataclass(frozen=True)
class Cost:
    """One conv or dense layer's multiply–adds per example: ``factor · |in| · |out|``, where
    ``in_sources`` / ``out_sources`` are the sources of its input and output channels
    (``factor``: output positions × kernel taps for a conv, positions for a dense layer)."""
    factor: int
    in_sources: tuple[frozenset, ...]
    out_sources: tuple[frozenset, ...]


def index_kept(srcs: frozenset, removed: dict) -> bool:
    """Whether an index fed by ``srcs`` survives an export that removes ``removed``
    (``{conv: (F,) bool}``): it stays while any of its sources — a fixed one, or a filter not
    removed — stays (the rule :func:`repr_jax.compress.export.removable` closes over)."""
    return not srcs or any(s == FIXED or not removed[s[0]][s[1]] for s in srcs)


def _kept(sources: tuple[frozenset, ...], removed: dict) -> int:
    return sum(1 for srcs in sources if index_kept(srcs, removed))


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
    """Prunable convs (name → output channels, in the forward pass's order: ``conv2`` before
    ``conv10``, a ResNet's stem first), every channel-indexed leaf
    axis, multiply–adds per example (convs + dense layers; per layer in ``costs``) and the
    parameter count."""
    layers: dict[str, int]
    uses: tuple[Use, ...]
    flops: int
    params: int
    costs: tuple[Cost, ...] = ()

    def flops_after(self, removed: dict) -> int:
        """Multiply–adds per example once ``removed`` (``{conv: (F,) bool}``) filters are
        physically gone — counted from the graph, no smaller module needed."""
        return sum(c.factor * _kept(c.in_sources, removed) * _kept(c.out_sources, removed) for c in self.costs)

    def consumers(self, name: str) -> list[Use]:
        """Uses fed by ``name``'s channels other than its own output axis (BatchNorm leaves,
        conv bias and the next layers' input axes)."""
        return [u for u in self.uses if u.produced_by != name
                and any(s[0] == name for srcs in u.sources for s in srcs)]

    def tied(self) -> dict[str, set[int]]:
        """Channels that share an index with another source (a residual sum or a padded
        shortcut): they can be removed only together with every source they are tied to."""
        out: dict[str, set[int]] = {}
        for use in self.uses:
            for srcs in use.sources:
                if len(srcs) > 1:
                    for name, ch in srcs:
                        if (name, ch) != FIXED:
                            out.setdefault(name, set()).add(ch)
        return out


# ----------------------------------------------------------------------------- abstract values
@dataclasses.dataclass(frozen=True)
class _Act:
    sources: tuple[frozenset, ...]      # one set per index of the last axis (1 for scalars)


@dataclasses.dataclass(frozen=True)
class _Param:
    refs: tuple[tuple[tuple[str, tuple[str, ...]], tuple[int | None, ...]], ...]  # (leaf, axis map)


def _fixed(n: int) -> tuple[frozenset, ...]:
    return tuple(frozenset([FIXED]) for _ in range(max(n, 1)))


def _union_all(sources) -> frozenset:
    return frozenset().union(*sources) if sources else frozenset([FIXED])


def _broadcast(sources: tuple[frozenset, ...], n: int) -> tuple[frozenset, ...]:
    if len(sources) == n:
        return sources
    return (_union_all(sources),) * max(n, 1)


class _Tracer:
    """Walks a jaxpr, keeping the abstract values and collecting uses and multiply–adds."""

    def __init__(self, conv_names: dict[tuple[str, ...], str], dense_names=None):
        self.conv_names = conv_names          # kernel leaf path (in "params") → conv name
        self.dense_names = dense_names or {}  # the same for dense layers whose units are tracked
        self.uses: list[Use] = []
        self.costs: list[Cost] = []

    # -- helpers
    def record(self, param: _Param, sources: tuple[frozenset, ...], ndim: int) -> None:
        for (coll, path), amap in param.refs:
            if len(amap) != ndim:
                raise GraphError(f"{coll}/{'/'.join(path)} is combined with an activation of another rank")
            for d, axis in enumerate(amap[:-1]):
                if axis is not None:
                    raise GraphError(f"{coll}/{'/'.join(path)} varies along a non-channel axis")
            if amap and amap[-1] is not None:
                self.uses.append(Use(coll, path, amap[-1], tuple(sources)))

    def elementwise(self, ins, out_aval):
        acts = [x for x in ins if isinstance(x, _Act)]
        params = [x for x in ins if isinstance(x, _Param)]
        ndim = len(out_aval.shape)
        n = out_aval.shape[-1] if ndim else 1
        if acts:
            sources = tuple(frozenset().union(*parts) for parts in
                            zip(*[_broadcast(a.sources, n) for a in acts]))
            for p in params:
                self.record(p, sources, ndim)
            return _Act(sources)
        if params:   # e.g. kernel * kernel: one leaf, referenced once
            return _Param(tuple(dict.fromkeys(ref for p in params for ref in p.refs)))
        return None

    # -- the interpreter
    def run(self, jaxpr, inputs):
        env: dict[Any, Any] = {}

        def read(v):
            return None if isinstance(v, Literal) else env.get(v)

        for var in jaxpr.constvars:
            env[var] = None
        for var, value in zip(jaxpr.invars, inputs):
            env[var] = value
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for var, value in zip(eqn.outvars, outs):
                env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn, ins):
        name = eqn.primitive.name
        outs = eqn.outvars
        sub = _sub_jaxpr(eqn)
        if sub is not None:
            inner = sub.jaxpr if hasattr(sub, "jaxpr") else sub
            return self.run(inner, ins[len(ins) - len(inner.invars):])
        if all(x is None for x in ins):
            return [None] * len(outs)
        rule = _RULES.get(name)
        if rule is not None:
            return rule(self, eqn, ins)
        if name in _ELEMENTWISE:
            return [self.elementwise(ins, outs[0].aval)]
        raise GraphError(f"channel graph: no rule for primitive {name!r}; this model cannot be "
                         "exported (add a rule in repr_jax/compress/graph.py)")


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
            return sub
    return None


_ELEMENTWISE = {
    "add", "add_any", "sub", "mul", "div", "max", "min", "pow", "rem", "atan2", "nextafter",
    "neg", "exp", "exp2", "log", "log1p", "expm1", "rsqrt", "sqrt", "cbrt", "abs", "sign",
    "tanh", "logistic", "erf", "sin", "cos", "floor", "ceil", "round", "is_finite", "not",
    "and", "or", "xor", "convert_element_type", "integer_pow", "square", "stop_gradient",
    "copy", "copy_p", "reduce_precision", "select_n", "clamp", "gt", "ge", "lt", "le", "eq", "ne",
}


def _conv(tr: _Tracer, eqn, ins):
    lhs, rhs = ins
    p = eqn.params
    dn = p["dimension_numbers"]
    out_shape = eqn.outvars[0].aval.shape
    lhs_shape = eqn.invars[0].aval.shape
    groups = p["feature_group_count"]
    depthwise = groups > 1 and groups == lhs_shape[-1] == out_shape[-1]
    if (groups != 1 and not depthwise) or p["batch_group_count"] != 1:
        raise GraphError("channel graph: grouped convolutions other than depthwise (one filter per input "
                         "channel) are not supported")
    if dn.lhs_spec[1] != len(lhs_shape) - 1 or dn.out_spec[1] != len(out_shape) - 1:
        raise GraphError("channel graph: convolutions must be channels-last (NHWC)")
    if not isinstance(rhs, _Param) or len(rhs.refs) != 1:
        raise GraphError("channel graph: a convolution's kernel must be one parameter leaf")
    (coll, path), amap = rhs.refs[0]
    if depthwise:
        return _depthwise(tr, eqn, lhs, coll, path, amap[dn.rhs_spec[0]])
    in_sources = lhs.sources if isinstance(lhs, _Act) else _fixed(lhs_shape[-1])
    in_sources = _broadcast(in_sources, lhs_shape[-1])
    tr.uses.append(Use(coll, path, amap[dn.rhs_spec[1]], in_sources))
    features = out_shape[-1]
    name = tr.conv_names.get(path) if coll == "params" else None
    out = (tuple(frozenset([(name, f)]) for f in range(features)) if name is not None
           else _fixed(features))
    tr.uses.append(Use(coll, path, amap[dn.rhs_spec[0]], out, produced_by=name))
    rhs_shape = eqn.invars[1].aval.shape
    tr.costs.append(Cost(math.prod(out_shape[1:-1]) * math.prod(rhs_shape) // (features * lhs_shape[-1]),
                         in_sources, out))
    return [_Act(out)]


def _depthwise(tr: _Tracer, eqn, lhs, coll: str, path: tuple, out_axis: int):
    """A depthwise conv: output channel i is input channel i filtered alone, so it is tied to
    every source of input channel i and to the conv's own filter i (removed only when all
    are) — Torch-Pruning's depthwise coupling. Multiply–adds: positions × taps × channels."""
    out_shape, rhs_shape = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
    channels = out_shape[-1]
    name = tr.conv_names.get(path) if coll == "params" else None
    ins = _broadcast(lhs.sources if isinstance(lhs, _Act) else _fixed(channels), channels)
    out = tuple(srcs | {(name, f)} if name is not None else srcs for f, srcs in enumerate(ins))
    tr.uses.append(Use(coll, path, out_axis, out, produced_by=name))
    taps = math.prod(rhs_shape) // channels
    tr.costs.append(Cost(math.prod(out_shape[1:-1]) * taps, out, _fixed(1)))
    return [_Act(out)]


def _dot_general(tr: _Tracer, eqn, ins):
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs_shape, rhs_shape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    if isinstance(lhs, _Act) and isinstance(rhs, _Param) and not lb and len(rc) == 1 \
            and tuple(lc) == (len(lhs_shape) - 1,) and len(rhs.refs) == 1:
        (coll, path), amap = rhs.refs[0]
        tr.uses.append(Use(coll, path, amap[rc[0]], lhs.sources))
        free = math.prod(d for i, d in enumerate(rhs_shape) if i not in rc)
        name = tr.dense_names.get(path) if coll == "params" and len(rhs_shape) == 2 else None
        if name is not None and out_shape:   # a dense layer's units as sources (dense_units=True)
            out = tuple(frozenset([(name, f)]) for f in range(out_shape[-1]))
            tr.uses.append(Use(coll, path, amap[1 - rc[0]], out, produced_by=name))
        else:
            out = _fixed(out_shape[-1] if out_shape else 1)
        tr.costs.append(Cost(math.prod(lhs_shape[1:-1]), _broadcast(lhs.sources, lhs_shape[-1]),
                             out if name is not None else _fixed(free)))
        return [_Act(out)]
    raise GraphError("channel graph: dot_general is supported only as activation @ parameter")


def _reshape(tr: _Tracer, eqn, ins):
    (x,) = ins[:1]
    in_shape = eqn.invars[0].aval.shape
    new = eqn.outvars[0].aval.shape
    if isinstance(x, _Param):
        kept_in = [(i, d) for i, d in enumerate(in_shape) if d != 1]
        kept_out = [i for i, d in enumerate(new) if d != 1]
        if [d for _, d in kept_in] != [new[i] for i in kept_out]:
            raise GraphError("channel graph: a parameter is reshaped beyond adding unit axes")
        refs = []
        for leaf, amap in x.refs:
            m = [None] * len(new)
            for (i, _), o in zip(kept_in, kept_out):
                m[o] = amap[i]
            refs.append((leaf, tuple(m)))
        return [_Param(tuple(refs))]
    if not in_shape:
        return [_Act(_broadcast(x.sources, new[-1] if new else 1))]
    # Which input channels land at each index of the new last axis (flatten: j % C).
    channel = np.broadcast_to(np.arange(in_shape[-1]), in_shape).reshape(new if new else (1,))
    last = channel.reshape(-1, new[-1] if new else 1)
    sources = tuple(_union_all([x.sources[c] for c in np.unique(last[:, j])])
                    for j in range(last.shape[1]))
    return [_Act(sources)]


def _broadcast_in_dim(tr: _Tracer, eqn, ins):
    x = ins[0]
    in_shape = eqn.invars[0].aval.shape
    shape = eqn.params["shape"]
    dims = eqn.params["broadcast_dimensions"]
    if isinstance(x, _Param):
        refs = []
        for leaf, amap in x.refs:
            m = [None] * len(shape)
            for i, d in enumerate(dims):
                if in_shape[i] == shape[d]:
                    m[d] = amap[i]
            refs.append((leaf, tuple(m)))
        return [_Param(tuple(refs))]
    n = shape[-1] if shape else 1
    if in_shape and dims[-1] == len(shape) - 1 and in_shape[-1] == n:
        return [x]
    return [_Act(_broadcast(x.sources, n))]


def _reduce(tr: _Tracer, eqn, ins):
    x = ins[0]
    axes = tuple(eqn.params["axes"])
    in_shape = eqn.invars[0].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    if isinstance(x, _Param):
        refs = tuple((leaf, tuple(a for i, a in enumerate(amap) if i not in axes)) for leaf, amap in x.refs)
        if any(amap[i] is not None for _, amap in x.refs for i in axes):
            raise GraphError("channel graph: a parameter is reduced along a channel axis")
        return [_Param(refs)]
    if len(in_shape) - 1 in axes:
        return [_Act(_broadcast((_union_all(x.sources),), out_shape[-1] if out_shape else 1))]
    return [x]


def _window(tr: _Tracer, eqn, ins):
    x = ins[0]
    p = eqn.params
    if isinstance(x, _Act) and (p["window_dimensions"][-1] != 1 or p["window_strides"][-1] != 1):
        return [_Act(_broadcast((_union_all(x.sources),), eqn.outvars[0].aval.shape[-1]))]
    return [x]


def _pad(tr: _Tracer, eqn, ins):
    x = ins[0]
    lo, hi, interior = eqn.params["padding_config"][-1]
    if not isinstance(x, _Act) or (lo, hi, interior) == (0, 0, 0):
        return [x]
    if interior or lo < 0 or hi < 0:
        raise GraphError("channel graph: only zero-padding of the channel axis is supported")
    shifted = tuple(s | {FIXED} for s in x.sources)     # see the module docstring
    pad = lambda n: (frozenset([FIXED]),) * int(n)
    return [_Act(pad(lo) + shifted + pad(hi))]


def _slice(tr: _Tracer, eqn, ins):
    x = ins[0]
    if not isinstance(x, _Act):
        if isinstance(x, _Param):
            raise GraphError("channel graph: slicing a parameter is not supported")
        return [x]
    p = eqn.params
    stride = (p["strides"] or (1,) * len(p["start_indices"]))[-1]
    return [_Act(x.sources[p["start_indices"][-1]:p["limit_indices"][-1]:stride])]


def _concatenate(tr: _Tracer, eqn, ins):
    dim = eqn.params["dimension"]
    shapes = [v.aval.shape for v in eqn.invars]
    if any(isinstance(x, _Param) for x in ins):
        raise GraphError("channel graph: concatenating parameters is not supported")
    if dim == len(shapes[0]) - 1:
        parts = [x.sources if isinstance(x, _Act) else _fixed(s[-1]) for x, s in zip(ins, shapes)]
        return [_Act(tuple(s for part in parts for s in part))]
    return [tr.elementwise(ins, eqn.outvars[0].aval)]


def _transpose(tr: _Tracer, eqn, ins):
    x = ins[0]
    perm = eqn.params["permutation"]
    if isinstance(x, _Param):
        return [_Param(tuple((leaf, tuple(amap[i] for i in perm)) for leaf, amap in x.refs))]
    if perm[-1] != len(perm) - 1:
        return [_Act((_union_all(x.sources),) * eqn.outvars[0].aval.shape[-1])]
    return [x]


def _squeeze(tr: _Tracer, eqn, ins):
    x = ins[0]
    dims = tuple(eqn.params["dimensions"])
    in_shape = eqn.invars[0].aval.shape
    if isinstance(x, _Param):
        return [_Param(tuple((leaf, tuple(a for i, a in enumerate(amap) if i not in dims))
                             for leaf, amap in x.refs))]
    if len(in_shape) - 1 in dims:
        out = eqn.outvars[0].aval.shape
        return [_Act(_broadcast(x.sources, out[-1] if out else 1))]
    return [x]


_RULES = {
    "conv_general_dilated": _conv, "dot_general": _dot_general, "reshape": _reshape,
    "broadcast_in_dim": _broadcast_in_dim, "reduce_sum": _reduce, "reduce_max": _reduce,
    "reduce_min": _reduce, "argmax": _reduce, "argmin": _reduce, "reduce_window_max": _window,
    "reduce_window_sum": _window, "reduce_window_min": _window, "pad": _pad, "slice": _slice,
    "concatenate": _concatenate, "transpose": _transpose, "squeeze": _squeeze,
}


# ----------------------------------------------------------------------------- entry point
def _leaf_path(key_path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def trace_channel_graph(model, variables, input_shape, dense_units: bool = False) -> ChannelGraph:
    """The :class:`ChannelGraph` of ``model`` with these ``variables`` (shapes only are used)
    on inputs of ``input_shape`` (a batch of one: ``(1, H, W, C)``), traced now: the
    eval-mode forward pass (``train=False``) at batch size 1, so the multiply–adds are per
    example. :func:`repr_jax.compress.structure.channel_graph` traces once per structure.
    ``dense_units``: dense layers' output units are sources too (in ``layers``, named by
    their path, e.g. ``fc1``) — Han et al.'s dead neurons of an MLP; the default keeps them
    :data:`FIXED`, as the filter-pruning methods and the export expect."""
    layers = prunable_convs(variables["params"])
    conv_names = {layer.path + ("kernel",): layer.name for layer in layers}
    dense = {}
    if dense_units:
        flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        for key_path, leaf in flat:
            path = _leaf_path(key_path)
            if path[-1] == "kernel" and np.ndim(leaf) == 2:
                dense[path] = "/".join(path[:-1])
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    closed = jax.make_jaxpr(lambda v, inp: model.apply(v, inp, train=False))(variables, x)
    flat, _ = jax.tree_util.tree_flatten_with_path((variables, x))
    inputs = []
    for key_path, leaf in flat:
        path = _leaf_path(key_path)
        if path[0] == "1":             # the image
            inputs.append(_Act(_fixed(input_shape[-1])))
        else:                          # ("0", collection, *leaf path)
            inputs.append(_Param((((path[1], path[2:]), tuple(range(np.ndim(leaf)))),)))
    tracer = _Tracer(conv_names, dense)
    tracer.run(closed.jaxpr, inputs)
    params = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(variables["params"]))
    traced = list(dict.fromkeys(u.produced_by for u in tracer.uses if u.produced_by is not None))
    rank = {name: i for i, name in enumerate(traced)}   # the forward pass's order, not the names'
    sizes = {l.name: l.num_filters for l in layers}
    sizes.update({name: int(np.shape(get_path(variables["params"], path))[1]) for path, name in dense.items()})
    ordered = sorted(sizes, key=lambda n: rank.get(n, len(rank)))
    return ChannelGraph({n: sizes[n] for n in ordered}, tuple(tracer.uses),
                        sum(c.factor * len(c.in_sources) * len(c.out_sources) for c in tracer.costs), params,
                        tuple(tracer.costs))


__all__ = ["FIXED", "ChannelGraph", "Cost", "GraphError", "Use", "index_kept", "trace_channel_graph"]
