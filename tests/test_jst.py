"""Joint Search-and-Training's pure parts against hand computations and numpy references: the
gated layer of Eq. 6 and its folding, the cumulative-threshold sampler of Alg. 1, the REINFORCE
gradient of Eqs. 3–4 on a toy policy, the sub-network parameter count, and the train step's
freezing of the filters a sampled sub-network leaves out."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from repr_jax.compress.export import export
from repr_jax.layers import intercept_outputs, response_site
from repr_jax.methods import MethodContext
from repr_jax.methods.jst import SEARCH, JointSearchTraining, JstConfig
from repr_jax.methods.jst_search import (alpha_hat, fold_gates, init_thresnet, policy_loss, sample_keep,
                                         threshold_policy)
from repr_jax.models import architecture, create_model
from repr_jax.optim import OptimConfig, make_optimizer
from repr_jax.state import create_train_state
from repr_jax.train import train_step


class OneConv(nn.Module):
    """Image → 1×1 conv (3 filters, bias) → ReLU → spatial mean → dense head (2 classes)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(3, (1, 1), name="conv0")(x))
        return nn.Dense(2, name="head")(jnp.mean(x, axis=(1, 2)))


def _jst(model, arch=None, train_size=64, **fields):
    ctx = MethodContext.for_model(model, architecture=arch, train_size=train_size, batch_size=32)
    return JointSearchTraining(JstConfig(**{"subnets": 2, **fields}), ctx)


# ----------------------------------------------------------------------------- Eq. 6
def test_gated_layer_is_eq6_on_a_hand_computed_case():
    model = OneConv()
    method = _jst(model, gate_scale="softmax")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 1, 1, 2)))
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params["conv0"]["kernel"] = np.array([[[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]]], np.float32)
    params["conv0"]["bias"] = np.zeros(3, np.float32)
    params["head"]["kernel"] = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], np.float32)
    params["head"]["bias"] = np.zeros(2, np.float32)
    image = jnp.array([[[[1.0, 2.0]]]])          # I: one pixel, two channels
    alpha = {"conv0": jnp.log(jnp.array([1.0, 2.0, 3.0]))}
    ms = {"mode": jnp.asarray(0), "sub_mask": {"conv0": jnp.ones(3)}}
    gates = method.channel_gates({"alpha": alpha}, ms, train=False)
    # α̂ = softmax(log [1, 2, 3]) = [1/6, 2/6, 3/6]; I ∗ W_c = [1, 2, 3] → [1/6, 4/6, 9/6]
    np.testing.assert_allclose(gates["conv0"], [1 / 6, 2 / 6, 3 / 6], rtol=1e-6)
    site = {response_site(method.searched[0]): "conv0"}
    with intercept_outputs(site, lambda name, out: out * gates[name]):
        logits = model.apply({"params": params}, image)
    np.testing.assert_allclose(logits, [[1 / 6 + 9 / 6, 4 / 6 - 9 / 6]], rtol=1e-6)
    # folded into the kernel and bias, the ungated network computes the same
    folded = fold_gates(params, method.searched, gates)
    np.testing.assert_allclose(model.apply({"params": folded}, image), logits, rtol=1e-6)
    # the width scale: C · softmax, so uniform α is the identity
    np.testing.assert_allclose(alpha_hat(jnp.zeros(5), "width"), np.ones(5), rtol=1e-6)
    np.testing.assert_allclose(alpha_hat(alpha["conv0"], "width"), [0.5, 1.0, 1.5], rtol=1e-6)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_folding_gates_leaves_the_logits_unchanged(batch_norm):
    options = dict(depth=2, width=6, batch_norm=batch_norm)
    model = create_model("convnet", **options)
    method = _jst(model, architecture("convnet", **options))
    variables = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
    if batch_norm:   # non-trivial BatchNorm statistics and affine parameters
        variables = jax.tree_util.tree_map(
            lambda v: v + 0.3 * jax.random.uniform(jax.random.key(v.size), v.shape), variables)
    gates = {n: jax.random.uniform(jax.random.key(i), (6,), minval=0.2, maxval=2.0)
             for i, n in enumerate(method.names)}
    x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
    sites = {response_site(l): l.name for l in method.searched}
    with intercept_outputs(sites, lambda name, out: out * gates[name]):
        gated = model.apply(variables, x, train=False)
    folded = dict(variables, params=fold_gates(variables["params"], method.searched, gates))
    np.testing.assert_allclose(model.apply(folded, x, train=False), gated, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- Alg. 1
def _numpy_keep(noisy, threshold, min_keep):
    p = np.exp(noisy - noisy.max())
    p = (p / p.sum()).astype(np.float32)
    kept, total = [], 0.0
    for index in np.argsort(-p, kind="stable"):
        kept.append(index)
        total += float(p[index])
        if total >= threshold:
            break
    while len(kept) < min(min_keep, len(p)):
        kept.append(np.argsort(-p, kind="stable")[len(kept)])
    out = np.zeros(len(p), np.float32)
    out[kept] = 1.0
    return out, np.cumsum(np.sort(p)[::-1])


@settings(max_examples=60, deadline=None)
@given(c=st.sampled_from([1, 2, 5, 16, 64]), threshold=st.floats(0.01, 0.99), min_keep=st.integers(1, 8),
       scale=st.floats(0.0, 3.0), seed=st.integers(0, 2**16))
def test_sampler_keeps_what_the_numpy_reference_keeps(c, threshold, min_keep, scale, seed):
    noisy = (scale * np.random.default_rng(seed).normal(size=c)).astype(np.float32)
    want, cumulative = _numpy_keep(noisy, threshold, min_keep)
    if np.min(np.abs(cumulative - threshold)) < 1e-5:   # float association decides; not the rule
        return
    p = np.sort(np.exp(noisy - noisy.max()) / np.exp(noisy - noisy.max()).sum())
    if c > 1 and np.min(np.diff(p)) < 1e-6 and not np.all(np.diff(p) == 0):   # near-ties: rounding orders them
        return
    got = np.asarray(sample_keep(jnp.asarray(noisy), jnp.asarray(threshold, jnp.float32), min_keep))
    np.testing.assert_array_equal(got, want)


def test_sampler_counts_the_filter_that_crosses_the_threshold():
    # n̂ = [0.5, 0.3, 0.2] (sorted already): th 0.5 → 1 filter, 0.6 → 2, 0.81 → 3
    noisy = jnp.log(jnp.array([0.3, 0.5, 0.2]))
    for th, kept in ((0.5, [0, 1, 0]), (0.6, [1, 1, 0]), (0.81, [1, 1, 1]), (0.1, [0, 1, 0])):
        np.testing.assert_array_equal(sample_keep(noisy, jnp.asarray(th)), kept)
    np.testing.assert_array_equal(sample_keep(noisy, jnp.asarray(0.1), min_keep=2), [1, 1, 0])


# ----------------------------------------------------------------------------- Eqs. 3–4
def test_reinforce_gradient_matches_a_numpy_monte_carlo_estimate():
    """Toy policy: one layer; its Beta(a, b) comes from the ThresNet output biases (the output
    kernel starts at 0). The REINFORCE estimate of our loss's gradient equals numpy's
    (1/K) Σ_k (R_k − b) ∂ log Beta(β_k; a, b) / ∂bias on the same samples, and with many
    samples it approaches the true ∇ E[R] (quadrature)."""
    policy = init_thresnet(jax.random.key(0), (4,), hidden=8, init_threshold=0.6, concentration=5.0)
    alphas = [jnp.array([0.1, -0.2, 0.3, 0.0])]
    a, b = (float(v[0]) for v in threshold_policy(policy, alphas))
    assert a / (a + b) == pytest.approx(0.6, rel=1e-5) and a + b == pytest.approx(5.0, rel=1e-5)

    def reward(beta):
        return -(beta - 0.3) ** 2

    rng = np.random.default_rng(0)
    betas = rng.beta(a, b, size=20000)
    rewards = reward(betas)
    advantages = rewards - rewards.mean()
    grad = jax.grad(policy_loss)(policy, alphas, jnp.asarray(betas[:, None], jnp.float32),
                                 jnp.asarray(advantages, jnp.float32))["out"]["bias"]
    # numpy: ∂ log Beta / ∂a = log β − ψ(a) + ψ(a + b), ∂a/∂bias_a = sigmoid(bias_a)
    o = np.asarray(policy["out"]["bias"], np.float64)
    da = np.log(betas) - special.digamma(a) + special.digamma(a + b)
    db = np.log1p(-betas) - special.digamma(b) + special.digamma(a + b)
    sig = 1 / (1 + np.exp(-o))
    estimate = np.array([np.mean(advantages * da) * sig[0], np.mean(advantages * db) * sig[1]])
    np.testing.assert_allclose(-np.asarray(grad), estimate, rtol=2e-3, atol=1e-6)

    def expected(a_, b_):
        return integrate.quad(lambda t: reward(t) * stats.beta.pdf(t, a_, b_), 0, 1)[0]
    h = 1e-4
    true = np.array([(expected(a + h, b) - expected(a - h, b)) / (2 * h) * sig[0],
                     (expected(a, b + h) - expected(a, b - h)) / (2 * h) * sig[1]])
    np.testing.assert_allclose(estimate, true, rtol=0.15, atol=2e-4)


# ----------------------------------------------------------------------------- cost
@pytest.mark.parametrize("name,options", [("convnet", dict(depth=3, width=6, batch_norm=True)),
                                          ("resnet20", {})])
def test_subnet_parameter_count_equals_the_exported_model(name, options):
    model = create_model(name, **options)
    arch = architecture(name, **options)
    method = _jst(model, arch)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    assert float(method.cost({})) == method.cost.total
    rng = np.random.default_rng(0)
    for _ in range(2 if name == "convnet" else 1):
        live = {l.name: (rng.random(l.num_filters) < 0.6).astype(np.float32) for l in method.searched}
        for v in live.values():
            v[rng.integers(len(v))] = 1.0
        full = {l.name: np.ones(l.num_filters, np.float32) for l in variables_layers(variables)}
        exported = export(arch, variables, {**full, **live})
        assert float(jax.jit(method.cost)(live)) == exported.params_after


def variables_layers(variables):
    from repr_jax.layers import prunable_convs
    return prunable_convs(variables["params"])


# ----------------------------------------------------------------------------- the search step
def test_search_step_trains_only_the_sampled_subnetwork():
    options = dict(depth=2, width=6, batch_norm=True)
    model = create_model("convnet", **options)
    method = _jst(model, architecture("convnet", **options), train_size=128, coarse_epochs=0)  # 2 steps each
    tx = make_optimizer(OptimConfig(optimizer="sgd", momentum=0.9, weight_decay=5e-4), 0.05)
    state = create_train_state(model, tx, 0, method=method)
    state, _ = method.before_epoch(state, 0)
    assert int(state.method_state["mode"]) == SEARCH
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (32, 32, 32, 3)), jnp.uint8)
    y = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
    before = state.params
    step = jax.jit(lambda s, k: train_step(s, x, y, k, layers=s.layers, method=method))
    new, _ = step(state, jax.random.key(5))
    sub = {n: np.asarray(new.method_state["sub_mask"][n]) for n in method.names}
    assert 0 < sum(v.sum() for v in sub.values()) < 12     # a proper sub-network was drawn
    for layer in method.searched:
        moved = np.any(np.asarray(new.params[layer.path[0]]["kernel"] != before[layer.path[0]]["kernel"]),
                       axis=(0, 1, 2))
        np.testing.assert_array_equal(moved, sub[layer.name] > 0)
        bn = layer.bn_path[0]
        np.testing.assert_array_equal(np.asarray(new.params[bn]["scale"] != before[bn]["scale"]),
                                      sub[layer.name] > 0)
    # the next step inside the same sub-network's stretch keeps its mask; α untouched while searching
    later, _ = step(new, jax.random.key(6))
    for n in method.names:
        np.testing.assert_array_equal(later.method_state["sub_mask"][n], sub[n])
        np.testing.assert_array_equal(later.method_params["alpha"][n], state.method_params["alpha"][n])
