"""The single train-state pytree: everything a run needs to continue bit-for-bit.

Fields: ``step``, ``params``, ``batch_stats``, ``opt_state``, ``masks`` (params-shaped, see
:mod:`repr_jax.masks`), ``rng`` (the run's root key; epoch and step keys are folded from it)
and ``snapshot`` (the params at the last drop: RePr re-initialises against these values).
``apply_fn`` and ``tx`` are static.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from repr_jax.layers import prunable_convs
from repr_jax.masks import init_masks


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    masks: Any
    rng: jax.Array
    snapshot: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @property
    def layers(self):
        return prunable_convs(self.params)


def create_train_state(model, tx: optax.GradientTransformation, seed: int,
                       input_shape=(1, 32, 32, 3)) -> TrainState:
    """Initialise params/batch stats from ``seed``; all-ones masks; fresh optimizer state."""
    root = jax.random.key(seed)
    init_key, run_key = jax.random.split(root)
    variables = model.init(init_key, jnp.zeros(input_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
        masks=init_masks(params, prunable_convs(params)), rng=jax.random.key_data(run_key),
        snapshot=jax.tree_util.tree_map(jnp.zeros_like, params),
        apply_fn=model.apply, tx=tx)
