"""The method interface every pruning / re-initialisation method implements, and its registry.

A method is a registered class with a frozen config dataclass. The runner
(:mod:`repr_jax.experiment`) calls its hooks; every hook has a do-nothing default, so a
method overrides only what it needs (jaxpruner's ``BaseUpdater`` has the same shape):

===================  =========================================================================
``element_masks``    params paths that get element masks (default: filter masks only)
``init_method_state`` extra state (a pytree inside ``TrainState.method_state``, checkpointed)
``init_method_params`` extra *trainable* parameters (``TrainState.method_params``), updated in
                     the train step by ``method_optimizer()`` with the model's gradient step
``phase(epoch)``     :class:`Phase`: a name for the logs, a round, and the learning rate —
                     a scale of the run's schedule or a restarted schedule (fine-tune,
                     re-dense)
``step_hook``        inside ``jit``, before each step's forward pass: ``(state, key) → state``
                     (sample masks or sub-networks; the key is the step's, derived from
                     ``TrainState.rng``)
``channel_gates``    inside ``jit``: ``{conv: (F,)}`` multipliers on each conv's response (after its
                     BatchNorm if it has one, before the activation), for training
                     and/or evaluation (``train`` says which), e.g. soft architecture weights
                     (both) or a sampled sub-network (training only)
``loss_terms``       inside ``jit``: named scalars added to the cross-entropy; logged per epoch
``update_mask``      inside ``jit``: a params-shaped tree of 0/1 scalars multiplied into the
                     masks the optimizer sees this step (0 freezes a leaf, e.g. Han et al.'s
                     alternating conv / dense retraining); ``None``: nothing frozen
``before_epoch``,    pure transitions ``(state, epoch, inputs) → (state, [Event])`` between
``after_epoch``      epochs; events hold arrays, :meth:`Method.record` turns one into a JSON
                     line. Traceable: Python control flow only on ``epoch``, no host reads of
                     arrays, so that a population of seeds runs them under ``vmap``
``run_inputs``       arrays the transitions read that are not in the state (e.g. a fixed
                     sample of images to score filters on), built once from the context
``check_event``      host side, after a transition: raise
                     :class:`~repr_jax.errors.NonFiniteError` when an event shows the run
                     cannot go on (NaN criterion scores)
``describe``         host side: console lines for one ``pruning.jsonl`` record (printed unless
                     ``--quiet``; lines starting ``warning:`` go to stderr, always)
``export``           ``(state, architecture) → Exported`` smaller dense model (default: remove
                     dead filters along the channel graph, :mod:`repr_jax.compress`)
``final_report``     host side, once a run has finished: write method artefacts into the run
                     directory (e.g. CSR storage) and return entries for ``summary.json``
===================  =========================================================================

One method instance serves every seed of a population (:mod:`repr_jax.population`): what
differs between seeds lives in the train state (its ``rng``, ``method_state``) or in
``run_inputs``, which the population builds per seed and stacks.

Register with :func:`register`; every module of the ``repr_jax.methods`` package is imported
on first use, so adding a method is one new module (plus its tests).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import numpy as np

from repr_jax.shapes import DEFAULT_INPUT_SHAPE, example_shape, model_graph, model_layers, model_variable_shapes


@dataclasses.dataclass(frozen=True)
class Phase:
    """What an epoch is. ``name`` and ``round`` go to ``metrics.jsonl``.

    Learning rate: ``lr_scale`` multiplies the run's schedule; ``lr_restart = (kind, peak)``
    (kind ``"constant"``, ``"cosine"`` or ``"linear"``) instead starts a new schedule from
    ``peak`` at the first epoch of a stretch of equal phases and runs it over that stretch
    (cosine and linear decay to 0 at its end). See :func:`repr_jax.optim.phased_schedule`.
    """
    name: str = "full"
    round: int = 0
    lr_scale: float = 1.0
    lr_restart: tuple[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config: frozen, JSON-shaped fields with defaults.

    Subclasses set the class variable ``name`` (the registry name, also the prefix of
    ``--set NAME.field=value``) and may give each field ``metadata={"help": "..."}``.
    """
    name: ClassVar[str] = ""

    def validate(self, run) -> None:
        """Raise ``ValueError`` (one line) if these settings cannot work for ``run`` (a
        :class:`repr_jax.config.RunConfig`: epochs, model, …). Called before any data loads."""

    def to_dict(self) -> dict:
        import json
        return {"name": self.name, **json.loads(json.dumps(dataclasses.asdict(self)))}


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What a method may know about its run when it is built (host side, static).

    ``input_shape`` is one example's shape (H, W, C — any size), from the data or the
    user's example input: every shape-dependent step (the channel graph, data-driven
    criteria, re-initialisation from the initialiser, export) traces the model on it.
    ``preprocess`` turns the raw images the context holds (``train_images``,
    ``heldout_images``: e.g. uint8) into model inputs; a method applies it when it builds
    its :meth:`Method.run_inputs`, so transitions only ever see model-ready arrays."""
    model: Any                       # the Flax module (Linen, or an NNX module adapted: repr_jax.nnx)
    architecture: dict               # repr_jax.models.architecture(...), {} for a user's model
    layers: tuple                    # prunable convs (repr_jax.layers.ConvLayer), BatchNorm coupled
    epochs: int
    steps_per_epoch: int
    batch_size: int
    seed: int
    input_shape: tuple = DEFAULT_INPUT_SHAPE
    preprocess: Callable | None = None
    graph_error: str = ""            # why the channel graph could not be traced ("" when it was)
    train_images: np.ndarray | None = None   # raw (N, H, W, C), for data-driven scores
    train_labels: np.ndarray | None = None
    heldout_images: np.ndarray | None = None  # data.holdout: set aside, never trained on
    heldout_labels: np.ndarray | None = None

    def scoring_data(self):
        """``(images, labels)`` a data-driven criterion scores on: the held-out images when
        the run sets some aside (``data.holdout``), else the training images."""
        if self.heldout_images is not None:
            return self.heldout_images, self.heldout_labels
        return self.train_images, self.train_labels

    def model_inputs(self, images):
        """``images`` as the model takes them (:attr:`preprocess`, identity when None), as a
        device array."""
        import jax.numpy as jnp
        return jnp.asarray(images if self.preprocess is None else self.preprocess(jnp.asarray(images)))

    def example_input(self):
        """A zero batch of one example of :attr:`input_shape` (float32)."""
        import jax.numpy as jnp
        return jnp.zeros((1,) + tuple(self.input_shape), jnp.float32)

    def variable_shapes(self) -> dict:
        """The model's variables as shapes (``jax.eval_shape`` of its ``init``)."""
        return model_variable_shapes(self.model, tuple(self.input_shape))

    def graph(self):
        """The model's channel graph (:func:`repr_jax.compress.graph.channel_graph`) on
        :attr:`input_shape`, computed once per (model, shape)."""
        return model_graph(self.model, tuple(self.input_shape))

    @classmethod
    def for_model(cls, model, *, epochs: int = 1, batch_size: int = 128, seed: int = 0,
                  train_images=None, train_labels=None, heldout_images=None, heldout_labels=None,
                  architecture: dict | None = None, train_size: int | None = None,
                  input_shape=None, example_input=None, preprocess=None) -> "MethodContext":
        """A context for ``model``: its prunable convs and their BatchNorms from the channel
        graph traced on ``example_input``'s shape (or ``input_shape``, one example's (H, W, C);
        default 32×32×3), steps per epoch from ``train_size`` (default: the number of
        ``train_labels``)."""
        from repr_jax.compress.graph import GraphError
        from repr_jax.layers import prunable_convs
        shape = example_shape(input_shape, example_input)
        n = train_size if train_size is not None else (0 if train_labels is None else len(train_labels))
        try:
            layers, graph_error = model_layers(model, shape), ""
        except GraphError as err:   # only methods that prune need it (Method.prunes)
            layers, graph_error = prunable_convs(model_variable_shapes(model, shape)["params"]), str(err)
        return cls(model=model, architecture=architecture or {}, layers=layers, graph_error=graph_error,
                   epochs=epochs, steps_per_epoch=n // batch_size, batch_size=batch_size, seed=seed,
                   input_shape=shape, preprocess=preprocess,
                   train_images=train_images, train_labels=train_labels,
                   heldout_images=heldout_images, heldout_labels=heldout_labels)


class Event(NamedTuple):
    """One transition's outcome: ``kind`` (e.g. "drop"), the 1-based ``epoch`` it belongs to,
    the method's ``round`` and a pytree of arrays for :meth:`Method.record`."""
    kind: str
    epoch: int
    round: int
    arrays: Any


class StepInputs(NamedTuple):
    """What a loss term sees inside the jitted train step (``params`` and ``method_params``
    are the differentiated values; ``images`` are normalised and augmented)."""
    params: Any
    method_params: Any
    state: Any
    images: jax.Array
    labels: jax.Array
    logits: jax.Array
    key: jax.Array


class Method:
    """Base class: every hook does nothing. See the module docstring for the contract.
    ``prunes``: the method masks filters or weights, so it needs the model's channel graph
    (its BatchNorms are found there); a model the graph cannot trace is refused with the
    graph's reason."""
    name: ClassVar[str] = ""
    config_class: ClassVar[type] = MethodConfig
    summary: ClassVar[str] = ""
    prunes: ClassVar[bool] = True

    def __init__(self, config: MethodConfig, context: MethodContext):
        if self.prunes and context.graph_error:
            raise ValueError(f"{self.name} cannot prune this model: {context.graph_error}")
        self.config = config
        self.context = context

    # ---------------------------------------------------------------- setup
    def element_masks(self, params) -> tuple[tuple[str, ...], ...]:
        return ()

    def init_method_state(self, params, key: jax.Array):
        return {}

    def init_method_params(self, params, key: jax.Array):
        return {}

    def method_optimizer(self):
        """The optax transform of ``method_params`` (needed when there are any)."""
        return None

    # ---------------------------------------------------------------- schedule
    def phase(self, epoch: int) -> Phase:
        return Phase()

    # ---------------------------------------------------------------- inside jit
    def step_hook(self, state, key: jax.Array):
        return state

    def channel_gates(self, method_params, method_state, train: bool) -> dict | None:
        return None

    def loss_terms(self, inputs: StepInputs) -> dict[str, jax.Array]:
        return {}

    def update_mask(self, state):
        return None

    # ---------------------------------------------------------------- between epochs
    def run_inputs(self):
        """This run's arrays for the transitions (a pytree; host side, from ``self.context``)."""
        return ()

    def before_epoch(self, state, epoch: int, inputs=None) -> tuple[Any, list[Event]]:
        """``inputs``: :meth:`run_inputs` (of this seed; looked up when None)."""
        return state, []

    def after_epoch(self, state, epoch: int, inputs=None) -> tuple[Any, list[Event]]:
        return state, []

    def check_event(self, event: Event) -> None:
        """Host side: raise ``NonFiniteError`` if ``event`` (one run's) says the run must stop."""

    def record(self, event: Event) -> dict:
        """One ``pruning.jsonl`` line (host side): arrays become lists / numbers."""
        arrays = jax.tree_util.tree_map(lambda a: np.asarray(a).tolist(), event.arrays)
        return {"event": event.kind, "epoch": event.epoch, "round": event.round, **(
            arrays if isinstance(arrays, dict) else {"arrays": arrays})}

    def describe(self, record: dict) -> list[str]:
        """Console lines for one :meth:`record` line (none by default)."""
        return []

    # ---------------------------------------------------------------- export
    def export(self, state, architecture: dict):
        from repr_jax.compress.export import export_state
        return export_state(state, architecture)

    def final_report(self, state, out) -> dict:
        """``out``: the run directory (a :class:`pathlib.Path`); returns ``summary.json`` entries."""
        return {}


# ----------------------------------------------------------------------------- registry
METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    if not cls.name or cls.config_class.name != cls.name:
        raise ValueError(f"method {cls.__name__} needs name == config_class.name, got "
                         f"{cls.name!r} and {cls.config_class.name!r}")
    METHODS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every module of this package (each registers its method)."""
    import importlib
    import pkgutil
    from pathlib import Path

    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")


def get_method(name: str) -> type[Method]:
    """The registered method class; ``ValueError`` listing the names for an unknown one."""
    if name not in METHODS:
        _discover()
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(method_names())}") from None


def method_names() -> list[str]:
    _discover()
    return sorted(METHODS)


def method_config(name: str, **fields) -> MethodConfig:
    """The config of method ``name`` with ``fields`` (unknown fields: ``ValueError``)."""
    cls = get_method(name).config_class
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"method {name!r} has no setting(s) {', '.join(unknown)}; "
                         f"it has {', '.join(sorted(known)) or 'none'}")
    return cls(**fields)


def create_method(config: MethodConfig, context: MethodContext) -> Method:
    """Instantiate the method ``config`` belongs to."""
    return get_method(config.name)(config, context)


__all__ = ["Event", "METHODS", "Method", "MethodConfig", "MethodContext", "Phase", "StepInputs",
           "create_method", "get_method", "method_config", "method_names",
           "model_variable_shapes", "register"]
