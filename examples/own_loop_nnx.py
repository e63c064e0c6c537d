#!/usr/bin/env python
"""Your own Flax NNX model in your own training loop: RePr, then Network Slimming, then the
same module shrunk in place.

The model is a small NNX CNN for 48×48 RGB images — not one of repr-jax's, with the
attribute names anyone picks (``conv1``, ``bn1``, …), trained in NNX's own idiom: the
module, an ``nnx.Optimizer`` and ``rj.nnx.Pruner`` go into an ``nnx.jit`` step and are
updated in place. repr-jax finds each conv's BatchNorm from the model's own computation
(not from names), and at the end shrinks the module itself: its convolutions, BatchNorms and head lose the
pruned channels (NNX modules are mutable, as PyTorch's are for Torch-Pruning). The data
are CIFAR-10 images resized to 48×48 (``--data-dir`` a CIFAR-10 copy) or, without one, a
synthetic 10-class set of the same shape.

    python examples/own_loop_nnx.py [--data-dir DIR] [--epochs 8]
    REPR_JAX_SMALL=1 python examples/own_loop_nnx.py        # a minute on 2 CPU cores

Prints the test accuracy after RePr, after slimming and of the shrunk module, the
parameters before/after and the largest logit difference between the masked and the
shrunk model.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import repr_jax as rj


class TinyNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 24, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(24, rngs=rngs)
        self.conv2 = nnx.Conv(24, 48, (3, 3), strides=2, rngs=rngs)
        self.bn2 = nnx.BatchNorm(48, rngs=rngs)
        self.conv3 = nnx.Conv(48, 48, (3, 3), strides=2, rngs=rngs)
        self.bn3 = nnx.BatchNorm(48, rngs=rngs)
        self.head = nnx.Linear(48, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = nnx.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean(axis=(1, 2)))


def data(data_dir: str | None, train: int, test: int):
    """``(x_train, y_train, x_test, y_test)``: float32 (N, 48, 48, 3), standardised."""
    if data_dir:
        cifar = rj.load_cifar("cifar10", data_dir).subset(train, test)
        images = [jax.image.resize(jnp.asarray(x, jnp.float32) / 255.0, (len(x), 48, 48, 3), "linear")
                  for x in (cifar.train_x, cifar.test_x)]
        labels = [np.asarray(cifar.train_y), np.asarray(cifar.test_y)]
    else:   # 10 classes: a colour and a place of its own, plus noise
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:48, :48]
        centres, colours = rng.uniform(10, 38, (10, 2)), rng.uniform(0.2, 1.0, (10, 3))
        labels = [rng.integers(0, 10, n) for n in (train, test)]
        images = [np.exp(-((yy - centres[y, 0, None, None]) ** 2 + (xx - centres[y, 1, None, None]) ** 2)
                         / 40.0)[..., None] * colours[y][:, None, None, :] + rng.normal(0, 0.3, (len(y), 48, 48, 3))
                  for y in labels]
    mean = np.mean(images[0], axis=(0, 1, 2))
    std = np.std(images[0], axis=(0, 1, 2))   # per-channel statistics of the training split
    x_train, x_test = ((np.asarray(x, np.float32) - mean) / std for x in images)
    return x_train, np.asarray(labels[0], np.int32), x_test, np.asarray(labels[1], np.int32)


def train(pr, model, optimizer, x, y, epochs: int, batch: int, seed: int):
    """NNX's own loop: the module, an nnx.Optimizer and the pruner, updated in place by an
    nnx.jit step; the method's transitions between epochs."""
    @nnx.jit
    def step(model, optimizer, pr, xb, yb, key):
        pr.before_step(model, key)

        def loss_fn(model):
            logits = pr.forward(model, xb)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return ce + pr.loss_terms(model, xb, yb, logits, key)   # slimming: λΣ|γ|

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, masks=pr.update_masks(model))   # pruned filters stay 0
        pr.after_step()
        return loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        for line in pr.before_epoch(epoch, model, optimizer):
            print("  " + line)
        model.train()
        order = rng.permutation(len(y))
        for i in range(len(y) // batch):
            idx = order[i * batch:(i + 1) * batch]
            loss = step(model, optimizer, pr, x[idx], y[idx], jax.random.key(i))
        for line in pr.after_epoch(epoch, model, optimizer):
            print("  " + line)
        print(f"  epoch {epoch + 1}: loss {float(loss):.3f}")


def accuracy(logits, y) -> float:
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


def main(argv=None) -> int:
    small = os.environ.get("REPR_JAX_SMALL") == "1"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="a CIFAR-10 copy (default: synthetic 48×48 data)")
    p.add_argument("--epochs", type=int, default=6 if small else 12, help="epochs of the RePr run")
    args = p.parse_args(argv)
    x, y, xt, yt = data(args.data_dir, 512 if small else 20000, 256 if small else 5000)
    batch, steps = 64, len(y) // 64
    model = TinyNet(nnx.Rngs(0))

    # 1. RePr, 2 rounds, 30 % of the filters dropped by global O_f ranking
    print("RePr")
    s1 = max(1, args.epochs // 6)
    pr = rj.nnx.Pruner("repr", model, x[:1], epochs=args.epochs, steps_per_epoch=steps, batch_size=batch,
                       s1=s1, s2=s1, iterations=2, drop_fraction=0.3)
    optimizer = nnx.Optimizer(model, pr.wrap(optax.sgd(0.05, momentum=0.9)), wrt=nnx.Param)
    train(pr, model, optimizer, x, y, args.epochs, batch, seed=1)
    model.eval()
    print(f"RePr: test accuracy {accuracy(model(xt), yt):.3f}")

    # 2. Network Slimming (Liu et al. 2017): λΣ|γ| for 2 epochs, prune the smallest |γ|
    #    network-wide (here 40 %), fine-tune 2 epochs — on the same module, a new optimizer
    print("slimming")
    slim = rj.nnx.Pruner("slimming", model, x[:1], epochs=4, steps_per_epoch=steps, batch_size=batch,
                         l1=1e-4, fraction=0.4, prune_epoch=2)
    optimizer = nnx.Optimizer(model, slim.wrap(optax.sgd(0.02, momentum=0.9)), wrt=nnx.Param)
    train(slim, model, optimizer, x, y, 4, batch, seed=2)
    model.eval()
    masked = model(xt)                       # the pruned channels are exact zeros in the module
    print(f"slimming: test accuracy {accuracy(masked, yt):.3f}")

    # 3. export, and shrink the NNX module itself to it
    exported = slim.shrink(model)
    shrunk = model(xt)
    print(f"shrunk: {exported.params_before:,} → {exported.params_after:,} parameters, "
          f"{exported.flops_before:,} → {exported.flops_after:,} multiply–adds, channels {exported.channels}; "
          f"conv2 kernel now {tuple(model.conv2.kernel.shape)}")
    print(f"max |logit difference| masked vs shrunk: {float(jnp.max(jnp.abs(masked - shrunk))):.2e}")
    print(f"shrunk module: test accuracy {accuracy(shrunk, yt):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
