"""NNX modules in the library: a Linen-style view of a ``flax.nnx`` module.

Everything in repr-jax speaks the Linen calling convention — ``model.init(key, x,
train=False)`` returning ``{"params": …, "batch_stats": …}`` and
``model.apply(variables, x, train=…, mutable=["batch_stats"], rngs=…)`` — so that masks,
criteria, re-initialisation, the channel graph and export are pure functions of plain
dicts. :func:`adapt` gives an NNX module that face: its ``nnx.Param`` and ``nnx.BatchStat``
states become nested dicts (string keys: an ``nnx.List`` index ``0`` is ``"0"``), and
``apply`` merges them into a fresh copy of the module (``nnx.split`` / ``nnx.merge``), calls
it in train or eval mode and splits the new batch statistics back out — a pure function,
so it traces under ``jit``, ``grad`` and ``vmap`` like a Linen ``apply``.

* ``rngs={"dropout": key}`` reseeds the module's RNG streams of those names for the call
  (``nnx.reseed``; a single ``default`` stream, ``nnx.Rngs(0)``, takes the ``dropout``
  key), so dropout differs per step as in a Linen model; the call works on a copy of the
  module's RNG state, so it traces under ``jit``.
* Output interception (:func:`repr_jax.layers.intercept_outputs`: scoring probes and a
  method's channel gates) works by replacing the intercepted submodules of the merged copy
  for the call.
* :meth:`NNXModel.named_scopes`: while it is active, every submodule's call runs under
  ``jax.named_scope(its attribute name)``, so a traced equation's name stack is the user's
  module path (the channel graph names the module of an operation it cannot follow).
* :meth:`NNXModel.write_back` puts trained or exported variables into the user's module
  (in place; shapes may shrink — NNX modules are mutable, so an export shrinks the module
  itself, :func:`repr_jax.api.shrink_nnx`).
"""
from __future__ import annotations

import contextlib
from typing import Any

import jax


def _nnx():
    from flax import nnx
    return nnx


def _pure(state) -> dict:
    """An NNX state as a nested dict of arrays (``nnx.to_pure_dict``; the method before it)."""
    nnx = _nnx()
    return nnx.to_pure_dict(state) if hasattr(nnx, "to_pure_dict") else state.to_pure_dict()


def _str_keys(tree):
    """A pure dict with every key a string (``nnx.List`` indices become ``"0"``, …)."""
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _like(template, tree):
    """``tree`` (string keys) with the key types of ``template`` (an NNX pure dict)."""
    if isinstance(template, dict):
        return {k: _like(v, tree[str(k)]) for k, v in template.items()}
    return tree


def _state_with(state, values: dict):
    """A copy of the NNX ``state`` holding ``values`` (a string-keyed pure dict)."""
    nnx = _nnx()
    copy = jax.tree_util.tree_map(lambda x: x, state)
    nnx.replace_by_pure_dict(copy, _like(_pure(state), values))
    return copy


def _parent_and_key(module, path: tuple[str, ...]):
    node = module
    for key in path[:-1]:
        node = node[int(key)] if key.isdigit() and not hasattr(node, key) else getattr(node, key)
    return node, path[-1]


def _get(parent, key: str):
    return parent[int(key)] if key.isdigit() and not hasattr(parent, key) else getattr(parent, key)


def _set(parent, key: str, value) -> None:
    if key.isdigit() and not hasattr(parent, key):
        parent[int(key)] = value
    else:
        setattr(parent, key, value)


class NNXModel:
    """The Linen-style face of an NNX ``module`` (see the module docstring). Hashable by
    identity, so per-model caches (channel graph, shapes) key on it."""

    def __init__(self, module):
        nnx = _nnx()
        if not isinstance(module, nnx.Module):
            raise TypeError(f"adapt() takes a flax.nnx.Module, got {type(module).__name__}")
        self.module = module
        self.graphdef, self._params, self._stats, self._rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        self._scopes = False

    @contextlib.contextmanager
    def named_scopes(self):
        """Calls inside run every submodule under ``jax.named_scope`` of its name."""
        self._scopes = True
        try:
            yield
        finally:
            self._scopes = False

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other

    def init(self, rngs=None, x=None, train: bool = False, **_) -> dict:
        """The module's variables as they are (an NNX module is initialised when built; the
        key is ignored): ``{"params", "batch_stats"}`` with string keys."""
        del rngs, x, train
        return {"params": _str_keys(_pure(self._params)), "batch_stats": _str_keys(_pure(self._stats))}

    def bind(self, variables: dict):
        """A fresh NNX module (a copy, its RNG state too: a traced call must not write into
        the user's module) holding ``variables``."""
        nnx = _nnx()
        states = (_state_with(self._params, variables["params"]),
                  _state_with(self._stats, variables.get("batch_stats", {})), self._rest)
        try:
            return nnx.merge(self.graphdef, *states, copy=True)
        except TypeError:   # flax without merge(copy=): the rest state copied by hand
            return nnx.merge(self.graphdef, *states[:2], jax.tree_util.tree_map(lambda x: x, self._rest))

    def apply(self, variables: dict, x, train: bool = False, mutable=False, rngs: dict | None = None,
              method=None, **kwargs) -> Any:
        from repr_jax.layers import active_intercepts
        nnx = _nnx()
        module = self.bind(variables)
        module.train() if train else module.eval()
        if rngs:
            _reseed(module, rngs)
        elif train and _draws_random_numbers(module):
            raise ValueError("this NNX model draws random numbers in training (nnx.Dropout): pass a new key per "
                             "step, rngs={'dropout': key} (Pruner.forward / model.apply) — without it every "
                             "step would reuse one mask")
        if self._scopes and not active_intercepts():
            _scope_submodules(module)
        out = self.call_intercepted(module, x, method, **kwargs)
        if mutable:
            _, _, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
            return out, {"batch_stats": _str_keys(_pure(stats))}
        return out

    @staticmethod
    def call_intercepted(module, x, method=None, **kwargs):
        """``module(x)`` (or its ``method``) with the active output intercepts
        (:func:`repr_jax.layers.intercept_outputs`) on its submodules for the call, in place
        and restored after — on a bound copy here, on the user's module in
        :class:`repr_jax.nnx.Pruner`."""
        from repr_jax.layers import active_intercepts
        restore = []
        for sites, fn in active_intercepts():
            for path, name in sites.items():
                parent, key = _parent_and_key(module, tuple(path))
                inner = _get(parent, key)
                _set(parent, key, _intercepted(inner, name, fn))
                restore.append((parent, key, inner))
        try:
            return module(x, **kwargs) if method is None else getattr(module, method)(x, **kwargs)
        finally:
            for parent, key, inner in reversed(restore):
                _set(parent, key, inner)

    def write_back(self, variables: dict) -> None:
        """Put ``variables`` (``{"params", "batch_stats"}``, string keys) into the user's module,
        in place; leaves whose shapes changed (an export) are replaced with their new shape."""
        nnx = _nnx()
        params = _state_with(self._params, variables["params"])
        stats = _state_with(self._stats, variables.get("batch_stats", {}))
        nnx.update(self.module, params, stats)
        self.graphdef, self._params, self._stats, self._rest = nnx.split(self.module, nnx.Param, nnx.BatchStat, ...)


def _draws_random_numbers(module) -> bool:
    """Whether a training call of ``module`` samples (an active ``nnx.Dropout``)."""
    nnx = _nnx()
    return any(isinstance(node, nnx.Dropout) and node.rate > 0 and not node.deterministic
               for _, node in nnx.iter_graph(module))


def _reseed(module, rngs: dict) -> None:
    """Reseed the module's RNG streams from this call's keys: a stream named as a key takes
    that key; a single ``default`` stream (``nnx.Rngs(0)``, from which ``nnx.Dropout`` draws
    when it has no ``dropout`` stream) takes the ``dropout`` key (or the first given) — so
    dropout masks differ from step to step as they do in a Linen model."""
    nnx = _nnx()
    streams = {getattr(node, "tag", None) for _, node in nnx.iter_graph(module) if isinstance(node, nnx.RngStream)}
    keys = {name: key for name, key in rngs.items() if name in streams}
    if "default" in streams and "default" not in keys:
        keys["default"] = rngs.get("dropout", next(iter(rngs.values())))
    if keys:
        nnx.reseed(module, **keys)


def _scope_submodules(module) -> None:
    """Wrap every submodule of ``module`` (a bound copy) so its call runs under
    ``jax.named_scope`` of its path below the nearest wrapped ancestor — deepest first, so a
    parent's wrapper holds already wrapped children; nested scopes then spell the full path."""
    nnx = _nnx()
    found = [(tuple(str(k) for k in path), node) for path, node in nnx.iter_graph(module)
             if path and isinstance(node, nnx.Module) and callable(node)
             and not hasattr(type(node), "__iter__")]   # containers (nnx.List) stay as they are
    wrapped = {path for path, _ in found}
    for path, node in sorted(found, key=lambda item: -len(item[0])):
        # the path below the nearest wrapped ancestor (an nnx.List between them is not one)
        outer = max((len(p) for p in wrapped if len(p) < len(path) and path[:len(p)] == p), default=0)
        parent, key = _parent_and_key(module, path)
        _set(parent, key, _scoped(node, "/".join(path[outer:])))


_SCOPED = []


def _scoped(inner, name):
    """An NNX module that calls ``inner`` under ``jax.named_scope(name)`` and forwards every
    other attribute to it (defined on first use)."""
    if not _SCOPED:
        nnx = _nnx()

        class Scoped(nnx.Module):
            def __init__(self, inner, name):
                self.inner = inner
                self.scope_name = name

            def __call__(self, *args, **kwargs):
                with jax.named_scope(self.scope_name):
                    return self.inner(*args, **kwargs)

            def __getattr__(self, attr):
                if attr in ("inner", "scope_name") or attr.startswith("_"):
                    raise AttributeError(attr)
                return getattr(self.inner, attr)

        _SCOPED.append(Scoped)
    return _SCOPED[0](inner, name)


_INTERCEPTED = []


def _intercepted(inner, name, fn):
    """An NNX module that calls ``inner`` and passes its output through ``fn(name, output)``
    (defined on first use: importing this module imports no NNX)."""
    if not _INTERCEPTED:
        nnx = _nnx()

        class Intercepted(nnx.Module):
            def __init__(self, inner, name, fn):
                self.inner = inner
                self.name, self.fn = name, fn

            def __call__(self, *args, **kwargs):
                return self.fn(self.name, self.inner(*args, **kwargs))

        _INTERCEPTED.append(Intercepted)
    return _INTERCEPTED[0](inner, name, fn)


def adapt(model):
    """``model`` as the library takes it: a Linen module as it is, an NNX module wrapped in
    :class:`NNXModel` (an :class:`NNXModel` as it is)."""
    try:
        nnx = _nnx()
    except ImportError:   # pragma: no cover - flax without nnx
        return model
    if isinstance(model, nnx.Module):
        return NNXModel(model)
    return model


def is_nnx(model) -> bool:
    return isinstance(model, NNXModel)


def pure_dict(state) -> dict:
    """An NNX state as the library's nested dict of arrays, every key a string."""
    return _str_keys(_pure(state))


def state_like(template, values: dict):
    """A copy of the NNX state ``template`` holding ``values`` (a string-keyed dict of the
    same structure)."""
    return _state_with(template, values)


__all__ = ["NNXModel", "adapt", "is_nnx", "pure_dict", "state_like"]
