"""RePr's re-introduction on a *trained* network: what happens to the weights that read a
revived filter (``repr.outgoing``), the probe, siahuat0727/RePr's drop (``drop_mode=kernel``)
and re-initialisation (``reinit=reimpl``) rules."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from repr_jax.masks import live_filters
from repr_jax.methods.base import MethodContext, create_method, method_config
from repr_jax.models.convnet import ConvNet
from repr_jax.optim import OptimConfig, make_optimizer
from repr_jax.data.pipeline import Preprocessing
from repr_jax.reinit import orthogonal_reinit
from repr_jax.state import create_train_state
from repr_jax.train import train_step

BATCH = 64
PRE = Preprocessing(mean=(0.3,), std=(0.4,), crop_pad=0, flip=False)


@functools.lru_cache(maxsize=None)
def _digits():
    """sklearn's 8×8 digits as uint8 (N, 8, 8, 1): 1,400 to train, the rest to test."""
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _trained(**settings):
    """A C³(8) trained on the digits for 3 epochs with the method's schedule S1 = 3, S2 = 1
    (30 % of every layer dropped: per-layer ranking); returns (method, state after the
    sub-network epoch — just before the re-introduction)."""
    xtr, ytr, _, _ = _digits()
    model = ConvNet(num_classes=10, width=8, variant="paper")
    config = method_config("repr", s1=3, s2=1, iterations=1, drop_fraction=0.3, per_layer=True, **settings)
    context = MethodContext.for_model(model, epochs=5, batch_size=BATCH, seed=0, train_images=xtr,
                                      train_labels=ytr, input_shape=(8, 8, 1), preprocess=PRE)
    method = create_method(config, context)
    tx = make_optimizer(OptimConfig(optimizer="sgd", learning_rate=0.02, momentum=0.9, weight_decay=0.0,
                                    schedule="constant", warmup_epochs=0), lambda step: 0.02)
    state = create_train_state(model, tx, 0, method=method)
    step = jax.jit(functools.partial(train_step, layers=state.layers, method=method, augmentation=False,
                                     preprocess=PRE))
    steps = len(ytr) // BATCH
    for epoch in range(4):
        state, _ = method.before_epoch(state, epoch)
        for i in range(steps):
            state, _ = step(state, xtr[i * BATCH:(i + 1) * BATCH], ytr[i * BATCH:(i + 1) * BATCH],
                            jax.random.key(100 * epoch + i))
    return method, state


def _test_metrics(state):
    """Eval-mode logits, loss and accuracy on the held-out digits, numpy side."""
    _, _, xte, yte = _digits()
    logits = np.asarray(state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                       PRE(jnp.asarray(xte)), train=False), np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    loss = np.mean(np.log(np.exp(shifted).sum(1)) - shifted[np.arange(len(yte)), yte])
    return logits, loss, np.mean(logits.argmax(1) == yte)


@pytest.fixture(scope="module")
def trained_zero():
    return _trained(outgoing="zero")


def test_zero_outgoing_reintroduction_leaves_the_trained_networks_function_unchanged(trained_zero):
    method, state = trained_zero
    logits0, loss0, acc0 = _test_metrics(state)
    assert acc0 > 0.6                                       # a trained network, not chance (10 %)
    live = live_filters(state.masks, state.layers)
    assert sum(int(np.sum(np.asarray(v) == 0)) for v in live.values()) > 0
    after, events = method.after_epoch(state, 3)
    assert [e.kind for e in events] == ["reinit"]
    logits1, loss1, acc1 = _test_metrics(after)
    np.testing.assert_allclose(logits1, logits0, atol=1e-5)
    assert abs(loss1 - loss0) < 1e-6 and acc1 == acc0
    for layer in state.layers:                              # the filters did come back, non-zero
        dead = np.asarray(live[layer.name]) == 0
        kernel = np.asarray(after.params[layer.name]["kernel"])[..., dead]
        assert dead.sum() == 0 or np.all(np.linalg.norm(kernel.reshape(-1, dead.sum()), axis=0) > 0)
    # the next layer's input slices and the head's rows that read a revived filter are exactly 0,
    # every other weight of theirs bit-identical
    for src, dst in (("conv0", "conv1"), ("conv1", "conv2")):
        dead = np.asarray(live[src]) == 0
        kept_out = np.asarray(live[dst]) > 0               # dst's own revived filters are new
        new, old = (np.asarray(p[dst]["kernel"])[..., kept_out] for p in (after.params, state.params))
        assert np.all(new[:, :, dead] == 0)
        np.testing.assert_array_equal(new[:, :, ~dead], old[:, :, ~dead])
    rows = np.arange(after.params["head"]["kernel"].shape[0]) % 8
    dead_rows = np.asarray(live["conv2"])[rows] == 0
    assert np.all(np.asarray(after.params["head"]["kernel"])[dead_rows] == 0)
    np.testing.assert_array_equal(np.asarray(after.params["head"]["kernel"])[~dead_rows],
                                  np.asarray(state.params["head"]["kernel"])[~dead_rows])


def test_kept_outgoing_weights_change_the_function_and_the_probe_shows_it():
    method, state = _trained(outgoing="keep")
    logits0, _, acc0 = _test_metrics(state)
    after, events = method.after_epoch(state, 3)
    logits1, _, _ = _test_metrics(after)
    assert np.max(np.abs(logits1 - logits0)) > 0.1          # the shock the zero setting removes
    probe = events[0].arrays
    record = method.record(events[0])
    assert record["outgoing"] == "keep"
    assert set(record["probe"]) == {"before", "after"}
    # the probe is the eval-mode accuracy/loss on its fixed sample: recompute it by hand
    x, y = method.probe_data
    for st, when in ((state, "probe_before"), (after, "probe_after")):
        logits = np.concatenate([np.asarray(st.apply_fn({"params": st.params, "batch_stats": st.batch_stats},
                                                        xb, train=False)) for xb in np.asarray(x)])
        labels = np.asarray(y).reshape(-1)
        np.testing.assert_allclose(float(probe[when]["accuracy"]), np.mean(logits.argmax(1) == labels), atol=1e-6)
    line = method.describe(record)[0]
    assert "probe accuracy" in line and "outgoing weights keep" in line


def test_zero_outgoing_probe_is_continuous_and_logged(trained_zero):
    method, state = trained_zero
    _, events = method.after_epoch(state, 3)
    record = method.record(events[0])
    b, a = record["probe"]["before"], record["probe"]["after"]
    assert b["accuracy"] == a["accuracy"] and abs(b["loss"] - a["loss"]) < 1e-6
    assert f"{100 * b['accuracy']:.2f} → {100 * a['accuracy']:.2f} %" in method.describe(record)[0]


def test_redraw_outgoing_gives_fresh_initialiser_values_only_where_a_revived_filter_is_read():
    method, state = _trained(outgoing="redraw")
    live = live_filters(state.masks, state.layers)
    after, _ = method.after_epoch(state, 3)
    dead = np.asarray(live["conv1"]) == 0
    kept_out = np.asarray(live["conv2"]) > 0
    new, old = (np.asarray(p["conv2"]["kernel"])[..., kept_out] for p in (after.params, state.params))
    np.testing.assert_array_equal(new[:, :, ~dead], old[:, :, ~dead])
    fresh = new[:, :, dead]
    assert not np.any(fresh == old[:, :, dead])
    expected = np.sqrt(2.0 / (3 * 3 * 8))                   # He-normal's std for conv2's fan-in
    assert 0.6 * expected < fresh.std() < 1.4 * expected


def test_kernel_drop_mode_freezes_the_kernel_only_and_keeps_the_bias_at_reinit():
    method, state = _trained(drop_mode="kernel", reinit="reimpl", min_keep=0)
    live = live_filters(state.masks, state.layers)
    for layer in state.layers:
        dead = np.asarray(live[layer.name]) == 0
        assert np.all(np.asarray(state.params[layer.name]["kernel"])[..., dead] == 0)
        assert np.asarray(state.masks[layer.name]["bias"]).ndim == 1
        assert np.all(np.asarray(state.masks[layer.name]["bias"]) == 1)   # the bias trained on
    dead1 = np.asarray(live["conv1"]) == 0
    assert np.any(np.asarray(state.params["conv1"]["bias"])[dead1] != 0)
    after, _ = method.after_epoch(state, 3)
    for layer in state.layers:
        np.testing.assert_array_equal(np.asarray(after.params[layer.name]["bias"]),
                                      np.asarray(state.params[layer.name]["bias"]))


def _np_reimpl(key, kernel, keep, saved):
    """numpy reference of siahuat0727/RePr's re-initialisation with our random directions:
    the dropped columns of N(0, 1) (the same draw) projected off span(kept ∪ saved dropped)
    and Gram–Schmidt-ed in order, each a unit vector clamped to ±1/√D."""
    f = kernel.shape[-1]
    d = kernel.size // f
    w = np.asarray(kernel, np.float64).reshape(d, f)
    s = np.asarray(saved, np.float64).reshape(d, f)
    constraints = np.where(keep[None, :], w, s)
    q, r = np.linalg.qr(constraints)
    basis = q[:, np.abs(np.diag(r)) > 1e-6]
    g = np.asarray(jax.random.normal(key, (d, f), jnp.float32), np.float64)
    out = w.copy()
    for j in np.flatnonzero(~keep):
        v = g[:, j] - basis @ (basis.T @ g[:, j])
        v /= np.linalg.norm(v)
        basis = np.concatenate([basis, v[:, None]], axis=1)
        out[:, j] = np.clip(v, -1 / np.sqrt(d), 1 / np.sqrt(d))
    return out.reshape(kernel.shape)


def test_reimpl_reinit_matches_a_numpy_reference_and_falls_back_to_uniform():
    rng = np.random.default_rng(3)
    key = jax.random.key(7)
    kernel = rng.normal(size=(3, 3, 8, 12)).astype(np.float32)
    saved = rng.normal(size=kernel.shape).astype(np.float32)
    keep = np.ones(12, bool)
    keep[[1, 4, 9]] = False
    kernel[..., ~keep] = 0
    got = np.asarray(orthogonal_reinit(key, jnp.asarray(kernel), jnp.asarray(keep), jnp.asarray(saved),
                                       style="reimpl"))
    np.testing.assert_allclose(got, _np_reimpl(key, kernel, keep, saved), atol=2e-5)
    np.testing.assert_array_equal(got[..., keep], kernel[..., keep])
    # a first conv: 27 weights under 28 kept + 4 saved filters, no null space -> U(±1/√27)
    k1 = rng.normal(size=(3, 3, 3, 32)).astype(np.float32)
    keep1 = np.ones(32, bool)
    keep1[:4] = False
    got1 = np.asarray(orthogonal_reinit(key, jnp.asarray(k1), jnp.asarray(keep1), jnp.asarray(k1),
                                        style="reimpl"))
    new = got1[..., ~keep1].reshape(27, -1)
    bound = 1 / np.sqrt(27)
    assert np.all(np.abs(new) <= bound * (1 + 1e-6)) and np.all(new != 0)
    assert np.mean(np.isclose(np.abs(new), bound)) < 0.1    # uniform draws, not clamped unit vectors
