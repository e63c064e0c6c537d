"""The RePr metric against a plain numpy reference; batched scoring equals the loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from repr_jax import filter_orthogonality, score_layers
from repr_jax.layers import prunable_convs
from repr_jax.masks import init_masks, with_live_filters
from repr_jax.models import create_model


def numpy_reference(kernel: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    f = kernel.shape[-1]
    w = kernel.reshape(-1, f).T.astype(np.float64)
    live = np.ones(f, bool) if mask is None else mask > 0
    scores = np.zeros(f)
    for i in range(f):
        if not live[i]:
            continue
        ni = np.linalg.norm(w[i])
        wi = w[i] / ni if ni > 1e-6 else np.zeros_like(w[i])
        total = 0.0
        for j in range(f):
            if not live[j]:
                continue
            nj = np.linalg.norm(w[j])
            wj = w[j] / nj if nj > 1e-6 else np.zeros_like(w[j])
            total += abs(wi @ wj - (1.0 if i == j else 0.0))
        scores[i] = total / live.sum()
    return scores


@pytest.mark.parametrize("shape", [(3, 3, 3, 32), (3, 3, 16, 16), (1, 1, 8, 4), (5, 5, 2, 64),
                                   (3, 3, 1, 20), (3, 3, 32, 64)])
def test_metric_matches_numpy_reference(shape):
    kernel = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    kernel[..., 1] = 0.0  # a zero filter: no NaN, its diagonal |0 - 1| = 1 counts
    got = np.asarray(filter_orthogonality(jnp.asarray(kernel)))
    np.testing.assert_allclose(got, numpy_reference(kernel), rtol=1e-4, atol=1e-5)
    assert np.isfinite(got).all()


@settings(max_examples=40, deadline=None)
@given(f=st.sampled_from([2, 7, 24]), d=st.sampled_from([1, 5, 30]), seed=st.integers(0, 10_000))
def test_metric_with_mask_matches_reference(f, d, seed):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(1, 1, d, f)).astype(np.float32)
    mask = (rng.random(f) > 0.4).astype(np.float32)
    got = np.asarray(filter_orthogonality(jnp.asarray(kernel), jnp.asarray(mask)))
    np.testing.assert_allclose(got, numpy_reference(kernel, mask), rtol=1e-4, atol=1e-5)


def test_duplicate_filters_score_highest():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(27, 8)))
    rows = q.T.copy()
    rows[5] = rows[2] * 3.0  # filter 5 duplicates filter 2 (scaled)
    kernel = rows.T.reshape(3, 3, 3, 8).astype(np.float32)
    scores = np.asarray(filter_orthogonality(jnp.asarray(kernel)))
    assert set(np.argsort(-scores)[:2]) == {2, 5}
    np.testing.assert_allclose(np.delete(scores, [2, 5]), 0.0, atol=1e-5)


def test_score_layers_vmap_equals_per_layer_loop():
    model = create_model("resnet20")
    params = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))["params"]
    layers = prunable_convs(params)
    masks = init_masks(params, layers)
    rng = np.random.default_rng(0)
    masks = with_live_filters(masks, layers, {l.name: (rng.random(l.num_filters) > 0.3).astype(np.float32)
                                              for l in layers})
    batched = score_layers(params, masks, layers)
    for layer in layers:
        kernel = params
        for key in layer.path + ("kernel",):
            kernel = kernel[key]
        live = masks
        for key in layer.path + ("kernel",):
            live = live[key]
        np.testing.assert_allclose(batched[layer.name], filter_orthogonality(kernel, live),
                                   rtol=1e-5, atol=1e-6)


def test_orthogonality_penalty_is_the_summed_scores_and_differentiable():
    from repr_jax import orthogonality_penalty
    params = create_model("convnet", width=8).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    layers = prunable_convs(params)
    masks = init_masks(params, layers)
    params["conv1"]["kernel"] = params["conv1"]["kernel"].at[..., 3].set(0.0)  # a zero filter
    expected = sum(float(jnp.sum(filter_orthogonality(params[l.name]["kernel"]))) for l in layers)
    np.testing.assert_allclose(orthogonality_penalty(params, masks, layers), expected, rtol=1e-5)
    loss = lambda p: orthogonality_penalty(p, masks, layers)
    grads = jax.grad(loss)(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    p = params
    for _ in range(20):  # gradient descent on the penalty alone makes filters more orthogonal
        p = jax.tree_util.tree_map(lambda w, g: w - 0.05 * g, p, jax.grad(loss)(p))
    assert float(loss(p)) < 0.8 * float(loss(params))
