"""Weight-level methods against numpy references: CSR with relative indices (hand-computed
bytes), Han et al.'s q·std threshold, dead-unit removal and alternating freeze, DSD's phases
and zero restart, DropConnect's moment matching vs Monte-Carlo, and the distillation loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repr_jax import csr_decode, csr_encode
from repr_jax.compress.csr import storage_report
from repr_jax.distill import Distiller, kd_term, soft_kl
from repr_jax.layers import get_path, replace_path
from repr_jax.masks import live_filters
from repr_jax.methods import MethodContext
from repr_jax.methods.dsd import DSD, DSDConfig
from repr_jax.methods.magnitude import Han, HanConfig
from repr_jax.methods.weights import magnitude_threshold_mask, magnitude_topk_mask
from repr_jax.models import architecture, create_model
from repr_jax.models.dropconnect import DropConnectDense
from repr_jax.optim import OptimConfig, make_optimizer
from repr_jax.state import create_train_state
from repr_jax.train import train_step

OPTIONS = dict(depth=2, width=4, batch_norm=True)


def _setup(method_cls, config, **options):
    options = {**OPTIONS, **options}
    model = create_model("convnet", **options)
    ctx = MethodContext.for_model(model, architecture=architecture("convnet", **options), train_size=64,
                                  batch_size=32)
    method = method_cls(config, ctx)
    tx = make_optimizer(OptimConfig(optimizer="sgd", momentum=0.9), 0.05)
    return method, create_train_state(model, tx, 0, method=method)


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3)), jnp.uint8),
            jnp.asarray(rng.integers(0, 10, n), jnp.int32))


# ----------------------------------------------------------------------------- CSR
def test_csr_hand_computed_example():
    w = np.zeros((3, 13), np.float32)
    w[0, 2], w[0, 12], w[2, 0], w[2, 9] = 3.0, 1.5, 2.0, -1.0
    enc = csr_encode(w, 3)          # span 8: a gap of 9 or 8 zeros needs one filler
    np.testing.assert_array_equal(enc.values, [3.0, 0.0, 1.5, 2.0, 0.0, -1.0])
    np.testing.assert_array_equal(enc.relative_indices(), [2, 7, 1, 0, 7, 0])
    np.testing.assert_array_equal(enc.row_ptr, [0, 3, 3, 6])
    assert enc.fillers == 2
    assert enc.nbytes == 6 * 4 + 3 + 4 * 4       # values, ceil(6·3 / 8) index bytes, row pointers
    np.testing.assert_array_equal(csr_decode(enc), w)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 70), density=st.floats(0.0, 1.0),
       bits=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_csr_round_trip_and_byte_count(rows, cols, density, bits, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)).astype(np.float32) * (rng.random((rows, cols)) < density)
    enc = csr_encode(w, bits)
    np.testing.assert_array_equal(csr_decode(enc), w)
    # numpy reference of the filler count: per row, gaps between stored positions
    fillers = 0
    for r in range(rows):
        prev = -1
        for c in np.flatnonzero(w[r]):
            fillers += (c - prev - 1) // 2**bits
            prev = c
    entries = np.count_nonzero(w) + fillers
    assert enc.entries == entries and enc.fillers == fillers
    assert enc.nbytes == 4 * entries + -(-entries * bits // 8) + 4 * (rows + 1)
    assert enc.relative_indices().max(initial=0) < 2**bits


def test_csr_refuses_bad_input():
    with pytest.raises(ValueError, match="index_bits"):
        csr_encode(np.ones((2, 2)), 0)
    with pytest.raises(ValueError, match="2-D"):
        csr_encode(np.ones((2, 2, 2)), 5)


def test_storage_report_counts_kernels_as_csr_and_the_rest_dense():
    conv = np.zeros((1, 1, 2, 3), np.float32)
    conv[0, 0, 1, 2] = 1.0
    dense = np.zeros((4, 2), np.float32)
    dense[0, 0] = dense[3, 1] = 2.0
    report = storage_report({"c": {"kernel": conv, "bias": np.ones(3)}, "d": {"kernel": dense}})
    c, d = report["layers"]
    # conv as F × (kh·kw·c_in) = 3 × 2 at 8 bits: one entry; dense as out × in = 2 × 4 at 5 bits: two
    assert c["csr_bytes"] == 4 + 1 + 4 * 4 and d["csr_bytes"] == 2 * 4 + 2 + 4 * 3
    t = report["total"]
    assert t["params"] == 6 + 3 + 8 and t["nonzero"] == 1 + 3 + 2
    assert t["csr_bytes"] == c["csr_bytes"] + d["csr_bytes"] + 3 * 4
    assert t["param_ratio"] == pytest.approx(17 / 6)


# ----------------------------------------------------------------------------- Han et al.
def test_threshold_is_quality_times_std_of_the_pruned_layer():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    mask = (rng.random(w.shape) > 0.3).astype(np.float32)
    new, thr = magnitude_threshold_mask(jnp.asarray(w), jnp.asarray(mask), 0.8)
    masked = w * mask
    assert float(thr) == pytest.approx(0.8 * masked.std(), rel=1e-5)
    np.testing.assert_array_equal(np.asarray(new), (np.abs(masked) >= 0.8 * masked.std()) & (mask > 0))


def test_topk_mask_keeps_the_largest_magnitudes():
    w = np.random.default_rng(2).normal(size=(6, 7)).astype(np.float32)
    keep = np.asarray(magnitude_topk_mask(jnp.asarray(w), 0.4))
    k = round(0.6 * w.size)
    expected = np.zeros(w.size)
    expected[np.argsort(-np.abs(w.ravel()), kind="stable")[:k]] = 1
    np.testing.assert_array_equal(keep.ravel(), expected)


def test_han_prunes_every_kernel_and_removes_dead_filters():
    method, state = _setup(Han, HanConfig(quality=(0.5,), retrain_epochs=1))
    assert {"/".join(p[:-1]) for p, _ in method.paths} == {"conv0", "conv1", "head"}
    params = state.params
    params = replace_path(params, ("conv0", "kernel"), lambda k: k.at[..., 1].set(1e-6))   # no input
    params = replace_path(params, ("conv1", "kernel"), lambda k: k.at[:, :, 2, :].set(1e-6))  # conv0/2: no output
    params = replace_path(params, ("head", "kernel"), lambda k: k.reshape(32, 32, 4, 10).at[:, :, 3, :]
                          .set(1e-7).reshape(k.shape))                                  # conv1/3: no output
    state, events = method.before_epoch(state.replace(params=params), 0)
    live = live_filters(state.masks, state.layers)
    np.testing.assert_array_equal(np.asarray(live["conv0"]), [1, 0, 0, 1])
    np.testing.assert_array_equal(np.asarray(live["conv1"]), [1, 1, 1, 0])
    conv1_mask = np.asarray(get_path(state.masks, ("conv1", "kernel")))
    assert not conv1_mask[:, :, [1, 2], :].any()          # the weights reading dead filters are cut
    bn = np.asarray(get_path(state.params, ("conv0_bn", "scale")))
    assert bn[1] == 0 and bn[2] == 0 and bn[0] != 0
    for path, _ in method.paths:   # every surviving weight passed the threshold of its layer
        w = np.asarray(get_path(params, path))
        kept = np.asarray(get_path(state.masks, path)) > 0
        assert np.all(np.abs(w[kept]) >= 0.5 * w.std() - 1e-7)
    record = method.record(events[0])
    assert record["layers"]["conv0"]["dead_filters"] == 2 and record["quality"] == 0.5


def test_han_removes_dead_hidden_units_of_lenet300_exactly():
    """LeNet-300-100 (dense units as graph sources): fc1 unit 5 with no input connections and
    fc2 unit 7 with no output connections die; their kernel columns and the rows reading them
    are cut, and the masked network's logits are those of a numpy MLP without the two units."""
    model = create_model("lenet300", 10)
    ctx = MethodContext.for_model(model, input_shape=(8, 8, 1), train_size=64, batch_size=32)
    method = Han(HanConfig(quality=(0.3,), retrain_epochs=1), ctx)
    assert [n for _, n in method.units] == ["fc1", "fc2"]
    state = create_train_state(model, make_optimizer(OptimConfig(optimizer="sgd"), 0.05), 0,
                               input_shape=(8, 8, 1), method=method)
    params = replace_path(state.params, ("fc1", "kernel"), lambda k: k.at[:, 5].set(1e-8))
    params = replace_path(params, ("head", "kernel"), lambda k: k.at[7, :].set(1e-8))
    state, events = method.before_epoch(state.replace(params=params), 0)
    masks = {n: np.asarray(get_path(state.masks, (n, "kernel"))) for n in ("fc1", "fc2", "head")}
    assert not masks["fc1"][:, 5].any() and not masks["fc2"][5, :].any()      # fc1/5: its rows in fc2 cut
    assert not masks["fc2"][:, 7].any() and not masks["head"][7, :].any()     # fc2/7: its column cut
    record = method.record(events[0])
    assert record["layers"]["fc1"]["dead_units"] >= 1 and record["layers"]["fc2"]["dead_units"] >= 1
    w = {n: np.asarray(get_path(params, (n, "kernel"))) * masks[n] for n in masks}
    b = {n: np.asarray(get_path(params, (n, "bias"))) for n in masks}
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    keep1 = masks["fc1"].any(axis=0) & masks["fc2"].any(axis=1)
    keep2 = masks["fc2"].any(axis=0) & masks["head"].any(axis=1)
    assert not keep1[5] and not keep2[7]
    h1 = np.maximum(x @ w["fc1"][:, keep1] + b["fc1"][keep1], 0)
    h2 = np.maximum(h1 @ w["fc2"][keep1][:, keep2] + b["fc2"][keep2], 0)
    small = h2 @ w["head"][keep2] + b["head"]
    from repr_jax.masks import apply_masks
    full = model.apply({"params": apply_masks(params, state.masks)}, x.reshape(4, 8, 8, 1))
    np.testing.assert_allclose(np.asarray(full), small, rtol=1e-4, atol=1e-4)


def test_han_alternate_freezes_the_kind_not_just_pruned():
    method, state = _setup(Han, HanConfig(quality=(0.5, 0.7), retrain_epochs=1, alternate=True))
    state, _ = method.before_epoch(state, 0)          # iteration 0 prunes conv: dense frozen
    x, y = _batch()
    new, _ = train_step(state, x, y, jax.random.key(0), layers=state.layers, method=method)
    np.testing.assert_array_equal(np.asarray(new.params["head"]["kernel"]), np.asarray(state.params["head"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(new.params["head"]["bias"]), np.asarray(state.params["head"]["bias"]))
    assert not np.allclose(np.asarray(new.params["conv1"]["kernel"]), np.asarray(state.params["conv1"]["kernel"]))
    assert np.asarray(get_path(state.masks, ("head", "kernel"))).all()       # dense not pruned yet
    stepped = new.replace(step=jnp.asarray(method.prune_steps[1], jnp.int32))
    stepped, _ = method.before_epoch(stepped, 1)      # iteration 1 prunes dense: conv frozen
    after, _ = train_step(stepped, x, y, jax.random.key(1), layers=stepped.layers, method=method)
    np.testing.assert_array_equal(np.asarray(after.params["conv1"]["kernel"]), np.asarray(stepped.params["conv1"]["kernel"]))
    assert not np.allclose(np.asarray(after.params["head"]["kernel"]), np.asarray(stepped.params["head"]["kernel"]))
    assert not np.asarray(get_path(stepped.masks, ("head", "kernel"))).all()


def test_han_l1_term_and_phases():
    method, state = _setup(Han, HanConfig(train_epochs=2, quality=(0.5, 0.9), retrain_epochs=3, l1=1e-3,
                                          retrain_lr_scale=0.1))
    assert [method.phase(e).name for e in range(7)] == ["train"] * 2 + ["retrain"] * 5
    assert [method.phase(e).round for e in range(7)] == [0, 0, 1, 1, 1, 2, 2]
    assert method.phase(3).lr_scale == 0.1
    from repr_jax.methods.base import StepInputs
    term = method.loss_terms(StepInputs(state.params, {}, state, None, None, None, None))["l1"]
    expected = 1e-3 * sum(np.abs(np.asarray(get_path(state.params, p))).sum() for p, _ in method.paths)
    assert float(term) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="retrain_epochs"):
        HanConfig(quality=(0.5, 1.0), retrain_epochs=0).validate()


# ----------------------------------------------------------------------------- DSD
def test_dsd_sparse_then_redense_restarts_pruned_weights_from_zero():
    method, state = _setup(DSD, DSDConfig(dense_epochs=1, sparse_epochs=1, sparsity=0.5, redense_lr_scale=0.1))
    assert [method.phase(e).name for e in range(4)] == ["dense", "sparse", "redense", "redense"]
    assert method.phase(2).lr_scale == 0.1
    assert method.before_epoch(state, 0)[1] == []
    x, y = _batch()
    state, _ = train_step(state, x, y, jax.random.key(0), layers=state.layers, method=method)
    dense_weights = {p: np.asarray(get_path(state.params, p)) for p, _ in method.paths}
    sparse, events = method.before_epoch(state, 1)
    assert events[0].kind == "sparsify"
    for path, _ in method.paths:
        kept = np.asarray(get_path(sparse.masks, path)) > 0
        assert kept.mean() == pytest.approx(0.5, abs=1 / kept.size)
        w = dense_weights[path]
        assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()          # the largest survive
        assert not np.asarray(get_path(sparse.params, path))[~kept].any()
    trained, _ = train_step(sparse, x, y, jax.random.key(1), layers=sparse.layers, method=method)
    pruned = {p: np.asarray(get_path(sparse.masks, p)) == 0 for p, _ in method.paths}
    for path, _ in method.paths:
        assert not np.asarray(get_path(trained.params, path))[pruned[path]].any()
    redense, events = method.before_epoch(trained, 2)
    assert events[0].kind == "redense"
    for path, _ in method.paths:
        assert np.asarray(get_path(redense.masks, path)).all()
        assert not np.asarray(get_path(redense.params, path))[pruned[path]].any()   # restart at 0
    after, _ = train_step(redense, x, y, jax.random.key(2), layers=redense.layers, method=method)
    head = np.asarray(after.params["head"]["kernel"])[pruned[("head", "kernel")]]
    assert np.count_nonzero(head) > 0.5 * head.size                         # they train again


# ----------------------------------------------------------------------------- DropConnect
def _dc_layer(keep, **kw):
    layer = DropConnectDense(6, keep=keep, **kw)
    v = jnp.asarray(np.abs(np.random.default_rng(3).normal(size=(5, 9))), jnp.float32)
    params = layer.init({"params": jax.random.key(0)}, v)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)   # a non-zero bias
    return layer, params, v


def test_dropconnect_keep_one_is_the_dense_layer():
    layer, params, v = _dc_layer(1.0)
    k, b = params["params"]["kernel"], params["params"]["bias"]
    expected = np.maximum(np.asarray(v) @ np.asarray(k) + np.asarray(b), 0)
    for train in (False, True):
        out = layer.apply(params, v, train=train, rngs={"dropconnect": jax.random.key(1)})
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("drop_bias", [True, False])
def test_dropconnect_inference_matches_monte_carlo_over_masks(drop_bias):
    """Moment matching against a numpy Monte Carlo over masks of [W; b] (Wan et al. §2.2: the
    bias is dropped like any weight) or of W alone (``drop_bias=False``)."""
    keep = 0.5
    layer, params, v = _dc_layer(keep, samples=20000)
    layer = layer.clone(drop_bias=drop_bias)
    k, b = np.asarray(params["params"]["kernel"], np.float64), np.asarray(params["params"]["bias"])
    assert np.abs(b).min() > 0                                          # the bias matters here
    rng = np.random.default_rng(4)
    masks = rng.random((4000,) + k.shape) < keep                      # numpy reference: E over masks
    bias = (rng.random((4000, 1, k.shape[1])) < keep) * b if drop_bias else b
    mc = np.maximum(np.einsum("bi,zio->zbo", np.asarray(v, np.float64), masks * k) + bias, 0).mean(0)
    moment = np.asarray(layer.apply(params, v, train=False))
    np.testing.assert_allclose(moment, mc, atol=0.03 * np.abs(mc).max() + 0.01)
    mean_field = np.asarray(layer.clone(inference="mean").apply(params, v))
    mu = keep * (np.asarray(v) @ k + b) if drop_bias else keep * np.asarray(v) @ k + b
    np.testing.assert_allclose(mean_field, np.maximum(mu, 0), rtol=1e-5, atol=1e-6)
    # training: the bias is dropped (some units lose it) or always there
    zero_in = jnp.zeros((64, v.shape[1]))
    out = np.asarray(DropConnectDense(6, keep=keep, activation=lambda u: u, drop_bias=drop_bias).apply(
        params, zero_in, train=True, rngs={"dropconnect": jax.random.key(3)}))
    if drop_bias:
        assert set(np.unique(np.isclose(out, b))) == {True, False} and np.all(np.isclose(out, b) | (out == 0))
    else:
        np.testing.assert_allclose(out, np.broadcast_to(b, out.shape))
    # training draws masks: per example, identical inputs get different outputs; per batch, the same
    same = jnp.tile(v[:1], (4, 1))
    out = layer.apply(params, same, train=True, rngs={"dropconnect": jax.random.key(5)})
    assert not np.allclose(out[0], out[1])
    batch_layer = DropConnectDense(6, keep=keep, per_example=False, drop_bias=drop_bias)
    out = batch_layer.apply(params, same, train=True, rngs={"dropconnect": jax.random.key(5)})
    np.testing.assert_allclose(out[0], out[1])


def test_dropconnect_with_a_linear_activation_returns_the_mean_exactly():
    """A head without a hidden layer (identity activation): E[u] = μ, so moment matching must
    return μ itself, not a Monte-Carlo average of Z samples (which is off by ≈ σ/√Z)."""
    from repr_jax.models.dropconnect import identity
    layer, params, v = _dc_layer(0.5, samples=10)
    k, b = np.asarray(params["params"]["kernel"]), np.asarray(params["params"]["bias"])
    out = DropConnectDense(6, keep=0.5, activation=identity, samples=10).apply(params, v, train=False)
    np.testing.assert_allclose(out, 0.5 * (np.asarray(v) @ k + b), rtol=1e-6, atol=1e-7)


def test_convnet_hidden_layer_options():
    x = jnp.zeros((2, 32, 32, 3))
    for options in ({"hidden": 16, "dropconnect": 0.5}, {"hidden": 16, "dropout": 0.5}, {"dropconnect": 0.5}):
        model = create_model("convnet", depth=1, width=4, **options)
        variables = model.init(jax.random.key(0), x)
        out = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1), "dropconnect": jax.random.key(2)})
        assert out.shape == (2, 10)
        assert ("hidden" in variables["params"]) == ("hidden" in options)


# ----------------------------------------------------------------------------- distillation
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
def test_soft_kl_matches_numpy(temperature):
    rng = np.random.default_rng(int(temperature))
    s, t = rng.normal(size=(7, 10)) * 3, rng.normal(size=(7, 10)) * 3

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    p, q = softmax(t / temperature), softmax(s / temperature)
    expected = temperature**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
    assert float(soft_kl(jnp.asarray(s), jnp.asarray(t), temperature)) == pytest.approx(expected, rel=1e-5)
    # the full loss: CE + kd == (1 − α)·CE + α·T²·KL
    ce = 1.7
    d = Distiller(lambda variables, x, train: jnp.asarray(t, jnp.float32), temperature, 0.9)
    total = ce + float(kd_term(d, {}, None, jnp.asarray(s, jnp.float32), ce))
    assert total == pytest.approx(0.1 * ce + 0.9 * expected, rel=1e-5)


def test_kd_gradient_does_not_reach_the_teacher():
    t = jnp.asarray(np.random.default_rng(0).normal(size=(4, 10)), jnp.float32)
    d = Distiller(lambda variables, x, train: variables["w"] * t, 4.0, 0.5)
    g = jax.grad(lambda w: kd_term(d, {"w": w}, None, jnp.zeros((4, 10)), 0.0))(jnp.float32(2.0))
    assert float(g) == 0.0


def test_lenet300_takes_wan_et_al_regularisers_and_other_models_refuse_them():
    from repr_jax.config import RunConfig, RunError, apply_overrides
    plain, dropped = create_model("lenet300", 10), create_model("lenet300", 10, dropout=0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
    v = plain.init(jax.random.key(0), x)
    np.testing.assert_array_equal(np.asarray(dropped.apply(v, x)), np.asarray(plain.apply(v, x)))   # eval: identity
    train = [np.asarray(dropped.apply(v, x, train=True, rngs={"dropout": jax.random.key(k)})) for k in (1, 2)]
    assert not np.allclose(train[0], train[1])
    dc = create_model("lenet300", 10, dropconnect=0.5)
    assert jax.tree_util.tree_map(jnp.shape, dc.init({"params": jax.random.key(0)}, x)) == \
        jax.tree_util.tree_map(jnp.shape, v)                                            # prunable like the plain one
    config = RunConfig.from_dict(apply_overrides({"out": "x"}, ["model.name=lenet300", "model.dropconnect=0.5"]))
    assert config.model.options() == {"dropconnect": 0.5, "dropconnect_bias": True}
    for sets, message in ((["model.name=resnet20", "model.dropout=0.5"], "options of the convnet head"),
                          (["model.name=lenet300", "model.hidden=64"], "model.hidden is convnet's")):
        with pytest.raises(RunError, match=message):
            RunConfig.from_dict(apply_overrides({"out": "x"}, sets)).validate()
