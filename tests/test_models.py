"""Model zoo: output shapes, parameter counts, prunable-layer enumeration."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from repr_jax.shapes import model_layers
from repr_jax.models import create_model


def _init(name, **kw):
    model = create_model(name, **kw)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    return model, variables


@pytest.mark.parametrize("name,params,convs", [
    ("resnet20", 269_722, 19), ("resnet32", 464_154, 31), ("resnet56", 853_018, 55),
    ("vgg16", 14_724_042, 13), ("convnet", (3 * 3 * 3 * 32 + 32) + 2 * (3 * 3 * 32 * 32 + 32) + 32 * 32 * 32 * 10 + 10, 3),
])
def test_parameter_counts_and_prunable_layers(name, params, convs):
    model, variables = _init(name)
    count = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
    assert count == params
    layers = model_layers(model)
    assert len(layers) == convs
    logits = model.apply(variables, jnp.zeros((2, 32, 32, 3)))
    assert logits.shape == (2, 10)
    if name != "convnet":
        assert all(l.bn_path is not None for l in layers)


def test_resnet20_is_about_027m_and_layer_names():
    model, _ = _init("resnet20")
    layers = model_layers(model)
    assert layers[0].name == "conv0" and layers[0].shape == (3, 3, 3, 16)
    assert layers[-1].name == "stage3_block2/conv2" and layers[-1].shape == (3, 3, 64, 64)
    assert layers[1].bn_path == ("stage1_block0", "conv1_bn")


@pytest.mark.parametrize("kw,convs,size", [
    (dict(depth=8, width=16), 8, (3, 3)), (dict(batch_norm=True), 3, (3, 3)),
    (dict(variant="official"), 3, (5, 5)),
])
def test_convnet_options(kw, convs, size):
    model, variables = _init("convnet", num_classes=100, **kw)
    layers = model_layers(model)
    assert len(layers) == convs and layers[0].shape[:2] == size
    assert all((l.bn_path is not None) == kw.get("batch_norm", False) for l in layers)
    assert all(l.has_bias != kw.get("batch_norm", False) for l in layers)
    out, _ = model.apply(variables, jnp.ones((2, 32, 32, 3)), train=True, mutable=["batch_stats"])
    assert out.shape == (2, 100)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="resnet20"):
        create_model("resnet7")


def test_importing_the_package_does_not_start_jax_backend():
    """Entry points set XLA flags after ``import repr_jax``: the import must not start JAX."""
    import subprocess
    import sys
    code = ("import sys, repr_jax, repr_jax.experiment; "
            "xb = sys.modules.get('jax._src.xla_bridge'); "
            "sys.exit(1 if getattr(xb, '_backends', None) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
