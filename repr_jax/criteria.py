"""Filter-importance criteria: one registry, one signature, one "drop first" direction each.

Every criterion is a pure function ``score(state, layers, key, images, labels) →
{layer name: (F,) scores}`` over the train state (params, batch_stats, masks, apply_fn),
jitted with the layers static. :func:`drop_priority` turns any of them into the ranking
convention of :mod:`repr_jax.ranking` (higher = drop first), so the ranking, the masks and
the RePr loop are shared by all criteria.

Data-free (weights only):
  ``ortho``     RePr inter-filter orthogonality O_f (Prakash et al. 2019, Eq. 3); high = drop.
  ``ortho_official``  the official code's |signed mean projection| on the whole-normalised
                kernel (:mod:`repr_jax.official`); high = drop.
  ``weights``   L1 norm Σ|W_f| of the filter (Li et al. 2017); low = drop.
  ``l2``        L2 norm ‖W_f‖₂; low = drop.
  ``bn_gamma``  |γ_f| of the following BatchNorm (Network Slimming, Liu et al. 2017); low = drop.
  ``random``    U(0, 1) per filter (the paper's "Random" row).

Data-driven, one jitted pass over fixed batches ``images (n, B, H, W, C)`` in eval mode
(model-ready: the caller preprocesses them, :meth:`repr_jax.methods.base.MethodContext.model_inputs`).
A filter's *response* z is its channel after its BatchNorm (or the conv output without one),
a = ReLU(z) its activation, g = ∂L/∂z the gradient of the summed per-example loss (taken by
adding a zero probe to z with :func:`flax.linen.intercept_methods`, so any model works):
  ``activations``  mean over examples and positions of a; low = drop.
  ``apoz``         mean of 1[a = 0], Average Percentage of Zeros (Hu et al. 2016); high = drop.
  ``gradients``    mean |g|; low = drop.
  ``taylor``       mean over examples of |mean over positions of a·g| (Molchanov et al. 2017;
                   a·g = a·∂L/∂a since g = 0 where a = 0); low = drop.
  ``hessian``      Optimal-Brain-Damage saliency ½ Σ_{w ∈ W_f} H_ww w² with the diagonal
                   Hessian of the mean loss estimated by Hutchinson, diag H ≈ E[v ⊙ Hv],
                   v Rademacher on the prunable kernels; low = drop.
  ``oracle``       L(W with filter f zeroed) − L(W): the loss increase when that filter alone
                   is dropped (its kernel, bias and BN scale/bias zeroed), vmapped over the
                   filters of each layer; low = drop.
Already-dropped filters get arbitrary scores; the ranking ignores them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.layers import ConvLayer, channel_leaves, get_path, intercept_outputs, replace_path, response_site
from repr_jax.official import official_score_layers
from repr_jax.ortho import score_layers
from repr_jax.train import cross_entropy


@dataclasses.dataclass(frozen=True)
class Criterion:
    name: str
    score: Callable            # (state, layers, key, images, labels) -> {layer: (F,)}
    drop_first: str            # "high" or "low": which end of the score is dropped first
    needs_data: bool
    needs_batch_norm: bool = False
    summary: str = ""


def _kernel(params, layer: ConvLayer):
    return get_path(params, layer.path + ("kernel",)).astype(jnp.float32)


def _per_filter(x):
    """Reduce every axis but the last (the filter axis)."""
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


# ----------------------------------------------------------------------------- data-free
def _ortho(state, layers, key, images, labels):
    del key, images, labels
    return score_layers(state.params, state.masks, layers)


def _ortho_official(state, layers, key, images, labels):
    del key, images, labels
    return official_score_layers(state.params, state.masks, layers)


def _l1(state, layers, key, images, labels):
    del key, images, labels
    return {l.name: _per_filter(jnp.abs(_kernel(state.params, l))) for l in layers}


def _l2(state, layers, key, images, labels):
    del key, images, labels
    return {l.name: jnp.sqrt(_per_filter(jnp.square(_kernel(state.params, l)))) for l in layers}


def _bn_gamma(state, layers, key, images, labels):
    del key, images, labels
    return {l.name: jnp.abs(get_path(state.params, l.bn_path + ("scale",))).astype(jnp.float32)
            for l in layers}


def _random(state, layers, key, images, labels):
    del state, images, labels
    return {l.name: jax.random.uniform(jax.random.fold_in(key, i), (l.num_filters,))
            for i, l in enumerate(layers)}


# ----------------------------------------------------------------------------- data-driven
def _forward(state, params, images, layers, probes=None):
    """Eval-mode logits and each layer's response z (plus ``probes[name]`` if given)."""
    responses = {}

    def probe(name, out):
        if probes is not None:
            out = out + probes[name]
        responses[name] = out
        return out

    with intercept_outputs({response_site(l): l.name for l in layers}, probe):
        logits = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                images, train=False)
    return logits, responses


def _summed_loss(logits, labels):
    return jnp.sum(cross_entropy(logits, labels))


def _response_batch(state, layers, images, labels):
    """Per-layer (F,) activation, APoZ, |gradient| and Taylor statistics of one batch."""
    shapes = jax.eval_shape(lambda: _forward(state, state.params, images, layers)[1])
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def loss(probes):
        logits, responses = _forward(state, state.params, images, layers, probes)
        return _summed_loss(logits, labels), responses

    grads, responses = jax.grad(loss, has_aux=True)(zeros)
    out = {}
    for name, z in responses.items():
        z, g = z.astype(jnp.float32), grads[name].astype(jnp.float32)
        a = jax.nn.relu(z)
        space = tuple(range(1, z.ndim - 1))           # spatial axes of (B, H, W, F)
        out[name] = {
            "activations": jnp.mean(a, axis=(0,) + space),
            "apoz": jnp.mean((a <= 0).astype(jnp.float32), axis=(0,) + space),
            "gradients": jnp.mean(jnp.abs(g), axis=(0,) + space),
            "taylor": jnp.mean(jnp.abs(jnp.mean(a * g, axis=space)), axis=0),
        }
    return out


def _flat(images, labels):
    """``(n, B, …)`` batches → one batch of n·B examples. Every statistic here is a mean over
    equal-sized batches of per-example (eval-mode) quantities, so this changes no value; it
    avoids a ``lax.map`` loop, which ran a conv net's HVP ~130× slower on XLA:CPU."""
    return images.reshape((-1,) + images.shape[2:]), labels.reshape(-1)


@functools.partial(jax.jit, static_argnames=("layers",))
def response_statistics(state, layers, images, labels):
    """``{stat: {layer: (F,)}}`` for activations/apoz/gradients/taylor over all examples."""
    per_layer = _response_batch(state, layers, *_flat(images, labels))
    stats = ("activations", "apoz", "gradients", "taylor")
    return {s: {l.name: per_layer[l.name][s] for l in layers} for s in stats}


def _response_criterion(stat):
    def score(state, layers, key, images, labels):
        del key
        return response_statistics(state, layers, images, labels)[stat]
    return score


def _mean_loss(state, params, images, labels):
    """Eval-mode mean cross-entropy over every example of the batches."""
    x, y = _flat(images, labels)
    logits = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                            x, train=False)
    return jnp.mean(cross_entropy(logits, y))


@functools.partial(jax.jit, static_argnames=("layers", "probes"))
def obd_saliency(state, layers, key, images, labels, probes: int = 2):
    """½ Σ_{w∈W_f} diag(H)_w · w², diag(H) of the mean loss over all the batches' examples
    from ``probes`` Hutchinson vectors (each costs one Hessian-vector product)."""
    params = state.params

    def tangent(k):
        t = jax.tree_util.tree_map(jnp.zeros_like, params)
        for i, l in enumerate(layers):
            v = jax.random.rademacher(jax.random.fold_in(k, i), l.shape, jnp.float32)
            t = replace_path(t, l.path + ("kernel",), lambda old, v=v: v.astype(old.dtype))
        return t

    # Hv = ∇_p (∇L(p) · v), reverse over forward (forward-over-reverse was slower on
    # XLA:CPU); probes unrolled, not vmapped (a vmapped HVP gave NaN under the YNN CPU flag)
    # nor lax.map-ped (~130× slower on XLA:CPU).
    probe_keys = jax.random.split(key, probes)
    diag = {l.name: jnp.zeros(l.shape, jnp.float32) for l in layers}
    for j in range(probes):
        v = tangent(probe_keys[j])
        hv = jax.grad(lambda p: jax.jvp(lambda q: _mean_loss(state, q, images, labels),
                                        (p,), (v,))[1])(params)
        for l in layers:
            diag[l.name] = diag[l.name] + _kernel(v, l) * _kernel(hv, l) / probes
    return {l.name: 0.5 * _per_filter(diag[l.name] * jnp.square(_kernel(params, l)))
            for l in layers}


def _hessian(state, layers, key, images, labels):
    return obd_saliency(state, layers, key, images, labels)


def _mean_loss_by_batch(state, params, images, labels):
    """:func:`_mean_loss` one batch at a time (``lax.map`` over the batches): memory of one
    batch's activations, however many batches score."""
    def batch_sum(xy):
        logits = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                xy[0], train=False)
        return jnp.sum(cross_entropy(logits, xy[1]))
    return jnp.sum(jax.lax.map(batch_sum, (images, labels))) / (labels.shape[0] * labels.shape[1])


@functools.partial(jax.jit, static_argnames=("layers", "chunk"))
def oracle_loss_increase(state, layers, images, labels, chunk: int = 16):
    """ΔL_f = L(filter f alone zeroed) − L for every filter; ``vmap`` over a layer's filters
    in chunks of ``chunk`` (``lax.map(..., batch_size=chunk)``), each loss one batch at a
    time, to bound memory (the 5k held-out images of ``--protocol paper`` in 39 batches)."""
    params = state.params
    base = _mean_loss_by_batch(state, params, images, labels)
    out = {}
    for layer in layers:
        def drop_one(f, layer=layer):
            keep = 1.0 - jax.nn.one_hot(f, layer.num_filters, dtype=jnp.float32)
            p = params
            for _, path in channel_leaves(layer):
                p = replace_path(p, path, lambda x: x * keep.astype(x.dtype))
            return _mean_loss_by_batch(state, p, images, labels) - base
        out[layer.name] = jax.lax.map(drop_one, jnp.arange(layer.num_filters),
                                      batch_size=min(chunk, layer.num_filters))
    return out


def _oracle(state, layers, key, images, labels):
    del key
    return oracle_loss_increase(state, layers, images, labels)


# ----------------------------------------------------------------------------- registry
CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("ortho", _ortho, "high", False, summary="inter-filter overlap O_f (RePr)"),
    Criterion("ortho_official", _ortho_official, "high", False,
              summary="the official RePr code's signed mean projection (repr_jax.official)"),
    Criterion("weights", _l1, "low", False, summary="L1 norm of the filter (Li et al.)"),
    Criterion("l2", _l2, "low", False, summary="L2 norm of the filter"),
    Criterion("bn_gamma", _bn_gamma, "low", False, True, "|BatchNorm γ| (Network Slimming)"),
    Criterion("random", _random, "high", False, summary="uniform random"),
    Criterion("activations", _response_criterion("activations"), "low", True,
              summary="mean post-ReLU activation"),
    Criterion("apoz", _response_criterion("apoz"), "high", True,
              summary="average percentage of zeros (Network Trimming)"),
    Criterion("gradients", _response_criterion("gradients"), "low", True,
              summary="mean |dL/d response|"),
    Criterion("taylor", _response_criterion("taylor"), "low", True,
              summary="first-order Taylor |a * dL/da| (Molchanov et al.)"),
    Criterion("hessian", _hessian, "low", True, summary="OBD saliency, Hutchinson diagonal Hessian"),
    Criterion("oracle", _oracle, "low", True, summary="loss increase when the filter alone is dropped"),
)}


def get_criterion(name: str) -> Criterion:
    """The registered criterion; an unknown name raises ``ValueError`` listing the valid ones."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}") from None


def check_applicable(name: str, layers: tuple[ConvLayer, ...]) -> Criterion:
    """Fail early (``ValueError``) if the criterion cannot score this network."""
    crit = get_criterion(name)
    if crit.needs_batch_norm:
        missing = [l.name for l in layers if l.bn_path is None]
        if missing:
            raise ValueError(f"criterion {name!r} needs a BatchNorm after every prunable conv; "
                             f"{', '.join(missing[:3])} have none (convnet: --batch-norm)")
    return crit


def score_filters(name: str, state, layers: tuple[ConvLayer, ...], *, key=None,
                  images=None, labels=None) -> dict[str, jax.Array]:
    """Raw scores ``{layer: (F,)}`` of criterion ``name`` (its own direction)."""
    crit = check_applicable(name, layers)
    if crit.needs_data and (images is None or labels is None):
        raise ValueError(f"criterion {name!r} needs data: pass images (n, B, H, W, C) and labels (n, B)")
    key = jax.random.key(0) if key is None else key
    return crit.score(state, layers, key, images, labels)


def require_finite(name: str, scores: dict, live: dict | None = None, when: str = "") -> None:
    """Host-side check: ``NonFiniteError`` if a live filter's score is NaN or infinite (a
    ranking of NaN scores would drop arbitrary filters)."""
    from repr_jax.errors import NonFiniteError
    for layer, values in scores.items():
        values = np.asarray(values)
        mask = np.ones(values.shape, bool) if live is None else np.asarray(live[layer]) > 0
        if not np.all(np.isfinite(values[mask])):
            raise NonFiniteError(f"criterion {name} scores of {layer}{' ' + when if when else ''}")


def drop_priority(name: str, scores: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Raw scores → ranking convention (higher = drop first): negated for "low" criteria."""
    sign = 1.0 if get_criterion(name).drop_first == "high" else -1.0
    return {k: sign * jnp.asarray(v, jnp.float32) for k, v in scores.items()}


def scoring_batches(images: np.ndarray, labels: np.ndarray, batches: int, batch_size: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed sample of ``batches × batch_size`` examples shaped ``(batches, batch_size, …)``."""
    n = batches * batch_size
    if n > len(labels):
        raise ValueError(f"criterion data needs {batches}×{batch_size} = {n} images, "
                         f"only {len(labels)} available")
    idx = np.sort(np.random.default_rng(seed).permutation(len(labels))[:n])
    return (np.asarray(images)[idx].reshape((batches, batch_size) + images.shape[1:]),
            np.asarray(labels)[idx].reshape(batches, batch_size))


__all__ = ["Criterion", "CRITERIA", "get_criterion", "check_applicable", "score_filters",
           "require_finite", "drop_priority", "scoring_batches", "response_statistics", "obd_saliency",
           "oracle_loss_increase"]
