"""Standard training: the full network every epoch, nothing added (the baseline of every table).

Deviations from a paper: none — there is no method to deviate from; the model, optimizer
and schedule are the run's (``--protocol paper`` sets the RePr paper's Standard run)."""
from __future__ import annotations

import dataclasses

from repr_jax.methods.base import Method, MethodConfig, register


@dataclasses.dataclass(frozen=True)
class StandardConfig(MethodConfig):
    name = "standard"


@register
class Standard(Method):
    """Plain training of the full network: every hook keeps its do-nothing default."""
    name = "standard"
    config_class = StandardConfig
    summary = "plain training of the full network"
    prunes = False


__all__ = ["Standard", "StandardConfig"]
