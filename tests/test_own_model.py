"""A researcher's own model without surprises: common ops (resize, grouped convs, an op
without a rule) in every method, any output structure, and no silent mistakes."""
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import repr_jax as rj
from repr_jax.models.outputs import with_logits


class Upsampler(nn.Module):
    """Conv → resize ×2 (bilinear or nearest) → conv → (logits, features)."""
    method: str = "bilinear"
    widths: tuple = (8, 8)
    output: str = "tuple"

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(self.widths[0], (3, 3), name="c0")(x))
        x = jax.image.resize(x, (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]), self.method)
        x = nn.relu(nn.Conv(self.widths[1], (3, 3), name="c1")(x))
        features = x.mean(axis=(1, 2))
        logits = nn.Dense(10, name="head")(features)
        return (logits, features) if self.output == "tuple" else {"logits": logits, "features": features}


def _data(n=64, size=8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, size, size, 3)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def _train(pr, model, x, y, epochs, batch=16, logits_of=lambda out: out):
    """The README's own loop, on a Linen model."""
    tx = pr.wrap(optax.sgd(0.05, momentum=0.9))
    variables = model.init(jax.random.key(0), x[:1])
    opt_state, ps = tx.init(variables["params"]), pr.init(variables["params"])

    @jax.jit
    def step(variables, opt_state, ps, xb, yb, key):
        def loss_fn(params):
            logits = pr.forward({**variables, "params": params}, ps, xb, train=True)[0]
            terms = pr.loss_terms(params, variables, ps, xb, yb, logits, key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean() + sum(terms.values())
        grads = jax.grad(loss_fn)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"], masks=pr.update_masks(variables, ps))
        return {**variables, "params": optax.apply_updates(variables["params"], updates)}, opt_state, pr.after_step(ps)

    lines = []
    for epoch in range(epochs):
        variables, opt_state, ps, events = pr.before_epoch(epoch, variables, opt_state, ps)
        lines += pr.describe(events)
        for i in range(len(y) // batch):
            variables, opt_state, ps = step(variables, opt_state, ps, x[i * batch:(i + 1) * batch],
                                            y[i * batch:(i + 1) * batch], jax.random.key(i))
        variables, opt_state, ps, events = pr.after_epoch(epoch, variables, opt_state, ps)
        lines += pr.describe(events)
    return variables, ps, lines


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_a_resizing_model_returning_logits_and_features_runs_repr_taylor_and_exports_with_li_l1(method):
    x, y = _data()
    model = Upsampler(method)
    pr = rj.Pruner("repr", model, x[:1], epochs=3, steps_per_epoch=4, batch_size=16, scoring_data=(x, y),
                   logits=0, s1=1, s2=1, iterations=1, criterion="taylor", criterion_batches=2, per_layer=True)
    _, _, lines = _train(pr, model, x, y, 3)
    assert any(l.startswith("drop round 1") for l in lines) and any(l.startswith("re-init round 1") for l in lines)
    # the channels of c0 flow through the resize into c1: c0 is prunable and exports smaller
    graph = rj.model_graph(pr.model, (8, 8, 3))
    assert graph.barriers == ()
    li = rj.Pruner("li-l1", model, x[:1], epochs=2, steps_per_epoch=4, batch_size=16, scoring_data=(x, y),
                   logits=0, fraction=0.5, prune_epoch=1)
    variables, ps, _ = _train(li, model, x, y, 2)
    small = li.export(variables, ps, rebuild=lambda channels: Upsampler(method, (channels.get("c0", 8),
                                                                                channels.get("c1", 8))))
    assert small.channels == {"c0": 4, "c1": 4}
    masked = li.masked_variables(variables, ps)
    np.testing.assert_allclose(small.module.apply(small.variables, x)[0], model.apply(masked, x)[0], atol=1e-4)


def test_the_output_contract_refuses_what_it_cannot_read_in_one_line_and_reads_a_dict():
    x, _ = _data(4)
    with pytest.raises(ValueError, match=r"returns a tuple of 2: \[\(1, 10\), \(1, 8\)\].*logits=0") as err:
        rj.Pruner("repr", Upsampler(), x[:1])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="logits=5 does not select an array"):
        rj.Pruner("repr", Upsampler(), x[:1], logits=5)
    pr = rj.Pruner("repr", Upsampler(output="dict"), x[:1])   # a dict's "logits" entry by default
    assert pr.model.apply(pr.model.init(jax.random.key(0), x[:1]), x).shape == (4, 10)
    plain = rj.create_model("convnet", width=4)
    assert with_logits(plain, (8, 8, 3)) is plain        # a model returning logits is not wrapped


def test_trimming_and_distillation_paths_read_the_selected_logits():
    x, y = _data()
    model = Upsampler()
    pr = rj.Pruner("trimming", model, x[:1], epochs=2, steps_per_epoch=4, batch_size=16, scoring_data=(x, y),
                   logits=0, prune_epoch=1, fraction=0.25)
    variables, ps, lines = _train(pr, model, x, y, 2)
    assert sum(int(np.sum(np.asarray(v) == 0)) for v in pr.live(ps).values()) > 0
    # JST's search reads the same part: its rewards (held-out accuracy) and the trained step
    jst = rj.Pruner("jst", model, x[:1], epochs=3, steps_per_epoch=4, batch_size=16, logits=0,
                    heldout_data=(x[:32], y[:32]), coarse_epochs=1, search_steps=1, step_epochs=1, subnets=2,
                    val_batches=2, reward_batches=1, alpha_steps=1, hidden=8)
    variables, ps, lines = _train(jst, model, x, y, 3)
    assert any(l.startswith("jst search step 1: rewards mean -") for l in lines), lines   # finite rewards
    out = jst.forward(jst.masked_variables(variables, ps), ps, x[:8], train=False)
    assert np.isfinite(np.asarray(out[0])).all()


class GroupedNet(nn.Module):
    widths: tuple = (8, 8)

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(self.widths[0], (3, 3), name="stem")(x))
        x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=2, name="grouped")(x))
        x = nn.relu(nn.Conv(self.widths[1], (1, 1), name="point")(x))
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def test_grouped_convs_are_kept_whole_masks_work_and_the_export_names_the_layer():
    x, y = _data()
    pr = rj.Pruner("repr", GroupedNet(), x[:1], epochs=3, steps_per_epoch=4, batch_size=16, s1=1, s2=1,
                   iterations=1, per_layer=True)
    _, _, lines = _train(pr, GroupedNet(), x, y, 3)
    assert any("grouped" in l for l in lines if l.startswith("drop round"))
    li = rj.Pruner("li-l1", GroupedNet(), x[:1], epochs=2, steps_per_epoch=4, batch_size=16, fraction=0.5,
                   prune_epoch=1)
    variables, ps, _ = _train(li, GroupedNet(), x, y, 2)
    # li-l1 leaves the channels a grouped conv reads alone (tied to a kept operation) and prunes the rest
    assert np.all(np.asarray(li.live(ps)["stem"]) == 1) and np.all(np.asarray(li.live(ps)["grouped"]) == 1)
    small = li.export(variables, ps, rebuild=lambda ch: GroupedNet((ch.get("stem", 8), ch.get("point", 8))))
    assert small.channels == {"stem": 8, "grouped": 8, "point": 4} and small.kept_dead == {}
    masked = li.masked_variables(variables, ps)
    np.testing.assert_allclose(small.module.apply(small.variables, x), GroupedNet().apply(masked, x), atol=1e-4)
    barrier, = rj.model_graph(GroupedNet(), (8, 8, 3)).barriers
    assert barrier.where == "grouped" and "feature_group_count=2" in barrier.reason


class Named(nn.Module):
    """``channels`` is not the first field: a rebuild by class must pass it by keyword."""
    num_classes: int = 10
    channels: dict | None = None

    @nn.compact
    def __call__(self, x, train=False):
        spec = dict(self.channels or {})
        x = nn.relu(nn.Conv(spec.get("a", 8), (3, 3), name="a")(x))
        x = nn.relu(nn.Conv(spec.get("b", 8), (3, 3), name="b")(x))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


def test_rebuild_takes_a_class_whose_channels_field_is_not_first_and_an_empty_export_warns():
    x, y = _data()
    li = rj.Pruner("li-l1", Named(), x[:1], epochs=2, steps_per_epoch=4, batch_size=16, fraction=0.5, prune_epoch=1)
    variables, ps, _ = _train(li, Named(), x, y, 2)
    small = li.export(variables, ps, rebuild=Named)
    assert dict(small.module.channels) == {"a": 4, "b": 4} and small.module.num_classes == 10
    repr_ = rj.Pruner("repr", Named(), x[:1], epochs=3, steps_per_epoch=4, batch_size=16, s1=1, s2=1, iterations=1)
    variables, ps, _ = _train(repr_, Named(), x, y, 3)   # RePr revives every filter: nothing to remove
    with pytest.warns(UserWarning, match="export removed nothing: no filter is dead"):
        out = repr_.export(variables, ps, rebuild=Named)
    assert out.params_after == out.params_before


def test_repr_warns_when_global_ranking_can_empty_a_low_dimensional_layer():
    with pytest.warns(UserWarning, match=r"conv0 has 27 weights per filter for 32 filters.*per_layer=true"):
        rj.Pruner("repr", rj.create_model("convnet", width=32), np.zeros((1, 32, 32, 3), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rj.Pruner("repr", rj.create_model("convnet", width=32), np.zeros((1, 32, 32, 3), np.float32), per_layer=True)


def test_nnx_dropout_without_a_key_in_training_is_refused():
    class Drop(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 4, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.lin(x))
    model = rj.adapt(Drop(nnx.Rngs(0)))
    v = model.init()
    with pytest.raises(ValueError, match=r"draws random numbers in training.*rngs=\{'dropout': key\}"):
        model.apply(v, jnp.ones((2, 4)), train=True)
    a = model.apply(v, jnp.ones((2, 4)), train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(v, jnp.ones((2, 4)), train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    model.apply(v, jnp.ones((2, 4)), train=False)          # evaluation draws nothing


def test_shrink_nnx_keeps_a_depthwise_conv_callable_even_when_nothing_was_pruned():
    class DW(nnx.Module):
        def __init__(self, rngs):
            self.stem = nnx.Conv(3, 16, (3, 3), rngs=rngs)
            self.dw = nnx.Conv(16, 16, (3, 3), feature_group_count=16, rngs=rngs)
            self.head = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.dw(nnx.relu(self.stem(x)))).mean(axis=(1, 2)))
    model = DW(nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, 3))
    pr = rj.Pruner("repr", model, x[:1], per_layer=True)
    pr.wrap(optax.sgd(0.1))
    variables = pr.variables()
    with pytest.warns(UserWarning, match="export removed nothing"):
        exported = pr.export(variables, pr.init(variables["params"]))
    before = np.asarray(model(x))
    rj.shrink_nnx(model, exported)
    assert (model.dw.in_features, model.dw.feature_group_count) == (16, 16)
    np.testing.assert_allclose(np.asarray(model(x)), before, atol=1e-6)


def test_a_factory_that_ignores_channels_is_named_at_the_start(tmp_path):
    from repr_jax.models.user import channels_warning
    from repr_jax.shapes import model_layers
    f = tmp_path / "m.py"
    f.write_text("import flax.linen as nn\n"
                 "class M(nn.Module):\n"
                 "    @nn.compact\n"
                 "    def __call__(self, x, train=False):\n"
                 "        return nn.Dense(10)(nn.relu(nn.Conv(8, (3, 3))(x)).mean(axis=(1, 2)))\n"
                 "def ignores(num_classes, channels=None):\n    return M()\n"
                 "def none(num_classes):\n    return M()\n")
    layers = model_layers(rj.create_model(f"{f}:ignores"), (8, 8, 3))
    assert "ignores channels" in channels_warning(f"{f}:ignores", 10, (8, 8, 3), layers)
    assert "takes no channels" in channels_warning(f"{f}:none", 10, (8, 8, 3), layers)


def test_a_folder_of_another_size_given_as_cifar_points_to_the_folder_dataset(tmp_path):
    from PIL import Image

    from repr_jax.data import DataError, load_data
    for split in ("train", "test"):
        (tmp_path / split / "airplane").mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / split / "airplane" / "0000.png")
    with pytest.raises(DataError, match=r"expected CIFAR's \(32, 32, 3\) \(an image folder of any size and "
                                        r"channels: --dataset folder\)"):
        load_data("cifar10", str(tmp_path))


def test_a_conv_transpose_and_a_channel_concatenation_export_with_the_masked_logits():
    """``nn.ConvTranspose`` (a convolution with input dilation) and ``jnp.concatenate`` along
    channels in a user's decoder: li-l1 prunes every conv, the export shrinks the transposed
    conv on both sides and the conv after the concatenation by both parts' removed channels,
    and computes the masked model's logits."""

    class Decoder(nn.Module):
        channels: dict | None = None

        @nn.compact
        def __call__(self, x, train: bool = False):
            w = dict(self.channels or {})
            a = nn.relu(nn.Conv(w.get("Conv_0", 8), (3, 3), strides=2)(x))
            b = nn.relu(nn.ConvTranspose(w.get("ConvTranspose_0", 8), (3, 3), strides=(2, 2))(a))
            c = jnp.concatenate([b, nn.relu(nn.Conv(w.get("Conv_1", 6), (1, 1))(x))], axis=-1)
            return nn.Dense(10)(nn.relu(nn.Conv(w.get("Conv_2", 8), (3, 3))(c)).mean(axis=(1, 2)))

    x = np.random.default_rng(0).normal(size=(16, 12, 12, 3)).astype(np.float32)
    model = Decoder()
    pr = rj.Pruner("li-l1", model, x[:1], epochs=1, steps_per_epoch=1, batch_size=16, fraction=0.5)
    assert [l.name for l in pr.layers] == ["Conv_0", "ConvTranspose_0", "Conv_1", "Conv_2"]
    variables = model.init(jax.random.key(0), x[:1])
    tx = pr.wrap(optax.sgd(0.01))
    opt_state, ps = tx.init(variables["params"]), pr.init(variables["params"])
    variables, opt_state, ps, _ = pr.before_epoch(0, variables, opt_state, ps)
    ex = pr.export(variables, ps, rebuild=lambda channels: Decoder(channels=channels))
    assert ex.channels == {"Conv_0": 4, "ConvTranspose_0": 4, "Conv_1": 3, "Conv_2": 4}
    assert ex.variables["params"]["ConvTranspose_0"]["kernel"].shape == (3, 3, 4, 4)
    assert ex.variables["params"]["Conv_2"]["kernel"].shape == (3, 3, 4 + 3, 4)    # both parts shrank
    masked = pr.forward(pr.masked_variables(variables, ps), ps, x, train=False)
    np.testing.assert_allclose(ex.module.apply(ex.variables, x, train=False), masked, atol=1e-5)
