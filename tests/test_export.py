"""Channel graph (derived from the jaxpr) and physical export: the smaller dense model computes
the masked model's logits; parameter and multiply–add counts against hand-written formulas."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repr_jax.compress import FIXED, ExportError, GraphError, channel_graph, export, logits
from repr_jax.shapes import model_layers
from repr_jax.masks import apply_masks, init_masks, with_live_filters
from repr_jax.models import architecture, create_model


def _variables(name, seed=0, **kw):
    model = create_model(name, **kw)
    v = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
    if "batch_stats" in v:   # non-trivial running statistics: mean ≠ 0, var ≠ 1
        key = jax.random.key(seed + 1)
        stats = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.1 * jax.random.normal(key, x.shape) if p[-1].key == "mean"
            else x * jax.random.uniform(key, x.shape, minval=0.5, maxval=1.5), v["batch_stats"])
        v = dict(v, batch_stats=stats)
    return model, dict(v)


def _random_live(layers, seed, fraction=0.4):
    rng = np.random.default_rng(seed)
    live = {}
    for layer in layers:     # every layer loses at least one filter and keeps at least one
        m = (rng.random(layer.num_filters) > fraction).astype(np.float32)
        m[rng.integers(layer.num_filters)] = 0.0
        m[(np.flatnonzero(m == 0)[0] + 1) % layer.num_filters] = 1.0
        live[layer.name] = jnp.asarray(m)
    return live


@pytest.mark.parametrize("name,kw", [
    ("convnet", dict(depth=3, width=8)),
    ("convnet", dict(depth=2, width=12, batch_norm=True, variant="official")),
    ("resnet20", {}),
    ("vgg16", {}),
], ids=["C3(8)", "C2(12)-official-bn", "resnet20", "vgg16"])
def test_exported_model_computes_the_masked_models_logits(name, kw):
    model, v = _variables(name, **kw)
    layers = model_layers(model)
    live = _random_live(layers, seed=len(layers))
    masks = with_live_filters(init_masks(v["params"], layers), layers, live)
    masked = dict(v, params=apply_masks(v["params"], masks))
    arch = architecture(name, **kw)
    ex = export(arch, masked, live)
    x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
    big, small = logits(arch, masked, x), logits(ex.architecture, ex.variables, x)
    assert float(jnp.std(big)) > 1e-3                    # not a trivially constant network
    np.testing.assert_allclose(small, big, atol=1e-4 * max(1.0, float(jnp.max(jnp.abs(big)))))
    assert ex.params_after < ex.params_before and ex.flops_after < ex.flops_before
    # the FLOPs after, counted from the big graph, are the small module's own count
    small_graph = channel_graph(ex.module, ex.variables, (1, 32, 32, 3))
    assert (ex.flops_after, ex.params_after) == (small_graph.flops, small_graph.params)
    tied = set() if name != "resnet20" else {l.name for l in layers if not l.name.endswith("/conv1")}
    for layer in layers:
        dead = int((np.asarray(live[layer.name]) == 0).sum())
        if layer.name in tied:   # residual-tied: kept as zero filters, width unchanged
            assert ex.channels[layer.name] == layer.num_filters and ex.kept_dead[layer.name] == dead
        else:
            assert ex.channels[layer.name] == layer.num_filters - dead
            assert ex.removed[layer.name] == np.flatnonzero(np.asarray(live[layer.name]) == 0).tolist()


def test_head_rows_follow_the_flatten_interleaving():
    """C^2(F): the dense head's row j reads channel j mod F of the last conv (H·W·F order)."""
    model, v = _variables("convnet", depth=2, width=5)
    graph = channel_graph(model, v, (1, 32, 32, 3))
    (use,) = [u for u in graph.uses if u.path == ("head", "kernel")]
    assert use.axis == 0 and len(use.sources) == 32 * 32 * 5
    assert all(srcs == {("conv1", j % 5)} for j, srcs in enumerate(use.sources))
    consumers = {(u.leaf, u.axis) for u in graph.consumers("conv0")}
    assert consumers == {("params/conv0/bias", 0), ("params/conv1/kernel", 2)}
    (first_in,) = [u for u in graph.uses if u.path == ("conv0", "kernel") and u.axis == 2]
    assert all(srcs == {FIXED} for srcs in first_in.sources)          # image channels


def test_resnet_residual_ties_and_block_consumers():
    model, v = _variables("resnet20")
    graph = channel_graph(model, v, (1, 32, 32, 3))
    names = [l.name for l in model_layers(model)]
    assert set(graph.tied()) == {n for n in names if not n.endswith("/conv1")}
    consumers = {(u.leaf, u.axis) for u in graph.consumers("stage2_block1/conv1")}
    assert consumers == {("params/stage2_block1/conv1_bn/scale", 0), ("params/stage2_block1/conv1_bn/bias", 0),
                         ("batch_stats/stage2_block1/conv1_bn/mean", 0),
                         ("batch_stats/stage2_block1/conv1_bn/var", 0),
                         ("params/stage2_block1/conv2/kernel", 2)}


def _resnet_counts(depth, inner_fraction_removed=0.0):
    """Parameters and multiply–adds per image of a CIFAR ResNet, written out by hand."""
    n = (depth - 2) // 6
    params = 3 * 3 * 3 * 16 + 2 * 16                     # stem conv + BN
    flops = 32 * 32 * 16 * 3 * 3 * 3
    c_in, size = 16, 32
    for stage, c in enumerate((16, 32, 64)):
        for b in range(n):
            if stage > 0 and b == 0:
                size //= 2
            w = c - int(inner_fraction_removed * c)
            params += 9 * c_in * w + 2 * w + 9 * w * c + 2 * c
            flops += size * size * w * 9 * c_in + size * size * c * 9 * w
            c_in = c
    return params + 64 * 10 + 10, flops + 64 * 10


def test_resnet56_with_30_percent_of_first_convs_removed():
    """The numbers of a results note: ResNet-56, floor(0.3·F) filters removed from the first
    conv of every block (Li et al. 2017 prune those only)."""
    model, v = _variables("resnet56")
    layers = model_layers(model)
    live = {}
    for layer in layers:
        m = np.ones(layer.num_filters, np.float32)
        if layer.name.endswith("/conv1"):
            m[np.random.default_rng(0).permutation(layer.num_filters)[:int(0.3 * layer.num_filters)]] = 0
        live[layer.name] = jnp.asarray(m)
    masks = with_live_filters(init_masks(v["params"], layers), layers, live)
    ex = export(architecture("resnet56"), dict(v, params=apply_masks(v["params"], masks)), live)
    assert (ex.params_before, ex.flops_before) == _resnet_counts(56) == (853_018, 125_485_696)
    assert (ex.params_after, ex.flops_after) == _resnet_counts(56, 0.3) == (605_194, 90_999_424)
    assert 1 - ex.flops_after / ex.flops_before == pytest.approx(0.2748, abs=1e-4)   # Li et al. 56-B: 27.6 %


def test_vgg16_and_convnet_flops_from_the_formula():
    vgg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    flops, c_in, size = 0, 3, 32
    for item in vgg:
        if item == "M":
            size //= 2
        else:
            flops += size * size * item * 9 * c_in
            c_in = item
    model, v = _variables("vgg16")
    assert channel_graph(model, v, (1, 32, 32, 3)).flops == flops + 512 * 10 == 313_201_664
    model, v = _variables("convnet")
    assert channel_graph(model, v, (1, 32, 32, 3)).flops == 32 * 32 * 32 * 27 + 2 * 32 * 32 * 32 * 288 + 32 * 32 * 32 * 10


def test_operations_without_a_rule_are_barriers_an_export_keeps_and_names():
    """An op the graph cannot follow (cumsum over channels, a grouped conv) is a barrier:
    the graph still traces (masking methods work), an export keeps the channels entering
    it, names the primitive and the user's module path, and computes the same logits."""
    class Mixer(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnp.cumsum(x, axis=-1)

    class Cumulative(nn.Module):
        widths: tuple = (4, 4)

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(self.widths[0], (3, 3), name="conv")(x))
            x = nn.relu(nn.Conv(self.widths[1], (3, 3), name="free")(x))   # 0, 1 enter the cumsum, 2, 3 do not
            features = jnp.concatenate([Mixer(name="mixer")(x[..., :2]), x[..., 2:]], axis=-1).mean(axis=(1, 2))
            return nn.Dense(3, name="head")(features)

    class Grouped(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(6, (3, 3), name="stem")(x)
            return nn.Conv(6, (3, 3), feature_group_count=3, name="grouped")(x).mean(axis=(1, 2))

    module = Cumulative()
    v = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    graph = channel_graph(module, v, (1, 8, 8, 3))
    assert [(b.op, b.where) for b in graph.barriers] == [("cumsum", "mixer")]
    live = {"conv": jnp.array([1.0, 0, 1, 0]), "free": jnp.array([0.0, 1, 1, 0])}
    masks = with_live_filters(init_masks(v["params"], model_layers(module, (8, 8, 3))), model_layers(module, (8, 8, 3)), live)
    masked = {"params": apply_masks(v["params"], masks)}
    from repr_jax.compress.export import export_model
    out = export_model(module, masked, live, (8, 8, 3),
                       rebuild=lambda ch: Cumulative((ch.get("conv", 4), ch.get("free", 4))))
    assert out.removed["conv"] == [1, 3]          # conv's channels only reach conv "free"
    assert out.removed["free"] == [3]             # free's channel 0 enters the cumsum: kept
    assert out.kept_dead == {"free": 1}
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    assert out.module.widths == (2, 3)
    np.testing.assert_allclose(out.module.apply(out.variables, x), module.apply(masked, x), atol=1e-5)
    assert "cumsum in mixer" in out.blocked["free"][0]
    assert any("kept 1 dead filters of free" in w and "cumsum in mixer" in w for w in out.warnings())

    grouped = Grouped()
    vg = grouped.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    g = channel_graph(grouped, vg, (1, 8, 8, 3))
    assert len(g.barriers) == 1 and g.barriers[0].where == "grouped"
    assert "feature_group_count=3" in g.barriers[0].reason
    nothing = export_model(grouped, vg, {"stem": jnp.array([0.0, 1, 1, 1, 1, 1]), "grouped": jnp.ones(6)}, (8, 8, 3))
    assert nothing.removed == {"stem": [], "grouped": []}
    assert nothing.warnings()[0].startswith("export removed nothing")


def test_export_refuses_an_empty_layer():
    model, v = _variables("convnet", depth=2, width=4)
    layers = model_layers(model)
    live = {layers[0].name: jnp.zeros(4), layers[1].name: jnp.ones(4)}
    with pytest.raises(ExportError, match="conv0 with no filters"):
        export(architecture("convnet", depth=2, width=4), v, live)


def test_speedup_is_the_median_of_per_round_ratios_of_interleaved_timings(monkeypatch):
    """Both models run in every round, one after the other, each twice with the second call
    timed, and the speed-up is the median over rounds of t_before / t_after: a machine twice as
    busy in one round (both models slow alike) leaves that round's ratio, and the median,
    unchanged; a cold first call (caches evicted by the other model) is not timed."""
    import time

    from repr_jax.compress import run_export
    calls, clock = [], [0.0]
    # machine load of each round for (big, small): round 2 twice as busy for both
    load = [(1.0, 1.0), (2.0, 2.0), (1.0, 2.0), (1.2, 1.0), (1.1, 1.0)]

    def forward(name, seconds):
        def f(images):
            calls.append(name)
            k = len(calls) - 3                     # the two compiling calls come first
            if k >= 0:
                cold = 100.0 if k % 2 == 0 else 1.0   # the first of each model's two calls
                clock[0] += cold * seconds * load[k // 4][name == "small"]
        return f
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(run_export, "_forward", lambda arch, variables: forward(arch["name"], arch["t"]))
    report = run_export.inference_speedup(({"name": "big", "t": 3.0}, {}), ({"name": "small", "t": 2.0}, {}),
                                          batch=10, repeats=5)
    assert calls == ["big", "small"] + ["big", "big", "small", "small"] * 5
    big = np.array([3.0, 6.0, 3.0, 3.6, 3.3]); small = np.array([2.0, 4.0, 4.0, 2.0, 2.0])
    assert report["inference_speedup"] == pytest.approx(np.median(big / small)) == pytest.approx(1.5)
    assert np.median(big) / np.median(small) == pytest.approx(1.65)   # what a ratio of medians would say
    big, small = np.median(big), np.median(small)
    assert report["inference_images_per_second_before"] == pytest.approx(10 / big)
    assert report["inference_images_per_second_after"] == pytest.approx(10 / small)
    assert report["inference_repeats"] == 5


def test_the_graph_is_traced_once_per_structure_and_never_reads_values(monkeypatch):
    """A second export of the same architecture reuses the traced graph (another model object
    of the same fields, other values); another width or input shape is traced anew."""
    from repr_jax.compress import structure
    traced = []
    real = structure.trace_channel_graph
    monkeypatch.setattr(structure, "trace_channel_graph", lambda *a: traced.append(a[2]) or real(*a))
    structure.forget_graphs()
    _, v0 = _variables("convnet", depth=2, width=6)
    _, v1 = _variables("convnet", seed=5, depth=2, width=6)
    g0 = channel_graph(create_model("convnet", depth=2, width=6), v0, (1, 32, 32, 3))
    g1 = channel_graph(create_model("convnet", depth=2, width=6), v1, (1, 32, 32, 3))
    assert g1 is g0 and len(traced) == 1
    small_input = create_model("convnet", depth=2, width=6)
    channel_graph(small_input, small_input.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))), (1, 16, 16, 3))
    _, v2 = _variables("convnet", depth=2, width=7)
    channel_graph(create_model("convnet", depth=2, width=7), v2, (1, 32, 32, 3))
    assert traced == [(1, 32, 32, 3), (1, 16, 16, 3), (1, 32, 32, 3)]


def test_han_lenets_match_table_1_and_lenet5_exports():
    """Han et al. (2015) Table 1: LeNet-300-100 267K and LeNet-5 431K parameters on 28×28×1;
    LeNet-5's multiply–adds by hand; its export with dead filters computes the masked logits
    and rebuilds with the surviving widths; LeNet-300-100's hidden widths follow a spec."""
    from repr_jax.compress import channel_graph
    shape = (1, 28, 28, 1)
    counts = {}
    for name in ("lenet300", "lenet5"):
        model = create_model(name)
        v = model.init(jax.random.key(0), jnp.zeros(shape))
        counts[name] = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v["params"]))
    assert counts == {"lenet300": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,        # 266,610
                      "lenet5": 20 * 26 + 50 * (25 * 20 + 1) + 800 * 500 + 500 + 500 * 10 + 10}   # 431,080
    model = create_model("lenet5")
    v = model.init(jax.random.key(1), jnp.zeros(shape))
    assert channel_graph(model, v, shape).flops == 24 * 24 * 25 * 20 + 8 * 8 * 25 * 20 * 50 + 800 * 500 + 500 * 10
    layers = model_layers(model, shape[1:])
    live = _random_live(layers, seed=3)
    masks = with_live_filters(init_masks(v["params"], layers), layers, live)
    masked = dict(v, params=apply_masks(v["params"], masks))
    arch = architecture("lenet5", input_shape=shape[1:])
    ex = export(arch, masked, live)
    x = jax.random.normal(jax.random.key(4), (4,) + shape[1:])
    np.testing.assert_allclose(logits(ex.architecture, ex.variables, x), logits(arch, masked, x), atol=1e-4)
    kept = {l.name: int(np.asarray(live[l.name]).sum()) for l in layers}
    assert ex.channels == kept and ex.variables["params"]["fc1"]["kernel"].shape == (4 * 4 * kept["conv2"], 500)
    small = create_model("lenet300", channels={"fc1": 120, "fc2": 30}).init(jax.random.key(0), jnp.zeros(shape))
    assert small["params"]["fc2"]["kernel"].shape == (120, 30)
    with pytest.raises(ValueError, match="channel spec names conv9, which LeNet-5 cannot resize"):
        create_model("lenet5", channels={"conv9": 3}).init(jax.random.key(0), jnp.zeros(shape))


class _Depthwise(nn.Module):
    """conv → BN → ReLU → depthwise 3×3 → BN → ReLU → 1×1 conv → dense, widths from a spec."""
    channels: dict | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        width = dict(self.channels or {})
        c = width.get("Conv_0", 8)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(c, (3, 3), use_bias=False)(x)))
        x = nn.Conv(c, (3, 3), feature_group_count=c, use_bias=False, name="dw")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.Conv(width.get("Conv_1", 6), (1, 1))(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_depthwise_channels_are_tied_to_their_input():
    """A depthwise conv's channel i goes only when the filter feeding it and its own filter i
    are both dead (Torch-Pruning's coupling); the export then computes the masked logits, and
    the FLOPs after count the depthwise conv per surviving channel."""
    model, shape = _Depthwise(), (1, 12, 12, 3)
    v = model.init(jax.random.key(0), jnp.zeros(shape))
    key = jax.random.key(1)
    v = dict(v, batch_stats=jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.uniform(key, x.shape), v["batch_stats"]))
    layers = model_layers(model, shape[1:])
    assert {l.name: l.bn_path for l in layers} == {"Conv_0": ("BatchNorm_0",), "dw": ("BatchNorm_1",),
                                                    "Conv_1": None}   # the depthwise BatchNorm is dw's
    live = {"Conv_0": np.ones(8, np.float32), "dw": np.ones(8, np.float32), "Conv_1": np.ones(6, np.float32)}
    live["Conv_0"][[2, 5]] = 0      # 2: with its depthwise filter → removed; 5: the depthwise filter lives
    live["dw"][[2, 6]] = 0          # 6: its input lives → kept as a zero filter
    live["Conv_1"][0] = 0
    live = {k: jnp.asarray(m) for k, m in live.items()}
    masks = with_live_filters(init_masks(v["params"], layers), layers, live)
    masked = dict(v, params=apply_masks(v["params"], masks))
    from repr_jax.compress import export_model
    ex = export_model(model, masked, live, shape[1:], rebuild=lambda channels: _Depthwise(channels=channels))
    assert ex.channels == {"Conv_0": 7, "Conv_1": 5, "dw": 7} and ex.kept_dead == {"Conv_0": 1, "dw": 1}
    assert ex.variables["params"]["dw"]["kernel"].shape == (3, 3, 1, 7)
    x = jax.random.normal(jax.random.key(2), (4,) + shape[1:])
    big = model.apply(masked, x, train=False)
    np.testing.assert_allclose(ex.module.apply(ex.variables, x, train=False), big, atol=1e-4)
    small = channel_graph(ex.module, ex.variables, shape)
    assert ex.flops_after == small.flops == 12 * 12 * (27 * 7 + 9 * 7 + 7 * 5) + 12 * 12 * 5 * 10


def _masked_export(name, v, seed, fraction=0.4, model=None, input_shape=(32, 32, 3)):
    """Random dead filters in every layer of zoo model ``name`` (variables ``v``), exported;
    asserts the export computes the masked model's logits. ``(export, live, layers)``."""
    model = model or create_model(name)
    layers = model_layers(model, input_shape)
    live = _random_live(layers, seed=seed, fraction=fraction)
    masks = with_live_filters(init_masks(v["params"], layers), layers, live)
    masked = dict(v, params=apply_masks(v["params"], masks))
    arch = architecture(name, input_shape=input_shape)
    ex = export(arch, masked, live)
    x = jax.random.normal(jax.random.key(3), (2,) + tuple(input_shape))
    big, small = logits(arch, masked, x), logits(ex.architecture, ex.variables, x)
    np.testing.assert_allclose(small, big, atol=1e-4 * max(1.0, float(jnp.max(jnp.abs(big)))))
    return ex, live, layers


def test_mobilenetv2_parameters_and_export_through_depthwise_ties():
    """MobileNetV2 for 10 classes: torchvision's 2,236,682 parameters; with random dead
    filters everywhere the export removes an expand channel only with its depthwise filter
    and a residual stream's index only when every projection feeding it is dead, and
    computes the masked model's logits (the depthwise BatchNorms are coupled too)."""
    model, v = _variables("mobilenetv2")
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v["params"])) == 2_236_682
    ex, live, layers = _masked_export("mobilenetv2", v, seed=5, fraction=0.5, model=model)
    dead = {l.name: np.asarray(live[l.name]) == 0 for l in layers}
    for i in (1, 5, 16):                                # an expand channel goes with its depthwise filter
        both = int(np.sum(dead[f"block{i}/expand"] & dead[f"block{i}/dw"]))
        assert ex.channels[f"block{i}/expand"] == ex.channels[f"block{i}/dw"] == len(dead[f"block{i}/dw"]) - both
    # the stage-2 residual stream (block1 + block2's projections) loses an index only when both are dead
    stream = int(np.sum(dead["block1/project"] & dead["block2/project"]))
    assert ex.channels["block1/project"] == ex.channels["block2/project"] == 24 - stream
    assert ex.flops_after < ex.flops_before and ex.params_after < ex.params_before


def test_imagenet_resnets_counts_and_resnet50_exports_through_projection_shortcuts():
    """ResNet-18/34/50 with the small-input stem: the usual CIFAR counts (11,173,962 /
    21,282,122 / 23,520,842 for 10 classes) and torchvision's 11,689,512 for ResNet-18 on
    224×224 with 1000 classes; ResNet-50 with random dead filters everywhere exports through
    its bottlenecks and 1×1 projection shortcuts (tied to the stream) with the masked logits."""
    def count(name, classes=10, size=32):
        model = create_model(name, classes)
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
    assert [count(n) for n in ("resnet18", "resnet34", "resnet50")] == [11_173_962, 21_282_122, 23_520_842]
    assert count("resnet18", 1000, 224) == 11_689_512
    model = create_model("resnet50")
    v = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))()
    key = jax.random.key(1)
    v = dict(v, batch_stats=jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.uniform(key, x.shape),
                                                   v["batch_stats"]))
    ex, live, layers = _masked_export("resnet50", v, seed=7, fraction=0.3, model=model)
    dead = {l.name: int((np.asarray(live[l.name]) == 0).sum()) for l in layers}
    inner = "layer3_block2/conv2"
    assert ex.channels[inner] == 256 - dead[inner]          # an inner conv shrinks by its dead filters
    stream = ("layer2_block0/shortcut", "layer2_block0/conv3", "layer2_block1/conv3")
    assert len({ex.channels[n] for n in stream}) == 1        # a stream's members stay equal


def test_a_parameter_from_an_op_without_a_rule_and_channels_moved_off_the_last_axis_pin_what_they_touch():
    """Two ways an op the graph cannot follow could hide a channel use: a scale built by
    concatenating parameters (its axes unknown) multiplied into the activations, and an
    activation transposed to NCHW and contracted with a parameter. Both pin the conv's
    channels: an export keeps them (before barriers existed, these models were refused)."""
    class Scaled(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(4, (3, 3), name="c0")(x))
            a, b = self.param("a", nn.initializers.ones, (2,)), self.param("b", nn.initializers.ones, (2,))
            x = x * jnp.concatenate([a, b])
            return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))

    class Moved(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(4, (3, 3), name="c0")(x))
            w = self.param("w", nn.initializers.ones, (8, 8))
            x = jnp.transpose(jnp.transpose(x, (0, 3, 1, 2)) @ w, (0, 2, 3, 1))   # along W, in NCHW
            return nn.Dense(3, name="head")(nn.Conv(4, (3, 3), name="c1")(x).mean(axis=(1, 2)))

    from repr_jax.compress.export import export_model
    for module in (Scaled(), Moved()):
        v = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        graph = channel_graph(module, v, (1, 8, 8, 3))
        assert graph.barriers, type(module).__name__
        live = {name: jnp.ones(n).at[:2].set(0) for name, n in graph.layers.items()}
        layers = model_layers(module, (8, 8, 3))
        masked = {"params": apply_masks(v["params"], with_live_filters(init_masks(v["params"], layers), layers, live))}
        out = export_model(module, masked, live, (8, 8, 3))
        assert out.removed["c0"] == [], type(module).__name__
        assert out.kept_dead["c0"] == 2 and out.blocked["c0"]
