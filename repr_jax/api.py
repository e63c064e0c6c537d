"""Every method in your own training loop, on your own Flax model (Linen or NNX).

:class:`Pruner` is the library's face for a user who keeps their model, variables, optimizer
and loop — optax-style: pure functions of pytrees the caller holds, jittable, no hidden
state. One method (``"repr"``, ``"li-l1"``, ``"slimming"``, ``"trimming"``,
``"channel-pruning"``, ``"han"``, ``"dsd"``, ``"jst"``, ``"standard"``) is built for a model
from an example input of any shape; the caller carries a :class:`PruneState` (masks and
the method's state) beside their ``variables`` (``{"params", "batch_stats"}``) and optimizer
state::

    pr = rj.Pruner("repr", model, x0, epochs=E, steps_per_epoch=S, s1=4, s2=2, iterations=2)
    tx = pr.wrap(optax.sgd(0.01, momentum=0.9))            # masks respected, frozen state still
    variables = model.init(key, x0)                          # (NNX: pr.variables())
    opt_state, ps = tx.init(variables["params"]), pr.init(variables["params"])
    for epoch in range(E):
        variables, opt_state, ps, events = pr.before_epoch(epoch, variables, opt_state, ps)
        for x, y in batches:                                  # your step, jitted as you like
            ps = pr.before_step(variables, ps, key)
            def loss_fn(params):
                logits, stats = pr.forward({**variables, "params": params}, ps, x, train=True)
                terms = pr.loss_terms(params, variables, ps, x, y, logits, key)
                return cross_entropy(logits, y) + sum(terms.values()), stats
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
            updates, opt_state = tx.update(grads, opt_state, variables["params"],
                                           masks=pr.update_masks(variables, ps))
            variables = {"params": optax.apply_updates(variables["params"], updates), "batch_stats": stats}
            ps = pr.after_step(ps)
        variables, opt_state, ps, events = pr.after_epoch(epoch, variables, opt_state, ps)
    small = pr.export(variables, ps, rebuild=lambda channels: MyCNN(channels=channels))

Every transition is the method's own (:class:`repr_jax.methods.base.Method`) and the
forward pass and update masks are the runner's (:func:`repr_jax.train.forward`,
:func:`repr_jax.train.update_masks`): the runner behind ``experiments/cifar.py`` calls the
same hooks on the same :class:`repr_jax.state.TrainState` this module assembles from the
caller's pieces (:meth:`Pruner.train_state` / :meth:`Pruner.pieces`), so there is one path
— ``tests/test_one_path.py`` checks that the runner's step and a loop over a Pruner give
the same parameters, masks and method state, epoch after epoch. What differs
from our runner is only what the caller owns: inputs are passed as the model takes them
(no normalisation is applied; data-driven criteria score on ``scoring_data`` passed
through ``preprocess``), and the learning rate of a method's phases (:meth:`phase`) is
the caller's to apply.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from repr_jax.masks import apply_masks, live_filters, masked_updates
from repr_jax.methods.base import MethodConfig, MethodContext, StepInputs, create_method, method_config
from repr_jax.models.nnx_adapter import adapt, is_nnx
from repr_jax.optim import frozen_where_masked
from repr_jax.state import TrainState, create_train_state
from repr_jax.xla_options import compiler_options


@flax.struct.dataclass
class PruneState:
    """What a method needs carried between steps, beside the caller's variables and
    optimizer state: the ``masks`` (params-shaped), the method's ``method_state``,
    ``method_params`` and their optimizer state, the method's RNG key data ``rng`` and the
    ``step`` count. A pytree: checkpoint it, ``vmap`` it, pass it through ``jit``."""
    masks: Any
    method_state: Any
    method_params: Any
    method_opt_state: Any
    rng: jax.Array
    step: jax.Array


def masked(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` between two masking transforms (dropped entries get no gradient in, no update
    out) with its state frozen where masked (:func:`repr_jax.optim.frozen_where_masked`).
    Call ``update(grads, state, params, masks=...)``."""
    return optax.chain(masked_updates(), frozen_where_masked(tx), masked_updates())


class Pruner:
    """A method bound to a model and an example input (see the module docstring).

    Args:
      method: a method name (``repr_jax.method_names()``) or a method config.
      model: a Flax Linen module, or a ``flax.nnx`` module (adapted, :mod:`repr_jax.models.nnx_adapter`).
      example_input: a batch of the model's input, any shape ``(N, H, W, C)`` — only its
        shape is used (the channel graph, criteria, re-initialisation and export trace it).
      epochs, steps_per_epoch, batch_size: the schedule the method plans with (RePr's S1/S2
        rounds, a structured method's prune epochs, JST's search steps).
      seed: seeds the method's own randomness (e.g. RePr's re-initialisation directions).
      scoring_data: ``(images, labels)`` a data-driven criterion scores on (training images;
        ``heldout_data`` takes precedence when given), passed through ``preprocess``.
      preprocess: raw images → model inputs for the scoring data (default: as they are).
      logits: which part of the model's output is the logits, when it returns more than one
        array — an index (``0`` for ``(logits, features)``), a dict key, or a callable
        ``output → logits`` (:mod:`repr_jax.models.outputs`); default: the output itself, or
        its ``"logits"`` entry. Every path (criteria, losses, export checks) reads that part.
      **settings: the method's config fields (``s1=…``, ``drop_fraction=…``, ``preset=…``).
    """

    def __init__(self, method: str | MethodConfig, model, example_input, *, epochs: int = 1,
                 steps_per_epoch: int = 1, batch_size: int = 128, seed: int = 0,
                 scoring_data: tuple | None = None, heldout_data: tuple | None = None,
                 preprocess: Callable | None = None, logits=None, **settings):
        from repr_jax.models.outputs import with_logits
        from repr_jax.shapes import example_shape
        config = method if isinstance(method, MethodConfig) else method_config(method, **settings)
        if isinstance(method, MethodConfig) and settings:
            raise ValueError("pass settings in the method config or as keywords, not both")
        self.model = with_logits(adapt(model), example_shape(None, example_input), logits)
        train = scoring_data if scoring_data is not None else (None, None)
        held = heldout_data if heldout_data is not None else (None, None)
        self.context = MethodContext.for_model(
            self.model, epochs=epochs, batch_size=batch_size, seed=seed, train_images=train[0],
            train_labels=train[1], heldout_images=held[0], heldout_labels=held[1],
            train_size=steps_per_epoch * batch_size, example_input=example_input, preprocess=preprocess)
        self.method = create_method(config, self.context)
        self.seed = seed
        self.tx: optax.GradientTransformationExtraArgs | None = None
        self._inputs = None

    # ------------------------------------------------------------------ setup
    @property
    def layers(self) -> tuple:
        """The prunable convs (:class:`repr_jax.layers.ConvLayer`), BatchNorms coupled."""
        return self.context.layers

    def variables(self) -> dict:
        """The model's variables as this library holds them (an NNX module's current ones;
        for Linen call ``model.init`` yourself)."""
        return self.model.init(jax.random.key(self.seed), self.context.example_input(), train=False)

    def wrap(self, tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
        """Your optimizer, :func:`masked`; the pruner keeps it to reset moments of revived
        filters. Use the returned transform (not ``tx``) in your loop."""
        self.tx = masked(tx)
        return self.tx

    def init(self, params, key: jax.Array | None = None) -> PruneState:
        """All-ones masks (element masks where the method asks), the method's state and
        extra parameters, for ``params`` (your model's ``variables["params"]``)."""
        state = create_train_state(self.model, self._tx(), self.seed, method=self.method)
        state = state.replace(params=params, opt_state=None)
        if key is not None:
            state = state.replace(rng=jax.random.key_data(key))
        return PruneState(masks=state.masks, method_state=state.method_state, method_params=state.method_params,
                          method_opt_state=state.method_opt_state, rng=state.rng, step=state.step)

    def _tx(self):
        if self.tx is None:
            raise ValueError("call pruner.wrap(your_optax_transform) first: the pruner resets optimizer "
                             "moments of revived filters through it")
        return self.tx

    # ------------------------------------------------------------------ one path: TrainState
    def train_state(self, variables: dict, opt_state, ps: PruneState) -> TrainState:
        """The runner's :class:`~repr_jax.state.TrainState` holding your pieces (no copy)."""
        return TrainState(step=ps.step, params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                          opt_state=opt_state, masks=ps.masks, rng=ps.rng, method_state=ps.method_state,
                          method_params=ps.method_params, method_opt_state=ps.method_opt_state,
                          apply_fn=self.model.apply, tx=self._tx(), method_tx=self.method.method_optimizer(),
                          layers=self.context.layers, compiler_options=compiler_options(self.model))

    @staticmethod
    def pieces(state: TrainState) -> tuple[dict, Any, PruneState]:
        """``(variables, opt_state, prune_state)`` of a train state."""
        return ({"params": state.params, "batch_stats": state.batch_stats}, state.opt_state,
                PruneState(masks=state.masks, method_state=state.method_state, method_params=state.method_params,
                           method_opt_state=state.method_opt_state, rng=state.rng, step=state.step))

    # ------------------------------------------------------------------ per step (jittable)
    def before_step(self, variables: dict, ps: PruneState, key: jax.Array) -> PruneState:
        """The method's per-step hook before the forward pass (e.g. JST samples a
        sub-network); most methods return ``ps`` unchanged."""
        state = self.method.step_hook(self.train_state(variables, None, ps), key)
        return self.pieces(state)[2]

    def forward(self, variables: dict, ps: PruneState, x, *, train: bool, method_params=None, rngs=None):
        """``model.apply`` with the method's channel gates (RePr's frozen filters, JST's
        architecture weights): logits, and in training also the new batch stats
        (``(logits, batch_stats)``) — the runner's :func:`repr_jax.train.forward`."""
        from repr_jax.train import forward
        state = self.train_state(variables, None, ps)
        logits, stats = forward(state, variables["params"], x, train=train, method=self.method,
                                method_params=method_params, rngs=rngs)
        return (logits, stats) if train else logits

    def loss_terms(self, params, variables: dict, ps: PruneState, x, labels, logits, key,
                   method_params=None) -> dict[str, jax.Array]:
        """The method's named loss terms (Slimming's λΣ|γ|, Han's L1, JST's λ‖α‖₂): add
        their sum to your loss; ``params`` are the ones you differentiate."""
        mp = ps.method_params if method_params is None else method_params
        state = self.train_state(dict(variables, params=params), None, ps)
        return self.method.loss_terms(StepInputs(params, mp, state, x, labels, logits, key))

    def update_masks(self, variables: dict, ps: PruneState):
        """The masks to pass to the wrapped optimizer this step (``masks=``): the live masks
        times the method's frozen leaves (Han's alternating retraining, JST's search)."""
        from repr_jax.train import update_masks
        return update_masks(self.train_state(variables, None, ps), self.method)

    def method_update(self, ps: PruneState, method_grads) -> PruneState:
        """One step of the method's own parameters (JST's architecture weights) along
        ``method_grads``."""
        tx = self.method.method_optimizer()
        if tx is None:
            return ps
        updates, opt = tx.update(method_grads, ps.method_opt_state, ps.method_params)
        return ps.replace(method_params=optax.apply_updates(ps.method_params, updates), method_opt_state=opt)

    def after_step(self, ps: PruneState) -> PruneState:
        """Count the step (the method's schedule reads it)."""
        return ps.replace(step=ps.step + 1)

    # ------------------------------------------------------------------ per epoch
    def run_inputs(self):
        """The arrays the transitions read (scoring batches), on device, built once."""
        if self._inputs is None:
            self._inputs = jax.tree_util.tree_map(jnp.asarray, self.method.run_inputs())
        return self._inputs

    def before_epoch(self, epoch: int, variables: dict, opt_state, ps: PruneState):
        """The method's transition before 0-based ``epoch`` (RePr's drop, a structured
        prune): ``(variables, opt_state, ps, events)``."""
        state, events = self.method.before_epoch(self.train_state(variables, opt_state, ps), epoch, self.run_inputs())
        return (*self.pieces(state), events)

    def after_epoch(self, epoch: int, variables: dict, opt_state, ps: PruneState):
        """The method's transition after 0-based ``epoch`` (RePr's re-initialisation, JST's
        search update): ``(variables, opt_state, ps, events)``."""
        state, events = self.method.after_epoch(self.train_state(variables, opt_state, ps), epoch, self.run_inputs())
        return (*self.pieces(state), events)

    def phase(self, epoch: int):
        """The method's :class:`~repr_jax.methods.base.Phase` of ``epoch`` (its learning-rate
        scale or restart is yours to apply)."""
        return self.method.phase(epoch)

    def records(self, events) -> list[dict]:
        """Each event as a JSON-shaped dict (what ``pruning.jsonl`` holds)."""
        return [self.method.record(e) for e in events]

    def describe(self, events) -> list[str]:
        """Console lines for ``events``."""
        return [line for e in events for line in self.method.describe(self.method.record(e))]

    # ------------------------------------------------------------------ results
    def live(self, ps: PruneState) -> dict:
        """``{conv name: (F,) 0/1}`` live filters."""
        return live_filters(ps.masks, self.context.layers)

    def masked_variables(self, variables: dict, ps: PruneState) -> dict:
        """``variables`` with the masks applied (dropped parameters exactly 0)."""
        return {"params": apply_masks(variables["params"], ps.masks), "batch_stats": variables.get("batch_stats", {})}

    def export(self, variables: dict, ps: PruneState, rebuild: Callable | None = None):
        """The smaller dense model (:class:`repr_jax.compress.export.Exported`): its variables
        and channel spec always; its module when ``rebuild`` is given — your module class or
        factory, called with ``channels={conv name: width}`` as a keyword (positionally when it
        takes no parameter of that name). Each of the export's warnings (nothing removed,
        dead filters an unsupported operation keeps) is issued as a ``UserWarning``. For an
        NNX model see :func:`shrink_nnx`."""
        import warnings
        from repr_jax.compress.export import export_model
        out = export_model(self.model, self.masked_variables(variables, ps), self.live(ps),
                           self.context.input_shape, rebuild=None if rebuild is None else _by_channels(rebuild))
        for line in out.warnings():
            warnings.warn(line, UserWarning, stacklevel=2)
        return out


def _by_channels(rebuild: Callable) -> Callable:
    """``channels → module`` from a class or factory taking ``channels`` (as a keyword if it
    names a parameter so, else as the first positional argument)."""
    import inspect
    try:
        params = inspect.signature(rebuild).parameters
    except (TypeError, ValueError):
        return rebuild
    if "channels" in params:
        return lambda channels: rebuild(channels=channels)
    return rebuild


def shrink_nnx(module, exported) -> None:
    """Shrink an NNX ``module`` in place to an export of it (Torch-Pruning style): every
    parameter and batch statistic takes its exported, smaller value, and each layer's
    feature counts follow — ``in_features`` / ``out_features`` of convs and linears,
    ``num_features`` of BatchNorms, and a depthwise conv's ``feature_group_count`` (one group
    per input channel, its channel multiplier kept); other grouped convs are never shrunk
    by an export (:mod:`repr_jax.compress.graph`) and keep their groups."""
    from flax import nnx
    from repr_jax.models.nnx_adapter import NNXModel
    shape = lambda variable: jnp.shape(variable.get_value() if hasattr(variable, "get_value") else variable.value)  # noqa: E731
    convs = [sub for _, sub in nnx.iter_graph(module) if isinstance(sub, nnx.Conv) and getattr(sub, "kernel", None) is not None]
    before = {id(c): (c.in_features, c.out_features, getattr(c, "feature_group_count", 1)) for c in convs}
    NNXModel(module).write_back(exported.variables)
    for _, sub in nnx.iter_graph(module):
        if isinstance(sub, nnx.Conv) and id(sub) in before:
            in0, out0, groups = before[id(sub)]
            kernel = shape(sub.kernel)
            sub.out_features = int(kernel[-1])
            if groups == 1:
                sub.in_features = int(kernel[-2])
            elif in0 == groups:               # depthwise: out = groups · multiplier
                sub.feature_group_count = sub.in_features = int(kernel[-1]) // (out0 // groups)
        elif isinstance(sub, nnx.Linear) and getattr(sub, "kernel", None) is not None:
            sub.in_features, sub.out_features = int(shape(sub.kernel)[-2]), int(shape(sub.kernel)[-1])
        if isinstance(sub, nnx.BatchNorm):
            sub.num_features = int(shape(sub.mean)[-1])


__all__ = ["PruneState", "Pruner", "is_nnx", "masked", "shrink_nnx"]
