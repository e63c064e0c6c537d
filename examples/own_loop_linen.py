#!/usr/bin/env python
"""Your own Flax Linen model in your own training loop: RePr, then Li et al.'s L1 pruning,
then a physically smaller model.

The model is a small CNN for 28×28 grayscale images — not one of repr-jax's — written the
way anyone writes Linen (default names: ``Conv_0``, ``BatchNorm_0``, …); the only thing it
does for repr-jax is take an optional ``channels`` spec (``{conv name: width}``) so that
the export can rebuild it smaller. The data are CIFAR-10 images turned 28×28 grayscale
(``--data-dir`` a CIFAR-10 copy, e.g. ../shared/datasets/cifar10-jpeg.tar.gz) or, without
one, a synthetic 10-class set of the same shape.

    python examples/own_loop_linen.py [--data-dir DIR] [--epochs 8]
    REPR_JAX_SMALL=1 python examples/own_loop_linen.py        # a minute on 2 CPU cores

Prints the test accuracy after RePr and after pruning, the parameters before/after the
export and the largest logit difference between the masked and the exported model.
"""
from __future__ import annotations

import argparse
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import repr_jax as rj


class SmallCNN(nn.Module):
    """conv(32) → BN → ReLU → pool → conv(64) → BN → ReLU → pool → conv(64) → BN → ReLU →
    global average → dense(10); ``channels`` overrides conv widths by name."""
    channels: dict | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        width = dict(self.channels or {})
        for i, features in enumerate((32, 64, 64)):
            x = nn.Conv(width.get(f"Conv_{i}", features), (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
            if i < 2:
                x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def data(data_dir: str | None, train: int, test: int):
    """``(x_train, y_train, x_test, y_test)``: float32 (N, 28, 28, 1), standardised."""
    if data_dir:
        cifar = rj.load_cifar("cifar10", data_dir).subset(train, test)
        sets = [(cifar.train_x, cifar.train_y), (cifar.test_x, cifar.test_y)]
        gray = [jax.image.resize(jnp.asarray(x, jnp.float32) @ jnp.array([0.299, 0.587, 0.114])[:, None],
                                 (len(x), 28, 28, 1), "linear") / 255.0 for x, _ in sets]
        labels = [np.asarray(y) for _, y in sets]
    else:   # 10 classes, each a blob at its own place: learnable, not trivial
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:28, :28]
        centres = rng.uniform(6, 22, (10, 2))
        labels = [rng.integers(0, 10, n) for n in (train, test)]
        gray = [np.exp(-((yy - centres[y, 0, None, None]) ** 2 + (xx - centres[y, 1, None, None]) ** 2) / 18.0)[..., None]
                + rng.normal(0, 0.35, (len(y), 28, 28, 1)) for y in labels]
    mean, std = float(np.mean(gray[0])), float(np.std(gray[0]))     # statistics of the training split
    x_train, x_test = ((np.asarray(g, np.float32) - mean) / std for g in gray)
    return x_train, np.asarray(labels[0], np.int32), x_test, np.asarray(labels[1], np.int32)


def accuracy(pr, variables, ps, x, y) -> float:
    logits = jax.jit(lambda v, p, xb: pr.forward(v, p, xb, train=False))(variables, ps, x)
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


def train(pr, tx, variables, opt_state, ps, x, y, epochs: int, batch: int, seed: int):
    """The hand-written loop: the pruner's transitions around every epoch, its masks in
    every optimizer step."""
    @jax.jit
    def step(variables, opt_state, ps, xb, yb, key):
        ps = pr.before_step(variables, ps, key)

        def loss_fn(params):
            logits, stats = pr.forward({**variables, "params": params}, ps, xb, train=True)
            terms = pr.loss_terms(params, variables, ps, xb, yb, logits, key)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return ce + sum(terms.values()), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"], masks=pr.update_masks(variables, ps))
        params = optax.apply_updates(variables["params"], updates)
        return {"params": params, "batch_stats": stats}, opt_state, pr.after_step(ps), loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        variables, opt_state, ps, events = pr.before_epoch(epoch, variables, opt_state, ps)
        for line in pr.describe(events):
            print("  " + line)
        order = rng.permutation(len(y))
        for i in range(len(y) // batch):
            idx = order[i * batch:(i + 1) * batch]
            variables, opt_state, ps, loss = step(variables, opt_state, ps, x[idx], y[idx], jax.random.key(i))
        variables, opt_state, ps, events = pr.after_epoch(epoch, variables, opt_state, ps)
        for line in pr.describe(events):
            print("  " + line)
        print(f"  epoch {epoch + 1}: loss {float(loss):.3f}")
    return variables, opt_state, ps


def main(argv=None) -> int:
    small = os.environ.get("REPR_JAX_SMALL") == "1"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="a CIFAR-10 copy (default: synthetic 28×28 data)")
    p.add_argument("--epochs", type=int, default=6 if small else 12, help="epochs of the RePr run")
    args = p.parse_args(argv)
    x, y, xt, yt = data(args.data_dir, 512 if small else 20000, 256 if small else 5000)
    batch, steps = 64, len(y) // 64
    model = SmallCNN()
    variables = model.init(jax.random.key(0), x[:1])

    # 1. RePr: 2 rounds of S1 full + S2 sub-network epochs, then full training to the end;
    #    30 % of the filters dropped, ranked globally by O_f. The first conv (fan-in 9 on one
    #    channel: 32 filters cannot be orthogonal in 9 dimensions) is left out of the ranking.
    print("RePr")
    s1 = max(1, args.epochs // 6)
    pr = rj.Pruner("repr", model, x[:1], epochs=args.epochs, steps_per_epoch=steps, batch_size=batch,
                   s1=s1, s2=s1, iterations=2, drop_fraction=0.3, exclude_first=True)
    tx = pr.wrap(optax.sgd(0.05, momentum=0.9))
    opt_state, ps = tx.init(variables["params"]), pr.init(variables["params"])
    variables, _, ps = train(pr, tx, variables, opt_state, ps, x, y, args.epochs, batch, seed=1)
    print(f"RePr: test accuracy {accuracy(pr, variables, ps, xt, yt):.3f}")

    # 2. Li et al. (2017): prune the half of each conv with the smallest L1 norm, fine-tune
    print("li-l1")
    prune = rj.Pruner("li-l1", model, x[:1], epochs=2, steps_per_epoch=steps, batch_size=batch, fraction=0.5)
    tx = prune.wrap(optax.sgd(0.01, momentum=0.9))
    opt_state, ps = tx.init(variables["params"]), prune.init(variables["params"])
    variables, _, ps = train(prune, tx, variables, opt_state, ps, x, y, 2, batch, seed=2)
    print(f"li-l1: test accuracy {accuracy(prune, variables, ps, xt, yt):.3f}")

    # 3. export: the same CNN rebuilt with the surviving widths
    small_model = prune.export(variables, ps, rebuild=lambda channels: SmallCNN(channels=channels))
    big = prune.forward(prune.masked_variables(variables, ps), ps, xt[:256], train=False)
    out = small_model.module.apply(small_model.variables, xt[:256], train=False)
    print(f"exported: {small_model.params_before:,} → {small_model.params_after:,} parameters, "
          f"{small_model.flops_before:,} → {small_model.flops_after:,} multiply–adds, channels {small_model.channels}")
    print(f"max |logit difference| masked vs exported: {float(jnp.max(jnp.abs(big - out))):.2e}")
    small_acc = float(jnp.mean(jnp.argmax(small_model.module.apply(small_model.variables, xt, train=False), -1) == yt))
    print(f"exported model: test accuracy {small_acc:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
