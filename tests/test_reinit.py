"""Null-space re-initialisation: orthogonality, kept rows untouched, fallback, vmap."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings, strategies as st

from repr_jax import orthogonal_reinit, reinit_layers
from repr_jax.layers import get_path, prunable_convs
from repr_jax.models import create_model


def _rows(kernel):
    k = np.asarray(kernel, np.float64)
    return k.reshape(-1, k.shape[-1]).T


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


reinit = jax.jit(orthogonal_reinit)  # one compilation per shape, reused across examples


def _case(seed, kh, cin, f, drop_frac):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(kh, kh, cin, f)).astype(np.float32)
    keep = rng.random(f) >= drop_frac
    saved = kernel.copy()
    kernel[..., ~keep] = 0.0  # dropped filters sit at zero, as after a drop
    return kernel, keep, saved


# Shapes drawn from small sets so jit caches are reused; masks, values and keys vary freely.
# (kh, c_in, F): one block, several blocks of the Gram–Schmidt (F > 64), F ≈ D, tiny D.
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), shape=st.sampled_from([(3, 8, 16), (3, 24, 70), (1, 24, 16), (1, 8, 3)]),
       drop=st.floats(0.05, 0.9))
def test_new_rows_orthogonal_to_kept_and_saved_when_room(seed, shape, drop):
    kh, cin, f = shape
    kernel, keep, saved = _case(seed, kh, cin, f, drop)
    d = kh * kh * cin
    n_drop = int((~keep).sum())
    assume(n_drop > 0 and f + n_drop <= d)
    out = reinit(jax.random.key(seed), jnp.asarray(kernel), jnp.asarray(keep),
                                    jnp.asarray(saved))
    rows = _rows(out)
    np.testing.assert_array_equal(np.asarray(out)[..., keep], kernel[..., keep])
    new = _unit(rows[~keep])
    if keep.any():
        assert np.abs(new @ _unit(_rows(kernel)[keep]).T).max() < 1e-4
    assert np.abs(new @ _unit(_rows(saved)[~keep]).T).max() < 1e-4
    assert np.abs(new @ new.T - np.eye(n_drop)).max() < 1e-4
    # scaled to the mean norm of the kept filters
    if keep.any():
        expected = np.linalg.norm(_rows(kernel)[keep], axis=1).mean()
        np.testing.assert_allclose(np.linalg.norm(rows[~keep], axis=1), expected, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), cin=st.sampled_from([1, 3]), f=st.sampled_from([8, 32, 64]),
       drop=st.floats(0.05, 0.9))
def test_fallback_is_finite_and_mutually_orthogonal(seed, cin, f, drop):
    kernel, keep, saved = _case(seed, 3, cin, f, drop)
    d = 9 * cin
    n_drop = int((~keep).sum())
    assume(n_drop > 0 and f + n_drop > d)  # complement too small: the fallback rule
    out = reinit(jax.random.key(seed), jnp.asarray(kernel), jnp.asarray(keep), jnp.asarray(saved))
    rows = _rows(out)
    assert np.isfinite(rows).all()
    np.testing.assert_array_equal(np.asarray(out)[..., keep], kernel[..., keep])
    new = _unit(rows[~keep])
    if n_drop <= d:
        assert np.abs(new @ new.T - np.eye(n_drop)).max() < 1e-4
        # orthogonal to the D − n_drop most-overlapping constraint rows
        constraints = np.where(keep[:, None], _rows(kernel), _rows(saved))
        c_hat = _unit(constraints)
        overlap = np.abs(c_hat @ c_hat.T - np.eye(f)).sum(1)
        chosen = np.argsort(-overlap, kind="stable")[: d - n_drop]
        if chosen.size:
            assert np.abs(new @ c_hat[chosen].T).max() < 1e-3
    # deterministic given the key
    again = reinit(jax.random.key(seed), jnp.asarray(kernel), jnp.asarray(keep), jnp.asarray(saved))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(again))


def test_nothing_dropped_is_identity_and_all_dropped_is_finite():
    kernel, _, saved = _case(0, 3, 8, 16, 0.0)
    keep = np.ones(16, bool)
    out = reinit(jax.random.key(0), jnp.asarray(kernel), jnp.asarray(keep), jnp.asarray(saved))
    np.testing.assert_array_equal(np.asarray(out), kernel)
    out = reinit(jax.random.key(0), jnp.zeros_like(kernel), jnp.zeros(16, bool), jnp.asarray(saved))
    rows = _unit(_rows(out))
    assert np.isfinite(rows).all() and np.abs(rows @ rows.T - np.eye(16)).max() < 1e-4


def test_reinit_layers_vmap_equals_per_layer_loop():
    params = create_model("resnet20").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    layers = prunable_convs(params)
    rng = np.random.default_rng(0)
    keep = {l.name: jnp.asarray(rng.random(l.num_filters) > 0.3) for l in layers}
    zeroed = params
    from repr_jax.layers import replace_path
    for l in layers:
        zeroed = replace_path(zeroed, l.path + ("kernel",), lambda k, m=keep[l.name]: k * m)
    key = jax.random.key(7)
    batched = jax.jit(reinit_layers, static_argnames="layers")(key, zeroed, params, keep, layers=layers)
    from repr_jax.layers import shape_groups
    for g, group in enumerate(shape_groups(layers).values()):
        keys = jax.random.split(jax.random.fold_in(key, g), len(group))
        for i, layer in enumerate(group):
            single = reinit(keys[i], get_path(zeroed, layer.path + ("kernel",)),
                                       keep[layer.name], get_path(params, layer.path + ("kernel",)))
            np.testing.assert_allclose(get_path(batched, layer.path + ("kernel",)), single, atol=1e-5)
