"""Structured methods' math against numpy references: Li et al. L1 (independent / greedy,
ResNet rule, the paper's presets), Network Slimming (global threshold, penalty), Network
Trimming (APoZ), Channel Pruning (patches, LASSO selection, least-squares re-fit)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax
import pytest

from repr_jax.compress.export import export_state
from repr_jax.compress.reconstruct import (contribution_gram, kernel_by_channel, lasso_select, refit,
                                           sample_outputs, sample_patches)
from repr_jax.layers import replace_path
from repr_jax.masks import live_filters
from repr_jax.methods import MethodContext, StepInputs
from repr_jax.methods.li_l1 import LiL1, LiL1Config, l1_scores
from repr_jax.methods.slimming import Slimming, SlimmingConfig
from repr_jax.methods.trimming import Trimming, TrimmingConfig, apoz
from repr_jax.models import architecture, create_model
from repr_jax.data.pipeline import normalize
from repr_jax.state import create_train_state


def _setup(method_cls, config, model="convnet", images=None, **options):
    m = create_model(model, **options)
    ctx = MethodContext.for_model(m, architecture=architecture(model, **options), train_size=256,
                                  batch_size=32, train_images=images[0] if images else None,
                                  train_labels=images[1] if images else None, preprocess=normalize)
    method = method_cls(config, ctx)
    return method, create_train_state(m, optax.sgd(0.1), 0, method=method)


def _set(state, layer, leaf, value):
    return state.replace(params=replace_path(state.params, layer.path + (leaf,), lambda _: jnp.asarray(value)))


def test_l1_scores_match_numpy():
    k = np.random.default_rng(0).normal(size=(3, 3, 5, 7)).astype(np.float32)
    alive = np.array([1, 0, 1, 1, 0], np.float32)
    np.testing.assert_allclose(l1_scores(jnp.asarray(k)), np.abs(k).sum(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(l1_scores(jnp.asarray(k), jnp.asarray(alive)),
                               np.abs(k[:, :, alive > 0]).sum(axis=(0, 1, 2)), rtol=1e-5)


def _numpy_li(kernels, fraction, greedy):
    """Reference: per layer in order keep the ⌊F(1−p)⌋ largest L1 filters; greedy sums only
    over input channels whose producing filter survived in the previous layer."""
    live_prev, out = None, []
    for k in kernels:
        a = np.abs(k)
        if greedy and live_prev is not None:
            a = a[:, :, live_prev]
        s = a.sum(axis=(0, 1, 2))
        keep = int(np.floor(k.shape[-1] * (1 - fraction) + 1e-6))
        live = np.zeros(k.shape[-1], bool)
        live[np.argsort(-s, kind="stable")[:keep]] = True
        out.append(live)
        live_prev = live
    return out


def test_li_independent_and_greedy_match_reference_and_differ():
    rng = np.random.default_rng(1)
    results = {}
    for strategy in ("independent", "greedy"):
        method, state = _setup(LiL1, LiL1Config(fraction=0.5, strategy=strategy), depth=2, width=8, batch_norm=True)
        l0, l1 = state.layers
        k0 = rng.normal(size=l0.shape).astype(np.float32) if strategy == "independent" else results["k0"]
        k1 = rng.normal(size=l1.shape).astype(np.float32) if strategy == "independent" else results["k1"]
        if strategy == "independent":   # conv1's filter 0 is large only on inputs conv0 will lose
            weak = np.argsort(np.abs(k0).sum(axis=(0, 1, 2)))[:4]
            k1[:, :, weak, 0] *= 20.0
            k1[:, :, :, 0] *= np.isin(np.arange(8), weak)[None, None, :]
            results["k0"], results["k1"] = k0, k1
        state = _set(_set(state, l0, "kernel", k0), l1, "kernel", k1)
        new, _ = method.before_epoch(state, 0)
        live = live_filters(new.masks, new.layers)
        ref = _numpy_li([k0, k1], 0.5, strategy == "greedy")
        for layer, want in zip(new.layers, ref):
            np.testing.assert_array_equal(np.asarray(live[layer.name]) > 0, want)
        results[strategy] = np.asarray(live[l1.name])
    assert results["independent"][0] == 1 and results["greedy"][0] == 0


def test_li_resnet_rule_only_first_conv_of_blocks():
    method, state = _setup(LiL1, LiL1Config(fraction=0.5), model="resnet20")
    assert set(method.eligible) == {f"stage{s}_block{b}/conv1" for s in (1, 2, 3) for b in range(3)}
    new, _ = method.before_epoch(state, 0)
    for name, live in live_filters(new.masks, new.layers).items():
        n = int(np.sum(live))
        assert n == (len(live) // 2 if name.endswith("conv1") and "block" in name else len(live)), name
    exported = export_state(new, architecture("resnet20"))
    assert not exported.kept_dead and exported.flops_after < exported.flops_before


@pytest.mark.parametrize("preset,model,params_cut,flops_cut,params_tol", [
    ("vgg16-a", "vgg16", 64.0, 34.2, 0.5), ("resnet56-b", "resnet56", 13.7, 27.6, 0.15)])
def test_li_presets_reproduce_the_papers_reductions(preset, model, params_cut, flops_cut, params_tol):
    """Li et al. 2017, Table 1: parameter and FLOP reductions of their pruned models (our
    VGG-16 has one 512→10 classifier where theirs had two dense layers: params within 0.5)."""
    method, state = _setup(LiL1, LiL1Config(preset=preset), model=model)
    new, _ = method.before_epoch(state, 0)
    e = export_state(new, architecture(model))
    assert 100 * (1 - e.params_after / e.params_before) == pytest.approx(params_cut, abs=params_tol)
    assert 100 * (1 - e.flops_after / e.flops_before) == pytest.approx(flops_cut, abs=0.15)


def test_layers_follow_the_forward_pass_and_greedy_sees_the_layer_before():
    """Flax sorts parameter names (``conv10`` before ``conv2``, a ResNet-18's ``stem`` last):
    the layers must come in the forward pass's order, or Li et al.'s greedy strategy scores
    conv10 before conv9 is pruned (and RePr's ``exclude_first`` spares the wrong conv)."""
    method, state = _setup(LiL1, LiL1Config(fraction=0.5, strategy="greedy"), model="vgg16")
    assert [l.name for l in state.layers] == [f"conv{i}" for i in range(13)]
    assert list(method.graph.layers) == [f"conv{i}" for i in range(13)]
    _, (event,) = method.before_epoch(state, 0)
    alive9 = np.asarray(event.arrays["live_after"]["conv9"]) > 0
    assert 0 < alive9.sum() < len(alive9)
    k10 = np.abs(np.asarray(state.params["conv10"]["kernel"]))
    np.testing.assert_allclose(event.arrays["scores"]["conv10"], k10[:, :, alive9].sum(axis=(0, 1, 2)), rtol=1e-5)
    assert MethodContext.for_model(create_model("resnet18")).layers[0].name == "stem"


class _TinyResidual(nn.Module):
    """stem → block (identity shortcut) → block (1×1 projection shortcut, stride 2) → head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        def unit(x, features, name, stride=1, size=3):
            conv = nn.Conv(features, (size, size), (stride, stride), use_bias=False, name=name)
            return nn.BatchNorm(use_running_average=not train, name=f"{name}_bn")(conv(x))
        x = nn.relu(unit(x, 8, "stem"))
        x = nn.relu(x + unit(nn.relu(unit(x, 6, "a1")), 8, "a2"))
        y = unit(nn.relu(unit(x, 6, "b1", stride=2)), 12, "b2")
        x = nn.relu(unit(x, 12, "bs", stride=2, size=1) + y)
        return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


def test_coupled_groups_are_the_removable_streams():
    from repr_jax.methods.structured import coupled_groups
    graph = lambda m, shape=(8, 8, 3): MethodContext.for_model(m, input_shape=shape).graph()   # noqa: E731
    assert coupled_groups(graph(_TinyResidual())) == (("stem", "a2"), ("b2", "bs"))
    assert coupled_groups(graph(create_model("resnet20"))) == ()   # option-A padding: tied to fixed channels
    small = create_model("mobilenetv2", channels={})
    groups = coupled_groups(graph(small, (32, 32, 3)))
    assert ("block1/expand", "block1/dw") in groups and ("block0/dw",) not in groups
    assert ("block3/project", "block4/project", "block5/project") in groups   # a stage's stream


def test_li_prune_groups_sum_l1_over_members_numpy_reference():
    """Each group keeps the ⌊C/2⌋ channels with the largest Σ over its members of Σ|K|, the
    same channels in every member; the other layers are Li et al.'s per-layer rule."""
    model = _TinyResidual()
    ctx = MethodContext.for_model(model, input_shape=(8, 8, 3), train_size=64, batch_size=32)
    state = create_train_state(model, optax.sgd(0.1), 3, input_shape=(8, 8, 3),
                               method=LiL1(LiL1Config(fraction=0.5), ctx))
    plain = LiL1(LiL1Config(fraction=0.5), ctx)
    assert set(plain.eligible) == {"a1", "b1"}
    method = LiL1(LiL1Config(fraction=0.5, prune_groups=True), ctx)
    assert set(method.eligible) == {"stem", "a1", "a2", "b1", "b2", "bs"}
    new, _ = method.before_epoch(state, 0)
    live = {k: np.asarray(v) > 0 for k, v in live_filters(new.masks, new.layers).items()}
    l1 = {l.name: np.abs(np.asarray(state.params[l.name]["kernel"])).sum(axis=(0, 1, 2)) for l in state.layers}

    def top(scores, keep):
        want = np.zeros(len(scores), bool)
        want[np.argsort(-scores, kind="stable")[:keep]] = True
        return want
    for group in (("stem", "a2"), ("b2", "bs")):
        want = top(sum(l1[n] for n in group), len(l1[group[0]]) // 2)
        for name in group:
            np.testing.assert_array_equal(live[name], want, err_msg=name)
    for name in ("a1", "b1"):
        np.testing.assert_array_equal(live[name], top(l1[name], 3))
    with pytest.raises(ValueError, match="exclude each other"):
        LiL1Config(prune_groups=True, prune_tied=True).validate()
    with pytest.raises(ValueError, match="coupled group stem, a2 different ratios"):
        LiL1(LiL1Config(prune_groups=True, ratios="stem=0.25"), ctx)
    with pytest.raises(ValueError, match="no coupled group"):
        LiL1(LiL1Config(prune_groups=True), MethodContext.for_model(create_model("resnet20")))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18"])
def test_li_prune_groups_exports_smaller_with_equal_logits(model):
    """Groups pruned → the export removes them (no dead filter kept), is smaller than Li et
    al.'s rule alone, and its logits equal the masked model's. (MobileNetV2's depthwise
    groups export as tests/test_export.py checks; 42 s here, so not repeated.)"""
    from repr_jax.compress.export import max_logit_difference
    from repr_jax.masks import apply_masks
    arch, m = architecture(model), create_model(model)
    ctx = MethodContext.for_model(m, architecture=arch, train_size=64, batch_size=32)
    sizes = {}
    for groups in (False, True):
        method = LiL1(LiL1Config(fraction=0.5, prune_groups=groups), ctx)
        new, _ = method.before_epoch(create_train_state(m, optax.sgd(0.1), 0, method=method), 0)
        e = export_state(new, arch)
        assert not e.kept_dead
        sizes[groups] = e.params_after
    masked = {"params": apply_masks(new.params, new.masks), "batch_stats": new.batch_stats}
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    assert max_logit_difference(arch, masked, e, images) < 1e-4
    assert sizes[True] < 0.6 * sizes[False]


def test_slimming_threshold_is_global_and_penalty_is_l1_of_gammas():
    method, state = _setup(Slimming, SlimmingConfig(fraction=0.5, prune_epoch=1, l1=1e-3),
                           depth=2, width=8, batch_norm=True)
    l0, l1 = state.layers
    g0 = np.array([0.05, 0.1, 0.9, 0.15, 0.2, 0.8, 0.25, 0.3], np.float32)   # mostly small
    g1 = np.array([0.35, 0.4, 0.7, 0.6, 0.95, 0.45, 0.5, 0.85], np.float32)  # mostly large
    state = state.replace(params=replace_path(replace_path(state.params, l0.bn_path + ("scale",), lambda _: jnp.asarray(g0)),
                                              l1.bn_path + ("scale",), lambda _: jnp.asarray(g1)))
    inputs = StepInputs(state.params, {}, state, None, None, None, None)
    assert float(method.loss_terms(inputs)["bn_l1"]) == pytest.approx(1e-3 * (np.abs(g0).sum() + np.abs(g1).sum()), rel=1e-5)
    late = state.replace(step=jnp.asarray(method.context.steps_per_epoch, jnp.int32))
    assert float(method.loss_terms(inputs._replace(state=late))["bn_l1"]) == 0.0
    new, _ = method.before_epoch(state, 1)
    live = live_filters(new.masks, new.layers)
    allg = np.concatenate([g0, g1])
    threshold = np.sort(allg)[7]                           # 8 of 16 below the global 50 % percentile
    np.testing.assert_array_equal(np.concatenate([live[l0.name], live[l1.name]]) > 0, allg > threshold)
    assert int(np.sum(live[l0.name])) != int(np.sum(live[l1.name]))   # not per layer


def test_apoz_of_known_activations():
    a = np.zeros((2, 2, 2, 3), np.float32)
    a[..., 0] = 1.0          # never zero
    a[0, 0, 0, 1] = 2.0      # zero in 7 of 8 positions
    np.testing.assert_allclose(apoz(jnp.asarray(a)), [0.0, 7 / 8, 1.0])


def test_trimming_removes_the_dead_channels():
    """A filter whose BatchNorm shift is very negative never fires (APoZ 1): trimmed first."""
    rng = np.random.default_rng(3)
    images = (rng.integers(0, 256, (128, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 128).astype(np.int32))
    method, state = _setup(Trimming, TrimmingConfig(fraction=0.25, criterion_batches=2), images=images,
                           depth=2, width=8, batch_norm=True)
    l0 = state.layers[0]
    beta = np.zeros(8, np.float32)
    beta[[2, 5]] = -100.0
    state = _set(state, state.layers[0], "bias", 0.0) if l0.has_bias else state
    state = state.replace(params=replace_path(state.params, l0.bn_path + ("bias",), lambda _: jnp.asarray(beta)))
    new, events = method.before_epoch(state, 0)
    live = np.asarray(live_filters(new.masks, new.layers)[l0.name])
    np.testing.assert_array_equal(np.flatnonzero(live == 0), [2, 5])
    assert float(events[0].arrays["scores"][l0.name][2]) == 1.0
    assert float(new.method_state["baseline_accuracy"]) == float(events[0].arrays["accuracy"])


# ----------------------------------------------------------------------------- channel pruning
@pytest.mark.parametrize("strides,padding", [((1, 1), 1), ((2, 2), 1), ((1, 1), "SAME")])
def test_sampled_patches_reproduce_the_convolution(strides, padding):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 8, 8, 5)).astype(np.float32)
    k = rng.normal(size=(3, 3, 5, 6)).astype(np.float32)
    pad = "SAME" if padding == "SAME" else [(1, 1), (1, 1)]
    y = jax.lax.conv_general_dilated(x, k, strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    positions = jnp.asarray(rng.integers(0, y.shape[1] * y.shape[2], (3, 7)))
    p = sample_patches(jnp.asarray(x), (3, 3), strides, padding, positions)
    # numpy reference: the output at flat position j of image n is Σ window · kernel
    np.testing.assert_allclose(np.einsum("mck,ckn->mn", p, kernel_by_channel(jnp.asarray(k))),
                               sample_outputs(y, positions), atol=1e-4)


def test_lasso_selects_the_channels_the_output_depends_on_and_refit_recovers_them():
    rng = np.random.default_rng(5)
    m, c, k, n = 1500, 12, 9, 8
    support = [1, 4, 7, 10]
    p = rng.normal(size=(m, c, k)).astype(np.float32)
    w = rng.normal(size=(c, k, n)).astype(np.float32)
    w_noise = w.copy()
    w_noise[[i for i in range(c) if i not in support]] *= 0.05
    y = np.einsum("mck,ckn->mn", p[:, support], w[support])          # depends on the support only
    q, b = contribution_gram(jnp.asarray(p), jnp.asarray(w_noise), jnp.asarray(y))
    zq = np.einsum("mck,ckn->mcn", p, w_noise)
    np.testing.assert_allclose(q, np.einsum("mcn,mdn->cd", zq, zq) / m, rtol=2e-4, atol=1e-3)
    kept, _ = lasso_select(q, b, 4)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(kept)), support)
    w_fit = refit(jnp.asarray(p), jnp.asarray(y), kept)
    np.testing.assert_allclose(w_fit[np.array(support)], w[support], atol=2e-3)
    assert float(jnp.abs(w_fit[np.array([0, 2, 3])]).max()) == 0.0
    dead = np.ones(c, np.float32)
    dead[4] = 0                                                        # a dead channel is never kept
    kept, _ = lasso_select(q, b, 4, jnp.asarray(dead))
    assert kept[4] == 0 and int(kept.sum()) == 4
