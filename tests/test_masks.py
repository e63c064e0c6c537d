"""Masks in the train state: exact zeros through optax, drop/revive resets, one compilation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings, strategies as st

from repr_jax import (MethodContext, ReprConfig, create_model, create_train_state, drop_filters,
                      live_filters, make_optimizer, OptimConfig, RePr)
from repr_jax.layers import get_path
from repr_jax.methods.repr import conv_kernels
from repr_jax.train import train_step_indexed, zero_totals

from conftest import synthetic_cifar

X, Y, _, _ = synthetic_cifar(64, 1, seed=3)


def _state(model="convnet", optimizer="sgd", momentum=0.9, wd=5e-4, method=None, **model_kw):
    cfg = OptimConfig(optimizer=optimizer, learning_rate=0.01, momentum=momentum, weight_decay=wd,
                      schedule="constant")
    tx = make_optimizer(cfg, optax.constant_schedule(cfg.learning_rate))
    return create_train_state(create_model(model, **model_kw), tx, seed=0, method=method)


def _repr(model, **cfg):
    return RePr(ReprConfig(**cfg), MethodContext.for_model(model))


def _steps(state, n, batch=16, method=None):
    x, y = jnp.asarray(X), jnp.asarray(Y)
    for i in range(n):
        idx = jnp.arange(batch) + (i * batch) % (len(Y) - batch)
        state, _ = train_step_indexed(state, zero_totals(), x, y, idx, jax.random.key(i),
                                      layers=state.layers, method=method)
    return state


def _random_live(state, seed):
    rng = np.random.default_rng(seed)
    live = {}
    for layer in state.layers:
        m = (rng.random(layer.num_filters) > 0.4).astype(np.float32)
        m[0] = 1.0
        live[layer.name] = jnp.asarray(m)
    return live


def _channel_values(state, layer, dead):
    vals = [np.asarray(get_path(state.params, layer.path + ("kernel",)))[..., dead]]
    if layer.has_bias:
        vals.append(np.asarray(get_path(state.params, layer.path + ("bias",)))[dead])
    if layer.bn_path:
        vals += [np.asarray(get_path(state.params, layer.bn_path + (k,)))[dead] for k in ("scale", "bias")]
    return vals


@settings(max_examples=3, deadline=None)
@given(opt=st.sampled_from([("sgd", 0.9, 5e-4), ("sgd", 0.0, 1e-2), ("adam", 0.0, 1e-2)]),
       seed=st.integers(0, 100))
def test_dropped_parameters_stay_exactly_zero_after_50_steps(opt, seed):
    optimizer, momentum, wd = opt
    state = _steps(_state("convnet", optimizer, momentum, wd, depth=2, width=8, batch_norm=True), 3)
    live = _random_live(state, seed)
    before = jax.tree_util.tree_map(np.asarray, state.params)
    state = drop_filters(state, state.layers, live)
    state = _steps(state, 50)
    for layer in state.layers:
        dead = np.asarray(live[layer.name]) == 0
        alive = ~dead
        for v in _channel_values(state, layer, dead):
            assert np.all(v == 0.0), f"{layer.name}: dropped parameters drifted from 0"
        kernel = np.asarray(get_path(state.params, layer.path + ("kernel",)))
        assert not np.allclose(kernel[..., alive], get_path(before, layer.path + ("kernel",))[..., alive])
    # the moments of dropped filters are zero as well
    moments = optax.tree_utils.tree_get_all_with_path(state.opt_state, "trace") or \
        optax.tree_utils.tree_get_all_with_path(state.opt_state, "mu")
    for _, tree in moments:
        for layer in state.layers:
            dead = np.asarray(live[layer.name]) == 0
            assert np.all(np.asarray(get_path(tree, layer.path + ("kernel",)))[..., dead] == 0)


def test_drop_zeroes_params_and_moments_and_revive_resets_bn():
    small = dict(depth=3, width=16, batch_norm=True)   # BN after every conv; ResNet-20's paths: test_criteria
    state = _steps(_state("convnet", **small), 2)
    layers = state.layers
    live = _random_live(state, 1)
    dropped = drop_filters(state, layers, live)
    layer = next(l for l in layers if np.asarray(live[l.name]).min() == 0)
    dead = np.asarray(live[layer.name]) == 0
    assert all(np.all(v == 0) for v in _channel_values(dropped, layer, dead))
    trace = optax.tree_utils.tree_get(dropped.opt_state, "trace")
    assert np.all(np.asarray(get_path(trace, layer.path + ("kernel",)))[..., dead] == 0)
    assert np.any(np.asarray(get_path(trace, layer.path + ("kernel",)))[..., ~dead] != 0)

    method = _repr(create_model("convnet", **small), s1=1, s2=1, iterations=1)
    dropped = dropped.replace(method_state={"snapshot": conv_kernels(state.params, layers)})
    revived, (event,) = method.after_epoch(dropped, epoch=1)  # epoch 1 is the last sub epoch
    record = method.record(event)
    assert record["revived"] == sum(int((np.asarray(m) == 0).sum()) for m in live.values())
    assert all(float(jnp.min(m)) == 1.0 for m in live_filters(revived.masks, layers).values())
    kernel = np.asarray(get_path(revived.params, layer.path + ("kernel",)))
    assert np.all(np.linalg.norm(kernel[..., dead].reshape(-1, dead.sum()), axis=0) > 0)
    assert np.all(np.asarray(get_path(revived.params, layer.bn_path + ("scale",)))[dead] == 1.0)
    assert np.all(np.asarray(get_path(revived.params, layer.bn_path + ("bias",)))[dead] == 0.0)
    assert np.all(np.asarray(get_path(revived.batch_stats, layer.bn_path + ("var",)))[dead] == 1.0)
    assert np.all(np.asarray(get_path(revived.batch_stats, layer.bn_path + ("mean",)))[dead] == 0.0)
    trace = optax.tree_utils.tree_get(revived.opt_state, "trace")
    assert np.all(np.asarray(get_path(trace, layer.path + ("kernel",)))[..., dead] == 0)
    for row in record["layers"]:
        if row["revived"] and row["complement_ok"]:
            assert row["max_abs_cos_to_kept"] < 1e-4 and row["max_abs_cos_to_own_saved"] < 1e-4


def test_no_recompilation_across_drop_and_reinit():
    method = _repr(create_model("convnet", depth=2, width=8, batch_norm=True),
                   s1=1, s2=1, iterations=2, drop_fraction=0.3)
    state = _state("convnet", depth=2, width=8, batch_norm=True, method=method)
    state = _steps(state, 2, method=method)
    compiled = train_step_indexed._cache_size()
    transitions = (method._drop_jit._cache_size(), method._reinit_jit._cache_size())
    for epoch in range(4):
        state, _ = method.before_epoch(state, epoch)
        state = _steps(state, 2, method=method)
        state, _ = method.after_epoch(state, epoch)
    state = _steps(state, 2, method=method)
    assert train_step_indexed._cache_size() == compiled
    # each transition compiled once for the two rounds (the round is a traced argument)
    assert (method._drop_jit._cache_size(), method._reinit_jit._cache_size()) == (
        transitions[0] + 1, transitions[1] + 1)
