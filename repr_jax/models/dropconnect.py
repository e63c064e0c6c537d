"""DropConnect (Wan, Zeiler, Zhang, LeCun & Fergus, ICML 2013) as Flax layers.

Training (§2.2, Eq. 2): ``r = a((M ∗ W) v)`` with each connection kept independently,
``M_ij ~ Bernoulli(p)``, no rescaling, the bias being a column of W on a constant input 1
("we also drop the biases"): ``r = a((M ∗ W) v + m ∗ b)``, ``m_j ~ Bernoulli(p)``. A mask per
*example* is the paper's (§5: "a different mask for each example") and the default;
``per_example=False`` draws one mask per mini-batch — (B × in × out) Bernoulli draws shrink
to (in × out), at the price of correlated noise inside a batch, worth it when ``in × out`` is
large (the mask then costs as much memory as B copies of the kernel).

Inference (§3, Alg. 2), ``inference="moment"``: the pre-activation of each unit is a sum of
many independent terms, so it is approximated by a Gaussian with the exact first two
moments, ``u ~ N(μ, σ²)``, ``μ = p · (W v + b)``, ``σ² = p(1 − p) · ((W ∗ W)(v ∗ v) + b ∗ b)``;
``Z`` samples of ``u`` go through the activation and are averaged — unless the activation
is :func:`identity`, where E[u] = μ exactly and no sample is drawn (a sampled average would
add noise of size σ/√Z). The samples use a fixed key (``jax.random.key(sample_seed)``), so
evaluation is deterministic. ``inference="mean"`` is the cheap mean-field rule ``a(μ)`` (what
Dropout does at test time). ``p = 1`` is the plain dense layer in both modes.

Deviations from the paper: ``drop_bias=False`` keeps the bias (what this module did before
2026-12-03: then μ = p·Wv + b and σ² has no b² term); ``per_example=False`` as above.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

INFERENCE = ("moment", "mean")


def identity(u):
    """The linear activation (a head without a hidden layer): moment matching returns μ."""
    return u


def moment_matched(mean, var, activation, key, samples: int):
    """``E[a(u)]``, ``u ~ N(mean, var)``, estimated from ``samples`` draws (Wan et al. Alg. 2)."""
    noise = jax.random.normal(key, (samples,) + mean.shape, mean.dtype)
    return jnp.mean(activation(mean + jnp.sqrt(jnp.maximum(var, 0.0)) * noise), axis=0)


class DropConnectDense(nn.Module):
    """A dense layer with DropConnect on its kernel and the activation applied inside
    (moment matching needs it): ``__call__(v, train)`` returns ``a(pre-activation)``.

    RNG stream ``"dropconnect"`` while training."""
    features: int
    keep: float = 0.5                       # p of Bernoulli(p): probability a connection is kept
    activation: Callable = nn.relu
    per_example: bool = True
    inference: str = "moment"
    samples: int = 1000
    sample_seed: int = 0
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    drop_bias: bool = True                  # the paper's: the bias is a connection like any other

    @nn.compact
    def __call__(self, v, train: bool = False):
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"DropConnect keep probability must be in (0, 1], got {self.keep}")
        if self.inference not in INFERENCE:
            raise ValueError(f"unknown DropConnect inference {self.inference!r}; choose from {', '.join(INFERENCE)}")
        kernel = self.param("kernel", self.kernel_init, (v.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        if self.keep == 1.0:
            return self.activation(v @ kernel + bias)
        if train:
            key = self.make_rng("dropconnect")
            rows = (v.shape[0],) if self.per_example else ()
            # one draw over [W; b]: the bias is row in+1 of the kernel, on a constant input 1
            mask = jax.random.bernoulli(key, self.keep, rows + (kernel.shape[0] + 1, kernel.shape[1]))
            w_mask, b_mask = mask[..., :-1, :], mask[..., -1, :]
            if self.per_example:
                pre = jnp.einsum("bi,bio->bo", v, jnp.where(w_mask, kernel, 0.0))
            else:
                pre = v @ jnp.where(w_mask, kernel, 0.0)
            return self.activation(pre + (jnp.where(b_mask, bias, 0.0) if self.drop_bias else bias))
        p = self.keep
        mean = p * (v @ kernel + bias) if self.drop_bias else p * (v @ kernel) + bias
        if self.inference == "mean" or self.activation is identity:
            return self.activation(mean)
        var = p * (1.0 - p) * ((v * v) @ (kernel * kernel) + (bias * bias if self.drop_bias else 0.0))
        return moment_matched(mean, var, self.activation, jax.random.key(self.sample_seed), self.samples)


__all__ = ["DropConnectDense", "INFERENCE", "identity", "moment_matched"]
