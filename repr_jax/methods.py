"""Training methods plugged into the epoch loop: ``standard`` and ``repr``.

A method decides each epoch's phase and may change the train state before and after the
epoch (pure functions of the state; the caller does the I/O). ``RePr`` implements
Prakash et al. 2019, Alg. 1: drop the worst ``p`` of the filters by a ranking criterion
(default the orthogonality O_f; any of :mod:`repr_jax.criteria`) after S1 full epochs,
train the sub-network S2 epochs, re-initialise the dropped filters (default in the null
space of the rest; or from the layer's initialiser, or left at zero), N times, then train
the full network to the end.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from repr_jax.criteria import drop_priority, get_criterion, score_filters
from repr_jax.layers import get_path
from repr_jax.masks import drop_filters, live_filters, revive_filters
from repr_jax.ortho import filter_rows, normalize_rows
from repr_jax.ranking import select_drops
from repr_jax.reinit import reinit_layers
from repr_jax.schedule import Phase, ReprSchedule, standard_phase

REINITS = ("orthogonal", "random", "zero")


class Standard:
    """Plain training of the full network."""
    name = "standard"

    def phase(self, epoch: int) -> Phase:
        return standard_phase(epoch)

    def before_epoch(self, state, epoch: int):
        return state, None

    def after_epoch(self, state, epoch: int):
        return state, None


@dataclasses.dataclass(frozen=True)
class ReprConfig:
    s1: int = 20                  # full-network epochs per round
    s2: int = 10                  # sub-network epochs per round
    iterations: int = 3           # N rounds
    drop_fraction: float = 0.3    # p
    per_layer: bool = False       # rank within each layer instead of globally
    exclude_first: bool = False   # never prune the first conv
    min_keep: int = 1             # live filters every layer keeps
    criterion: str = "ortho"      # ranking criterion, see repr_jax.criteria.CRITERIA
    reinit: str = "orthogonal"    # "orthogonal" (null space), "random" (layer init) or "zero"
    criterion_batches: int = 4    # batches of training images a data-driven criterion sees

    def validate(self) -> None:
        get_criterion(self.criterion)  # ValueError listing the valid names
        if self.reinit not in REINITS:
            raise ValueError(f"unknown re-initialisation {self.reinit!r}; choose from {', '.join(REINITS)}")
        if self.criterion_batches < 1:
            raise ValueError(f"criterion batches must be >= 1, got {self.criterion_batches}")


class RePr:
    """RePr: rank by ``config.criterion``, drop, train the sub-network, re-initialise.

    Args:
      config: the schedule, drop fraction, criterion and re-initialisation.
      score_data: ``(images (n, B, H, W, C) uint8, labels (n, B))``, the fixed batches a
        data-driven criterion scores on (see :func:`repr_jax.criteria.scoring_batches`).
      init_params: ``key → params`` (the model's initialiser), needed by ``reinit="random"``.
    """
    name = "repr"

    def __init__(self, config: ReprConfig, *, score_data=None, init_params=None):
        config.validate()
        self.config = config
        self.schedule = ReprSchedule(config.s1, config.s2, config.iterations)
        self.criterion = get_criterion(config.criterion)
        if self.criterion.needs_data and score_data is None:
            raise ValueError(f"criterion {config.criterion!r} needs score_data")
        if config.reinit == "random" and init_params is None:
            raise ValueError("reinit 'random' needs init_params (the model initialiser)")
        self.score_data = score_data if score_data is not None else (None, None)
        self.init_params = init_params

    def phase(self, epoch: int) -> Phase:
        return self.schedule.phase(epoch)

    def before_epoch(self, state, epoch: int):
        phase = self.phase(epoch)
        if not phase.drop:
            return state, None
        layers, cfg = state.layers, self.config
        live = live_filters(state.masks, layers)
        exclude = (layers[0].name,) if cfg.exclude_first else ()
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2_000_000 + phase.round)
        images, labels = self.score_data
        scores = score_filters(cfg.criterion, state, layers, key=key, images=images, labels=labels)
        new_live = select_drops(drop_priority(cfg.criterion, scores), live, cfg.drop_fraction,
                                per_layer=cfg.per_layer, exclude=exclude, min_keep=cfg.min_keep)
        snapshot = state.params
        state = drop_filters(state, layers, new_live).replace(snapshot=snapshot)
        return state, drop_record(epoch, phase.round, layers, live, new_live, scores,
                                  criterion=self.criterion)

    def after_epoch(self, state, epoch: int):
        phase = self.phase(epoch)
        if not phase.reinit:
            return state, None
        layers = state.layers
        live = live_filters(state.masks, layers)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1_000_000 + phase.round)
        mode = self.config.reinit
        if mode == "orthogonal":
            new_params = reinit_layers(key, state.params, state.snapshot, live, layers)
        elif mode == "random":   # a fresh draw of the model's own initialiser
            new_params = self.init_params(key)
        else:   # "zero": dropped kernels are already 0; training may regrow them (DSD-like).
            # Without BatchNorm a zero filter feeding a ReLU never does: ReLU'(0) = 0.
            new_params = state.params
        revived = {name: 1.0 - m for name, m in live.items()}
        state = revive_filters(state, layers, revived, new_params)
        return state, reinit_record(epoch, phase.round, layers, live, state.params,
                                    state.snapshot, mode=mode)


def _stats(x: np.ndarray) -> dict:
    if x.size == 0:
        return {}
    return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}


def drop_record(epoch, round_, layers, live_before, live_after, scores, criterion=None) -> dict:
    """One ``pruning.jsonl`` line: per layer live/dropped counts, indices, raw score statistics.

    ``epoch`` (0-based index) is recorded 1-based like ``metrics.jsonl``: the drop happens
    before that epoch, the first sub-network epoch.
    """
    rows = []
    for layer in layers:
        before = np.asarray(live_before[layer.name]) > 0
        after = np.asarray(live_after[layer.name]) > 0
        s = np.asarray(scores[layer.name])
        dropped = np.flatnonzero(before & ~after)
        rows.append({"layer": layer.name, "filters": layer.num_filters,
                     "live_before": int(before.sum()), "dropped": int(dropped.size),
                     "live_after": int(after.sum()), "dropped_indices": dropped.tolist(),
                     "score_live": _stats(s[before]), "score_dropped": _stats(s[dropped])})
    total_live = sum(r["live_before"] for r in rows)
    total_drop = sum(r["dropped"] for r in rows)
    criterion = criterion or get_criterion("ortho")
    return {"event": "drop", "epoch": epoch + 1, "round": round_, "criterion": criterion.name,
            "drop_first": criterion.drop_first, "live_before": total_live, "dropped": total_drop, "layers": rows}


def reinit_record(epoch, round_, layers, keep, params, snapshot, mode="orthogonal") -> dict:
    """One ``pruning.jsonl`` line for a re-initialisation, with orthogonality diagnostics.

    ``epoch`` is recorded 1-based: the re-initialisation follows that epoch (the last
    sub-network epoch of the round).
    """
    rows = []
    for layer in layers:
        k = np.asarray(keep[layer.name]) > 0
        revived = np.flatnonzero(~k)
        if revived.size == 0:
            rows.append({"layer": layer.name, "revived": 0})
            continue
        w = np.asarray(normalize_rows(filter_rows(get_path(params, layer.path + ("kernel",)))))
        s = np.asarray(normalize_rows(filter_rows(get_path(snapshot, layer.path + ("kernel",)))))
        new = w[revived]
        cos_kept = np.abs(new @ w[k].T).max() if k.any() else 0.0
        cos_saved = np.abs(np.sum(new * s[revived], axis=1)).max()
        gram = np.abs(new @ new.T - np.eye(len(new))).max()
        rows.append({"layer": layer.name, "revived": int(revived.size),
                     "complement_ok": bool(layer.num_filters + revived.size <= layer.fan_in),
                     "max_abs_cos_to_kept": float(cos_kept),
                     "max_abs_cos_to_own_saved": float(cos_saved),
                     "max_abs_cos_among_new": float(gram)})
    return {"event": "reinit", "epoch": epoch + 1, "round": round_, "reinit": mode,
            "revived": int(sum(r["revived"] for r in rows)), "layers": rows}


def create_method(name: str, repr_config: ReprConfig | None = None, **repr_kwargs):
    """``standard`` or ``repr`` (``repr_kwargs``: ``score_data``, ``init_params``)."""
    if name == "standard":
        return Standard()
    if name == "repr":
        return RePr(repr_config or ReprConfig(), **repr_kwargs)
    raise ValueError(f"unknown method {name!r}; choose standard or repr")
