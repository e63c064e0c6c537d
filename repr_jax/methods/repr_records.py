"""RePr's ``pruning.jsonl`` lines: diagnostics computed in JAX inside the re-initialisation,
and the host-side formatting of drop / re-initialisation events into JSON.

A drop line holds, per layer, the live/dropped counts, the dropped indices and the raw score
statistics of the live and of the dropped filters, what the other reading of the
orthogonality metric would have dropped (``dropped_by``: ``ortho`` — Eq. 3 — or
``ortho_official``, same fraction and ranking), plus the criterion and which end of its
score is dropped first. A re-initialisation line holds, per layer, the revived count,
whether the null space had room for them (F + revived ≤ fan-in) and the max |cos| of the
new filters to the kept ones, to their own saved values and among themselves, and what
happened to the weights that read them (``outgoing``). Both carry, when RePr probes, the
eval-mode loss and accuracy on a fixed sample right before and right after the event
(``probe``: ``{"before": {"loss", "accuracy"}, "after": …}``).
Epochs are 1-based like ``metrics.jsonl``: a drop belongs to the first sub-network epoch,
a re-initialisation to the last one (it follows that epoch).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from repr_jax.layers import get_path
from repr_jax.ortho import filter_rows, normalize_rows


def reinit_diagnostics(params, snapshot, keep, layers) -> dict:
    """``{"cos_kept", "cos_saved", "cos_new": {layer: scalar}}`` of the revived filters (pure)."""
    out = {"cos_kept": {}, "cos_saved": {}, "cos_new": {}}
    for layer in layers:
        kept = keep[layer.name] > 0
        new = ~kept
        w = normalize_rows(filter_rows(get_path(params, layer.path + ("kernel",)).astype(jnp.float32)))
        s = normalize_rows(filter_rows(get_path(snapshot, layer.path + ("kernel",)).astype(jnp.float32)))
        gram = w @ w.T
        out["cos_kept"][layer.name] = jnp.max(jnp.where(new[:, None] & kept[None, :], jnp.abs(gram), 0.0))
        out["cos_saved"][layer.name] = jnp.max(jnp.where(new, jnp.abs(jnp.sum(w * s, axis=1)), 0.0))
        out["cos_new"][layer.name] = jnp.max(jnp.where(
            new[:, None] & new[None, :], jnp.abs(gram - jnp.eye(gram.shape[0])), 0.0))
    return out


def _probe(arrays) -> dict:
    if "probe_before" not in arrays:
        return {}
    return {"probe": {when: {k: float(v) for k, v in arrays[f"probe_{when}"].items()}
                      for when in ("before", "after")}}


def _probe_text(record: dict) -> str:
    if "probe" not in record:
        return ""
    b, a = record["probe"]["before"], record["probe"]["after"]
    return (f"; probe accuracy {100 * b['accuracy']:.2f} → {100 * a['accuracy']:.2f} %, "
            f"loss {b['loss']:.4f} → {a['loss']:.4f}")


def _stats(x: np.ndarray) -> dict:
    if x.size == 0:
        return {}
    return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}


def drop_record(event, layers, criterion) -> dict:
    """One drop line; ``criterion`` is the :class:`repr_jax.criteria.Criterion` that ranked."""
    arrays = event.arrays
    rows = []
    for layer in layers:
        before = np.asarray(arrays["live_before"][layer.name]) > 0
        after = np.asarray(arrays["live_after"][layer.name]) > 0
        scores = np.asarray(arrays["scores"][layer.name])
        dropped = np.flatnonzero(before & ~after)
        shadow = {name: int((before & ~(np.asarray(live[layer.name]) > 0)).sum())
                  for name, live in arrays.get("shadow", {}).items()}
        rows.append({"layer": layer.name, "filters": layer.num_filters,
                     "live_before": int(before.sum()), "dropped": int(dropped.size),
                     "live_after": int(after.sum()), "dropped_indices": dropped.tolist(),
                     "score_live": _stats(scores[before]), "score_dropped": _stats(scores[dropped]),
                     **({"dropped_by": shadow} if shadow else {})})
    return {"event": "drop", "epoch": event.epoch, "round": event.round, "criterion": criterion.name,
            "drop_first": criterion.drop_first, "live_before": sum(r["live_before"] for r in rows),
            "dropped": sum(r["dropped"] for r in rows), "layers": rows, **_probe(arrays)}


def reinit_record(event, layers, mode: str, outgoing: str = "keep") -> dict:
    """One re-initialisation line (``mode``: the re-initialisation; ``outgoing``: what
    happened to the weights that read the revived filters)."""
    arrays = event.arrays
    rows = []
    for layer in layers:
        revived = int((np.asarray(arrays["keep"][layer.name]) <= 0).sum())
        if revived == 0:
            rows.append({"layer": layer.name, "revived": 0})
            continue
        rows.append({"layer": layer.name, "revived": revived,
                     "complement_ok": bool(layer.num_filters + revived <= layer.fan_in),
                     "max_abs_cos_to_kept": float(arrays["cos_kept"][layer.name]),
                     "max_abs_cos_to_own_saved": float(arrays["cos_saved"][layer.name]),
                     "max_abs_cos_among_new": float(arrays["cos_new"][layer.name])})
    return {"event": "reinit", "epoch": event.epoch, "round": event.round, "reinit": mode,
            "outgoing": outgoing, "revived": sum(r["revived"] for r in rows), "layers": rows, **_probe(arrays)}


def describe_record(record: dict, ranking: str) -> list[str]:
    """Console lines of a drop or re-initialisation line: per-layer counts, and a warning for
    every layer a drop leaves with less than half its filters."""
    rows = record["layers"]
    if record["event"] == "drop":
        counts = ", ".join(f"{r['layer']} {r['dropped']}/{r['filters']}" for r in rows)
        lines = [f"drop round {record['round'] + 1} (before epoch {record['epoch']}, {ranking} ranking by "
                 f"{record['criterion']}): {record['dropped']} of {record['live_before']} live filters — {counts}"
                 f"{_probe_text(record)}"]
        for r in rows:
            if r["live_after"] < r["filters"] / 2:
                lines.append(f"warning: drop round {record['round'] + 1} leaves {r['layer']} with {r['live_after']} "
                             f"of {r['filters']} filters (repr.per_layer=true ranks within layers; "
                             "repr.exclude_first=true spares the first conv)")
        return lines
    revived = [r for r in rows if r["revived"]]
    short = [r["layer"] for r in revived if not r.get("complement_ok", True)]
    space = ("the null space had room in every layer" if not short else
             "the null space was too small in " + ", ".join(short) + " (documented fallback)")
    counts = ", ".join(f"{r['layer']} {r['revived']}" for r in revived) or "none"
    outgoing = record.get("outgoing", "keep")
    return [f"re-init round {record['round'] + 1} (after epoch {record['epoch']}, {record['reinit']}, outgoing "
            f"weights {outgoing}): {record['revived']} filters — {counts}; {space}{_probe_text(record)}"]


__all__ = ["describe_record", "drop_record", "reinit_diagnostics", "reinit_record"]
