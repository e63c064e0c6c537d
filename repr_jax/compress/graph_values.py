"""The values and records of the channel graph's abstract interpretation
(:mod:`repr_jax.compress.graph`): what a jaxpr variable is known to hold, and what the
graph records about parameter leaves, multiply–adds and the operations it cannot see through.

A variable is one of
  * an :class:`Act` — an activation: for each index of its channel axis (the last axis, or
    ``axis`` while an op such as a resize's contraction has moved it), the set of sources
    that feed it — ``(conv name, channel)`` pairs, or :data:`FIXED` for anything never
    removed (image channels, dense outputs, zero-padded shortcut channels, the outputs of an
    operation without a rule);
  * a :class:`Param` — a parameter expression: the parameter leaves it is built from and
    which leaf axis each of its dimensions indexes;
  * ``None`` — a constant.
"""
from __future__ import annotations

import dataclasses

FIXED = ("<fixed>", -1)
Source = tuple[str, int]


class GraphError(ValueError):
    """The model uses an operation in a way the channel graph cannot follow."""


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


@dataclasses.dataclass(frozen=True)
class Barrier:
    """An operation the graph cannot see through: the primitive ``op``, the module it ran in
    (``where``: the user's module path, e.g. ``Decoder_0/Conv_2``; "" when unknown) and why.
    Every channel that enters it is pinned (:class:`Pin`: never physically removed) and its
    outputs are :data:`FIXED` — masks still work there, exports keep those channels."""
    op: str
    where: str
    reason: str

    def describe(self) -> str:
        return f"{self.op} in {self.where or 'the model'} ({self.reason})"


@dataclasses.dataclass(frozen=True)
class Pin:
    """Channels an export must keep: index i of some operand is fed by ``sources[i]``, and
    the operation reading it (``barrier``, an index into ``ChannelGraph.barriers``) cannot
    be rebuilt with fewer."""
    barrier: int
    sources: tuple[frozenset, ...]


@dataclasses.dataclass(frozen=True)
class Act:
    sources: tuple[frozenset, ...]      # one set per index of the channel axis (1 for scalars)
    axis: int | None = None             # the channel axis when it is not the last one


@dataclasses.dataclass(frozen=True)
class Opaque:
    """A value derived from parameters through an operation the graph cannot follow (a
    barrier's output without activation inputs): which axis it indexes is unknown, so an
    activation it meets is pinned (the equation becomes a barrier too)."""
    barrier: int


@dataclasses.dataclass(frozen=True)
class Param:
    refs: tuple[tuple[tuple[str, tuple[str, ...]], tuple[int | None, ...]], ...]  # (leaf, axis map)


def fixed(n: int) -> tuple[frozenset, ...]:
    """``n`` (at least one) indices fed by :data:`FIXED` alone."""
    return tuple(frozenset([FIXED]) for _ in range(max(n, 1)))


def union_all(sources) -> frozenset:
    """Every source of ``sources`` (:data:`FIXED` for none)."""
    return frozenset().union(*sources) if sources else frozenset([FIXED])


def broadcast(sources: tuple[frozenset, ...], n: int) -> tuple[frozenset, ...]:
    """``sources`` as ``n`` indices: as they are when there are ``n``, else each index fed by
    all of them (a channel reduction or a broadcast scalar)."""
    if len(sources) == n:
        return sources
    return (union_all(sources),) * max(n, 1)


def pinned(sources: tuple[frozenset, ...]) -> tuple[frozenset, ...]:
    """``sources`` each tied to :data:`FIXED`: an export keeps every one of them."""
    return tuple(s | {FIXED} for s in sources)


__all__ = ["FIXED", "Act", "Barrier", "Cost", "GraphError", "Opaque", "Param", "Pin", "Source", "Use", "broadcast",
           "fixed", "pinned", "union_all"]
