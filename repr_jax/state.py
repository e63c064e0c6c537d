"""The single train-state pytree: everything a run needs to continue bit-for-bit.

Fields: ``step``, ``params``, ``batch_stats``, ``opt_state``, ``masks`` (params-shaped, any
granularity, see :mod:`repr_jax.masks`), ``rng`` (the run's root key; epoch and step keys
are folded from it), and what the method adds (:mod:`repr_jax.methods.base`):
``method_state`` (e.g. RePr's snapshot of the dropped filters), ``method_params`` (extra
trainable parameters) and ``method_opt_state`` (their optimizer state). With knowledge
distillation (:mod:`repr_jax.distill`) ``teacher`` holds the teacher's variables (not
checkpointed: a resumed run loads them again) and the static ``distill`` its settings.
``apply_fn``, ``tx``, ``method_tx``, ``distill``, ``layers`` (the prunable convs with their
graph-coupled BatchNorms, :func:`repr_jax.layers.coupled_layers`) and ``compiler_options`` (the
XLA options the model declares for its programs, :mod:`repr_jax.xla_options`) are static.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from repr_jax.masks import init_masks
from repr_jax.xla_options import compiler_options


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    masks: Any
    rng: jax.Array
    method_state: Any = flax.struct.field(default_factory=dict)
    method_params: Any = flax.struct.field(default_factory=dict)
    method_opt_state: Any = flax.struct.field(default_factory=dict)
    apply_fn: Callable = flax.struct.field(pytree_node=False, default=None)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)
    method_tx: optax.GradientTransformation | None = flax.struct.field(pytree_node=False, default=None)
    teacher: Any = flax.struct.field(default_factory=dict)    # distillation: the teacher's variables
    distill: Any = flax.struct.field(pytree_node=False, default=None)   # repr_jax.distill.Distiller
    layers: tuple = flax.struct.field(pytree_node=False, default=())    # repr_jax.layers.ConvLayer
    compiler_options: tuple = flax.struct.field(pytree_node=False, default=())   # ((name, value), …)


# Key streams folded from the run key for a method's setup (the model init key and the
# run key are the first split of the seed's key, as before methods existed).
_METHOD_STATE_STREAM, _METHOD_PARAMS_STREAM = 3_000_001, 3_000_002


def create_train_state(model, tx: optax.GradientTransformation, seed: int,
                       input_shape=None, method=None) -> TrainState:
    """Initialise params/batch stats from ``seed`` on a zero batch of ``input_shape`` (one
    example's (H, W, C); default the method's, else 32×32×3); all-ones masks (element masks
    where ``method`` asks); fresh optimizer state; the method's state and extra parameters."""
    from repr_jax.shapes import example_shape, model_layers
    shape = example_shape(input_shape) if input_shape is not None else (
        tuple(method.context.input_shape) if method is not None else example_shape())
    layers = method.context.layers if method is not None else model_layers(model, shape)
    root = jax.random.key(seed)
    init_key, run_key = jax.random.split(root)
    variables = model.init(init_key, jnp.zeros((1,) + shape, jnp.float32), train=False)
    params = variables["params"]
    element = method.element_masks(params) if method is not None else ()
    method_state, method_params, method_tx, method_opt_state = {}, {}, None, {}
    if method is not None:
        method_state = method.init_method_state(params, jax.random.fold_in(run_key, _METHOD_STATE_STREAM))
        method_params = method.init_method_params(params, jax.random.fold_in(run_key, _METHOD_PARAMS_STREAM))
        if jax.tree_util.tree_leaves(method_params):
            method_tx = method.method_optimizer()
            if method_tx is None:
                raise ValueError(f"method {method.name!r} has method_params but no method_optimizer()")
            method_opt_state = method_tx.init(method_params)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
        masks=init_masks(params, layers, element), layers=layers,
        rng=jax.random.key_data(run_key), method_state=method_state,
        method_params=method_params, method_opt_state=method_opt_state,
        apply_fn=model.apply, tx=tx, method_tx=method_tx, compiler_options=compiler_options(model))
