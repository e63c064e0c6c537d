"""RePr with any criterion and re-initialisation: the drop follows the criterion, the
re-initialisation mode decides what the revived filters hold, and both are logged."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from repr_jax.criteria import get_criterion, score_filters
from repr_jax.layers import get_path
from repr_jax.masks import live_filters
from repr_jax.methods import MethodContext
from repr_jax.methods.repr import RePr, ReprConfig
from repr_jax.models import create_model
from repr_jax.optim import OptimConfig, make_optimizer
from repr_jax.ortho import filter_rows, normalize_rows
from repr_jax.state import create_train_state

MODEL = create_model("convnet", depth=2, width=8)
ZEROS = jnp.zeros((1, 32, 32, 3))


def _setup(criterion="ortho", reinit="orthogonal", **cfg):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    config = ReprConfig(s1=1, s2=1, iterations=1, drop_fraction=0.25, criterion=criterion,
                        reinit=reinit, criterion_batches=2, **cfg)
    context = MethodContext.for_model(MODEL, epochs=2, batch_size=8, train_images=images,
                                      train_labels=labels)
    method = RePr(config, context)
    state = create_train_state(MODEL, make_optimizer(OptimConfig(), optax.constant_schedule(0.01)), 0,
                               method=method)
    return state, method, method.score_data


@pytest.mark.parametrize("criterion", ["weights", "apoz", "taylor", "oracle"])
def test_drop_takes_the_filters_the_criterion_ranks_first(criterion):
    state, method, (x, y) = _setup(criterion, per_layer=True)
    assert (x is None) == (not get_criterion(criterion).needs_data)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2_000_000)
    scores = score_filters(criterion, state, state.layers, key=key, images=x, labels=y)
    state, (event,) = method.before_epoch(state, 1)
    record = method.record(event)
    sign = 1 if get_criterion(criterion).drop_first == "high" else -1
    for layer, row in zip(state.layers, record["layers"]):
        expect = np.argsort(-sign * np.asarray(scores[layer.name]), kind="stable")[:2]
        assert sorted(row["dropped_indices"]) == sorted(expect.tolist())
    assert record["criterion"] == criterion and record["drop_first"] in ("high", "low")


@pytest.mark.parametrize("reinit", ["orthogonal", "random", "zero"])
def test_reinit_modes(reinit):
    state, method, _ = _setup(reinit=reinit)
    state, (drop,) = method.before_epoch(state, 1)
    dropped = {r["layer"]: r["dropped_indices"] for r in method.record(drop)["layers"]}
    state, (event,) = method.after_epoch(state, 1)
    record = method.record(event)
    assert record["reinit"] == reinit
    assert all(np.all(np.asarray(m) == 1) for m in live_filters(state.masks, state.layers).values())
    fresh = MODEL.init(jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1_000_000), ZEROS)["params"]
    for layer in state.layers:
        idx = dropped[layer.name]
        if not idx:
            continue
        new = np.asarray(get_path(state.params, layer.path + ("kernel",)))[..., idx]
        if reinit == "zero":
            assert np.all(new == 0)
        elif reinit == "random":   # exactly the model initialiser's draw for those filters
            np.testing.assert_allclose(new, np.asarray(fresh[layer.name]["kernel"])[..., idx], rtol=1e-5)
        else:                      # orthogonal to every kept filter
            w = np.asarray(normalize_rows(filter_rows(get_path(state.params, layer.path + ("kernel",)))))
            kept = np.setdiff1d(np.arange(layer.num_filters), idx)
            assert np.abs(w[idx] @ w[kept].T).max() < 1e-4 or layer.fan_in < layer.num_filters + len(idx)


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown criterion 'l3'"):
        ReprConfig(criterion="l3").validate()
    with pytest.raises(ValueError, match="unknown re-initialisation 'ones'; choose from orthogonal, random, zero"):
        ReprConfig(reinit="ones").validate()
    with pytest.raises(ValueError, match="RePr schedule needs at least N·\\(S1\\+S2\\) = 90 epochs"):
        ReprConfig().validate(type("Run", (), {"epochs": 10})())
    context = MethodContext.for_model(MODEL)          # no training images: scoring must refuse
    method = RePr(ReprConfig(criterion="taylor", s1=1, s2=1, iterations=1), context)
    state = create_train_state(MODEL, make_optimizer(OptimConfig(), optax.constant_schedule(0.01)), 0,
                               method=method)
    with pytest.raises(ValueError, match="needs training images"):
        method.before_epoch(state, 1)
