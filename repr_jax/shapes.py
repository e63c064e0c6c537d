"""A model traced on one example's shape: its variables' shapes, its channel graph and its
prunable convs with their BatchNorms (cached per (model, shape); shapes only, nothing is
computed). Everything shape-dependent in the library asks here, so any input size works.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

# CIFAR's (H, W, C): the one image shape assumed where neither the data nor the caller names one
# (a model traced without an example, a run directory written before the shape was recorded)
DEFAULT_INPUT_SHAPE = (32, 32, 3)


def example_shape(input_shape=None, example_input=None) -> tuple[int, ...]:
    """One example's shape (H, W, C) from an example batch (its first axis dropped) or a
    given shape; :data:`DEFAULT_INPUT_SHAPE` when neither is given."""
    if example_input is not None:
        shape = tuple(int(d) for d in np.shape(example_input)[1:])
    elif input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        shape = shape[1:] if len(shape) == 4 else shape
    else:
        shape = DEFAULT_INPUT_SHAPE
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"an example input must be (batch, H, W, C); got one example of shape {shape}")
    return shape


@functools.lru_cache(maxsize=64)
def model_variable_shapes(model, input_shape: tuple) -> dict:
    """``jax.eval_shape`` of ``model.init`` on a zero batch of ``input_shape`` (cached)."""
    import jax.numpy as jnp
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + input_shape, jnp.float32),
                                             train=False))


def model_layers(model, input_shape=DEFAULT_INPUT_SHAPE) -> tuple:
    """The prunable convs of ``model`` with their BatchNorms coupled through its channel
    graph (:func:`repr_jax.layers.coupled_layers`), traced on one example's ``input_shape``."""
    from repr_jax.layers import coupled_layers
    shape = example_shape(input_shape)
    return coupled_layers(model_variable_shapes(model, shape)["params"], model_graph(model, shape))


@functools.lru_cache(maxsize=64)
def model_graph(model, input_shape: tuple, dense_units: bool = False):
    """The channel graph of ``model`` on ``input_shape`` (cached; shapes only, no arrays);
    ``dense_units``: dense layers' units tracked as sources too (Han et al.'s dead neurons)."""
    from repr_jax.compress.structure import channel_graph
    return channel_graph(model, model_variable_shapes(model, input_shape), (1,) + input_shape, dense_units)


__all__ = ["example_shape", "model_graph", "model_layers", "model_variable_shapes"]
