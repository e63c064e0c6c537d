"""Method fidelity: the places where an audit against the papers found us deviating, each
checked against a numpy reference or the paper's own numbers (Adam's reset of revived
filters, frozen optimizer state, He et al.'s normalised LASSO, Li et al.'s VGG-16 head and
ResNet-110 presets, Network Slimming's threshold, exportable min_keep, the re-init scale,
sensitivity on held-out images)."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_script
from repr_jax.compress.reconstruct import kernel_by_channel, lasso_select, selection_gram, unit_channels
from repr_jax.masks import scale_moments
from repr_jax.optim import OptimConfig, make_optimizer
from repr_jax.ranking import select_drops

cli = load_script("experiments/cifar.py")


# ----------------------------------------------------------------------------- 1. Adam reset
def _adam_run(count: str, reset_after: int = 20, after: int = 10):
    """Updates of filter 1 of a (3, 3, 2, 4) kernel under ``make_optimizer``'s AdamW (no weight
    decay) for ``after`` steps following a reset of its moments (as ``revive_filters`` does),
    and a fresh ``optax.adam`` fed the same gradients of that filter."""
    lr = 1e-2
    cfg = OptimConfig(optimizer="adam", weight_decay=0.0, schedule="constant", adam_step_count=count)
    tx = make_optimizer(cfg, optax.constant_schedule(lr))
    params = {"kernel": jnp.zeros((3, 3, 2, 4))}
    masks = {"kernel": jnp.ones((4,))}
    state = tx.init(params)
    rng = np.random.default_rng(0)
    grad = lambda: {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)}  # noqa: E731
    for _ in range(reset_after):
        _, state = tx.update(grad(), state, params, masks=masks)
    state = scale_moments(tx, state, {"kernel": jnp.array([1.0, 0.0, 1.0, 1.0])})    # revive filter 1
    fresh = optax.adam(lr)
    fresh_state = fresh.init(params["kernel"][..., 1])
    ours, theirs = [], []
    for _ in range(after):
        g = grad()
        u, state = tx.update(g, state, params, masks=masks)
        v, fresh_state = fresh.update(g["kernel"][..., 1], fresh_state)
        ours.append(np.asarray(u["kernel"][..., 1]))
        theirs.append(np.asarray(v))
    return np.array(ours), np.array(theirs)


def test_a_revived_filter_steps_exactly_as_under_a_fresh_adam():
    ours, fresh = _adam_run("element")
    np.testing.assert_allclose(ours, fresh, rtol=2e-5, atol=1e-9)


def test_the_shared_step_count_made_revived_first_steps_3x_larger():
    """What ``adam_step_count=shared`` (before 2026-12-03) did: the revived filter's moments
    restart from 0 but the shared count t does not, so its first step is
    (1 − β₁)/(1 − β₁ᵗ) / √((1 − β₂)/(1 − β₂ᵗ)) times a fresh Adam's (→ 3.16× for large t)."""
    t = 2001
    ours, fresh = _adam_run("shared", reset_after=t - 1)
    expected = (0.1 / (1 - 0.9 ** t)) / np.sqrt(0.001 / (1 - 0.999 ** t))
    np.testing.assert_allclose(np.abs(ours[0]) / np.abs(fresh[0]), expected, rtol=1e-3)
    assert expected > 2.9


# ----------------------------------------------------------------------------- 8. frozen state
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_optimizer_state_of_masked_filters_stands_still(optimizer):
    """Filter 2 masked (frozen, its weights non-zero as in RePr's freeze mode or JST's search):
    its update is 0 and its momentum / Adam moments / step count do not move over 20 steps of
    weight decay and momentum; the live filters follow a numpy SGD reference."""
    cfg = OptimConfig(optimizer=optimizer, learning_rate=0.1, momentum=0.9, weight_decay=0.01,
                      schedule="constant")
    tx = make_optimizer(cfg, optax.constant_schedule(0.1))
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    params = {"kernel": jnp.asarray(w)}
    state = tx.init(params)
    _, state = tx.update({"kernel": jnp.asarray(rng.normal(size=w.shape), jnp.float32)}, state, params,
                         masks={"kernel": jnp.ones((4,))})              # moments of filter 2 now ≠ 0
    frozen_before = [np.asarray(x)[..., 2] for x in jax.tree_util.tree_leaves(state) if np.ndim(x) == 4]
    assert all(np.abs(x).max() > 0 for x in frozen_before)
    masks = {"kernel": jnp.array([1.0, 1.0, 0.0, 1.0])}
    trace = np.asarray([x for x in jax.tree_util.tree_leaves(state) if np.ndim(x) == 4][0]) if optimizer == "sgd" else None
    for _ in range(20):
        g = rng.normal(size=w.shape).astype(np.float32)
        u, state = tx.update({"kernel": jnp.asarray(g)}, state, params, masks=masks)
        assert np.all(np.asarray(u["kernel"])[..., 2] == 0)
        if optimizer == "sgd":   # numpy: trace ← g + wd·w + μ·trace on the live filters, update −lr·trace
            trace = g + 0.01 * w + 0.9 * trace
            live = [0, 1, 3]
            np.testing.assert_allclose(np.asarray(u["kernel"])[..., live], -0.1 * trace[..., live], rtol=1e-5, atol=1e-6)
    frozen_after = [np.asarray(x)[..., 2] for x in jax.tree_util.tree_leaves(state) if np.ndim(x) == 4]
    for a, b in zip(frozen_before, frozen_after):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- 2. Channel Pruning
def _lasso_problem(seed: int):
    """B's output depends on each channel's *normalised* contribution with weight a_i; the
    channels' raw weight norms s_i are unrelated to a_i (what training leaves: BatchNorm
    after A rescales freely)."""
    rng = np.random.default_rng(seed)
    m, c, k, n = 400, 6, 9, 5
    patches = rng.normal(size=(m, c, k)).astype(np.float32)
    unit = rng.normal(size=(c, k, n))
    unit /= np.sqrt((unit ** 2).sum(axis=(1, 2), keepdims=True))
    a = rng.uniform(0.2, 1.0, size=(c, 1, 1))
    w = (unit * rng.choice([0.05, 1.0, 20.0], size=(c, 1, 1))).astype(np.float32)
    y = np.einsum("mck,ckn->mn", patches, unit * a) + 0.05 * rng.normal(size=(m, n))
    return patches, w, y.astype(np.float32), a.ravel()


def test_the_selection_lasso_normalises_each_channel_as_he_et_al_eq_1():
    """Q and b are built from Z_i = P_i W_i / ‖W_i‖_F (numpy reference), and on problems whose
    channels' weight norms differ by 400× the selected channels differ from the raw-weight
    LASSO: the normalised one keeps the channels that contribute most (largest a_i) where
    the raw one keeps those with large weights (what ``normalize=false`` — the old
    behaviour — does)."""
    patches, w, y, _ = _lasso_problem(0)
    unit = w / np.sqrt((w ** 2).sum(axis=(1, 2), keepdims=True))
    z = np.einsum("mck,ckn->mcn", patches, unit)
    q_ref = np.einsum("mcn,mdn->cd", z, z) / len(z)
    b_ref = np.einsum("mcn,mn->c", z, y) / len(z)
    q, b = selection_gram(jnp.asarray(patches), jnp.asarray(w), jnp.asarray(y), normalize=True)
    np.testing.assert_allclose(q, q_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.sqrt((np.asarray(unit_channels(jnp.asarray(w))) ** 2).sum(axis=(1, 2))), 1, rtol=1e-5)
    right = {True: 0, False: 0}
    for seed in range(8):
        *arrays, a = _lasso_problem(seed)
        top = np.zeros(6)
        top[np.argsort(-a)[:3]] = 1
        for flag in right:
            picked = np.asarray(lasso_select(*selection_gram(*map(jnp.asarray, arrays), normalize=flag), 3)[0])
            right[flag] += np.array_equal(picked, top)
    assert right[True] >= 6 and right[False] <= 1, right


def test_unit_channels_keeps_a_dead_channel_at_zero():
    w = jnp.asarray(kernel_by_channel(jnp.ones((3, 3, 2, 4)).at[:, :, 1, :].set(0.0)))
    out = np.asarray(unit_channels(w))
    assert np.all(out[1] == 0) and np.isfinite(out).all()


# ----------------------------------------------------------------------------- 3, 4. Li et al. Table 1
@pytest.mark.slow
@pytest.mark.parametrize("preset,model,options,before,after,flops_cut", [
    ("vgg16-a", "vgg16", {"variant": "li"}, 14_987_722, 5_397_034, 34.2),
    ("resnet110-a", "resnet110", {}, 1_727_962, 1_688_522, 15.9),
    ("resnet110-b", "resnet110", {}, 1_727_962, 1_168_424, 38.7),
])
def test_li_table_1_models_export_to_the_papers_sizes(preset, model, options, before, after, flops_cut):
    from test_structured import _setup
    from repr_jax.compress.export import export_state
    from repr_jax.methods.li_l1 import LiL1, LiL1Config
    from repr_jax.models import architecture
    method, state = _setup(LiL1, LiL1Config(preset=preset), model=model, **options)
    new, _ = method.before_epoch(state, 0)
    e = export_state(new, architecture(model, **options))
    assert (e.params_before, e.params_after) == (before, after)
    assert 100 * (1 - e.flops_after / e.flops_before) == pytest.approx(flops_cut, abs=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("preset,params_cut,flops_cut,conv1_keep", [
    ("resnet34-a", 7.6, 15.5, (44, 89, 179, 512)), ("resnet34-b", 10.8, 24.2, (32, 51, 153, 512))])
def test_li_resnet34_presets_give_table_1s_imagenet_reductions(preset, params_cut, flops_cut, conv1_keep):
    """Li et al. 2017 Table 1, ResNet-34-pruned-A/B on ImageNet (224×224, 1000 classes): the
    paper's totals (2.16e7 parameters, 3.64e9 FLOPs) leave out the three 1×1 projection
    shortcuts, so the reductions are compared on totals without them (a numpy count here)."""
    import optax
    from repr_jax.compress.export import export_state
    from repr_jax.masks import live_filters
    from repr_jax.methods import MethodContext
    from repr_jax.methods.li_l1 import LiL1, LiL1Config
    from repr_jax.models import architecture, create_model
    from repr_jax.state import create_train_state
    shape = (224, 224, 3)
    model, arch = create_model("resnet34", 1000), architecture("resnet34", 1000, input_shape=shape)
    ctx = MethodContext.for_model(model, architecture=arch, train_size=64, batch_size=32, input_shape=shape)
    method = LiL1(LiL1Config(preset=preset), ctx)
    new, _ = method.before_epoch(create_train_state(model, optax.sgd(0.1), 0, input_shape=shape, method=method), 0)
    live = {k: int(np.sum(v)) for k, v in live_filters(new.masks, new.layers).items()}
    skipped = ("layer1_block0", "layer2_block0", "layer2_block3", "layer3_block0", "layer3_block5")
    for name in skipped:
        assert live[f"{name}/conv1"] == 64 * 2 ** (int(name[5]) - 1), name
    for stage, keep in zip((1, 2, 3, 4), conv1_keep):   # ⌊F(1 − p)⌋ in the stage's pruned blocks
        assert live[f"layer{stage}_block1/conv1"] == keep
    assert sum(v < 64 * 2 ** (int(k[5]) - 1) for k, v in live.items() if k.endswith("conv1")) == 8
    e = export_state(new, arch)
    assert (e.params_before, e.flops_before) == (21_797_672, 3_663_761_408)   # torchvision's count
    projections = [(56 // 2 ** s) ** 2 * c * 2 * c for c, s in ((64, 1), (128, 2), (256, 3))]
    short_params = sum(c * 2 * c + 2 * 2 * c for c in (64, 128, 256))          # 1×1 kernel + BN
    p0, f0 = e.params_before - short_params, e.flops_before - sum(projections)
    assert (round(p0, -5), round(f0, -7)) == (21_600_000, 3_640_000_000)
    assert 100 * (e.params_before - e.params_after) / p0 == pytest.approx(params_cut, abs=0.05)
    assert 100 * (e.flops_before - e.flops_after) / f0 == pytest.approx(flops_cut, abs=0.05)


def test_vgg16_heads():
    from repr_jax.models import create_model
    count = lambda m: sum(x.size for x in jax.tree_util.tree_leaves(  # noqa: E731
        jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]))
    assert count(create_model("vgg16")) == 14_724_042
    assert count(create_model("vgg16", variant="li")) == 14_987_722
    with pytest.raises(ValueError, match="unknown vgg16 variant"):
        create_model("vgg16", variant="paper2")


# ----------------------------------------------------------------------------- 5. Slimming
def test_slimming_prunes_by_the_global_threshold_alone():
    """|γ| of two layers; the 50 % percentile threshold would empty layer b but min_keep = 2:
    with the threshold (the paper's) layer b keeps its 2 best and nothing above the threshold
    is pruned; ``fill_quota`` (the old behaviour) prunes the next channels of layer a instead."""
    a = np.array([0.9, 0.8, 0.7, 0.6, 0.05, 0.5])
    b = np.array([0.01, 0.02, 0.03, 0.04, 0.06, 0.07])
    scores = {"a": -jnp.asarray(a), "b": -jnp.asarray(b)}          # higher = drop first
    live = {"a": jnp.ones(6), "b": jnp.ones(6)}
    threshold = np.sort(np.concatenate([a, b]))[6]                    # 6 of 12 below it
    got = select_drops(scores, live, 0.5, min_keep=2, fill_quota=False)
    np.testing.assert_array_equal(np.asarray(got["a"]) > 0, a >= threshold)
    np.testing.assert_array_equal(np.asarray(got["b"]) > 0, np.argsort(np.argsort(-b)) < 2)
    assert int(np.sum(got["a"]) + np.sum(got["b"])) == 12 - 5        # 5 pruned, not 6
    filled = select_drops(scores, live, 0.5, min_keep=2, fill_quota=True)
    assert int(np.sum(filled["a"]) + np.sum(filled["b"])) == 6 and float(filled["a"][5]) == 0.0


# ----------------------------------------------------------------------------- 6. min_keep
@pytest.mark.parametrize("method", ["li-l1", "slimming", "trimming", "channel-pruning"])
def test_exporting_methods_refuse_min_keep_0(method, tmp_path, capsys):
    code = cli.main(["--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x"), "--epochs", "2",
                     "--batch-norm", "--method", method, "--set", f"{method}.min_keep=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"{method}.min_keep must be >= 1" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- 9. re-init scale
def test_new_filters_take_the_mean_norm_of_live_nonzero_kept_filters():
    from repr_jax import orthogonal_reinit
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    kernel[..., 1] = 0.0                                             # a kept filter that died
    keep = np.array([1, 1, 1, 0, 1, 0], bool)
    saved = rng.normal(size=kernel.shape).astype(np.float32)
    out = np.asarray(orthogonal_reinit(jax.random.key(0), jnp.asarray(kernel), jnp.asarray(keep), jnp.asarray(saved)))
    norms = np.linalg.norm(kernel.reshape(-1, 6), axis=0)
    expected = norms[[0, 2, 4]].mean()                               # not counting the dead filter
    np.testing.assert_allclose(np.linalg.norm(out.reshape(-1, 6), axis=0)[[3, 5]], expected, rtol=1e-5)


# ----------------------------------------------------------------------------- 11. sensitivity
def test_sensitivity_measures_on_held_out_images_when_the_run_has_them(tmp_path, tiny_cifar_dir):
    from repr_jax.errors import RunError
    from repr_jax.experiment import load_run_data, load_run_state
    from repr_jax.masks import drop_filters, live_filters
    from repr_jax.run_dir import read_config
    from repr_jax.studies.sensitivity import analyse
    from repr_jax.train import evaluate
    out = tmp_path / "base"
    tiny = ["--model", "convnet", "--depth", "2", "--width", "8", "--batch-size", "64", "--lr", "0.01", "--quiet"]
    assert cli.main([*tiny, "--epochs", "1", "--set", "data.holdout=128", "--data-dir", str(tiny_cifar_dir),
                     "--out", str(out)]) == 0
    report = analyse(out, tmp_path / "sens", ratios=(0.5,))
    assert report["split"] == "heldout" and report["images"] == 128
    assert json.loads((tmp_path / "sens" / "sensitivity.json").read_text())["split"] == "heldout"
    _, state = load_run_state(out)
    data = load_run_data(read_config(out))
    k = np.abs(np.asarray(state.params["conv0"]["kernel"])).sum(axis=(0, 1, 2))
    live = dict(live_filters(state.masks, state.layers))
    live["conv0"] = jnp.asarray((np.argsort(np.argsort(-k)) < 4).astype(np.float32))
    acc = evaluate(drop_filters(state, state.layers, live), jnp.asarray(data.held_x), jnp.asarray(data.held_y))
    assert report["curves"]["conv0"][0] == pytest.approx(float(acc["accuracy"]))
    assert analyse(out, tmp_path / "sens-test", ratios=(0.5,), split="test")["images"] == len(data.test_y)
    plain = tmp_path / "plain"
    assert cli.main([*tiny, "--epochs", "1", "--data-dir", str(tiny_cifar_dir), "--out", str(plain)]) == 0
    with pytest.raises(RunError, match="holds out no training images"):
        analyse(plain, tmp_path / "x", ratios=(0.5,), split="heldout")


# ----------------------------------------------------------------------------- old runs keep their behaviour
@pytest.mark.parametrize("saved,key,value", [
    ({"optim": {"optimizer": "adam"}}, "optim.adam_step_count", "shared"),
    ({"optim": {"optimizer": "sgd"}}, "optim.adam_step_count", "element"),
    ({"method": {"name": "slimming"}}, "method.fill_quota", True),
    ({"method": {"name": "channel-pruning"}}, "method.normalize", False),
    ({"model": {"hidden": 16, "dropconnect": 0.5}}, "model.dropconnect_bias", False),
    ({"model": {"hidden": 16, "dropconnect": 0.5, "dropconnect_bias": True}}, "model.dropconnect_bias", True),
])
def test_a_run_written_before_a_fidelity_fix_resumes_as_it_was_trained(tmp_path, saved, key, value):
    """A run directory's config.json without a setting added by these fixes is read with the
    behaviour it was trained with (``as_trained``), so resuming it does not switch behaviour
    mid-run; a new run gets the paper's."""
    from repr_jax.config import RunConfig, flatten
    from repr_jax.run_dir import read_config
    (tmp_path / "config.json").write_text(json.dumps({"config": {"out": "x", **saved}}))
    assert flatten(read_config(tmp_path).to_dict())[key] == value
    fresh = flatten(RunConfig.from_dict({"out": "x", **saved}).to_dict())[key]
    assert fresh == ({"optim.adam_step_count": "element", "method.fill_quota": False, "method.normalize": True,
                      "model.dropconnect_bias": True}[key] if "dropconnect_bias" not in json.dumps(saved) else value)
