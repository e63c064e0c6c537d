"""Which output of a model is the logits: the output contract every path relies on.

Every method, criterion, loss term, evaluation and export check of this library reads one
array of shape ``(batch, classes)`` from the model — the *logits*. A model that returns
more (``(logits, features)``, ``{"logits": …, "aux": …}``) says which part with ``logits``:

* ``None`` (default) — the output itself when it is one array; the entry ``"logits"`` of a
  dict that has one; anything else is refused in one line naming what the model returned;
* an ``int`` (or a string of digits, as the CLI's ``--set model.logits=0`` gives it) — that
  element of a tuple or list;
* a ``str`` — that key of a dict;
* a callable ``output → logits`` — anything else (``lambda out: out.logits``).

:func:`with_logits` checks the output once (an abstract trace, no arrays) and returns the
model unchanged when it already returns logits, else a :class:`LogitsModel` — the same
``init`` / ``apply`` face, returning the selected logits. Used by :class:`repr_jax.Pruner`
(``logits=``) and by the CLI for a ``FILE.py:FACTORY`` model (``model.logits``).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _describe(out) -> str:
    """A short description of a model output's structure (shapes, keys)."""
    if hasattr(out, "shape"):
        return f"an array of shape {tuple(out.shape)}"
    if isinstance(out, dict):
        return "a dict with keys " + ", ".join(repr(k) for k in out)
    if isinstance(out, (tuple, list)):
        parts = [tuple(x.shape) if hasattr(x, "shape") else type(x).__name__ for x in out]
        return f"a {type(out).__name__} of {len(out)}: {parts}"
    return f"a {type(out).__name__}"


def selector(spec) -> Callable[[Any], Any]:
    """``output → logits`` for a ``logits`` spec (module docstring)."""
    if callable(spec):
        return spec
    if spec is None or spec == "":
        def auto(out):
            if isinstance(out, dict) and "logits" in out:
                return out["logits"]
            return out
        return auto
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        index = int(spec)
        return lambda out: out[index]
    if isinstance(spec, str):
        return lambda out: out[spec]
    raise ValueError(f"logits must be None, an index, a key or a callable, got {type(spec).__name__}")


def _check(out, spec, num_classes=None) -> None:
    """One line when ``spec`` cannot read logits from ``out`` (an abstract output), or they
    have another number of classes than ``num_classes``."""
    hint = ("say which part is the logits: logits=0 / logits='logits' / logits=callable "
            "(repr_jax.Pruner), --set model.logits=0|KEY (CLI)")
    try:
        logits = selector(spec)(out)
    except (KeyError, IndexError, TypeError) as err:
        raise ValueError(f"the model returns {_describe(out)}; logits={spec!r} does not select an array "
                         f"({type(err).__name__}: {err}); {hint}") from None
    if not hasattr(logits, "shape") or len(logits.shape) != 2:
        raise ValueError(f"the model returns {_describe(out)}, not logits of shape (batch, classes); {hint}")
    if num_classes is not None and logits.shape[-1] != num_classes:
        raise ValueError(f"the model's logits have {logits.shape[-1]} classes, the data has {num_classes} "
                         "(the factory's num_classes argument)")


class LogitsModel:
    """``model`` (Linen, or an NNX adapter) whose ``apply`` returns only the logits of its
    output. Everything else (``init``, ``named_scopes``, ``write_back``, ``module``…) is the
    wrapped model's."""

    def __init__(self, model, spec):
        self.inner = model
        self.spec = spec
        self.select = selector(spec)

    def init(self, *args, **kwargs):
        return self.inner.init(*args, **kwargs)

    def apply(self, variables, x, *args, mutable=False, **kwargs):
        result = self.inner.apply(variables, x, *args, mutable=mutable, **kwargs)
        if mutable:
            out, updates = result
            return self.select(out), updates
        return self.select(result)

    def __getattr__(self, name):
        if name in ("inner", "spec", "select"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"LogitsModel({self.inner!r}, logits={self.spec!r})"


def with_logits(model, input_shape, logits=None, num_classes: int | None = None):
    """``model`` as the library takes it: unchanged when its eval-mode output on one example
    of ``input_shape`` (H, W, C) is already logits, else wrapped in a :class:`LogitsModel`
    selecting them; ``ValueError`` with one line when ``logits`` cannot read them (or, with
    ``num_classes``, when they have another number of classes)."""
    x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)

    def output():
        variables = model.init(jax.random.key(0), x, train=False)
        return model.apply(variables, x, train=False)

    try:
        out = jax.eval_shape(output)
    except Exception as err:   # the model itself fails on this input: not ours to explain further
        raise ValueError(f"the model fails on one example of shape {tuple(input_shape)}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    _check(out, logits, num_classes)
    if logits is None and hasattr(out, "shape"):
        return model
    return LogitsModel(model, logits)


__all__ = ["LogitsModel", "selector", "with_logits"]
