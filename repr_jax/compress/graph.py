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
change the padding, which the model cannot express (the rules per primitive:
:mod:`repr_jax.compress.graph_rules`; the values: :mod:`repr_jax.compress.graph_values`).

An equation the graph cannot follow — a primitive without a rule, or a rule that refuses
its use — is a :class:`Barrier` (Torch-Pruning's unsupported ops): every channel entering
it is pinned (an export keeps it) and its outputs are :data:`FIXED`. So every method that
only masks (RePr, Han, DSD, DropConnect, JST's search) works on any model, and an export
removes what it can and names the barrier — the primitive and the user's module path, from
the jaxpr's name stacks (Flax Linen names module calls there itself; an NNX adapter does it
while tracing, :func:`module_scopes`) — that kept the rest. Multiply–adds of convs and dense
layers are counted on the way.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:   # jax >= 0.4.36 moved the jaxpr types here
    from jax.extend.core import Literal
except ImportError:   # pragma: no cover
    from jax.core import Literal

from repr_jax.compress.graph_rules import ELEMENTWISE, RULES
from repr_jax.compress.graph_values import (FIXED, Act, Barrier, Cost, GraphError, Opaque, Param, Pin, Source, Use,
                                            broadcast, fixed, pinned)
from repr_jax.layers import get_path, prunable_convs, reference_convs


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
    barriers: tuple[Barrier, ...] = ()
    pins: tuple[Pin, ...] = ()

    def pinned_by(self, name: str, channels=None) -> list[Barrier]:
        """The barriers that keep channels of conv ``name`` (any, or those in ``channels``)."""
        hit = {p.barrier for p in self.pins for srcs in p.sources for s in srcs
               if s[0] == name and (channels is None or s[1] in channels)}
        return [self.barriers[i] for i in sorted(hit)]

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
        for use in (*self.uses, *self.pins):
            for srcs in use.sources:
                if len(srcs) > 1:
                    for name, ch in srcs:
                        if (name, ch) != FIXED:
                            out.setdefault(name, set()).add(ch)
        return out


class _Tracer:
    """Walks a jaxpr, keeping the abstract values and collecting uses and multiply–adds."""

    def __init__(self, conv_names: dict[tuple[str, ...], str], dense_names=None):
        self.conv_names = conv_names          # kernel leaf path (in "params") → conv name
        self.dense_names = dense_names or {}  # the same for dense layers whose units are tracked
        self.uses: list[Use] = []
        self.costs: list[Cost] = []
        self.barriers: list[Barrier] = []
        self.pins: list[Pin] = []
        self.opaque: set[tuple[str, tuple[str, ...]]] = set()   # leaves a barrier reads
        self.scope: tuple[str, ...] = ()      # the name stack of the call being traced into
        self.root = ""                        # the model's class name (the name stack's first entry)

    def where(self, eqn) -> str:
        """The module path of ``eqn`` (its name stack; Linen's starts with the root class)."""
        stack = str(getattr(getattr(eqn, "source_info", None), "name_stack", "") or "")
        parts = "/".join(part for part in (*self.scope, stack) if part).split("/")
        if parts and parts[0] == self.root:
            parts = parts[1:]
        return "/".join(p for p in parts if p)

    def keep(self, eqn, reason: str, sources=()) -> int:
        """Record a barrier (``eqn``, ``reason``) and pin ``sources``; returns its index."""
        barrier = Barrier(eqn.primitive.name, self.where(eqn), reason)
        if barrier not in self.barriers:
            self.barriers.append(barrier)
        index = self.barriers.index(barrier)
        if sources:
            self.pins.append(Pin(index, pinned(tuple(sources))))
        return index

    def barrier(self, eqn, ins, reason: str):
        """An equation the graph cannot follow: its activations' channels pinned, the parameter
        leaves it reads opaque (kept whole), its outputs :data:`FIXED`."""
        index = self.keep(eqn, reason)
        for x in ins:
            if isinstance(x, Act):
                self.pins.append(Pin(index, pinned(x.sources)))
            elif isinstance(x, Param):
                self.opaque.update((leaf, index) for leaf, _ in x.refs)
        outs = []
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            if any(isinstance(x, Act) for x in ins):
                outs.append(Act(fixed(shape[-1] if shape else 1)))
            else:   # from parameters alone: unknown axes, an activation it meets is pinned
                outs.append(Opaque(index) if any(isinstance(x, (Param, Opaque)) for x in ins) else None)
        return outs

    # -- helpers
    def record(self, param: Param, sources: tuple[frozenset, ...], ndim: int) -> None:
        for (coll, path), amap in param.refs:
            if len(amap) != ndim:
                raise GraphError(f"{coll}/{'/'.join(path)} is combined with an activation of another rank")
            for d, axis in enumerate(amap[:-1]):
                if axis is not None:
                    raise GraphError(f"{coll}/{'/'.join(path)} varies along a non-channel axis")
            if amap and amap[-1] is not None:
                self.uses.append(Use(coll, path, amap[-1], tuple(sources)))

    def elementwise(self, ins, out_aval):
        acts = [x for x in ins if isinstance(x, Act)]
        params = [x for x in ins if isinstance(x, Param)]
        ndim = len(out_aval.shape)
        n = out_aval.shape[-1] if ndim else 1
        if acts:
            sources = tuple(frozenset().union(*parts) for parts in
                            zip(*[broadcast(a.sources, n) for a in acts]))
            for p in params:
                self.record(p, sources, ndim)
            return Act(sources)
        if params:   # e.g. kernel * kernel: one leaf, referenced once
            return Param(tuple(dict.fromkeys(ref for p in params for ref in p.refs)))
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
            try:
                outs = self.eqn(eqn, ins)
            except GraphError as err:
                outs = self.barrier(eqn, ins, str(err))
            for var, value in zip(eqn.outvars, outs):
                env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn, ins):
        name = eqn.primitive.name
        outs = eqn.outvars
        sub = _sub_jaxpr(eqn)
        if sub is not None:
            inner = sub.jaxpr if hasattr(sub, "jaxpr") else sub
            outer, stack = self.scope, str(getattr(getattr(eqn, "source_info", None), "name_stack", "") or "")
            self.scope = outer + ((stack,) if stack else ())
            try:
                return self.run(inner, ins[len(ins) - len(inner.invars):])
            finally:
                self.scope = outer
        if all(x is None for x in ins):
            return [None] * len(outs)
        if any(isinstance(x, Opaque) for x in ins):
            raise GraphError("a value derived from parameters through an operation without a rule")
        moved = [x for x, v in zip(ins, eqn.invars) if isinstance(x, Act) and x.axis is not None]
        rule = RULES.get(name)
        if moved and name not in _FOLLOWS_MOVED_AXIS:
            if name not in ELEMENTWISE or any(x.axis != moved[0].axis for x in moved) \
                    or len(outs[0].aval.shape) != len(eqn.invars[0].aval.shape):
                raise GraphError("channels off the last axis meet an operation that needs them last")
            size = eqn.invars[0].aval.shape[moved[0].axis]
            if any(isinstance(x, Param) for x in ins) or any(len(x.sources) != size for x in moved) \
                    or sum(isinstance(x, Act) for x in ins) != len(moved):
                raise GraphError("channels off the last axis meet a parameter, a broadcast or channels last")
            return [Act(tuple(frozenset().union(*parts) for parts in zip(*[x.sources for x in moved])),
                        moved[0].axis)]
        if rule is not None:
            return rule(self, eqn, ins)
        if name in ELEMENTWISE:
            return [self.elementwise(ins, outs[0].aval)]
        raise GraphError(f"no rule for primitive {name!r} (repr_jax/compress/graph_rules.py)")


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
            return sub
    return None


_FOLLOWS_MOVED_AXIS = ("transpose", "dot_general", "gather", "rev")


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
    with module_scopes(model), reference_convs():   # fast conv forms traced as the convs they compute
        closed = jax.make_jaxpr(lambda v, inp: model.apply(v, inp, train=False))(variables, x)
    flat, _ = jax.tree_util.tree_flatten_with_path((variables, x))
    inputs = []
    for key_path, leaf in flat:
        path = _leaf_path(key_path)
        if path[0] == "1":             # the image
            inputs.append(Act(fixed(input_shape[-1])))
        else:                          # ("0", collection, *leaf path)
            inputs.append(Param((((path[1], path[2:]), tuple(range(np.ndim(leaf)))),)))
    tracer = _Tracer(conv_names, dense)
    tracer.root = type(getattr(model, "inner", model)).__name__   # a LogitsModel wraps the user's module
    tracer.run(closed.jaxpr, inputs)
    params = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(variables["params"]))
    traced = list(dict.fromkeys(u.produced_by for u in tracer.uses if u.produced_by is not None))
    rank = {name: i for i, name in enumerate(traced)}   # the forward pass's order, not the names'
    sizes = {l.name: l.num_filters for l in layers}
    sizes.update({name: int(np.shape(get_path(variables["params"], path))[1]) for path, name in dense.items()})
    ordered = sorted(sizes, key=lambda n: rank.get(n, len(rank)))
    opaque = dict(tracer.opaque)   # a leaf a barrier reads: every channel indexing it is kept
    pins = tracer.pins + [Pin(opaque[(u.collection, u.path)], pinned(u.sources)) for u in tracer.uses
                          if (u.collection, u.path) in opaque]
    return ChannelGraph({n: sizes[n] for n in ordered}, tuple(tracer.uses),
                        sum(c.factor * len(c.in_sources) * len(c.out_sources) for c in tracer.costs), params,
                        tuple(tracer.costs), tuple(tracer.barriers), tuple(pins))


@contextlib.contextmanager
def module_scopes(model):
    """Trace ``model`` so that every equation's name stack is the user's module path
    (``Decoder_0/Conv_2``): Flax Linen names its module calls itself (``flax_profile``, on by
    default); an NNX adapter wraps each submodule's call in ``jax.named_scope`` for the trace
    (its ``named_scopes()``)."""
    if hasattr(model, "named_scopes"):
        with model.named_scopes():
            yield
        return
    yield


__all__ = ["FIXED", "Barrier", "ChannelGraph", "Cost", "GraphError", "Pin", "Source", "Use", "index_kept",
           "module_scopes", "trace_channel_graph"]
