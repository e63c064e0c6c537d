"""One path: the runner's jitted step (:func:`repr_jax.train.train_step`) and epoch
transitions compute exactly what a user's own loop over :class:`repr_jax.Pruner` computes —
same initial pieces, batches and keys, same parameters, masks and method state after
every epoch — for a method with each kind of hook: RePr (drop before an epoch, re-init
after), Slimming (a loss term, a prune), Han (frozen leaves through the update mask) and
JST (a per-step hook and trainable method parameters)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import repr_jax as rj
from repr_jax.data.pipeline import normalize
from repr_jax.state import create_train_state
from repr_jax.train import RNG_STREAMS, cross_entropy, train_step

HOOK, MODEL, LOSS = 11, 12, 13      # the step key's fold_in streams (documented in train.py)


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        for f in (8, 8):
            x = nn.Conv(f, (3, 3), use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _user_step(pr, tx):
    @jax.jit
    def step(variables, opt_state, ps, xb, yb, key):
        ps = pr.before_step(variables, ps, jax.random.fold_in(key, HOOK))
        model_key = jax.random.fold_in(key, MODEL)
        rngs = {name: jax.random.fold_in(model_key, i) for i, name in enumerate(RNG_STREAMS)}
        x = normalize(xb)

        def loss_fn(params, method_params):
            logits, stats = pr.forward({**variables, "params": params}, ps, x, train=True,
                                       method_params=method_params, rngs=rngs)
            terms = pr.loss_terms(params, variables, ps, x, yb, logits, jax.random.fold_in(key, LOSS),
                                  method_params=method_params)
            total = jnp.mean(cross_entropy(logits, yb))
            for name in sorted(terms):
                total = total + terms[name]
            return total, stats

        (_, stats), (grads, mgrads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            variables["params"], ps.method_params)
        updates, opt_state = tx.update(grads, opt_state, variables["params"], masks=pr.update_masks(variables, ps))
        ps = pr.method_update(ps, mgrads)
        return {"params": optax.apply_updates(variables["params"], updates), "batch_stats": stats}, opt_state, \
            pr.after_step(ps)
    return step


@pytest.mark.parametrize("method,settings", [
    ("repr", {"s1": 1, "s2": 1, "iterations": 1, "drop_fraction": 0.25}),
    ("slimming", {"fraction": 0.5, "prune_epoch": 1, "l1": 1e-3}),
    ("han", {"quality": (0.5,), "retrain_epochs": 1}),
    ("jst", {"coarse_epochs": 1, "search_steps": 1, "step_epochs": 1, "subnets": 2, "val_batches": 2,
             "reward_batches": 1, "alpha_steps": 1, "hidden": 8}),
])
def test_the_runner_step_is_the_user_loop(method, settings):
    rng = np.random.default_rng(0)
    n, batch, epochs = 64, 16, 3
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    model = SmallCNN()
    pr = rj.Pruner(method, model, images[:1].astype(np.float32), epochs=epochs, steps_per_epoch=n // batch,
                   batch_size=batch, scoring_data=(images, labels), heldout_data=(images[:32], labels[:32]),
                   preprocess=normalize, **settings)
    tx = pr.wrap(optax.sgd(0.05, momentum=0.9))
    runner = create_train_state(pr.model, tx, 0, input_shape=(16, 16, 3), method=pr.method)
    variables, opt_state, ps = rj.Pruner.pieces(runner)
    user_step = _user_step(pr, tx)
    runner_step = jax.jit(lambda s, x, y, k: train_step(s, x, y, k, layers=s.layers, method=pr.method,
                                                         augmentation=False))
    inputs = pr.run_inputs()
    seen = set()
    for epoch in range(epochs):
        runner, ev_runner = pr.method.before_epoch(runner, epoch, inputs)
        variables, opt_state, ps, ev_user = pr.before_epoch(epoch, variables, opt_state, ps)
        seen |= {type(e).__name__ for e in ev_user}
        assert len(ev_runner) == len(ev_user)
        for i in range(n // batch):
            xb, yb, key = images[i * batch:(i + 1) * batch], labels[i * batch:(i + 1) * batch], jax.random.key(i)
            runner, _ = runner_step(runner, xb, yb, key)
            variables, opt_state, ps = user_step(variables, opt_state, ps, xb, yb, key)
        runner, _ = pr.method.after_epoch(runner, epoch, inputs)
        variables, opt_state, ps, _ = pr.after_epoch(epoch, variables, opt_state, ps)
        mine, theirs = rj.Pruner.pieces(runner), (variables, opt_state, ps)
        for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(theirs)):
            a, b = np.asarray(a), np.asarray(b)
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{method} epoch {epoch}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{method} epoch {epoch}")
    assert seen, f"{method} did nothing in three epochs"
    assert int(ps.step) == epochs * (n // batch)
