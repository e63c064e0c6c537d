"""Filter criteria: hand-computed references, brute-force oracle, directions, registry errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from repr_jax.criteria import (CRITERIA, drop_priority, get_criterion, obd_saliency,
                               scoring_batches, score_filters)
from repr_jax.layers import replace_path
from repr_jax.masks import live_filters
from repr_jax.models import create_model
from repr_jax.data.pipeline import normalize
from repr_jax.ranking import select_drops
from repr_jax.state import create_train_state
from repr_jax.optim import OptimConfig, make_optimizer


def _state(model, seed=0):
    return create_train_state(model, make_optimizer(OptimConfig(), optax.constant_schedule(0.1)), seed)


def _data(batches=2, batch=6, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, 256, (batches, batch, 32, 32, 3), dtype=np.uint8)),
            jnp.asarray(rng.integers(0, 10, (batches, batch)).astype(np.int32)))


def _np_conv3x3(x, kernel, bias):
    """Hand-written SAME 3×3 convolution, x (B, H, W, C), kernel (3, 3, C, F)."""
    b, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("bhwc,cf->bhwf", xp[:, i:i + h, j:j + w], kernel[i, j])
    return out + bias


def _one_layer_reference(state, images, labels):
    """z, a = ReLU(z) and g = ∂(Σ loss)/∂z for C¹(F) — conv → ReLU → dense — by hand."""
    p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in state.params.items()}
    x = np.asarray(normalize(images), np.float64)
    z = _np_conv3x3(x, p["conv0"]["kernel"], p["conv0"]["bias"])
    a = np.maximum(z, 0)
    logits = a.reshape(len(a), -1) @ p["head"]["kernel"] + p["head"]["bias"]
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    dlogits = soft - np.eye(10)[np.asarray(labels)]
    da = (dlogits @ p["head"]["kernel"].T).reshape(a.shape)
    return z, a, da * (z > 0)


def test_response_criteria_match_a_hand_computed_one_layer_network():
    state = _state(create_model("convnet", depth=1, width=4))
    images, labels = _data()
    zs, as_, gs = zip(*(_one_layer_reference(state, images[b], labels[b]) for b in range(2)))
    z, a, g = (np.concatenate(t) for t in (zs, as_, gs))
    expect = {
        "activations": a.mean((0, 1, 2)),
        "apoz": (a == 0).mean((0, 1, 2)),
        "gradients": np.abs(g).mean((0, 1, 2)),
        "taylor": np.abs((a * g).mean((1, 2))).mean(0),   # Molchanov: |mean over positions|
    }
    for name, ref in expect.items():
        got = np.asarray(score_filters(name, state, state.layers, images=normalize(images), labels=labels)["conv0"])
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-7, err_msg=name)


def test_apoz_counts_zeros_of_known_activations():
    """Filter 0 never fires (bias −1e4), filter 1 always fires (bias +1e4) → APoZ 1 and 0."""
    state = _state(create_model("convnet", depth=1, width=3))
    bias = jnp.asarray([-1e4, 1e4, 0.0])
    state = state.replace(params=replace_path(state.params, ("conv0", "bias"), lambda _: bias))
    images, labels = _data()
    apoz = np.asarray(score_filters("apoz", state, state.layers, images=normalize(images), labels=labels)["conv0"])
    assert apoz[0] == 1.0 and apoz[1] == 0.0 and 0.0 < apoz[2] < 1.0
    priority = drop_priority("apoz", {"conv0": apoz})
    assert np.argmax(np.asarray(priority["conv0"])) == 0       # always-zero filter drops first


def test_taylor_on_a_linear_response():
    """With a = z > 0 everywhere the Taylor score is |mean_hw(z · ∂L/∂z)| per example."""
    state = _state(create_model("convnet", depth=1, width=2))
    state = state.replace(params=replace_path(state.params, ("conv0", "bias"),
                                              lambda _: jnp.asarray([1e3, 2e3])))
    images, labels = _data(batches=1)
    z, a, g = _one_layer_reference(state, images[0], labels[0])
    assert (z > 0).all()
    ref = np.abs((z * g).mean((1, 2))).mean(0)
    got = score_filters("taylor", state, state.layers, images=normalize(images), labels=labels)["conv0"]
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4)


@pytest.mark.parametrize("model", [create_model("convnet", depth=2, width=5),
                                   create_model("convnet", depth=2, width=4, batch_norm=True)])
def test_oracle_equals_a_brute_force_loop(model):
    state = _state(model, seed=3)
    images, labels = _data()

    def loss(params):
        vals = []
        for b in range(images.shape[0]):
            logits = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                    normalize(images[b]), train=False)
            vals.append(optax.softmax_cross_entropy_with_integer_labels(logits, labels[b]).mean())
        return float(np.mean(vals))

    base = loss(state.params)
    oracle = score_filters("oracle", state, state.layers, images=normalize(images), labels=labels)
    for layer in state.layers:
        brute = []
        for f in range(layer.num_filters):
            params = state.params
            for leaf in ("kernel", "bias"):
                if leaf == "bias" and not layer.has_bias:
                    continue
                params = replace_path(params, layer.path + (leaf,), lambda x: x.at[..., f].set(0.0))
            if layer.bn_path is not None:
                for leaf in ("scale", "bias"):
                    params = replace_path(params, layer.bn_path + (leaf,), lambda x: x.at[f].set(0.0))
            brute.append(loss(params) - base)
        np.testing.assert_allclose(np.asarray(oracle[layer.name]), brute, rtol=1e-4, atol=1e-5)


def test_hessian_estimate_converges_to_the_exact_obd_saliency():
    """Hutchinson is unbiased: the mean over many keys → ½ Σ diag(H) w² from the full Hessian."""
    state = _state(create_model("convnet", depth=1, width=3), seed=1)
    images, labels = _data(batches=2, batch=2)
    kernel = state.params["conv0"]["kernel"]

    def loss(k):
        params = replace_path(state.params, ("conv0", "kernel"), lambda _: k)
        x, y = images.reshape((-1, 32, 32, 3)), labels.reshape(-1)
        logits = state.apply_fn({"params": params}, normalize(x), train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    flat = kernel.reshape(-1)
    hess = jax.hessian(lambda v: loss(v.reshape(kernel.shape)))(flat)
    exact = np.asarray(0.5 * (jnp.diag(hess) * flat ** 2).reshape(-1, kernel.shape[-1]).sum(0))
    keys = jax.random.split(jax.random.key(0), 400)
    est = np.mean([np.asarray(obd_saliency(state, state.layers, k, normalize(images), labels, probes=2)["conv0"])
                   for k in keys], axis=0)
    np.testing.assert_allclose(est, exact, rtol=0.1, atol=0.02 * np.abs(exact).max())


def test_data_free_criteria_and_their_directions():
    state = _state(create_model("convnet", depth=2, width=6, batch_norm=True))
    kernel = np.asarray(state.params["conv0"]["kernel"])
    l1 = np.asarray(score_filters("weights", state, state.layers)["conv0"])
    l2 = np.asarray(score_filters("l2", state, state.layers)["conv0"])
    np.testing.assert_allclose(l1, np.abs(kernel).sum((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(l2, np.sqrt((kernel ** 2).sum((0, 1, 2))), rtol=1e-6)
    gamma = jnp.asarray([0.5, -2.0, 0.1, 1.0, 3.0, -0.01])
    state = state.replace(params=replace_path(state.params, ("conv0_bn", "scale"), lambda _: gamma))
    bn = np.asarray(score_filters("bn_gamma", state, state.layers)["conv0"])
    np.testing.assert_allclose(bn, np.abs(np.asarray(gamma)))
    live = live_filters(state.masks, state.layers)
    new = select_drops(drop_priority("bn_gamma", {"conv0": bn}), {"conv0": live["conv0"]}, 2 / 6)
    assert np.flatnonzero(np.asarray(new["conv0"]) == 0).tolist() == [2, 5]   # smallest |γ|
    # "high" criteria keep their sign, "low" ones are negated.
    assert np.asarray(drop_priority("ortho", {"a": jnp.ones(2)})["a"]).tolist() == [1, 1]
    assert np.asarray(drop_priority("weights", {"a": jnp.ones(2)})["a"]).tolist() == [-1, -1]
    assert {c.drop_first for c in CRITERIA.values()} == {"high", "low"}


def test_random_criterion_depends_only_on_the_key():
    state = _state(create_model("convnet", depth=2, width=6))
    a = score_filters("random", state, state.layers, key=jax.random.key(1))
    b = score_filters("random", state, state.layers, key=jax.random.key(1))
    c = score_filters("random", state, state.layers, key=jax.random.key(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv0"], c["conv0"])


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown criterion 'fisher'; choose from ortho, ortho_official, weights"):
        get_criterion("fisher")
    state = _state(create_model("convnet", depth=1, width=2))
    with pytest.raises(ValueError, match="needs a BatchNorm"):
        score_filters("bn_gamma", state, state.layers)
    with pytest.raises(ValueError, match="needs data"):
        score_filters("taylor", state, state.layers)
    with pytest.raises(ValueError, match="needs 4×8 = 32 images, only 10"):
        scoring_batches(np.zeros((10, 32, 32, 3), np.uint8), np.zeros(10), 4, 8, seed=0)


def test_every_criterion_scores_every_layer_of_a_resnet():
    state = _state(create_model("resnet8"))   # every kind of layer ResNet-20 has, a third as many
    images, labels = _data(batches=1, batch=2)
    for name in CRITERIA:
        scores = score_filters(name, state, state.layers, key=jax.random.key(0),
                               images=images, labels=labels)
        assert set(scores) == {l.name for l in state.layers}
        assert all(s.shape == (l.num_filters,) and np.isfinite(np.asarray(s)).all()
                   for l, s in zip(state.layers, scores.values()))
