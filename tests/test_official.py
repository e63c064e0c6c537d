"""The official RePr code's pieces against numpy references written here: its metric, its
QR re-initialisation, int(p·n) rounding, TF's staircase exponential decay, the exact official
C³ (5×5 + bias, 3×3/2 SAME max-pool, truncated-normal σ = 0.04), the official schedule of
sub-network phases as extra epochs, and RePr's freeze drop mode and outgoing-weight reset."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repr_jax.config import RunConfig, apply_overrides
from repr_jax.experiment import build_method, initial_state
from repr_jax.masks import live_filters
from repr_jax.methods.repr import ReprSchedule
from repr_jax.models import create_model
from repr_jax.official import official_orthogonality, official_reinit
from repr_jax.optim import OptimConfig, learning_rate_schedule
from repr_jax.protocols import PROTOCOLS
from repr_jax.ranking import select_drops
from repr_jax.train import forward, train_step


# ----------------------------------------------------------------------------- numpy references
def np_official_scores(kernel: np.ndarray) -> np.ndarray:
    """ranking.py inter_ortho: l2_normalize over the whole matrix, WᵀW minus its diagonal,
    mean over axis 0, abs."""
    w = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
    w = w / np.sqrt(max(np.sum(w * w), 1e-12))
    p = w.T @ w
    p = p - np.diag(np.diag(p))
    return np.abs(p.mean(axis=0))


def np_get_ortho_weights(kernel: np.ndarray, gain: float) -> np.ndarray:
    """ortho.py get_ortho_weights, line by line in numpy."""
    num_rows = int(np.prod(kernel.shape[:-1]))
    num_cols = kernel.shape[-1]
    flat_shape = (num_cols, num_rows) if num_rows < num_cols else (num_rows, num_cols)
    a = (kernel / np.sqrt(max(np.sum(kernel.astype(np.float64) ** 2), 1e-12))).reshape(flat_shape)
    q, r = np.linalg.qr(a, mode="reduced")
    q = q * np.sign(np.diag(r))
    if num_rows < num_cols:
        q = q.T
    return (gain * q).reshape(kernel.shape)


kernels = st.tuples(st.sampled_from([1, 3, 5]), st.integers(1, 6), st.integers(2, 12), st.integers(0, 2**31 - 1))


@settings(max_examples=25, deadline=None)
@given(kernels)
def test_official_metric_matches_the_reference(spec):
    k, c_in, f, seed = spec
    kernel = np.random.default_rng(seed).normal(size=(k, k, c_in, f)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(official_orthogonality(jnp.asarray(kernel))),
                               np_official_scores(kernel), rtol=2e-4, atol=1e-6)


def test_official_metric_differs_from_the_papers_and_a_mask_removes_filters():
    from repr_jax.ortho import filter_orthogonality
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 32)).astype(np.float32)
    ours = np.asarray(filter_orthogonality(jnp.asarray(kernel)))
    official = np.asarray(official_orthogonality(jnp.asarray(kernel)))
    assert not np.allclose(np.argsort(ours), np.argsort(official))
    mask = np.ones(32, np.float32)
    mask[5:] = 0
    masked = np.asarray(official_orthogonality(jnp.asarray(kernel), jnp.asarray(mask)))
    np.testing.assert_allclose(masked[:5], np_official_scores(kernel[..., :5]), rtol=2e-4, atol=1e-6)
    assert np.all(masked[5:] == 0)


@settings(max_examples=25, deadline=None)
@given(kernels, st.floats(0.25, 3.0))
def test_official_reinit_matches_get_ortho_weights(spec, gain):
    k, c_in, f, seed = spec
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(k, k, c_in, f)).astype(np.float32)
    dropped = rng.random(f) < 0.5
    out = np.asarray(official_reinit(jnp.asarray(kernel), jnp.asarray(dropped), gain))
    ref = np_get_ortho_weights(kernel, gain)
    np.testing.assert_array_equal(out[..., ~dropped], kernel[..., ~dropped])   # kept: untouched
    np.testing.assert_allclose(out[..., dropped], ref[..., dropped], atol=2e-5)


def test_official_reinit_columns_are_orthonormal_and_close_to_the_old_filters():
    kernel = np.random.default_rng(1).normal(size=(5, 5, 32, 32)).astype(np.float32)
    out = np.asarray(official_reinit(jnp.asarray(kernel), jnp.ones(32, bool))).reshape(-1, 32)
    np.testing.assert_allclose(out.T @ out, np.eye(32), atol=1e-5)
    first = kernel.reshape(-1, 32)[:, 0]
    assert abs(out[:, 0] @ first / np.linalg.norm(first)) > 0.999   # Q's first column ∥ W's


@pytest.mark.parametrize("fraction,n,nearest,floor", [(0.3, 96, 29, 28), (0.5, 96, 48, 48), (0.3, 10, 3, 3),
                                                       (0.25, 6, 2, 1)])
def test_rounding_int_p_n(fraction, n, nearest, floor):
    scores = {"a": jnp.arange(n, dtype=jnp.float32)}
    live = {"a": jnp.ones(n)}
    for rounding, expected in (("nearest", nearest), ("floor", floor)):
        out = select_drops(scores, live, fraction, min_keep=0, rounding=rounding)
        assert n - int(jnp.sum(out["a"])) == expected == (int(fraction * n) if rounding == "floor" else expected)


def test_exponential_staircase_matches_tf_exponential_decay():
    cfg = OptimConfig(learning_rate=0.05, schedule="exponential", decay_steps=25000, decay_rate=0.5)
    sched = learning_rate_schedule(cfg, steps_per_epoch=703, epochs=379)
    for step in (0, 1, 24_999, 25_000, 49_999, 50_000, 266_437):
        assert float(sched(step)) == pytest.approx(0.05 * 0.5 ** (step // 25000), rel=1e-6)
    smooth = learning_rate_schedule(dataclasses.replace(cfg, staircase=False), 703, 379)
    assert float(smooth(12_500)) == pytest.approx(0.05 * 0.5 ** 0.5, rel=1e-6)


# ----------------------------------------------------------------------------- the official model
def _np_maxpool_3x3_s2_same(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    out_h, out_w = -(-h // 2), -(-w // 2)
    pad_h, pad_w = max((out_h - 1) * 2 + 3 - h, 0), max((out_w - 1) * 2 + 3 - w, 0)
    p = np.full((n, h + pad_h, w + pad_w, c), -np.inf)
    p[:, pad_h // 2: pad_h // 2 + h, pad_w // 2: pad_w // 2 + w] = x
    return np.stack([np.stack([p[:, 2 * i: 2 * i + 3, 2 * j: 2 * j + 3].max(axis=(1, 2))
                               for j in range(out_w)], 1) for i in range(out_h)], 1)


def _np_conv_same(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    kh, kw = k.shape[:2]
    p = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[1:3]
    patches = np.stack([np.stack([p[:, i: i + kh, j: j + kw] for j in range(w)], 1) for i in range(h)], 1)
    return np.einsum("nhwabc,abcf->nhwf", patches, k) + b


def test_official_convnet_matches_a_numpy_forward_pass_and_its_init():
    model = create_model("convnet", width=8, variant="official")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    params = model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))["params"]
    assert params["head"]["kernel"].shape == (4 * 4 * 8, 10)
    assert params["conv0"]["kernel"].shape == (5, 5, 3, 8) and "bias" in params["conv0"]
    h = x.astype(np.float64)
    for i in range(3):
        conv = params[f"conv{i}"]
        h = _np_maxpool_3x3_s2_same(np.maximum(_np_conv_same(h, np.asarray(conv["kernel"]), np.asarray(conv["bias"])), 0))
    ref = h.reshape(2, -1) @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, jnp.asarray(x))), ref, rtol=1e-4, atol=1e-4)
    big = create_model("convnet", variant="official").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    w = np.concatenate([np.asarray(big[n]["kernel"]).ravel() for n in ("conv1", "conv2", "head")])
    assert np.abs(w).max() <= 0.08 + 1e-7                   # truncated at 2σ
    assert np.std(w) == pytest.approx(0.04 * 0.8796, rel=0.03)   # σ of N(0,1) truncated at ±2: 0.8796
    assert all(np.all(np.asarray(big[n]["bias"]) == 0) for n in ("conv0", "conv1", "conv2", "head"))


def test_official_schedule_is_the_official_training_loop():
    """train.py: for epoch in 1..199: one full epoch; every 20th, 20 sub-network epochs."""
    official = []
    for epoch in range(1, 200):
        official.append("full")
        if epoch % 20 == 0:
            official += ["sub"] * 20
    epochs = dict((k, v) for k, v, _ in PROTOCOLS["official"])
    schedule = ReprSchedule(epochs["repr.s1"], epochs["repr.s2"], epochs["repr.iterations"])
    assert epochs["epochs"] == len(official) == 379
    assert [schedule.phase(e).name for e in range(379)] == official


# ----------------------------------------------------------------------------- RePr's official mechanics
def _repr_setup(tmp_path, *overrides, width=8, variant="official"):
    d = apply_overrides({}, ["method=repr", "model.name=convnet", f"model.width={width}",
                             f"model.variant={variant}", "repr.s1=1", "repr.s2=1", "repr.iterations=1",
                             "epochs=2", "batch_size=16", "optim.momentum=0", "optim.weight_decay=0",
                             "optim.learning_rate=0.05", *overrides])
    d["out"] = str(tmp_path)
    config = RunConfig.from_dict(d)
    model, _, state = initial_state(config, 64)
    return config, model, state


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3)), jnp.uint8),
            jnp.asarray(rng.integers(0, 10, n), jnp.int32))


def test_freeze_mode_gates_outputs_freezes_weights_and_official_reinit_starts_from_them(tmp_path):
    config, model, state = _repr_setup(tmp_path, "repr.drop_mode=freeze", "repr.reinit=official",
                                       "repr.criterion=ortho_official", "repr.rounding=floor",
                                       "repr.drop_fraction=0.5", "repr.min_keep=0")
    method = build_method(config, model, config.architecture(), 64)
    layers = state.layers
    before = state.params
    state, events = method.before_epoch(state, 1)
    live = live_filters(state.masks, layers)
    assert sum(int(jnp.sum(1 - v)) for v in live.values()) == int(0.5 * 24)
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), before, state.params)
    assert all(jax.tree_util.tree_leaves(same))                    # nothing zeroed
    x, y = _batch()
    # the gates cut the dropped channels in training and in evaluation
    images = x.astype(jnp.float32) / 255.0
    for train in (True, False):
        gated, _ = forward(state, state.params, images, train=train, method=method)
        plain, _ = forward(state, state.params, images, train=train, method=None)
        assert not np.allclose(np.asarray(gated), np.asarray(plain))
    for _ in range(2):
        state, _ = train_step(state, x, y, jax.random.key(1), layers=layers, method=method, augmentation=False)
    for layer in layers:
        dead = np.asarray(live[layer.name]) == 0
        k0, k1 = (np.asarray(p[layer.name]["kernel"]) for p in (before, state.params))
        b0, b1 = (np.asarray(p[layer.name]["bias"]) for p in (before, state.params))
        np.testing.assert_array_equal(k1[..., dead], k0[..., dead])   # frozen
        np.testing.assert_array_equal(b1[dead], b0[dead])
        assert not np.allclose(k1[..., ~dead], k0[..., ~dead])        # the rest trains
    trained = state.params
    state, _ = method.after_epoch(state, 1)
    for layer in layers:
        dead = np.asarray(live[layer.name]) == 0
        expected = np_get_ortho_weights(np.asarray(trained[layer.name]["kernel"]), 1.0)
        np.testing.assert_allclose(np.asarray(state.params[layer.name]["kernel"])[..., dead],
                                   expected[..., dead], atol=2e-5)
        np.testing.assert_array_equal(np.asarray(state.params[layer.name]["bias"]),
                                      np.asarray(trained[layer.name]["bias"]))   # bias kept
        assert np.all(np.asarray(state.method_state["gates"][layer.name]) == 1)
        assert np.all(np.asarray(live_filters(state.masks, layers)[layer.name]) == 1)


def test_zero_mode_official_reinit_uses_the_drop_time_kernels(tmp_path):
    config, model, state = _repr_setup(tmp_path, "repr.reinit=official", "repr.drop_fraction=0.5")
    method = build_method(config, model, config.architecture(), 64)
    state, _ = method.before_epoch(state, 1)
    live = live_filters(state.masks, state.layers)
    x, y = _batch()
    state, _ = train_step(state, x, y, jax.random.key(1), layers=state.layers, method=method, augmentation=False)
    kernels = {l.name: np.where(np.asarray(live[l.name]) > 0, np.asarray(state.params[l.name]["kernel"]),
                                np.asarray(state.method_state["snapshot"][l.name]["kernel"])) for l in state.layers}
    state, _ = method.after_epoch(state, 1)
    for layer in state.layers:
        dead = np.asarray(live[layer.name]) == 0
        np.testing.assert_allclose(np.asarray(state.params[layer.name]["kernel"])[..., dead],
                                   np_get_ortho_weights(kernels[layer.name], 1.0)[..., dead], atol=2e-5)


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_outgoing_weights_of_revived_filters_are_scaled(tmp_path, scale):
    config, model, state = _repr_setup(tmp_path, f"repr.outgoing_scale={scale}", "repr.drop_fraction=0.5",
                                       variant="paper")
    method = build_method(config, model, config.architecture(), 64)
    state, _ = method.before_epoch(state, 1)
    live = {k: np.asarray(v) > 0 for k, v in live_filters(state.masks, state.layers).items()}
    before = state.params
    state, _ = method.after_epoch(state, 1)
    after = state.params
    for src, dst in (("conv0", "conv1"), ("conv1", "conv2")):
        dead, kept = ~live[src], live[dst]   # dst's own dropped filters are re-initialised: skip them
        new, old = (np.asarray(p[dst]["kernel"])[..., kept] for p in (after, before))
        np.testing.assert_allclose(new[:, :, dead], scale * old[:, :, dead], rtol=1e-6)
        np.testing.assert_array_equal(new[:, :, ~dead], old[:, :, ~dead])
    # the head's rows are the flattened (h, w, c) features: channel = row % F
    rows = np.arange(after["head"]["kernel"].shape[0]) % 8
    dead_rows = ~live["conv2"][rows]
    np.testing.assert_allclose(np.asarray(after["head"]["kernel"])[dead_rows],
                               scale * np.asarray(before["head"]["kernel"])[dead_rows], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(after["head"]["kernel"])[~dead_rows],
                                  np.asarray(before["head"]["kernel"])[~dead_rows])


def test_augmentation_off_trains_on_the_images_as_given(tmp_path):
    """The step key drives only the crop/flip here (C³ has no dropout): without augmentation
    two keys give the same step, with it they do not."""
    _, _, state = _repr_setup(tmp_path, "method=standard")
    x, y = _batch()
    kernel = lambda s: np.asarray(s.params["conv0"]["kernel"])
    steps = {aug: [kernel(train_step(state, x, y, jax.random.key(k), layers=state.layers, augmentation=aug)[0])
                   for k in (4, 5)] for aug in (False, True)}
    np.testing.assert_array_equal(*steps[False])
    assert not np.allclose(*steps[True])
