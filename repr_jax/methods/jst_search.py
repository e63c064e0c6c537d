"""The pure parts of Joint Search-and-Training (Lu et al., IJCAI 2020; method ``jst``):
architecture gates, the cumulative-threshold sampler, ThresNet and its REINFORCE loss, and
the parameter count of a sub-network.

* **Gates** (Eq. 6): a conv layer's output is Concat(I ∗ α̂_1 W_1, …, I ∗ α̂_C W_C) with
  α̂ = softmax(α) over the layer's C filters. :func:`alpha_hat` returns α̂, times C with
  ``scale="width"`` (uniform α then leaves the network unchanged) or as it is with
  ``scale="softmax"`` (the paper's literal form). :func:`fold_gates` writes the gates into
  the parameters (a BatchNorm's γ and β, else the conv's kernel and bias), which the
  fine-tune phase does so that the exported network is a plain one.
* **Sampler** (Alg. 1): n = α + ε, n̂ = softmax(n); sort n̂ descending and accumulate until
  the sum reaches the threshold th: the filters counted so far (the one that crosses
  included) are kept (:func:`sample_keep`).
* **ThresNet** Φ (Eq. 2): for each layer the input is its sorted α̂ (a permutation-invariant
  view of α, times its width so that it is scale-free); one dense encoder per distinct width
  maps it to ``hidden`` units (tanh); a learned embedding of the layer's position is added;
  a shared two-layer network maps each layer's code to the two concentrations (a, b) =
  1 + softplus(·) of a **Beta(a, b)** policy over that layer's threshold β ∈ (0, 1), so
  log π(β | α) = Σ_l log Beta(β^l; a^l, b^l) is defined (:func:`threshold_policy`).
* **REINFORCE** (Eqs. 3–4): ∇J ≈ (1/K) Σ_k (R_k − b) Σ_l ∇ log π(β_k^l | α^l), with a
  baseline b (a running mean of the rewards, to cut variance): :func:`policy_loss` is −J's
  surrogate whose gradient is that estimate.
* **Cost**: :class:`SubnetCost` counts the parameters a sub-network keeps, from the model's
  channel graph (the same rule the export uses), inside ``jit``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.compress.graph import FIXED
from repr_jax.layers import get_path, replace_path

GATE_SCALES = ("width", "softmax")


def alpha_hat(alpha: jax.Array, scale: str = "width") -> jax.Array:
    """α̂ = softmax(α) (Eq. 6), times the layer width C when ``scale == "width"``."""
    g = jax.nn.softmax(alpha.astype(jnp.float32))
    return g * alpha.shape[-1] if scale == "width" else g


def fold_gates(params, layers, gates: dict):
    """``params`` with each layer's response multiplied by ``gates[name]`` (F,) folded in:
    g·(γ x̂ + β) = (gγ) x̂ + gβ after a BatchNorm, g·(W x + b) = (gW) x + gb without one."""
    for layer in layers:
        if layer.name not in gates:
            continue
        g = gates[layer.name]
        if layer.bn_path is not None:
            bn = get_path(params, layer.bn_path)
            if "scale" not in bn or "bias" not in bn:
                raise ValueError(f"{layer.name}: folding gates needs a BatchNorm with scale and bias")
            params = replace_path(params, layer.bn_path + ("scale",), lambda s, g=g: s * g)
            params = replace_path(params, layer.bn_path + ("bias",), lambda b, g=g: b * g)
        else:
            params = replace_path(params, layer.path + ("kernel",), lambda k, g=g: k * g)
            if layer.has_bias:
                params = replace_path(params, layer.path + ("bias",), lambda b, g=g: b * g)
    return params


def sample_keep(noisy_alpha: jax.Array, threshold: jax.Array, min_keep: int = 1) -> jax.Array:
    """``(C,)`` 0/1 kept filters of Alg. 1: with n̂ = softmax(noisy_alpha) sorted descending,
    keep the first c filters where c is the first count whose cumulative n̂ reaches
    ``threshold`` (c = 1 + #{k : Σ_{j≤k} n̂_(j) < th}), clipped to [min_keep, C]. Ties in n̂
    break towards the lower index."""
    c_total = noisy_alpha.shape[-1]
    n_hat = jax.nn.softmax(noisy_alpha.astype(jnp.float32))
    order = jnp.argsort(-n_hat, stable=True)
    cumulative = jnp.cumsum(n_hat[order])
    count = jnp.clip(1 + jnp.sum(cumulative < threshold), min(min_keep, c_total), c_total)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(c_total))
    return (rank < count).astype(jnp.float32)


# ----------------------------------------------------------------------------- ThresNet
def _dense(key, n_in: int, n_out: int, scale: float | None = None):
    scale = math.sqrt(1.0 / n_in) if scale is None else scale
    return {"kernel": scale * jax.random.normal(key, (n_in, n_out), jnp.float32),
            "bias": jnp.zeros((n_out,), jnp.float32)}


def _inverse_softplus(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


def init_thresnet(key, widths: tuple[int, ...], hidden: int = 128, init_threshold: float = 0.8,
                  concentration: float = 20.0) -> dict:
    """ThresNet parameters for layers of these ``widths`` (in order): encoders per distinct
    width, a position embedding, a shared network. Its output layer starts at zero weights
    and biases that give every layer Beta(a, b) with mean ``init_threshold`` and a + b =
    ``concentration``."""
    a, b = init_threshold * concentration, (1.0 - init_threshold) * concentration
    if a <= 1.0 or b <= 1.0:
        raise ValueError(f"init_threshold {init_threshold} with concentration {concentration} gives "
                         f"Beta({a:.3g}, {b:.3g}); both need to exceed 1")
    keys = jax.random.split(key, len(set(widths)) + 3)
    encoders = {f"w{w}": _dense(k, w, hidden) for w, k in zip(sorted(set(widths)), keys)}
    out = _dense(keys[-1], hidden, 2, scale=0.0)
    out["bias"] = jnp.array([_inverse_softplus(a - 1.0), _inverse_softplus(b - 1.0)], jnp.float32)
    return {"encoders": encoders,
            "position": 0.1 * jax.random.normal(keys[-3], (len(widths), hidden), jnp.float32),
            "shared": _dense(keys[-2], hidden, hidden), "out": out}


def threshold_policy(policy: dict, alphas: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Beta concentrations ``(a, b)``, each ``(L,)``, for the layers' architecture weights
    ``alphas`` (Eq. 2; see the module docstring). No gradient reaches ``alphas``."""
    codes = []
    for alpha in alphas:
        x = jnp.sort(alpha_hat(jax.lax.stop_gradient(alpha), "width"))[::-1]
        enc = policy["encoders"][f"w{alpha.shape[-1]}"]
        codes.append(jnp.tanh(x @ enc["kernel"] + enc["bias"]))
    h = jnp.stack(codes) + policy["position"]
    h = jnp.tanh(h @ policy["shared"]["kernel"] + policy["shared"]["bias"])
    raw = h @ policy["out"]["kernel"] + policy["out"]["bias"]
    concentrations = 1.0 + jax.nn.softplus(raw)
    return concentrations[:, 0], concentrations[:, 1]


def log_prob(a: jax.Array, b: jax.Array, beta: jax.Array) -> jax.Array:
    """Σ_l log Beta(β^l; a^l, b^l) (over the last axis)."""
    eps = 1e-6
    return jnp.sum(jax.scipy.stats.beta.logpdf(jnp.clip(beta, eps, 1 - eps), a, b), axis=-1)


def sample_thresholds(key, a: jax.Array, b: jax.Array) -> jax.Array:
    """β^l ~ Beta(a^l, b^l), one per layer."""
    return jax.random.beta(key, a, b)


def policy_loss(policy: dict, alphas: list[jax.Array], betas: jax.Array, advantages: jax.Array) -> jax.Array:
    """−(1/K) Σ_k A_k log π(β_k | α): its gradient is minus the REINFORCE estimate of ∇J
    (Eqs. 3–4) for K sampled thresholds ``betas`` (K, L) with advantages A_k = R_k − b."""
    a, b = threshold_policy(policy, alphas)
    return -jnp.mean(jax.lax.stop_gradient(advantages) * log_prob(a, b, betas))


# ----------------------------------------------------------------------------- cost
class SubnetCost:
    """Parameters a sub-network keeps: every params leaf of the model, with each of its
    channel-indexed axes (from the channel graph) counting only the indices still fed by a
    live filter, a fixed source (the image) or nothing prunable — the export's rule when no
    removed filter is tied to a kept one. Callable inside ``jit`` on ``{conv: (F,) 0/1}``
    (convs not given count as fully live)."""

    def __init__(self, graph, param_shapes: dict):
        self.names = tuple(graph.layers)
        self.sizes = dict(graph.layers)
        offsets = np.cumsum([0] + [graph.layers[n] for n in self.names])
        self.offset = {n: int(o) for n, o in zip(self.names, offsets)}
        one, zero = int(offsets[-1]), int(offsets[-1]) + 1
        by_leaf: dict[tuple, dict[int, np.ndarray]] = {}
        for use in graph.uses:
            if use.collection != "params":
                continue
            width = max(1, max(len(s) for s in use.sources))
            idx = np.full((len(use.sources), width), zero, np.int32)
            for i, srcs in enumerate(use.sources):
                if not srcs or FIXED in srcs:
                    idx[i, 0] = one
                    continue
                for j, (name, ch) in enumerate(sorted(srcs)):
                    idx[i, j] = self.offset[name] + ch
            by_leaf.setdefault(use.path, {})[use.axis] = idx
        self.leaves = []
        counted = 0
        for path, axes in by_leaf.items():
            shape = tuple(get_path(param_shapes, path).shape)
            rest = int(np.prod([d for k, d in enumerate(shape) if k not in axes]))
            self.leaves.append((rest, tuple(axes.values())))
            counted += int(np.prod(shape))
        self.total = int(graph.params)
        self.fixed = self.total - counted

    def __call__(self, live: dict) -> jax.Array:
        vec = jnp.concatenate([jnp.asarray(live[n], jnp.float32) if n in live
                               else jnp.ones((self.sizes[n],), jnp.float32) for n in self.names]
                              + [jnp.ones((1,)), jnp.zeros((1,))])
        total = jnp.asarray(float(self.fixed))
        for rest, axes in self.leaves:
            size = jnp.asarray(float(rest))
            for idx in axes:
                size = size * jnp.sum(jnp.max(vec[idx], axis=1) > 0)
            total = total + size
        return total


__all__ = ["GATE_SCALES", "SubnetCost", "alpha_hat", "fold_gates", "init_thresnet", "log_prob",
           "policy_loss", "sample_keep", "sample_thresholds", "threshold_policy"]
