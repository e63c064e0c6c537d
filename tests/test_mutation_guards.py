"""Guards against one-line bugs a mutation audit found the rest of the suite let through.

Each test drives the path a user's run takes (a config parsed from the command line, the
method's ``before_epoch``/``after_epoch`` hooks, the jitted train step, the optimizer that
``make_optimizer`` builds) on a tiny model, and compares against a value written here or a
numpy reference. The docstring of each test names the one-line bug it catches:

1. RePr's ``exclude_first`` sparing the last conv instead of the first;
2. ``repr.rounding`` not reaching the ranking (``floor`` silently behaving as ``nearest``);
3. re-initialised filters keeping their old optimizer moments in ``drop_mode=freeze``;
4. the sign of JST's policy gradient flipped (ThresNet learning to prefer low rewards);
5. the mask applied only before the optimizer, not after it (weight decay and momentum
   residue then move frozen parameters);
6. JST's REINFORCE without its reward baseline;
7. Channel Pruning ignoring its own ``normalize`` setting.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from repr_jax.cli import build_parser, config_from_args
from repr_jax.experiment import build_method, build_model, initial_state
from repr_jax.masks import live_filters
from repr_jax.methods import MethodContext
from repr_jax.methods.jst import SEARCH, JointSearchTraining, JstConfig
from repr_jax.methods.jst_search import log_prob, threshold_policy
from repr_jax.models import architecture, create_model
from repr_jax.optim import OptimConfig, make_optimizer
from repr_jax.state import create_train_state
from repr_jax.train import train_step

TRAIN_IMAGES = 64


# ----------------------------------------------------------------------------- helpers
def _repr_run(*flags: str):
    """``(config, method, state)`` of a RePr run described by command-line ``flags`` (the
    study's rows are such flags): the paper's C³ with 8 filters per conv, one round
    S1 = S2 = 1 over 2 epochs."""
    args = build_parser("test").parse_args(
        ["--method", "repr", "--model", "convnet", "--width", "8", "--depth", "3", "--epochs", "2",
         "--batch-size", "16", "--repr-s1", "1", "--repr-s2", "1", "--repr-iterations", "1",
         "--out", "unused-run-dir", *flags])
    config = config_from_args(args)
    model = build_model(config)
    method = build_method(config, model, config.architecture(), TRAIN_IMAGES)
    _, _, state = initial_state(config, TRAIN_IMAGES, model, method)
    return config, method, state


def _batch(seed: int = 0, n: int = 16):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3)), jnp.uint8),
            jnp.asarray(rng.integers(0, 10, n), jnp.int32))


def _step(state, method, seed: int):
    x, y = _batch(seed)
    state, _ = train_step(state, x, y, jax.random.key(seed), layers=state.layers, method=method,
                          augmentation=False)
    return state


def _dropped(live: dict) -> dict:
    return {name: np.flatnonzero(np.asarray(v) == 0) for name, v in live.items()}


def _trace(opt_state):
    """The SGD momentum buffer (params-shaped) inside ``make_optimizer``'s chain."""
    return optax.tree_utils.tree_get(opt_state, "trace")


# ----------------------------------------------------------------------------- 1. exclude_first
def test_repr_exclude_first_never_drops_a_filter_of_the_first_conv():
    """Bug caught: ``repr.py`` ``_drop``: ``exclude = (layers[0].name,)`` → ``(layers[-1].name,)``
    (``--repr-exclude-first``, the study's ``ortho-exclude-first`` row, sparing the last conv).

    Global ranking (the study row's), p = 0.5: the first conv keeps all 8 filters and the
    round(0.5 · 16) = 8 drops all fall on conv1 and conv2; per-layer ranking: exactly
    conv0 8/8, conv1 4/8, conv2 4/8 live."""
    for per_layer, expected in ((False, None), (True, {"conv0": 8, "conv1": 4, "conv2": 4})):
        flags = ("--repr-exclude-first", "--repr-drop", "0.5", "--repr-min-keep", "0")
        _, method, state = _repr_run(*flags, *(("--repr-per-layer",) if per_layer else ()))
        assert [l.name for l in state.layers] == ["conv0", "conv1", "conv2"]
        state, (event,) = method.before_epoch(state, 1)
        live = {n: int(np.sum(np.asarray(v))) for n, v in live_filters(state.masks, state.layers).items()}
        assert live["conv0"] == 8, f"the first conv lost filters with exclude_first: {live}"
        assert 16 - live["conv1"] - live["conv2"] == 8, live
        if expected is not None:
            assert live == expected
        record = method.record(event)
        row = {r["layer"]: r for r in record["layers"]}
        assert row["conv0"]["dropped_indices"] == []


# ----------------------------------------------------------------------------- 2. rounding
def test_repr_rounding_floor_reaches_the_ranking():
    """Bug caught: ``repr.py`` ``_drop``: the ``rounding=cfg.rounding`` argument of
    ``select_drops`` left out (``repr.rounding=floor`` then drops like ``nearest``).

    24 live filters, p = 0.2: p·n = 4.8, so ``floor`` (the official code's int(p·n)) drops
    exactly 4 and ``nearest`` 5; per layer (8 filters): 1.6 → 1 vs 2 in each layer."""
    cases = ((False, "floor", {"all": 4}), (False, "nearest", {"all": 5}),
             (True, "floor", {"conv0": 1, "conv1": 1, "conv2": 1}),
             (True, "nearest", {"conv0": 2, "conv1": 2, "conv2": 2}))
    for per_layer, rounding, expected in cases:
        _, method, state = _repr_run("--repr-drop", "0.2", "--set", f"repr.rounding={rounding}",
                                     *(("--repr-per-layer",) if per_layer else ()))
        state, (event,) = method.before_epoch(state, 1)
        dropped = {n: len(v) for n, v in _dropped(live_filters(state.masks, state.layers)).items()}
        got = {"all": sum(dropped.values())} if not per_layer else dropped
        assert got == expected, f"rounding={rounding} per_layer={per_layer}: dropped {dropped}"
        assert sum(len(r["dropped_indices"]) for r in method.record(event)["layers"]) == sum(expected.values())


# ----------------------------------------------------------------------------- freeze mode, momentum > 0, wd > 0
@functools.lru_cache(maxsize=None)
def _freeze_trajectory():
    """A freeze-mode RePr round with SGD momentum 0.9 and weight decay 5e-4: one full step
    (momentum builds up in every filter), the drop, two sub-network steps, the re-init.
    Returns every intermediate state (host copies) and the method."""
    _, method, state = _repr_run("--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4",
                                 "--set", "repr.drop_mode=freeze", "--repr-drop", "0.5")
    state = _step(state, method, 0)                       # epoch 0: full network
    state, _ = method.before_epoch(state, 1)              # drop (freeze)
    dropped_state = state
    state = _step(state, method, 1)                       # epoch 1: sub-network
    state = _step(state, method, 2)
    trained = state
    state, _ = method.after_epoch(state, 1)               # re-initialise
    return method, dropped_state, trained, state


def test_freeze_mode_revived_filters_start_with_a_fresh_optimizers_moments():
    """Bug caught: ``masks.py`` ``revive_filters``: ``opt_state=scale_moments(state.tx,
    state.opt_state, keep_moments)`` → ``opt_state=state.opt_state`` (in freeze mode a frozen
    filter's momentum is never zeroed at the drop, so the revived filter inherited it).

    With momentum 0.9 and weight decay 5e-4: after the re-init the momentum of every revived
    filter (kernel and bias) equals a fresh optimizer's on that slice (0) while the kept
    filters' is untouched; and the next step moves a revived filter exactly as a fresh
    optimizer would."""
    method, dropped_state, trained, revived = _freeze_trajectory()
    layers = revived.layers
    dead = {n: np.asarray(v) == 0 for n, v in live_filters(dropped_state.masks, layers).items()}
    assert all(d.any() for d in dead.values())
    old, new, fresh = (_trace(s) for s in (trained.opt_state, revived.opt_state,
                                          revived.tx.init(revived.params)))
    for layer in layers:
        d = dead[layer.name]
        for leaf in ("kernel", "bias"):
            o, n, f = (np.asarray(t[layer.name][leaf]) for t in (old, new, fresh))
            assert np.abs(o[..., d]).max() > 0          # the frozen filters had momentum to forget
            np.testing.assert_array_equal(n[..., d], f[..., d],
                                          err_msg=f"{layer.name}/{leaf}: revived filters kept old moments")
            np.testing.assert_array_equal(n[..., ~d], o[..., ~d])   # kept filters: untouched
    # the step after: a revived filter moves as with freshly initialised moments (the step
    # count, hence the learning rate, kept: only the momentum buffer is replaced)
    ours = _step(revived, method, 3)
    zeroed = optax.tree_utils.tree_set(revived.opt_state, trace=fresh)
    theirs = _step(revived.replace(opt_state=zeroed), method, 3)
    for layer in layers:
        d = dead[layer.name]
        for leaf in ("kernel", "bias"):
            np.testing.assert_allclose(np.asarray(ours.params[layer.name][leaf])[..., d],
                                       np.asarray(theirs.params[layer.name][leaf])[..., d], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- 5. mask after the optimizer
def test_freeze_mode_frozen_filters_do_not_move_with_momentum_and_weight_decay():
    """Bug caught: ``optim.py`` ``make_optimizer``: ``optax.chain(masked_updates(), core,
    masked_updates())`` → ``optax.chain(masked_updates(), core)`` (weight decay on the frozen,
    non-zero kernels and their momentum from before the drop then reach the parameters).

    Freeze mode, momentum 0.9, weight decay 5e-4: through two sub-network steps the dropped
    filters' kernels and biases stay bit-for-bit at their drop-time values, the rest trains."""
    _, dropped_state, trained, _ = _freeze_trajectory()
    layers = trained.layers
    for layer in layers:
        d = np.asarray(live_filters(dropped_state.masks, layers)[layer.name]) == 0
        for leaf in ("kernel", "bias"):
            before = np.asarray(dropped_state.params[layer.name][leaf])
            after = np.asarray(trained.params[layer.name][leaf])
            np.testing.assert_array_equal(after[..., d], before[..., d],
                                          err_msg=f"{layer.name}/{leaf}: a frozen filter moved")
            assert not np.allclose(after[..., ~d], before[..., ~d])


def test_masked_entries_get_exactly_zero_updates_through_the_whole_chain():
    """Bug caught: as above, ``optim.py`` ``make_optimizer`` without the trailing
    ``masked_updates()``; checked on the optimizer alone against a numpy SGD reference.

    SGD (lr 0.1, momentum 0.9, weight decay 0.01 on kernels) with momentum already built up
    in every entry: the masked filters' updates are exactly 0 (kernel and bias), their
    gradients do not enter the momentum, and the live filters' updates equal numpy's
    −lr · (μ·m + g + wd·w); the masked filters' momentum does not move."""
    lr, mu, wd = 0.1, 0.9, 0.01
    tx = make_optimizer(OptimConfig(learning_rate=lr, momentum=mu, weight_decay=wd), optax.constant_schedule(lr))
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}
    grads0 = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    ones = {"conv": {"kernel": jnp.ones(4), "bias": jnp.ones(4)}}
    _, opt_state = tx.update(grads0, tx.init(params), params, masks=ones)     # momentum everywhere
    m0 = {k: np.asarray(v) for k, v in _trace(opt_state)["conv"].items()}
    assert all(np.all(v != 0) for v in m0.values())
    live = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    masks = {"conv": {"kernel": live, "bias": live}}
    updates, new_state = tx.update(grads, opt_state, params, masks=masks)
    keep = np.asarray(live) > 0
    for leaf, decay in (("kernel", wd), ("bias", 0.0)):
        u = np.asarray(updates["conv"][leaf])
        w, g = np.asarray(params["conv"][leaf]), np.asarray(grads["conv"][leaf])
        np.testing.assert_array_equal(u[..., ~keep], 0.0, err_msg=f"{leaf}: masked entries were updated")
        expected = -lr * (mu * m0[leaf] + g + decay * w)
        np.testing.assert_allclose(u[..., keep], expected[..., keep], rtol=1e-5, atol=1e-7)
        # a masked filter's momentum stands still: neither its gradient nor weight decay enters it,
        # nor does it decay (repr_jax.optim.frozen_where_masked)
        np.testing.assert_array_equal(np.asarray(_trace(new_state)["conv"][leaf])[..., ~keep], m0[leaf][..., ~keep])


def _jst_in_search(seed: int, batch_size: int, subnets: int):
    """``(method, state)``: JST on a C³(6) with BatchNorm, 64 held-out images drawn from
    ``seed``, γ = 5, no coarse epochs, after ``before_epoch(0)`` (the first search step)."""
    options = dict(depth=2, width=6, batch_norm=True)
    model = create_model("convnet", **options)
    rng = np.random.default_rng(seed)
    held_x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    held_y = rng.integers(0, 10, 64).astype(np.int32)
    ctx = MethodContext.for_model(model, architecture=architecture("convnet", **options), train_size=64,
                                  batch_size=batch_size, heldout_images=held_x, heldout_labels=held_y)
    method = JointSearchTraining(JstConfig(subnets=subnets, coarse_epochs=0, search_steps=1, step_epochs=1,
                                           val_batches=2, reward_batches=2, alpha_steps=0, gamma=5.0,
                                           hidden=16, policy_lr=1e-3), ctx)
    state = create_train_state(model, make_optimizer(OptimConfig(), optax.constant_schedule(0.05)), 0,
                               method=method)
    state, _ = method.before_epoch(state, 0)
    return method, state


# ----------------------------------------------------------------------------- 4. JST policy gradient
def test_jst_policy_step_raises_the_probability_of_the_higher_reward_subnetwork():
    """Bug caught: ``jst.py`` ``_search_update``: ``advantages = rewards - baseline`` →
    ``baseline - rewards`` (or ``policy_loss``'s leading minus dropped): ThresNet then
    climbs the wrong way.

    Two sub-networks with set thresholds: the whole backbone (β = 0.95 in every layer) and
    one filter per layer (β = 0.55). With γ = 5 the small one has the clearly higher reward
    (−(loss + γ·params fraction)). After the search step's ThresNet update (one Adam step
    through ``after_epoch``), log π(β_small | α) − log π(β_full | α) has grown: the policy
    moved towards the higher-reward sample."""
    method, state = _jst_in_search(seed=0, batch_size=32, subnets=2)
    assert int(state.method_state["mode"]) == SEARCH
    L = len(method.names)
    betas = jnp.asarray([[0.95] * L, [0.55] * L], jnp.float32)
    samples = {l.name: jnp.stack([jnp.ones(l.num_filters), jnp.zeros(l.num_filters).at[0].set(1.0)])
               for l in method.searched}
    ms = {**state.method_state, "samples": samples, "thresholds": betas}
    state = state.replace(method_state=ms)
    old_policy = ms["policy"]
    alphas = [state.method_params["alpha"][n] for n in method.names]

    new, (event,) = method.after_epoch(state, 0)
    rewards = np.asarray(event.arrays["rewards"])
    assert rewards[1] > rewards[0] + 1.0, rewards          # the one-filter sub-network wins clearly
    assert int(event.arrays["chosen"]) == 1

    def preference(policy):   # log π(β_1) − log π(β_0) under the same α
        a, b = threshold_policy(policy, alphas)
        lp = log_prob(a, b, betas)
        return float(lp[1] - lp[0])

    before, after = preference(old_policy), preference(new.method_state["policy"])
    assert after > before + 1e-4, (f"the policy step moved away from the higher-reward sample: "
                                   f"preference {before:.6f} → {after:.6f}")


def test_jst_policy_gradient_subtracts_the_reward_baseline():
    """Bug caught: ``jst.py`` ``_search_update``: ``advantages = rewards - baseline`` →
    ``advantages = rewards`` (REINFORCE without its baseline, Eq. 4's b): the direction test
    above can still pass. Adam's first moment after one step is (1 − β₁)·g, so the policy
    optimizer's state pins the gradient itself: g = ∇ policy_loss with advantages R − mean R
    (the baseline of the first search step is the mean reward)."""
    from repr_jax.methods.jst_search import policy_loss
    method, state = _jst_in_search(seed=1, batch_size=16, subnets=3)
    ms = state.method_state
    alphas = [state.method_params["alpha"][n] for n in method.names]
    new, (event,) = method.after_epoch(state, 0)
    rewards = jnp.asarray(event.arrays["rewards"])
    assert float(event.arrays["baseline"]) == pytest.approx(float(jnp.mean(rewards)), rel=1e-6)

    def first_moment(advantages):
        g = jax.grad(policy_loss)(ms["policy"], alphas, ms["thresholds"], advantages)
        return jax.tree_util.tree_map(lambda x: 0.1 * x, g)            # optax.adam's b1 = 0.9
    got = new.method_state["policy_opt"][0].mu
    want, without = first_moment(rewards - jnp.mean(rewards)), first_moment(rewards)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
    assert not np.allclose(flat(want), flat(without), rtol=1e-3)     # the test tells the two apart
    np.testing.assert_allclose(flat(got), flat(want), rtol=1e-4, atol=1e-9)


def test_channel_pruning_passes_its_own_normalize_setting_to_the_selection(monkeypatch):
    """Bug caught: ``channel_pruning.py`` ``select`` calling ``selection_gram`` with a fixed
    ``normalize`` instead of ``config.normalize`` (the fidelity test calls the helper
    directly). The method is driven as a user's loop drives it (``Pruner.before_epoch`` at the
    prune epoch) and the flag reaching the LASSO's Gram matrix is recorded."""
    import flax.linen as nn

    import repr_jax as rj
    from repr_jax.methods import channel_pruning

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Conv(6, (3, 3))(x))
            x = nn.relu(nn.Conv(6, (3, 3))(x))
            return nn.Dense(10)(x.mean(axis=(1, 2)))

    seen = []
    real = channel_pruning.selection_gram

    def spy(patches, w, y, normalize):
        seen.append(normalize)
        return real(patches, w, y, normalize)

    monkeypatch.setattr(channel_pruning, "selection_gram", spy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    for flag in (True, False):
        seen.clear()
        pr = rj.Pruner("channel-pruning", Net(), x[:1], epochs=2, steps_per_epoch=2, batch_size=16,
                       fraction=0.5, images=8, lasso_steps=5, bisections=4, prune_epoch=0, normalize=flag,
                       scoring_data=(x, y))
        variables = Net().init(jax.random.key(0), x[:1])
        tx = pr.wrap(optax.sgd(0.01))
        opt_state, ps = tx.init(variables["params"]), pr.init(variables["params"])
        pr.before_epoch(0, variables, opt_state, ps)
        assert seen and set(seen) == {flag}, (flag, seen)
