"""The library in a user's own loop (:class:`repr_jax.Pruner`): every method family on a model
that is not in our zoo (Linen with default names, NNX), inputs of other shapes, BatchNorm
found from the computation, exports whose logits equal the masked model's, and the two
examples run as a user runs them."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import repr_jax as rj
from conftest import ROOT


class UserCNN(nn.Module):
    """A user's Linen CNN: default module names, 28×28×1 inputs, optional channel spec."""
    channels: dict | None = None
    bn: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        width = dict(self.channels or {})
        for i, f in enumerate((8, 8)):
            x = nn.Conv(width.get(f"Conv_{i}", f), (3, 3), use_bias=not self.bn)(x)
            if self.bn:
                x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _data(n=96, shape=(28, 28, 1), seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.normal(size=(n,) + shape).astype(np.float32) + y[:, None, None, None] * 0.1
    return x, y


def _run(pr, model, x, y, epochs, batch=16):
    """A plain loop over the pruner's pieces (what the docs show); returns the final pieces."""
    variables = pr.variables() if rj.api.is_nnx(pr.model) else model.init(jax.random.key(0), x[:1])
    tx = pr.wrap(optax.sgd(0.05, momentum=0.9))
    opt_state, ps = tx.init(variables["params"]), pr.init(variables["params"])

    @jax.jit
    def step(variables, opt_state, ps, xb, yb, key):
        ps = pr.before_step(variables, ps, key)

        def loss_fn(params, method_params):
            logits, stats = pr.forward({**variables, "params": params}, ps, xb, train=True,
                                       method_params=method_params, rngs={"dropconnect": key})
            terms = pr.loss_terms(params, variables, ps, xb, yb, logits, key, method_params=method_params)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean() + sum(terms.values()), stats

        (_, stats), (grads, mgrads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            variables["params"], ps.method_params)
        updates, opt_state = tx.update(grads, opt_state, variables["params"], masks=pr.update_masks(variables, ps))
        ps = pr.method_update(ps, mgrads)
        return {"params": optax.apply_updates(variables["params"], updates), "batch_stats": stats}, opt_state, \
            pr.after_step(ps)

    events = []
    for epoch in range(epochs):
        variables, opt_state, ps, ev = pr.before_epoch(epoch, variables, opt_state, ps)
        events += pr.records(ev)
        for i in range(len(y) // batch):
            variables, opt_state, ps = step(variables, opt_state, ps, x[i * batch:(i + 1) * batch],
                                            y[i * batch:(i + 1) * batch], jax.random.key(i))
        variables, opt_state, ps, ev = pr.after_epoch(epoch, variables, opt_state, ps)
        events += pr.records(ev)
    return variables, ps, events


def test_batchnorm_is_found_from_the_computation_whatever_its_name():
    """Linen's default ``BatchNorm_0`` (and NNX's ``bn1``) belong to their conv; a BatchNorm
    after the conv's ReLU too; a dropped filter's BatchNorm shift is masked, so its channel
    outputs exactly 0 (it would output relu(β) otherwise)."""
    x, y = _data()
    pr = rj.Pruner("repr", UserCNN(), x[:1], epochs=3, steps_per_epoch=6, batch_size=16, s1=1, s2=1,
                   iterations=1, drop_fraction=0.5)
    assert [(l.name, l.bn_path) for l in pr.layers] == [("Conv_0", ("BatchNorm_0",)), ("Conv_1", ("BatchNorm_1",))]

    class ReluThenBN(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(4, (3, 3), name="features")(x))
            x = nn.BatchNorm(use_running_average=not train, name="norm")(x)
            return nn.Dense(10)(x.mean((1, 2)))
    assert rj.model_layers(ReluThenBN(), (12, 12, 3))[0].bn_path == ("norm",)
    model = UserCNN()
    variables = model.init(jax.random.key(0), x[:1])
    variables = {**variables, "params": jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.5 if p[-1].key == "bias" else v, variables["params"])}    # β ≠ 0
    tx = pr.wrap(optax.sgd(0.0))
    opt_state, ps = tx.init(variables["params"]), pr.init(variables["params"])
    variables, opt_state, ps, _ = pr.before_epoch(1, variables, opt_state, ps)            # the drop
    dead = np.flatnonzero(np.asarray(pr.live(ps)["Conv_0"]) == 0)
    assert dead.size >= 1 and np.all(np.asarray(variables["params"]["BatchNorm_0"]["bias"])[dead] == 0)
    captured = {}
    with rj.layers.intercept_outputs({("BatchNorm_0",): "bn"}, lambda n, out: captured.setdefault(n, out)):
        model.apply(variables, x[:4], train=False)
    assert np.all(np.asarray(captured["bn"])[..., dead] == 0)


@pytest.mark.parametrize("method,settings,data", [
    ("repr", {"s1": 1, "s2": 1, "iterations": 1, "drop_fraction": 0.25}, None),
    ("repr", {"s1": 1, "s2": 1, "iterations": 1, "criterion": "taylor", "criterion_batches": 2,
              "reinit": "random", "outgoing_scale": 0.0}, "scoring"),
    ("li-l1", {"fraction": 0.5, "prune_epoch": 1}, None),
    ("slimming", {"fraction": 0.5, "prune_epoch": 1, "l1": 1e-3}, None),
    ("trimming", {"fraction": 0.25, "criterion_batches": 2}, "scoring"),
    ("channel-pruning", {"fraction": 0.5, "images": 16, "lasso_steps": 20, "bisections": 8}, "scoring"),
    ("han", {"quality": (0.5,), "retrain_epochs": 1}, None),
    ("dsd", {"dense_epochs": 1, "sparse_epochs": 1, "sparsity": 0.5}, None),
    ("jst", {"coarse_epochs": 1, "search_steps": 1, "step_epochs": 1, "subnets": 2, "val_batches": 2,
             "reward_batches": 1, "alpha_steps": 1, "hidden": 8}, "heldout"),
])
def test_every_method_family_in_a_user_loop(method, settings, data):
    """Each method through :class:`repr_jax.Pruner` on a user's 28×28×1 Linen CNN: it prunes
    (events, masks), and an exporting method's export rebuilds the user's model with the
    surviving widths, computing the masked model's logits."""
    x, y = _data()
    extra = {"scoring_data": (x, y)} if data == "scoring" else {"heldout_data": (x[:32], y[:32])} if data == "heldout" else {}
    model = UserCNN()
    epochs = 3
    pr = rj.Pruner(method, model, x[:1], epochs=epochs, steps_per_epoch=len(y) // 16, batch_size=16, **settings, **extra)
    variables, ps, events = _run(pr, model, x, y, epochs)
    assert events, f"{method} recorded no event"
    live = pr.live(ps)
    masked_out = np.asarray(pr.forward(pr.masked_variables(variables, ps), ps, x[:8], train=False))
    assert np.isfinite(masked_out).all()
    if getattr(pr.method, "exports_at_end", False):
        assert sum(int(np.sum(v == 0)) for v in live.values()) > 0
        ex = pr.export(variables, ps, rebuild=lambda channels: UserCNN(channels=channels))
        assert ex.params_after < ex.params_before and ex.flops_after < ex.flops_before
        small = np.asarray(ex.module.apply(ex.variables, x[:8], train=False))
        np.testing.assert_allclose(small, masked_out, atol=1e-4 * max(1.0, np.abs(masked_out).max()))
    if method in ("han", "dsd"):
        assert any(np.mean(np.asarray(m) == 0) > 0.2 for m in jax.tree_util.tree_leaves(ps.masks) if np.ndim(m) >= 2) \
            or method == "dsd"    # DSD re-densifies by the end


def test_a_48x48x3_input_and_an_export_without_a_factory():
    """Shapes come from the example input (48×48×3 here): the graph's multiply–adds are of
    that size; without ``rebuild`` the export is the smaller variables and the channel spec."""
    x, y = _data(64, (48, 48, 3))
    model = UserCNN()
    pr = rj.Pruner("li-l1", model, x[:1], epochs=1, steps_per_epoch=4, batch_size=16, fraction=0.5)
    assert pr.context.input_shape == (48, 48, 3)
    variables = model.init(jax.random.key(0), x[:1])
    tx = pr.wrap(optax.sgd(0.01))
    opt_state, ps = tx.init(variables["params"]), pr.init(variables["params"])
    variables, opt_state, ps, _ = pr.before_epoch(0, variables, opt_state, ps)
    ex = pr.export(variables, ps)
    assert ex.module is None and ex.channels == {"Conv_0": 4, "Conv_1": 4}
    # the FLOPs after, counted from the graph without a module: halved filters in, halved out
    assert ex.flops_after == 48 * 48 * 27 * 4 + 24 * 24 * 9 * 4 * 4 + 4 * 12 * 12 * 10
    rebuilt = pr.export(variables, ps, rebuild=lambda channels: UserCNN(channels=channels))
    assert rebuilt.flops_after == ex.flops_after and rebuilt.params_after == ex.params_after
    assert ex.variables["params"]["Conv_1"]["kernel"].shape == (3, 3, 4, 4)
    assert ex.variables["params"]["Dense_0"]["kernel"].shape == (4 * 12 * 12, 10)
    conv_macs = 48 * 48 * 27 * 8 + 24 * 24 * 72 * 8        # SAME convs at 48×48 and 24×24
    assert rj.model_graph(model, (48, 48, 3)).flops == conv_macs + 8 * 12 * 12 * 10


def test_nnx_model_in_a_user_loop_shrinks_in_place():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
            self.bn1 = nnx.BatchNorm(8, rngs=rngs)
            self.blocks = nnx.List([nnx.Conv(8, 8, (3, 3), rngs=rngs)])
            self.head = nnx.Linear(8, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.bn1(self.conv1(x)))
            x = nnx.relu(self.blocks[0](x))
            return self.head(x.mean(axis=(1, 2)))

    x, y = _data()
    model = Net(nnx.Rngs(0))
    pr = rj.Pruner("li-l1", model, x[:1], epochs=2, steps_per_epoch=len(y) // 16, batch_size=16, fraction=0.5,
                   prune_epoch=1)
    assert [(l.name, l.bn_path) for l in pr.layers] == [("conv1", ("bn1",)), ("blocks/0", None)]   # forward order
    variables, ps, events = _run(pr, model, x, y, 2)
    masked = np.asarray(pr.forward(pr.masked_variables(variables, ps), ps, x[:8], train=False))
    ex = pr.export(variables, ps)
    rj.shrink_nnx(model, ex)
    model.eval()
    assert model.conv1.kernel.shape == (3, 3, 1, 4) and model.blocks[0].kernel.shape == (3, 3, 4, 4)
    assert model.bn1.num_features == 4 and model.head.in_features == 4
    np.testing.assert_allclose(np.asarray(model(x[:8])), masked, atol=1e-4 * max(1.0, np.abs(masked).max()))


def test_distillation_loss_matches_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 10)), rng.normal(size=(6, 10))
    y = rng.integers(0, 10, 6)
    T, a = 3.0, 0.7
    log_softmax = lambda z: z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)  # noqa: E731
    ce = -log_softmax(s)[np.arange(6), y].mean()
    pt, ls = np.exp(log_softmax(t / T)), log_softmax(s / T)
    kl = (pt * (np.log(pt) - ls)).sum(1).mean()
    got = float(rj.distillation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), T, a))
    assert got == pytest.approx((1 - a) * ce + a * T * T * kl, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["own_loop_linen.py", "own_loop_nnx.py"])
def test_the_examples_run_as_a_user_runs_them(script):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "REPR_JAX_SMALL": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = (int(v.replace(",", "")) for v in re.search(r"([\d,]+) → ([\d,]+) parameters", proc.stdout).groups())
    assert after < before
    diff = float(re.search(r"max \|logit difference\| masked vs \w+: ([\d.e+-]+)", proc.stdout).group(1))
    assert diff < 1e-4
    assert re.search(r"test accuracy 0\.\d+", proc.stdout)


def test_a_model_with_an_op_the_graph_cannot_rebuild_still_prunes_with_every_masking_method():
    """A grouped convolution has no export rule (other than keeping it whole): standard
    training and RePr build, and the graph names the layer that an export keeps."""
    class Grouped(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.Conv(8, (3, 3), feature_group_count=2)(x)
            return nn.Dense(10)(x.mean((1, 2)))

    x, _ = _data(8)
    assert rj.Pruner("standard", Grouped(), x[:1]).layers
    pr = rj.Pruner("repr", Grouped(), x[:1], s1=1, s2=1, iterations=1, per_layer=True)
    assert [l.name for l in pr.layers] == ["Conv_0", "Conv_1"]
    assert [b.where for b in rj.model_graph(pr.model, (8, 8, 3)).barriers] == ["Conv_1"]


@pytest.mark.parametrize("streams", ["default", "dropout"])
def test_nnx_dropout_under_jit_differs_per_key_and_is_pure(streams):
    """``nnx.Dropout`` inside a jitted step: each key gives its own mask (a single
    ``nnx.Rngs(0)`` stream too), the same key the same output, and the user's module's RNG
    state is never written by the traced call."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.head = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(self.drop(self.conv(x)).mean(axis=(1, 2)))

    x = jnp.ones((2, 8, 8, 1))
    net = Net(nnx.Rngs(0) if streams == "default" else nnx.Rngs(params=0, dropout=1))
    pr = rj.Pruner("standard", net, x)
    pr.wrap(optax.sgd(0.1))
    v = pr.variables()
    ps = pr.init(v["params"])
    f = jax.jit(lambda v, k: pr.forward(v, ps, x, train=True, rngs={"dropout": k})[0])
    a, b = f(v, jax.random.key(1)), f(v, jax.random.key(2))
    assert float(jnp.max(jnp.abs(a - b))) > 0
    np.testing.assert_array_equal(f(v, jax.random.key(1)), a)
    net.eval()
    assert np.isfinite(np.asarray(net(x))).all()          # the module itself still works eagerly
