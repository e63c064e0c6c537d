"""Channel selection by LASSO and least-squares reconstruction (He et al., ICCV 2017, §3.1).

For a conv B with kernel W (kh, kw, c, n) reading channels X_1 … X_c, sampled output
positions m = 1 … M and their input patches P_m,i (i over kh·kw per channel), channel i's
contribution to B's output is Z_i = P_:,i W_i (M × n), and B's output is Y = Σ_i Z_i.
Channel selection solves their Eq. (1) with the weights fixed (their Eq. 2, the β step):

    β* = argmin_β  1/(2M) ‖Y − Σ_i β_i Z_i‖²_F + λ ‖β‖₁,   with ‖β‖₀ ≤ c'

as a quadratic LASSO in β: ½ βᵀQβ − bᵀβ + λ‖β‖₁ with Q_ij = ⟨Z_i, Z_j⟩ / M and
b_i = ⟨Z_i, Y⟩ / M, where — their Eq. (1)'s constraint ‖W_i‖_F = 1 — each channel's
weights are scaled to unit Frobenius norm before Z_i is formed
(:func:`selection_gram`; otherwise a channel with large weights would need a small,
cheaply penalised β_i and be favoured for its weights' scale, not its contribution), solved by ISTA (proximal gradient, step 1/L, L = λ_max(Q)); λ is found by
bisection on log λ between λ_max = max|b| (β = 0) and 1e-6 · λ_max so that at most c'
coefficients are non-zero (He et al. raise λ gradually until ‖β‖₀ ≤ c'). The kept channels
are the support at that λ, filled up to exactly c' by |β| at the last λ that kept more.
Then the weights are re-fitted on the kept channels by least squares (their W step,
W' = argmin ‖Y − Σ_{i kept} P_:,i W'_i‖²_F), via the normal equations with a tiny ridge.
Everything is pure and jittable; the M × c × n contributions are accumulated in chunks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_patches(x: jax.Array, kernel_size, strides, padding, positions: jax.Array) -> jax.Array:
    """``(M, c, kh·kw)`` input patches of a conv at sampled output positions.

    ``x``: (N, H, W, c) the conv's input; ``positions``: (N, P) flat indices into its
    (Ho · Wo) output grid — M = N · P. ``padding`` as Flax's ``Conv`` takes it (an int, a
    string, or pairs)."""
    kh, kw = kernel_size
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    elif not isinstance(padding, str):
        padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    patches = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), tuple(strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, ho, wo, features = patches.shape
    flat = patches.reshape(n, ho * wo, features)
    picked = jnp.take_along_axis(flat, positions[..., None], axis=1)      # (N, P, c·kh·kw)
    return picked.reshape(-1, x.shape[-1], kh * kw)                        # channel-major features


def sample_outputs(y: jax.Array, positions: jax.Array) -> jax.Array:
    """``(M, n)`` conv outputs ``y`` (N, Ho, Wo, n) at the same sampled positions."""
    n, ho, wo, f = y.shape
    return jnp.take_along_axis(y.reshape(n, ho * wo, f), positions[..., None], axis=1).reshape(-1, f)


def kernel_by_channel(kernel: jax.Array) -> jax.Array:
    """(kh, kw, c, n) → (c, kh·kw, n), matching :func:`sample_patches`' feature order."""
    kh, kw, c, n = kernel.shape
    return jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c, kh * kw, n)


def _chunks(x, size):
    """``x`` zero-padded to a multiple of ``size`` rows, as ``(chunks, size, …)`` (zero rows add
    nothing to the sums below)."""
    pad = -x.shape[0] % size
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    return x.reshape((-1, size) + x.shape[1:])


def contribution_gram(patches: jax.Array, w: jax.Array, y: jax.Array, chunk: int = 256):
    """``(Q, b)``: Q_ij = Σ_m ⟨Z_mi, Z_mj⟩ / M and b_i = Σ_m ⟨Z_mi, y_m⟩ / M for
    Z_mi = patches[m, i] @ w[i] (``w`` from :func:`kernel_by_channel`). Chunked over m."""
    size = min(chunk, patches.shape[0])

    def body(acc, xs):
        p, t = xs
        z = jnp.einsum("mck,ckn->mcn", p, w)
        return (acc[0] + jnp.einsum("mcn,mdn->cd", z, z), acc[1] + jnp.einsum("mcn,mn->c", z, t)), None

    c = w.shape[0]
    (q, b), _ = jax.lax.scan(body, (jnp.zeros((c, c)), jnp.zeros((c,))),
                             (_chunks(patches, size), _chunks(y, size)))
    return q / patches.shape[0], b / patches.shape[0]


def unit_channels(w: jax.Array) -> jax.Array:
    """``w`` (c, kh·kw, n) with every channel's slice W_i scaled to ‖W_i‖_F = 1 (He et al.
    Eq. 1; an all-zero channel stays 0)."""
    norms = jnp.sqrt(jnp.sum(w * w, axis=(1, 2), keepdims=True))
    return jnp.where(norms > 0, w / jnp.where(norms > 0, norms, 1.0), 0.0)


def selection_gram(patches: jax.Array, w: jax.Array, y: jax.Array, normalize: bool = True):
    """``(Q, b)`` of the selection LASSO (module docstring) for channel weights ``w``
    (:func:`kernel_by_channel`): with ``normalize`` (the paper's) on :func:`unit_channels`."""
    return contribution_gram(patches, unit_channels(w) if normalize else w, y)


def lasso(q: jax.Array, b: jax.Array, lam, beta0: jax.Array, steps: int = 300) -> jax.Array:
    """ISTA for min_β ½βᵀQβ − bᵀβ + λ‖β‖₁ from ``beta0`` (``steps`` iterations, step 1/L)."""
    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(q)[-1], 1e-12)

    def step(beta, _):
        z = beta - (q @ beta - b) / lipschitz
        return jnp.sign(z) * jnp.maximum(jnp.abs(z) - lam / lipschitz, 0.0), None

    beta, _ = jax.lax.scan(step, beta0, None, length=steps)
    return beta


def lasso_select(q: jax.Array, b: jax.Array, keep: int, alive: jax.Array | None = None,
                 bisections: int = 30, steps: int = 300) -> tuple[jax.Array, jax.Array]:
    """``(kept (c,) 0/1 with exactly min(keep, alive) ones, β)``: the channels a LASSO with
    ‖β‖₀ ≤ ``keep`` selects (λ by bisection, module docstring). Channels with
    ``alive == 0`` are never kept (their rows and columns of Q and b are zeroed)."""
    c = b.shape[0]
    alive = jnp.ones((c,), jnp.float32) if alive is None else (alive > 0).astype(jnp.float32)
    q = q * alive[:, None] * alive[None, :]
    b = b * alive
    hi0 = jnp.maximum(jnp.max(jnp.abs(b)), 1e-12)
    zeros = jnp.zeros((c,))

    def body(carry, _):
        log_lo, log_hi, beta_lo, beta_hi = carry
        mid = 0.5 * (log_lo + log_hi)
        beta = lasso(q, b, jnp.exp(mid), beta_lo, steps) * alive
        too_many = jnp.sum(jnp.abs(beta) > 0) > keep
        return (jnp.where(too_many, mid, log_lo), jnp.where(too_many, log_hi, mid),
                jnp.where(too_many, beta, beta_lo), jnp.where(too_many, beta_hi, beta)), None

    start = (jnp.log(hi0 * 1e-6), jnp.log(hi0), lasso(q, b, hi0 * 1e-6, zeros, steps) * alive, zeros)
    (_, _, beta_lo, beta_hi), _ = jax.lax.scan(body, start, None, length=bisections)
    scale = jnp.maximum(jnp.max(jnp.abs(beta_lo)), 1e-30)
    key = jnp.where(alive > 0, 2.0 * (jnp.abs(beta_hi) > 0) + jnp.abs(beta_lo) / scale, -jnp.inf)
    order = jnp.argsort(-key, stable=True)
    rank = jnp.zeros((c,), jnp.int32).at[order].set(jnp.arange(c, dtype=jnp.int32))
    return ((rank < keep) & (alive > 0)).astype(jnp.float32), beta_hi


def refit(patches: jax.Array, y: jax.Array, kept: jax.Array, ridge: float = 1e-6,
          chunk: int = 256) -> jax.Array:
    """``(c, kh·kw, n)`` least-squares weights W' = argmin ‖y − Σ_{i kept} P_i W'_i‖², zero
    on channels not kept; normal equations PᵀP + ε·mean(diag)·I (ε = ``ridge``)."""
    m, c, k = patches.shape
    size = min(chunk, m)
    mask = jnp.repeat(kept > 0, k).astype(patches.dtype)

    def body(acc, xs):
        p, t = xs
        p = p.reshape(p.shape[0], c * k) * mask
        return (acc[0] + p.T @ p, acc[1] + p.T @ t), None

    (g, r), _ = jax.lax.scan(body, (jnp.zeros((c * k, c * k)), jnp.zeros((c * k, y.shape[1]))),
                             (_chunks(patches, size), _chunks(y, size)))
    eps = ridge * jnp.maximum(jnp.sum(jnp.diag(g)) / jnp.maximum(jnp.sum(mask), 1.0), 1e-12)
    g = g + jnp.diag(eps * mask + (1.0 - mask))
    return (jnp.linalg.solve(g, r) * mask[:, None]).reshape(c, k, -1)


__all__ = ["contribution_gram", "kernel_by_channel", "lasso", "lasso_select", "refit",
           "sample_outputs", "sample_patches"]
