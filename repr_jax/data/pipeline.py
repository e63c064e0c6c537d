"""Device-resident input pipeline: shuffling, batching and augmentation as pure JAX.

The whole uint8 data set lives on the accelerator; an epoch is a permutation of indices
(keyed by the run's PRNG) reshaped to ``(steps, batch)``. Augmentation — zero padding and a
random crop of the image's size, random horizontal flip (He et al. 2016: pad 4 on 32×32) —
and normalisation run inside the jitted train step (:class:`Preprocessing`, a static,
hashable value of the step), so the training loop does no per-image Python work.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# NumPy, not jnp: creating device arrays at import would start JAX's backend before an
# entry point can set XLA flags (see repr_jax._xla_flags).
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
# The standardisation of kuangliu/pytorch-cifar, copied by many PyTorch CIFAR codes (the RePr
# reimplementation siahuat0727/RePr among them): the same mean, a std (0.2023, 0.1994, 0.2010)
# that is not CIFAR-10's per-pixel std (above) — data.normalization=pytorch-cifar.
PYTORCH_CIFAR_STD = (0.2023, 0.1994, 0.2010)


def normalize(images: jax.Array) -> jax.Array:
    """uint8 (…, H, W, 3) → float32, standardised with CIFAR's per-channel statistics."""
    return (images.astype(jnp.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD


def crop_padding(height: int, width: int) -> int:
    """The zero padding of the random crop, proportional to the image: ``round(min(H, W) / 8)``
    — He et al.'s 4 pixels on CIFAR's 32×32, 8 on 64×64, 4 on 28×28, 1 on 8×8."""
    return max(1, round(min(height, width) / 8))


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What a train step does to a uint8 ``(B, H, W, C)`` batch: a random crop after zero
    padding by ``crop_pad`` (0: none), a random horizontal flip (``flip``), then
    ``(x / 255 − mean) / std`` per channel. Frozen and hashable: a static argument of the
    jitted step. The default is CIFAR's (pad 4, flip, its published mean and std)."""
    mean: tuple[float, ...] = tuple(float(m) for m in CIFAR_MEAN)
    std: tuple[float, ...] = tuple(float(s) for s in CIFAR_STD)
    crop_pad: int = 4
    flip: bool = True

    def __call__(self, images: jax.Array) -> jax.Array:
        """Normalise (evaluation, and after :meth:`augment` in training)."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return (images.astype(jnp.float32) / 255.0 - mean) / std

    def augment(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """The random crop and flip of every image (uint8 in, uint8 out)."""
        if not self.crop_pad and not self.flip:
            return images
        return augment(key, images, pad=self.crop_pad, flip=self.flip)


def augment(key: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
    """Random crop after zero padding by ``pad`` and (``flip``) random horizontal flip, per
    image. The random draws do not depend on ``pad`` or ``flip``."""
    n, h, w, _ = images.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,)) & flip

    def one(img, off, flip):
        crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)


def epoch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """A shuffled epoch as ``(num_examples // batch_size, batch_size)`` indices (remainder dropped)."""
    steps = num_examples // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training examples")
    perm = jax.random.permutation(key, num_examples)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def eval_indices(num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Every example once, padded to full batches; returns (indices, validity weights)."""
    steps = -(-num_examples // batch_size)
    idx = jnp.arange(steps * batch_size)
    valid = (idx < num_examples).astype(jnp.float32)
    return jnp.minimum(idx, num_examples - 1).reshape(steps, batch_size), valid.reshape(steps, batch_size)


__all__ = ["CIFAR_MEAN", "CIFAR_STD", "PYTORCH_CIFAR_STD", "Preprocessing", "augment", "crop_padding",
           "epoch_indices", "eval_indices", "normalize"]
