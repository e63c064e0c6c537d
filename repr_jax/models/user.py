"""The user's own model by reference: ``FILE.py:FACTORY`` or ``package.module:FACTORY``.

``FACTORY(num_classes, channels=None)`` returns a Flax Linen module; ``channels`` is a
per-conv width spec ``{conv name: width}`` (the names :func:`repr_jax.shapes.model_layers`
reports, e.g. ``Conv_0``), which the exporting methods use to build the smaller model. A
factory that takes no ``channels`` still trains and prunes; its export then yields the
smaller parameters and the channel spec only (:attr:`takes_channels`).

**Security.** A reference names Python code, which is imported and run — the same trust as
``python FILE.py``: name only your own code. A reference is imported only when *you* named
it: on the command line (``--model REF``) or in your own Python code. One read from a file —
a run directory's ``config.json`` / ``architecture.json`` on ``--resume``, ``evaluate``,
``export``, a teacher or ``init_from`` run — is refused in one line unless the same reference
is given again (``--model REF``) or ``--trust-model`` says to import whatever the run names
(:func:`trust`, :func:`check_trusted`). A file reference is recorded with its absolute path,
so resume, evaluation and export find it from any working directory.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path


_TRUSTED: set[str] = set()     # canonical references the user named (command line, own code)
_TRUST_ALL = [False]           # --trust-model


def trust(reference: str | None = None, everything: bool = False) -> None:
    """Allow this process to import ``reference`` (canonical form) when a run directory names
    it; ``everything``: any reference (``--trust-model``)."""
    if reference:
        _TRUSTED.add(canonical(reference))
    if everything:
        _TRUST_ALL[0] = True


def check_trusted(reference: str, source, trusted=None) -> None:
    """``ValueError`` (one line) unless ``reference``, read from ``source`` (a run directory),
    may be imported: ``trusted`` is True or the same reference, or :func:`trust` allowed it."""
    if trusted is True or _TRUST_ALL[0]:
        return
    allowed = _TRUSTED | ({canonical(trusted)} if isinstance(trusted, str) and trusted else set())
    if canonical(reference) not in allowed:
        raise ValueError(f"{source} names Python code as its model ({reference}); code named by a file is "
                         f"imported only when you name it yourself: --model {reference} "
                         "(or --trust-model to import what it names)")


def is_reference(name: str) -> bool:
    """Whether a ``--model`` value names a factory (``…:FACTORY``) rather than a zoo model."""
    return ":" in name


def canonical(reference: str) -> str:
    """``reference`` with a file path made absolute (what ``architecture.json`` records)."""
    where, _, attr = reference.rpartition(":")
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return reference


def load_factory(reference: str):
    """The callable a reference names; ``ValueError`` with one line when it cannot be found."""
    where, _, attr = reference.rpartition(":")
    if not where or not attr.isidentifier():
        raise ValueError(f"--model {reference!r}: expected FILE.py:FACTORY or package.module:FACTORY")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"--model {reference!r}: no file {path}")
        name = f"repr_jax_user_model_{abs(hash(str(path)))}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except (Exception, SystemExit) as err:   # the user's file failed (or exited): say where, in one line
                raise ValueError(f"--model {reference!r}: importing {path} failed: "
                                 f"{type(err).__name__}: {err}") from None
            sys.modules[name] = module
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"--model {reference!r}: cannot import {where}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model {reference!r}: {where} has no callable {attr}")
    return factory


def takes_channels(factory) -> bool:
    """Whether ``factory`` accepts a ``channels`` argument (a smaller model can be rebuilt)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "channels" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build(reference: str, num_classes: int, channels: dict | None):
    """The Linen module ``FACTORY(num_classes[, channels=…])`` returns; ``ValueError`` when it
    is not one, or when a channel spec is asked of a factory that takes none."""
    import flax.linen as nn
    factory = load_factory(reference)
    if channels and not takes_channels(factory):
        raise ValueError(f"--model {reference}: the factory takes no channels, so no smaller model can be built "
                         "(an export gives the smaller parameters and the channel spec only)")
    try:
        module = (factory(num_classes, channels=dict(channels) if channels else None) if takes_channels(factory)
                  else factory(num_classes))
    except (Exception, SystemExit) as err:   # sys.exit(0) in a factory must not end the run as a success
        raise ValueError(f"--model {reference}: the factory failed: {type(err).__name__}: {err}") from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"--model {reference}: the factory returned {type(module).__name__}, not a flax.linen "
                         "Module (an NNX model: use repr_jax.Pruner in your own loop)")
    return module


def channels_warning(reference: str, num_classes: int, input_shape, layers) -> str | None:
    """A warning line when a factory cannot build the smaller model an export needs: it takes
    no ``channels``, or takes them and ignores them (the first prunable conv, asked one filter
    fewer, keeps its width); None when it honours them."""
    import jax
    import jax.numpy as jnp

    from repr_jax.layers import get_path
    if not layers:
        return None
    if not takes_channels(load_factory(reference)):
        return (f"--model {reference}: the factory takes no channels, so the export will give the smaller "
                "parameters and the channel spec only, no smaller module")
    first = layers[0]
    spec = {first.name: max(1, first.num_filters - 1)}
    x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
    try:   # a conv feeding a residual sum cannot narrow alone: then nothing is learnt here
        small = build(reference, num_classes, spec)
        shapes = jax.eval_shape(lambda: small.init(jax.random.key(0), x, train=False))["params"]
    except Exception:
        return None
    if first.num_filters > 1 and get_path(shapes, first.path + ("kernel",)).shape[-1] == first.num_filters:
        return (f"--model {reference}: the factory ignores channels (asked for {spec}, {first.name} kept "
                f"{first.num_filters} filters), so the export cannot rebuild a smaller module")
    return None


__all__ = ["build", "canonical", "channels_warning", "check_trusted", "is_reference", "load_factory",
           "takes_channels", "trust"]
