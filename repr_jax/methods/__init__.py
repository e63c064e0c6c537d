"""Training methods: one module each, registered by name (see :mod:`repr_jax.methods.base`).

``standard`` (:mod:`.standard`) and ``repr`` (:mod:`.repr`) ship here; any module added to
this package that calls :func:`register` is found by :func:`get_method` without further edits.
"""
from repr_jax.methods.base import (METHODS, Event, Method, MethodConfig, MethodContext, Phase,
                                   StepInputs, create_method, get_method, method_config,
                                   method_names, register)

__all__ = ["METHODS", "Event", "Method", "MethodConfig", "MethodContext", "Phase", "StepInputs",
           "create_method", "get_method", "method_config", "method_names", "register"]
