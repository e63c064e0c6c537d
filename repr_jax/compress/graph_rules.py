"""The channel graph's rule per jaxpr primitive (:mod:`repr_jax.compress.graph`).

A rule ``rule(tracer, eqn, ins) -> [value per output]`` maps the abstract values of an
equation's inputs (:mod:`repr_jax.compress.graph_values`) to those of its outputs, recording
on the tracer the parameter leaves indexed by channels (``tracer.uses``), the multiply–adds
(``tracer.costs``) and the channels an export must keep (``tracer.keep``). A rule raises
:class:`~repr_jax.compress.graph_values.GraphError` for a use it cannot follow; the tracer then
treats the equation as a barrier (its inputs' channels kept, its outputs fixed).

Convolutions record their kernel's input axis (indexed by the input's sources) and output
axis (new sources, one per filter); a depthwise conv ties each output channel to the
sources of its input channel and to its own filter (:func:`_depthwise`); other grouped
convs keep their filters and inputs (Torch-Pruning's choice for groups it does not prune);
``dot_general`` records the dense kernel's rows, or follows the channels through a
contraction with a constant (a resize); ``gather`` with constant indices and ``rev`` pass
channels through; ``reshape`` maps flattened features back to channels; ``add`` unions the
sources of a residual sum; a channel-axis ``pad`` (the option-A shortcut) marks the channels
it shifts as :data:`FIXED`-tied, because removing one would change the padding, which the
model cannot express; ``concatenate`` along channels joins the parts' sources.
"""
from __future__ import annotations

import math

import numpy as np

from repr_jax.compress.graph_values import (FIXED, Act, Cost, GraphError, Param, Use, broadcast, fixed, pinned,
                                            union_all)


def channel_axis(x: Act, ndim: int) -> int:
    """The axis of an ``ndim``-dimensional activation its sources index."""
    return ndim - 1 if x.axis is None else x.axis


def with_axis(sources, axis: int, ndim: int) -> Act:
    """An activation whose channel axis is ``axis`` (None when it is the last)."""
    return Act(sources, None if axis == ndim - 1 else axis)


ELEMENTWISE = {
    "add", "add_any", "sub", "mul", "div", "max", "min", "pow", "rem", "atan2", "nextafter",
    "neg", "exp", "exp2", "log", "log1p", "expm1", "rsqrt", "sqrt", "cbrt", "abs", "sign",
    "tanh", "logistic", "erf", "sin", "cos", "floor", "ceil", "round", "is_finite", "not",
    "and", "or", "xor", "convert_element_type", "integer_pow", "square", "stop_gradient",
    "copy", "copy_p", "reduce_precision", "select_n", "clamp", "gt", "ge", "lt", "le", "eq", "ne",
}


def _conv(tr, eqn, ins):
    lhs, rhs = ins
    p = eqn.params
    dn = p["dimension_numbers"]
    out_shape = eqn.outvars[0].aval.shape
    lhs_shape = eqn.invars[0].aval.shape
    groups = p["feature_group_count"]
    depthwise = groups > 1 and groups == lhs_shape[-1] == out_shape[-1]
    if p["batch_group_count"] != 1:
        raise GraphError("a convolution with batch_group_count > 1 (a weight gradient) has no rule")
    if dn.lhs_spec[1] != len(lhs_shape) - 1 or dn.out_spec[1] != len(out_shape) - 1:
        raise GraphError("convolutions must be channels-last (NHWC)")
    if not isinstance(rhs, Param) or len(rhs.refs) != 1:
        raise GraphError("a convolution's kernel must be one parameter leaf")
    (coll, path), amap = rhs.refs[0]
    if depthwise:
        return _depthwise(tr, eqn, lhs, coll, path, amap[dn.rhs_spec[0]])
    in_sources = lhs.sources if isinstance(lhs, Act) else fixed(lhs_shape[-1])
    in_sources = broadcast(in_sources, lhs_shape[-1])
    features = out_shape[-1]
    name = tr.conv_names.get(path) if coll == "params" else None
    out = (tuple(frozenset([(name, f)]) for f in range(features)) if name is not None
           else fixed(features))
    if groups != 1:   # Torch-Pruning's "keep": masks work, an export keeps its filters and inputs
        tr.keep(eqn, f"grouped convolution (feature_group_count={groups}): its filters and input "
                     "channels are kept by an export", in_sources)
        out = pinned(out)
    else:             # a grouped kernel's input axis indexes the channels within one group
        tr.uses.append(Use(coll, path, amap[dn.rhs_spec[1]], in_sources))
    tr.uses.append(Use(coll, path, amap[dn.rhs_spec[0]], out, produced_by=name))
    rhs_shape = eqn.invars[1].aval.shape
    tr.costs.append(Cost(math.prod(out_shape[1:-1]) * math.prod(rhs_shape) // (features * lhs_shape[-1]),
                         in_sources, out))
    return [Act(out)]


def _depthwise(tr, eqn, lhs, coll: str, path: tuple, out_axis: int):
    """A depthwise conv: output channel i is input channel i filtered alone, so it is tied to
    every source of input channel i and to the conv's own filter i (removed only when all
    are) — Torch-Pruning's depthwise coupling. Multiply–adds: positions × taps × channels."""
    out_shape, rhs_shape = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
    channels = out_shape[-1]
    name = tr.conv_names.get(path) if coll == "params" else None
    ins = broadcast(lhs.sources if isinstance(lhs, Act) else fixed(channels), channels)
    out = tuple(srcs | {(name, f)} if name is not None else srcs for f, srcs in enumerate(ins))
    tr.uses.append(Use(coll, path, out_axis, out, produced_by=name))
    taps = math.prod(rhs_shape) // channels
    tr.costs.append(Cost(math.prod(out_shape[1:-1]) * taps, out, fixed(1)))
    return [Act(out)]


def _dot_general(tr, eqn, ins):
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs_shape, rhs_shape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    if isinstance(lhs, Act) and lhs.axis is None and isinstance(rhs, Param) and not lb and len(rc) == 1 \
            and tuple(lc) == (len(lhs_shape) - 1,) and len(rhs.refs) == 1:
        (coll, path), amap = rhs.refs[0]
        tr.uses.append(Use(coll, path, amap[rc[0]], lhs.sources))
        free = math.prod(d for i, d in enumerate(rhs_shape) if i not in rc)
        name = tr.dense_names.get(path) if coll == "params" and len(rhs_shape) == 2 else None
        if name is not None and out_shape:   # a dense layer's units as sources (dense_units=True)
            out = tuple(frozenset([(name, f)]) for f in range(out_shape[-1]))
            tr.uses.append(Use(coll, path, amap[1 - rc[0]], out, produced_by=name))
        else:
            out = fixed(out_shape[-1] if out_shape else 1)
        tr.costs.append(Cost(math.prod(lhs_shape[1:-1]), broadcast(lhs.sources, lhs_shape[-1]),
                             out if name is not None else fixed(free)))
        return [Act(out)]
    return _contract_constant(tr, eqn, ins)


def _contract_constant(tr, eqn, ins):
    """``dot_general`` of an activation with a constant that does not contract or batch the
    activation's channel axis (``jax.image.resize``'s linear/cubic kernels along H and W):
    each channel is mapped alone, so the sources follow the axis to its output position."""
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if isinstance(lhs, Act) and rhs is None:
        act, ndim, contract, batch, first = lhs, len(eqn.invars[0].aval.shape), lc, lb, True
    elif isinstance(rhs, Act) and lhs is None:
        act, ndim, contract, batch, first = rhs, len(eqn.invars[1].aval.shape), rc, rb, False
    else:
        raise GraphError("dot_general is supported as activation @ parameter or as a contraction of an "
                         "activation with a constant along other axes than its channels")
    axis = channel_axis(act, ndim)
    if axis in contract or axis in batch:
        raise GraphError("dot_general contracts an activation's channel axis with a constant")
    other = len(eqn.invars[1 if first else 0].aval.shape)
    free = [d for d in range(ndim) if d not in contract and d not in batch]
    other_free = other - len(contract) - len(batch)
    position = len(batch) + (free.index(axis) if first else other_free + free.index(axis))
    return [with_axis(act.sources, position, len(eqn.outvars[0].aval.shape))]


def _reshape(tr, eqn, ins):
    (x,) = ins[:1]
    in_shape = eqn.invars[0].aval.shape
    new = eqn.outvars[0].aval.shape
    if isinstance(x, Param):
        kept_in = [(i, d) for i, d in enumerate(in_shape) if d != 1]
        kept_out = [i for i, d in enumerate(new) if d != 1]
        if [d for _, d in kept_in] != [new[i] for i in kept_out]:
            raise GraphError("a parameter is reshaped beyond adding unit axes")
        refs = []
        for leaf, amap in x.refs:
            m = [None] * len(new)
            for (i, _), o in zip(kept_in, kept_out):
                m[o] = amap[i]
            refs.append((leaf, tuple(m)))
        return [Param(tuple(refs))]
    if not in_shape:
        return [Act(broadcast(x.sources, new[-1] if new else 1))]
    # Which input channels land at each index of the new last axis (flatten: j % C).
    channel = np.broadcast_to(np.arange(in_shape[-1]), in_shape).reshape(new if new else (1,))
    last = channel.reshape(-1, new[-1] if new else 1)
    sources = tuple(union_all([x.sources[c] for c in np.unique(last[:, j])])
                    for j in range(last.shape[1]))
    return [Act(sources)]


def _broadcast_in_dim(tr, eqn, ins):
    x = ins[0]
    in_shape = eqn.invars[0].aval.shape
    shape = eqn.params["shape"]
    dims = eqn.params["broadcast_dimensions"]
    if isinstance(x, Param):
        refs = []
        for leaf, amap in x.refs:
            m = [None] * len(shape)
            for i, d in enumerate(dims):
                if in_shape[i] == shape[d]:
                    m[d] = amap[i]
            refs.append((leaf, tuple(m)))
        return [Param(tuple(refs))]
    n = shape[-1] if shape else 1
    if in_shape and dims[-1] == len(shape) - 1 and in_shape[-1] == n:
        return [x]
    return [Act(broadcast(x.sources, n))]


def _reduce(tr, eqn, ins):
    x = ins[0]
    axes = tuple(eqn.params["axes"])
    in_shape = eqn.invars[0].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    if isinstance(x, Param):
        refs = tuple((leaf, tuple(a for i, a in enumerate(amap) if i not in axes)) for leaf, amap in x.refs)
        if any(amap[i] is not None for _, amap in x.refs for i in axes):
            raise GraphError("a parameter is reduced along a channel axis")
        return [Param(refs)]
    if len(in_shape) - 1 in axes:
        return [Act(broadcast((union_all(x.sources),), out_shape[-1] if out_shape else 1))]
    return [x]


def _window(tr, eqn, ins):
    x = ins[0]
    p = eqn.params
    if isinstance(x, Act) and (p["window_dimensions"][-1] != 1 or p["window_strides"][-1] != 1):
        return [Act(broadcast((union_all(x.sources),), eqn.outvars[0].aval.shape[-1]))]
    return [x]


def _pad(tr, eqn, ins):
    x = ins[0]
    lo, hi, interior = eqn.params["padding_config"][-1]
    if not isinstance(x, Act) or (lo, hi, interior) == (0, 0, 0):
        return [x]
    if interior or lo < 0 or hi < 0:
        raise GraphError("only zero-padding of the channel axis is supported")
    shifted = tuple(s | {FIXED} for s in x.sources)     # see the module docstring
    pad = lambda n: (frozenset([FIXED]),) * int(n)
    return [Act(pad(lo) + shifted + pad(hi))]


def _slice(tr, eqn, ins):
    x = ins[0]
    if not isinstance(x, Act):
        if isinstance(x, Param):
            raise GraphError("slicing a parameter is not supported")
        return [x]
    p = eqn.params
    stride = (p["strides"] or (1,) * len(p["start_indices"]))[-1]
    return [Act(x.sources[p["start_indices"][-1]:p["limit_indices"][-1]:stride])]


def _concatenate(tr, eqn, ins):
    dim = eqn.params["dimension"]
    shapes = [v.aval.shape for v in eqn.invars]
    if any(isinstance(x, Param) for x in ins):
        raise GraphError("concatenating parameters is not supported")
    if dim == len(shapes[0]) - 1:
        parts = [x.sources if isinstance(x, Act) else fixed(s[-1]) for x, s in zip(ins, shapes)]
        return [Act(tuple(s for part in parts for s in part))]
    return [tr.elementwise(ins, eqn.outvars[0].aval)]


def _transpose(tr, eqn, ins):
    x = ins[0]
    perm = tuple(eqn.params["permutation"])
    if isinstance(x, Param):
        return [Param(tuple((leaf, tuple(amap[i] for i in perm)) for leaf, amap in x.refs))]
    return [with_axis(x.sources, perm.index(channel_axis(x, len(perm))), len(perm))]


def _gather(tr, eqn, ins):
    """A gather of an activation along other axes than its channels, with constant indices
    (``jax.image.resize(…, "nearest")``, crops by index): the channels pass through."""
    x, indices = ins
    if not isinstance(x, Act) or indices is not None:
        raise GraphError("gather is supported only on an activation with constant indices")
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    shape = eqn.invars[0].aval.shape
    axis = channel_axis(x, len(shape))
    if (axis in dn.start_index_map or axis in dn.collapsed_slice_dims or sizes[axis] != shape[axis]
            or getattr(dn, "operand_batching_dims", ())):
        raise GraphError("gather selects along an activation's channel axis")
    kept = [d for d in range(len(shape)) if d not in dn.collapsed_slice_dims]
    return [with_axis(x.sources, dn.offset_dims[kept.index(axis)], len(eqn.outvars[0].aval.shape))]


def _rev(tr, eqn, ins):
    """``lax.rev`` (a transposed conv flips its kernel): which axis is which is unchanged;
    reversing an activation's channels is not supported."""
    x = ins[0]
    if isinstance(x, Act) and channel_axis(x, len(eqn.invars[0].aval.shape)) in eqn.params["dimensions"]:
        raise GraphError("rev reverses an activation's channel axis")
    return [x]


def _squeeze(tr, eqn, ins):
    x = ins[0]
    dims = tuple(eqn.params["dimensions"])
    in_shape = eqn.invars[0].aval.shape
    if isinstance(x, Param):
        return [Param(tuple((leaf, tuple(a for i, a in enumerate(amap) if i not in dims))
                             for leaf, amap in x.refs))]
    if len(in_shape) - 1 in dims:
        out = eqn.outvars[0].aval.shape
        return [Act(broadcast(x.sources, out[-1] if out else 1))]
    return [x]


RULES = {
    "gather": _gather, "rev": _rev,
    "conv_general_dilated": _conv, "dot_general": _dot_general, "reshape": _reshape,
    "broadcast_in_dim": _broadcast_in_dim, "reduce_sum": _reduce, "reduce_max": _reduce,
    "reduce_min": _reduce, "argmax": _reduce, "argmin": _reduce, "reduce_window_max": _window,
    "reduce_window_sum": _window, "reduce_window_min": _window, "pad": _pad, "slice": _slice,
    "concatenate": _concatenate, "transpose": _transpose, "squeeze": _squeeze,
}




__all__ = ["ELEMENTWISE", "RULES", "channel_axis", "with_axis"]
