"""The shifted multiply–add depthwise conv equals ``lax.conv_general_dilated``'s grouped
convolution — outputs and gradients to float32 round-off — has ``nn.Conv``'s parameters, and
the channel graph sees it as the convolution it computes; the same for the 1×1 conv written
as a matrix product (:mod:`repr_jax.models.pointwise`)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repr_jax.layers import reference_convs
from repr_jax.models import create_model
from repr_jax.models.depthwise import DepthwiseConv, depthwise, depthwise_lax, depthwise_shifted
from repr_jax.models import depthwise as depthwise_module
from repr_jax.models import pointwise as pointwise_module
from repr_jax.models.grad_order import after
from repr_jax.models.pointwise import PointwiseConv, pointwise, pointwise_lax, pointwise_matmul
from repr_jax.shapes import model_graph


def _numpy_depthwise(x, k, stride, pad):
    """A plain numpy reference: y[n, h, w, c] = Σ_ij xp[n, s·h + i, s·w + j, c] k[i, j, 0, c]."""
    xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    kh, kw = k.shape[:2]
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for h in range(ho):
        for w in range(wo):
            window = xp[:, stride * h:stride * h + kh, stride * w:stride * w + kw, :]
            y[:, h, w, :] = np.einsum("nijc,ijc->nc", window, k[:, :, 0, :])
    return y


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad", [((1, 1), (1, 1)), ((0, 1), (1, 0)), ((2, 2), (2, 2))])
@pytest.mark.parametrize("size", [(3, 3), (5, 5)])
def test_shifted_depthwise_equals_the_grouped_convolution_and_a_numpy_reference(stride, pad, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 8, 6)).astype(np.float32)
    k = rng.normal(size=(*size, 1, 6)).astype(np.float32)
    ours = depthwise_shifted(jnp.asarray(x), jnp.asarray(k), (stride, stride), pad)
    np.testing.assert_allclose(ours, depthwise_lax(jnp.asarray(x), jnp.asarray(k), (stride, stride), pad),
                               rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(ours, _numpy_depthwise(x, k, stride, pad), rtol=2e-5, atol=2e-5)
    # gradients with respect to the input and the kernel
    g = jnp.asarray(rng.normal(size=ours.shape).astype(np.float32))
    grads = {}
    for fn in (depthwise_shifted, depthwise, depthwise_lax):   # autodiff, our custom VJP, the convolution's
        _, vjp = jax.vjp(lambda a, b: fn(a, b, (stride, stride), pad), jnp.asarray(x), jnp.asarray(k))
        grads[fn] = vjp(g)
    for fn in (depthwise_shifted, depthwise):
        np.testing.assert_allclose(grads[fn][0], grads[depthwise_lax][0], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(grads[fn][1], grads[depthwise_lax][1], rtol=2e-5, atol=2e-4)


def test_the_layer_has_nn_convs_parameters_and_switches_to_the_convolution_for_the_graph():
    x = jnp.ones((1, 8, 8, 4))
    ours = DepthwiseConv((3, 3), padding=1, use_bias=True, impl="shifted")
    ref = nn.Conv(4, (3, 3), padding=1, feature_group_count=4)
    v = ours.init(jax.random.key(0), x)
    shapes = jax.tree_util.tree_map(jnp.shape, v)
    assert shapes == jax.tree_util.tree_map(jnp.shape, ref.init(jax.random.key(0), x))
    v = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(1), a.shape), v)
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=2e-6, atol=2e-6)
    jaxpr = str(jax.make_jaxpr(lambda v: ours.apply(v, x))(v))
    assert "conv_general_dilated" not in jaxpr
    with reference_convs():
        assert "conv_general_dilated" in str(jax.make_jaxpr(lambda v: ours.apply(v, x))(v))


def test_mobilenetv2_depthwise_layers_keep_their_ties_in_the_channel_graph():
    graph = model_graph(create_model("mobilenetv2"), (32, 32, 3))
    assert graph.barriers == ()
    dw = [u for u in graph.uses if u.produced_by and u.produced_by.endswith("/dw")]
    assert len(dw) == 17
    # a depthwise channel is tied to the expand channel feeding it and to its own filter
    first = next(u for u in dw if u.produced_by == "block1/dw")
    assert all({("block1/expand", i), ("block1/dw", i)} == set(s) for i, s in enumerate(first.sources))


@pytest.mark.parametrize("use_bias", [False, True])
def test_pointwise_matmul_equals_a_1x1_convolution_and_a_numpy_reference(use_bias):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 5, 4, 7)).astype(np.float32)
    ours, ref = PointwiseConv(6, use_bias=use_bias, impl="matmul"), nn.Conv(6, (1, 1), use_bias=use_bias)
    v = ours.init(jax.random.key(0), jnp.asarray(x))
    assert jax.tree_util.tree_map(jnp.shape, v) == jax.tree_util.tree_map(
        jnp.shape, ref.init(jax.random.key(0), jnp.asarray(x)))
    v = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(1), a.shape), v)
    k = np.asarray(v["params"]["kernel"])
    expected = np.einsum("nhwc,cf->nhwf", x, k[0, 0]) + (np.asarray(v["params"]["bias"]) if use_bias else 0)
    np.testing.assert_allclose(ours.apply(v, jnp.asarray(x)), expected, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(ours.apply(v, jnp.asarray(x)), ref.apply(v, jnp.asarray(x)), rtol=2e-6, atol=2e-6)
    # gradients with respect to the input and the kernel equal the convolution's
    g = jnp.asarray(rng.normal(size=(3, 5, 4, 6)).astype(np.float32))
    # (autodiff of the product, the written-out backward pass the layer uses, the convolution's)
    grads = [jax.vjp(fn, jnp.asarray(x), jnp.asarray(k))[1](g) for fn in (pointwise_matmul, pointwise, pointwise_lax)]
    for ours_grads in grads[:2]:
        np.testing.assert_allclose(ours_grads[0], grads[2][0], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(ours_grads[1], grads[2][1], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(ours_grads[1][0, 0], np.einsum("nhwc,nhwf->cf", x, np.asarray(g)),
                                   rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(ours_grads[0], np.einsum("nhwf,cf->nhwc", np.asarray(g), k[0, 0]),
                                   rtol=2e-5, atol=2e-5)
    # the channel graph traces the convolution; training runs the matrix product
    assert "conv_general_dilated" not in str(jax.make_jaxpr(lambda v: ours.apply(v, jnp.asarray(x)))(v))
    with reference_convs():
        assert "conv_general_dilated" in str(jax.make_jaxpr(lambda v: ours.apply(v, jnp.asarray(x)))(v))
    with pytest.raises(ValueError, match="unknown pointwise impl"):
        PointwiseConv(6, impl="fast").init(jax.random.key(0), jnp.asarray(x))


def test_after_keeps_the_value_and_depends_on_its_arguments():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(4, 6)).astype(np.float32))
    deps = (jnp.asarray(rng.normal(size=(3, 3)).astype(np.float32)), jnp.asarray(1e30 * np.ones(5, np.float32)))
    out = jax.jit(after)(x, *deps)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))            # exact, not to round-off
    assert out.dtype == x.dtype
    # the dependency is real data flow (a non-finite dependency shows through), so a scheduler
    # must compute the dependencies before anything that uses the result
    assert np.isnan(np.asarray(jax.jit(after)(x, jnp.asarray([np.nan], np.float32)))).all()


def test_mobilenetv2_computes_each_kernel_gradient_before_going_down(monkeypatch):
    """Without the ordering XLA:CPU defers every kernel gradient to the end of the backward
    pass and keeps each layer's activations and output gradient alive until then: the
    temporaries of a MobileNetV2 train step at 16×16, batch 8, were 25.9 MiB against 13.9 MiB
    (64×64, batch 50: 2.86 against 2.03 GiB)."""
    import optax
    from repr_jax.state import create_train_state
    from repr_jax.train import train_step
    state = create_train_state(create_model("mobilenetv2"), optax.sgd(0.1, momentum=0.9), 0, input_shape=(16, 16, 3))
    x, y = jnp.zeros((8, 16, 16, 3), jnp.uint8), jnp.zeros((8,), jnp.int32)

    def temporaries():
        step = jax.jit(lambda s, k: train_step(s, x, y, k, layers=s.layers, augmentation=False),
                       compiler_options=dict(state.compiler_options))
        return step.lower(state, jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes

    ordered = temporaries()
    monkeypatch.setattr(depthwise_module, "after", lambda value, *deps: value)
    monkeypatch.setattr(pointwise_module, "after", lambda value, *deps: value)
    assert ordered < 0.75 * temporaries()
