"""What a RePr re-introduction does to the weights that *read* a revived filter, and the
probe that measures whether it changes the network's function.

When RePr re-initialises a dropped filter f of layer ℓ, the consumers of ℓ's output
channel f — the next conv's input slice ``W_{ℓ+1}[:, :, f, :]``, the dense head's rows of
channel f — still hold what they held before the drop (Prakash et al. 2019 do not say what
happens to them). Three settings (``repr.outgoing``):

* ``keep`` — untouched (the paper's silence, the official code's); optionally multiplied
  by ``repr.outgoing_scale``. The new filter's output enters the next layer through
  weights learned for the old filter: the accuracy drops at every re-introduction.
* ``zero`` — set to 0 (siahuat0727/RePr ``main.py: reinitialize`` with ``--zero_init``:
  ``W[:, mask] = 0``). With a drop that zeroes the whole filter (``drop_mode=zero``: kernel
  and bias are 0, so its ReLU output is 0) the network computes exactly the same function
  right after the re-introduction as right before; the new filter starts to matter as its
  outgoing weights learn (their gradient is its activation × the upstream gradient).
* ``redraw`` — a fresh draw of the model's own initialiser for those weights (what
  siahuat0727/RePr's code *means* without ``--zero_init``: ``W[:, mask].uniform_(±1/√fan_in)``
  — which, on an advanced-indexing copy in PyTorch, leaves the weights untouched, i.e. its
  runs without ``--zero_init`` kept them).

The consumers come from the model's channel graph (:mod:`repr_jax.compress.graph`), so
this works for any model whose graph traces: a residual sum read by several sources is
left alone (owner −1).

The probe: eval-mode cross-entropy and accuracy of the network on a fixed sample of images
(:func:`probe_metrics`), measured by RePr right before and right after each drop and each
re-introduction and written to ``pruning.jsonl`` and the run's log line.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.layers import get_path, replace_path
from repr_jax.train import cross_entropy, forward

OUTGOING = ("keep", "zero", "redraw")


def outgoing_map(context) -> tuple:
    """``((layer, params path, axis, owner), …)``: for every kernel that consumes a prunable
    conv's channels (the next conv's input axis, the dense head's flattened rows), ``owner[i]``
    is the filter of ``layer`` that index ``i`` of ``axis`` reads, or −1 (another source, or
    a residual sum of several). From the model's channel graph (host side, once)."""
    graph = context.graph()
    out = []
    for layer in context.layers:
        for use in graph.consumers(layer.name):
            if use.collection != "params" or use.path[-1] != "kernel":
                continue
            owner = np.array([next(iter(src))[1] if len(src) == 1 and next(iter(src))[0] == layer.name
                              else -1 for src in use.sources], np.int32)
            if (owner >= 0).any():
                out.append((layer.name, use.path, use.axis, owner))
    return tuple(out)


def _reads_revived(outgoing_entry, revived: dict, ndim: int):
    """Boolean mask, broadcastable onto the consumer kernel, of the entries that read a
    revived filter."""
    name, _, axis, owner = outgoing_entry
    hit = jnp.where(owner >= 0, jnp.asarray(revived[name])[jnp.maximum(owner, 0)] > 0, False)
    shape = [1] * ndim
    shape[axis] = -1
    return jnp.reshape(hit, shape)


def scale_outgoing(params, outgoing: tuple, revived: dict, scale: float):
    """``params`` with the outgoing weights of revived filters (``revived[layer][f] > 0``)
    multiplied by ``scale``; ``outgoing`` from :func:`outgoing_map`. Pure."""
    for entry in outgoing:
        def apply(w, entry=entry):
            return jnp.where(_reads_revived(entry, revived, w.ndim), w * jnp.asarray(scale, w.dtype), w)
        params = replace_path(params, entry[1], apply)
    return params


def set_outgoing(params, outgoing: tuple, revived: dict, mode: str, *, scale: float = 1.0,
                 fresh_params=None):
    """``params`` with the weights that read a revived filter kept (times ``scale``),
    zeroed, or replaced by ``fresh_params``' values (``redraw``: a fresh initialisation of
    the same model). Pure; every other weight is returned bit-identical."""
    if mode not in OUTGOING:
        raise ValueError(f"unknown repr.outgoing {mode!r}; choose from {', '.join(OUTGOING)}")
    if mode == "keep":
        return params if scale == 1.0 else scale_outgoing(params, outgoing, revived, scale)
    if mode == "zero":
        return scale_outgoing(params, outgoing, revived, 0.0)
    if fresh_params is None:
        raise ValueError("repr.outgoing=redraw needs fresh_params")
    for entry in outgoing:
        new = get_path(fresh_params, entry[1])

        def apply(w, entry=entry, new=new):
            return jnp.where(_reads_revived(entry, revived, w.ndim), new.astype(w.dtype), w)
        params = replace_path(params, entry[1], apply)
    return params


def probe_metrics(state, method, images, labels) -> dict:
    """Eval-mode mean cross-entropy and accuracy of ``state``'s network (with ``method``'s
    channel gates) on ``images`` ``(batches, batch, …)`` / ``labels`` ``(batches, batch)``,
    one batch at a time (``lax.map``). Pure and jittable."""
    def one(xy):
        logits, _ = forward(state, state.params, xy[0], train=False, method=method)
        return (jnp.sum(cross_entropy(logits, xy[1])),
                jnp.sum((jnp.argmax(logits, -1) == xy[1]).astype(jnp.float32)))

    loss, correct = jax.lax.map(one, (images, labels))
    n = labels.shape[0] * labels.shape[1]
    return {"loss": jnp.sum(loss) / n, "accuracy": jnp.sum(correct) / n}


__all__ = ["OUTGOING", "outgoing_map", "probe_metrics", "scale_outgoing", "set_outgoing"]
