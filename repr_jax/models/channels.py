"""Per-layer channel specs: how a model builder learns the width of each conv.

A channel spec is a tuple of ``(conv name, output channels)`` pairs (hashable, so a Flax
module can hold it), e.g. ``(("conv1", 20), ("conv2", 11))``; convs it does not name keep
the architecture's default width. :func:`repr_jax.compress.export` produces one from a
pruned model; ``create_model(name, channels=spec)`` builds the smaller dense model.
"""
from __future__ import annotations

from typing import Iterable, Mapping


def as_spec(channels: Mapping[str, int] | Iterable[tuple[str, int]] | None) -> tuple[tuple[str, int], ...]:
    """Normalise a mapping or pairs to the sorted, hashable tuple form modules hold."""
    if channels is None:
        return ()
    items = channels.items() if isinstance(channels, Mapping) else channels
    spec = tuple(sorted((str(k), int(v)) for k, v in items))
    bad = [f"{k}={v}" for k, v in spec if v < 1]
    if bad:
        raise ValueError(f"channel spec widths must be >= 1: {', '.join(bad)}")
    return spec


def width(spec: tuple[tuple[str, int], ...], name: str, default: int) -> int:
    """The width ``spec`` gives conv ``name``, else ``default``."""
    return dict(spec).get(name, default)


def check_names(spec: tuple[tuple[str, int], ...], allowed: Iterable[str], model: str,
                rule: str = "") -> None:
    """``ValueError`` naming any spec entry that is not a conv this model lets you resize."""
    unknown = sorted(set(dict(spec)) - set(allowed))
    if unknown:
        raise ValueError(f"channel spec names {', '.join(unknown)}, which {model} cannot resize"
                         + (f" ({rule})" if rule else ""))
