"""Every method in NNX's own loop: your ``nnx.Module``, an ``nnx.Optimizer`` and an
``nnx.jit`` step, updated in place.

:class:`Pruner` is an ``nnx.Module`` holding the method's carried state (masks, method
state, step — :class:`repr_jax.api.PruneState`) in an ``nnx.Variable``, so it goes into
``nnx.jit`` beside the model and the optimizer and is updated in place like them::

    pr = rj.nnx.Pruner("repr", model, x0, epochs=E, steps_per_epoch=S, s1=4, s2=2, iterations=2)
    optimizer = nnx.Optimizer(model, pr.wrap(optax.sgd(0.01, momentum=0.9)), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, pr, x, y, key):
        pr.before_step(model, key)                         # most methods: nothing
        def loss_fn(model):
            logits = pr.forward(model, x)                  # the method's channel gates applied
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce + pr.loss_terms(model, x, y, logits, key)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, masks=pr.update_masks(model))   # dropped filters stay 0
        pr.after_step()
        return loss

    for epoch in range(E):
        for line in pr.before_epoch(epoch, model, optimizer):   # RePr's drop: values, not shapes
            print(line)
        model.train()
        for x, y in batches:
            train_step(model, optimizer, pr, x, y, key)
        pr.after_epoch(epoch, model, optimizer)                  # RePr's re-initialisation
    exported = pr.shrink(model)                                  # structured methods: smaller, in place

Training mode, dropout and BatchNorm statistics are NNX's own (``model.train()``, the
module's ``nnx.Rngs``, statistics updated in place by the forward pass). The transitions
between epochs are the functional :class:`repr_jax.api.Pruner`'s — the same jitted
functions as the CLI's runner — on the module's variables and the optimizer's state, written
back in place; ``tests/test_nnx_loop.py`` checks that this loop trains to the same
parameters and masks as the functional path. Needs flax ≥ 0.11 (``nnx.Optimizer(model, tx,
wrt=…)``). After :meth:`Pruner.shrink` the optimizer's state no longer fits the module:
build a new ``nnx.Optimizer`` to train on.
"""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx as fnnx

from repr_jax.api import Pruner as FunctionalPruner
from repr_jax.api import shrink_nnx
from repr_jax.layers import intercept_outputs, response_site
from repr_jax.models.nnx_adapter import NNXModel, pure_dict, state_like


def _split_states(tree):
    """``(treedef with nnx.State nodes as leaves, leaves)`` of an optimizer state."""
    return jax.tree_util.tree_flatten(tree, is_leaf=lambda x: isinstance(x, fnnx.State))


def opt_state_as_dicts(opt_state):
    """An ``nnx.Optimizer``'s state (pure) with every ``nnx.State`` as the library's
    string-keyed dict — the structure :mod:`repr_jax.masks` resets moments in."""
    leaves, treedef = _split_states(opt_state)
    return treedef.unflatten([pure_dict(x) if isinstance(x, fnnx.State) else x for x in leaves])


def opt_state_as_states(tree, template):
    """:func:`opt_state_as_dicts` undone, with the ``nnx.State`` nodes of ``template``."""
    leaves, treedef = _split_states(template)
    parts = treedef.flatten_up_to(tree)
    return treedef.unflatten([state_like(t, p) if isinstance(t, fnnx.State) else p
                              for t, p in zip(leaves, parts)])


class Pruner(fnnx.Module):
    """A method bound to an NNX ``model`` (module docstring); the arguments are
    :class:`repr_jax.api.Pruner`'s."""

    def __init__(self, method, model: fnnx.Module, example_input, *, logits=None, **kwargs):
        if not isinstance(model, fnnx.Module):
            raise TypeError(f"repr_jax.nnx.Pruner takes a flax.nnx.Module, got {type(model).__name__} "
                            "(a Linen model: repr_jax.Pruner)")
        self.functional = FunctionalPruner(method, model, example_input, logits=logits, **kwargs)
        self.ps = fnnx.Variable(None)   # the PruneState, set by wrap()
        self._select = getattr(self.functional.model, "select", lambda out: out)

    # ------------------------------------------------------------------ setup
    def wrap(self, tx):
        """Your optax transform with masking (:func:`repr_jax.api.masked`); give the result
        to ``nnx.Optimizer``. Also initialises the carried state from the model's parameters."""
        wrapped = self.functional.wrap(tx)
        self._set(self.functional.init(self._variables(self.functional.model.module)["params"]))
        return wrapped

    @staticmethod
    def _variables(model) -> dict:
        """The module's variables as the library holds them (string keys)."""
        return {"params": pure_dict(fnnx.state(model, fnnx.Param)),
                "batch_stats": pure_dict(fnnx.state(model, fnnx.BatchStat))}

    def _set(self, ps) -> None:
        self.ps.set_value(ps) if hasattr(self.ps, "set_value") else setattr(self.ps, "value", ps)

    def _ps(self):
        ps = self.ps.get_value() if hasattr(self.ps, "get_value") else self.ps.value
        if ps is None:
            raise ValueError("call pr.wrap(your_optax_transform) first (it initialises the pruner's state)")
        return ps

    def state(self):
        """The carried :class:`repr_jax.api.PruneState` (masks, method state, step)."""
        return self._ps()

    # ------------------------------------------------------------------ in the jitted step
    def forward(self, model, x, train: bool = True):
        """``model(x)`` — its logits (the output part ``logits=`` names) — with the method's
        channel gates on the convs' outputs (RePr's frozen filters, JST's architecture
        weights); BatchNorm statistics and dropout are the module's own."""
        ps = self._ps()
        method = self.functional.method
        gates = method.channel_gates(ps.method_params, ps.method_state, train)
        if not gates:
            return self._select(model(x))
        sites = {response_site(layer): layer.name for layer in self.functional.layers}
        with intercept_outputs(sites, lambda name, out: out * gates[name].astype(out.dtype) if name in gates else out):
            return self._select(NNXModel.call_intercepted(model, x))

    def loss_terms(self, model, x, labels, logits, key) -> jax.Array:
        """The sum of the method's loss terms (Slimming's λΣ|γ|, Han's L1, JST's ‖α‖₂) on the
        model's current (differentiated) parameters; 0 for most methods."""
        variables = self._variables(model)
        terms = self.functional.loss_terms(variables["params"], variables, self._ps(), x, labels, logits, key)
        return sum(terms.values()) if terms else 0.0

    def update_masks(self, model):
        """The masks for ``optimizer.update(model, grads, masks=…)``, in the structure of the
        model's ``nnx.Param`` state."""
        masks = self.functional.update_masks(self._variables(model), self._ps())
        return fnnx.as_pure(state_like(fnnx.state(model, fnnx.Param), masks))

    def before_step(self, model, key) -> None:
        """The method's per-step hook (JST samples a sub-network), in place."""
        self._set(self.functional.before_step(self._variables(model), self._ps(), key))

    def after_step(self) -> None:
        """Count the step (the method's schedule reads it), in place."""
        self._set(self.functional.after_step(self._ps()))

    # ------------------------------------------------------------------ between epochs
    def _transition(self, hook: Callable, epoch: int, model, optimizer) -> list[str]:
        template = fnnx.as_pure(optimizer.opt_state)
        variables, opt_state, ps, events = hook(epoch, self._variables(model), opt_state_as_dicts(template),
                                                self._ps())
        NNXModel(model).write_back(variables)
        fnnx.update(optimizer.opt_state, fnnx.state(opt_state_as_states(opt_state, template)))
        self._set(ps)
        return self.functional.describe(events)

    def before_epoch(self, epoch: int, model, optimizer) -> list[str]:
        """The method's transition before 0-based ``epoch`` (RePr's drop, a structured prune)
        on the module and the optimizer, in place; returns its log lines."""
        return self._transition(self.functional.before_epoch, epoch, model, optimizer)

    def after_epoch(self, epoch: int, model, optimizer) -> list[str]:
        """The method's transition after 0-based ``epoch`` (RePr's re-initialisation, JST's
        search update), in place; returns its log lines."""
        return self._transition(self.functional.after_epoch, epoch, model, optimizer)

    # ------------------------------------------------------------------ results
    def live(self) -> dict:
        """``{conv name: (F,) 0/1}`` live filters."""
        return self.functional.live(self._ps())

    def shrink(self, model):
        """Export the masked module and shrink ``model`` to it in place (:func:`shrink_nnx`);
        returns the :class:`repr_jax.compress.export.Exported` (its warnings issued)."""
        exported = self.functional.export(self._variables(model), self._ps())
        shrink_nnx(model, exported)
        return exported


__all__ = ["Pruner", "opt_state_as_dicts", "opt_state_as_states"]
