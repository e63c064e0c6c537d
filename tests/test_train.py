"""Training: loss goes down, checkpoints round-trip, kill-and-resume equals an uninterrupted run."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conftest import interrupted_at_checkpoint, synthetic_cifar
from repr_jax import OptimConfig, create_model, create_train_state, make_optimizer, method_config
from repr_jax.checkpoint import Checkpointer
from repr_jax.config import DataConfig, ModelConfig, RunConfig
from repr_jax.experiment import load_run_state, run
from repr_jax.optim import learning_rate_schedule
from repr_jax.train import evaluate, run_epoch

_TIMING = {"images_per_second", "epoch_seconds", "elapsed_seconds"}


def test_a_few_epochs_reduce_the_loss():
    tx, ty, vx, vy = synthetic_cifar(256, 64, seed=5)
    cfg = OptimConfig(learning_rate=0.01, schedule="constant")
    state = create_train_state(create_model("convnet", depth=2, width=8), make_optimizer(
        cfg, learning_rate_schedule(cfg, 8, 4)), seed=0)
    x, y = jnp.asarray(tx), jnp.asarray(ty)
    before = evaluate(state, jnp.asarray(vx), jnp.asarray(vy))
    losses = []
    for epoch in range(4):
        state, m = run_epoch(state, x, y, jax.random.key(epoch), batch_size=32, layers=state.layers)
        losses.append(m["loss"])
    after = evaluate(state, jnp.asarray(vx), jnp.asarray(vy))
    assert losses[-1] < losses[0] and after["loss"] < before["loss"]
    assert after["accuracy"] > 0.5  # class colours are easy to learn
    assert int(state.step) == 4 * (256 // 32)


def test_checkpoint_round_trips_the_whole_state(tmp_path):
    cfg = OptimConfig(optimizer="adam", learning_rate=1e-3)
    tx = make_optimizer(cfg, optax.constant_schedule(1e-3))
    state = create_train_state(create_model("resnet20"), tx, seed=3)
    x, y, _, _ = synthetic_cifar(64, 1)
    state, _ = run_epoch(state, jnp.asarray(x), jnp.asarray(y), jax.random.key(0), batch_size=32,
                         layers=state.layers)
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(1, state, {"test_accuracy": 0.1}, {"epochs_done": 1})
    fresh = create_train_state(create_model("resnet20"), tx, seed=99)
    restored, extra = ckpt.restore(fresh)
    assert extra == {"epochs_done": 1}
    leaves_a, tree_a = jax.tree_util.tree_flatten(state)
    leaves_b, tree_b = jax.tree_util.tree_flatten(restored)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _config(tmp_path, data_dir, name, **kw):
    return RunConfig(out=str(tmp_path / name), data=DataConfig(dir=str(data_dir)), epochs=4,
                     batch_size=64, seed=1, optim=OptimConfig(learning_rate=0.01),
                     method=method_config("repr", s1=1, s2=1, iterations=2),
                     model=ModelConfig(width=8), quiet=True, **kw)


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in _TIMING}
            for line in path.read_text().splitlines()]


def test_kill_and_resume_equals_uninterrupted_run(tmp_path, tiny_cifar_dir):
    full = run(_config(tmp_path, tiny_cifar_dir, "full"))

    with interrupted_at_checkpoint(3):   # after the first round's re-initialisation and one more drop
        run(_config(tmp_path, tiny_cifar_dir, "killed"))
    assert not (tmp_path / "killed" / "summary.json").exists()
    from repr_jax.train import eval_step, train_step_indexed
    before = train_step_indexed._cache_size(), eval_step._cache_size()
    resumed = run(dataclasses.replace(_config(tmp_path, tiny_cifar_dir, "killed"), resume=True))
    # restored (committed) arrays beside fresh running sums once compiled the steps twice
    assert (train_step_indexed._cache_size() - before[0], eval_step._cache_size() - before[1]) == (1, 1)

    assert _rows(tmp_path / "full" / "metrics.jsonl") == _rows(tmp_path / "killed" / "metrics.jsonl")
    assert (tmp_path / "full" / "pruning.jsonl").read_text() == (tmp_path / "killed" / "pruning.jsonl").read_text()
    assert resumed["final_test_accuracy"] == full["final_test_accuracy"]
    _, a = load_run_state(tmp_path / "full")
    _, b = load_run_state(tmp_path / "killed")
    leaves_a, leaves_b = (jax.tree_util.tree_flatten_with_path(s)[0] for s in (a, b))
    assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b]
    assert "snapshot" in a.method_state   # RePr's state is part of the checkpoint
    for (_, x), (_, y) in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_orthogonality_loss_lowers_the_penalty_during_training():
    from repr_jax import orthogonality_penalty
    tx, ty, _, _ = synthetic_cifar(128, 1, seed=2)
    cfg = OptimConfig(learning_rate=0.01, schedule="constant")
    penalties = {}
    for lam in (0.0, 1.0):
        state = create_train_state(create_model("convnet", depth=2, width=8), make_optimizer(
            cfg, learning_rate_schedule(cfg, 4, 3)), seed=0)
        for epoch in range(3):
            state, m = run_epoch(state, jnp.asarray(tx), jnp.asarray(ty), jax.random.key(epoch),
                                 batch_size=32, layers=state.layers, ortho_lambda=lam)
        assert np.isfinite(m["loss"])
        penalties[lam] = float(orthogonality_penalty(state.params, state.masks, state.layers))
    assert penalties[1.0] < penalties[0.0]


def test_stochastic_layers_get_a_fresh_rng_stream_every_step():
    """Models receive per-step ``rngs`` (dropout, dropconnect): a Dropout model trains (Flax
    raises without a 'dropout' stream), its masks differ between steps and repeat for the
    same step key."""
    import flax.linen as nn
    from repr_jax.train import RNG_STREAMS, forward, train_step

    class Dropped(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv0")(x)).reshape(x.shape[0], -1)
            x = nn.Dropout(0.5, deterministic=not train)(x)
            return nn.Dense(10, name="head")(x)

    cfg = OptimConfig(learning_rate=0.0, schedule="constant", weight_decay=0.0)
    state = create_train_state(Dropped(), make_optimizer(cfg, optax.constant_schedule(0.0)), seed=0)
    x, y, _, _ = synthetic_cifar(16, 1)
    losses = [float(train_step(state, jnp.asarray(x), jnp.asarray(y), jax.random.key(k),
                               layers=state.layers)[1]["loss"]) for k in (0, 1, 0)]
    assert losses[0] != losses[1] and losses[0] == losses[2]
    images = jax.random.normal(jax.random.key(9), (4, 32, 32, 3))
    out = [forward(state, state.params, images, train=True, rngs={s: jax.random.key(k) for s in RNG_STREAMS})[0]
           for k in (0, 1)]
    assert not np.allclose(out[0], out[1])                        # only dropout differs here
    assert evaluate(state, jnp.asarray(x), jnp.asarray(y))["loss"] == evaluate(state, jnp.asarray(x), jnp.asarray(y))["loss"]
