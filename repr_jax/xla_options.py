"""Per-model XLA compiler options for the programs that train and evaluate a model.

XLA's flags (``XLA_FLAGS``) are process-wide; :func:`jax.jit`'s ``compiler_options`` set the
same options for one program. A model class may declare the options its train and evaluation
programs need on the CPU as a class attribute::

    class MyNet(nn.Module):
        cpu_compiler_options = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}

:func:`compiler_options` reads that declaration (a name → value mapping of XLA
``DebugOptions`` fields); :func:`repr_jax.state.create_train_state` stores it in the
:class:`~repr_jax.state.TrainState` (a static field), and the train and evaluation steps of
:mod:`repr_jax.train` are compiled with it (:func:`jit_with_state_options`), so one model's
options leave every other model's programs as they were. A user's own loop passes
``compiler_options=dict(rj.compiler_options(model))`` to its ``jax.jit``.

The options apply only on XLA:CPU and only with a jaxlib they were checked on (an option that
a jaxlib does not know is an error at compile time); elsewhere :func:`compiler_options` is
empty. :class:`repr_jax.models.MobileNetV2` declares YNN fusion for reductions only
(``LIBRARY_FUSION_TYPE_REDUCE``) and the memory-optimised scheduler: with the project's YNN
flag (dot, elementwise and reduce fusions) and XLA:CPU's default concurrency-optimised
scheduler its gradient at 64×64, batch 50 held 14.2 GiB of temporaries (peak 15.9 GiB
resident); with these options 2.7 GiB, and the step is faster — without any YNN fusion the
memory is the same but XLA:CPU rewrites the BatchNorm and depthwise-gradient reductions into
slow reduce-windows (``benchmarks/RESULTS.md`` §8b). A repeated enum option is written as its
values' names joined by commas (``"LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"``).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax

from repr_jax._xla_flags import jaxlib_checked


def compiler_options(model) -> tuple[tuple[str, str], ...]:
    """The ``compiler_options`` (sorted ``(name, value)`` pairs) that ``model`` declares for its
    train and evaluation programs (``cpu_compiler_options``, module docstring); empty when it
    declares none, off the CPU, or with a jaxlib they were not checked on. Give them to
    :func:`jax.jit` as ``compiler_options=dict(...)``."""
    declared = getattr(model, "cpu_compiler_options", None)
    if not declared:
        return ()
    if not isinstance(declared, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in declared.items()):
        raise TypeError(f"{type(model).__name__}.cpu_compiler_options must map option names to strings, "
                        f"got {declared!r}")
    if jax.default_backend() != "cpu" or not jaxlib_checked():
        return ()
    return tuple(sorted(declared.items()))


class jit_with_state_options:   # noqa: N801 (used as a decorator, like jax.jit)
    """:func:`jax.jit` of ``fun`` compiled once per ``compiler_options`` of its first argument
    (a :class:`~repr_jax.state.TrainState`, or a stacked population of them): a model's
    declared options (:func:`compiler_options`) reach its programs, and states without
    options share one ``jax.jit``. ``_cache_size()`` counts the compilations of them all."""

    def __init__(self, fun: Callable, **jit_kwargs):
        functools.update_wrapper(self, fun)
        self._fun, self._jit_kwargs, self._jitted = fun, jit_kwargs, {}

    def _for(self, state):
        options = tuple(getattr(state, "compiler_options", ()) or ())
        jitted = self._jitted.get(options)
        if jitted is None:
            jitted = self._jitted[options] = jax.jit(self._fun, compiler_options=dict(options) or None,
                                                     **self._jit_kwargs)
        return jitted

    def __call__(self, state, *args, **kwargs):
        return self._for(state)(state, *args, **kwargs)

    def lower(self, state, *args, **kwargs):
        """``jax.jit(...).lower`` of the program ``state``'s options select."""
        return self._for(state).lower(state, *args, **kwargs)

    def _cache_size(self) -> int:
        return sum(f._cache_size() for f in self._jitted.values())


def state_jit(**jit_kwargs):
    """Decorator form of :class:`jit_with_state_options` (``@state_jit(static_argnames=…)``)."""
    return functools.partial(jit_with_state_options, **jit_kwargs)


__all__ = ["compiler_options", "jit_with_state_options", "state_jit"]
