"""RePr (Prakash et al., CVPR 2019, Alg. 1) on the method interface.

Repeat N times: train the full network S1 epochs → rank filters by a criterion (default the
inter-filter orthogonality O_f, Eq. 3; any of :mod:`repr_jax.criteria`) and drop the worst
p → train the sub-network S2 epochs → re-initialise the dropped filters (default in the
null space of the kept filters and of their own saved values, §5 "Reinitialization"; or
the PyTorch reimplementation siahuat0727/RePr's clamped unit null-space rows, ``reimpl``;
or from the model's initialiser; or the official code's QR of the current kernel,
:mod:`repr_jax.official`; or left at zero) with their BatchNorm and optimizer moments
reset; then train the full network to the last epoch.

How a filter is dropped (``drop_mode``): ``zero`` (ours) zeroes its parameters and keeps
them at 0; ``freeze`` (the official code's) multiplies its output channel by 0 and freezes
its parameters at their values, which the official re-initialisation then starts from;
``kernel`` (siahuat0727/RePr's) zeroes and freezes the kernel alone — its bias (and
BatchNorm) keep training, so the filter outputs the constant ReLU(b) — and the bias is kept
at re-initialisation. What happens to the weights that read a revived filter (``outgoing``:
keep, zero — the network's function unchanged by the re-introduction —, redraw) is
:mod:`repr_jax.methods.reintroduce`; so is the probe, the accuracy and loss on a fixed
sample right before and after every drop and re-introduction (``probe_batches``).

Both transitions are pure jitted functions of the train state returning event arrays; the
dropped filters' kernels at drop time live in ``method_state["snapshot"]`` (checkpointed),
because the re-initialisation is orthogonal to them too. :mod:`repr_jax.methods.repr_records`
turns the events into ``pruning.jsonl`` lines.

Deviations from the paper (Prakash et al. 2019), all in one place:

* how many are dropped: ⌊p·n + ½⌉ of the n live filters (``rounding="floor"``: the official
  code's ``int(p·n)``); the paper says only "p %";
* ``min_keep`` (default 1): no layer is emptied; when it binds in the global ranking the
  next-ranked filters of other layers are dropped instead, so p·n are always dropped (the
  paper: not stated);
* the scale of a re-initialised filter: the mean L2 norm of the layer's live, non-zero kept
  filters (:mod:`repr_jax.reinit`; the paper: not stated);
* when the null space is too small (F + dropped > kh·kw·c_in), the new filters are kept
  orthogonal to the most-overlapping constraints only (:mod:`repr_jax.reinit`'s fallback);
* a dropped filter is kept as zero parameters under a mask (``zero``) rather than removed —
  the same function, one compilation per run;
* optimizer reset: a revived filter's moments *and* (Adam) step count restart from 0, so it
  trains as under a fresh optimizer (``optim.adam_step_count=shared`` keeps optax's shared
  count, as before 2026-12-03 — its first Adam steps are then ≈ 3.2× a fresh Adam's);
* everything else — criterion O_f (Eq. 3), global ranking (§5), null space of the kept
  filters and the filters' own old values, BatchNorm reset, S1/S2/N/p — is the paper's.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from repr_jax.criteria import (check_applicable, drop_priority, get_criterion, require_finite,
                               score_filters, scoring_batches)
from repr_jax.layers import get_path, replace_path
from repr_jax.masks import drop_filters, live_filters, revive_filters, with_live_filters
from repr_jax.methods.base import Event, Method, MethodConfig, Phase, register
from repr_jax.methods.reintroduce import OUTGOING, outgoing_map, probe_metrics, scale_outgoing, set_outgoing
from repr_jax.methods.repr_records import describe_record, drop_record, reinit_diagnostics, reinit_record
from repr_jax.official import official_reinit_layers
from repr_jax.ranking import ROUNDINGS, select_drops
from repr_jax.reinit import reinit_layers

REINITS = ("orthogonal", "random", "zero", "official", "reimpl")
DROP_MODES = ("zero", "freeze", "kernel")
_DROP_STREAM, _REINIT_STREAM = 2_000_000, 1_000_000   # key = fold_in(run key, stream + round)
_PROBE_SEED = 2   # the probe sample: seed + 2 (the criterion's sample: seed + 1)
# Both readings of the orthogonality metric (the paper's Eq. 3, the official code's): at every
# drop, what the one not ranking would have dropped per layer is recorded beside the drop.
SHADOW_CRITERIA = ("ortho", "ortho_official")


@dataclasses.dataclass(frozen=True)
class ReprConfig(MethodConfig):
    name = "repr"
    s1: int = dataclasses.field(default=20, metadata={"help": "full-network epochs per round (S1)"})
    s2: int = dataclasses.field(default=10, metadata={"help": "sub-network epochs per round (S2)"})
    iterations: int = dataclasses.field(default=3, metadata={"help": "number of rounds (N)"})
    drop_fraction: float = dataclasses.field(default=0.3, metadata={"help": "fraction p of live filters dropped"})
    per_layer: bool = dataclasses.field(default=False, metadata={"help": "rank within each layer, not globally"})
    exclude_first: bool = dataclasses.field(default=False, metadata={"help": "never prune the first conv"})
    min_keep: int = dataclasses.field(default=1, metadata={"help": "live filters every layer keeps"})
    criterion: str = dataclasses.field(default="ortho", metadata={"help": "ranking criterion (repr_jax.criteria)"})
    reinit: str = dataclasses.field(default="orthogonal", metadata={
        "help": "orthogonal (null space, the paper's), reimpl (unit null-space rows clamped to "
                "±1/sqrt(fan_in), siahuat0727/RePr's), random (the layer's initialiser), zero or official"})
    criterion_batches: int = dataclasses.field(default=4, metadata={
        "help": "batches of training images (held-out ones with data.holdout) a data-driven criterion scores on"})
    drop_mode: str = dataclasses.field(default="zero", metadata={
        "help": "zero (dropped parameters set to 0), freeze (output masked, parameters frozen: the official "
                "code) or kernel (kernel zeroed and frozen, bias trains and is kept: siahuat0727/RePr)"})
    gain: float = dataclasses.field(default=1.0, metadata={"help": "reinit=official: scale of the QR columns"})
    rounding: str = dataclasses.field(default="nearest", metadata={
        "help": "filters dropped: nearest (floor(p·n + 0.5)) or floor (int(p·n), the official code)"})
    outgoing_scale: float = dataclasses.field(default=1.0, metadata={
        "help": "outgoing=keep: multiply the revived filters' outgoing weights by this at re-init"})
    outgoing: str = dataclasses.field(default="keep", metadata={
        "help": "at re-init, the next layer's weights that read a revived filter: keep, zero (the network's "
                "function unchanged by the re-introduction) or redraw (the model's initialiser)"})
    probe_batches: int = dataclasses.field(default=8, metadata={
        "help": "batches of a fixed sample (held-out images with data.holdout) scored right before and after "
                "every drop and re-init: loss and accuracy in pruning.jsonl and the log (0: off)"})

    def validate(self, run=None) -> None:
        get_criterion(self.criterion)  # ValueError listing the valid names
        if self.reinit not in REINITS:
            raise ValueError(f"unknown re-initialisation {self.reinit!r}; choose from {', '.join(REINITS)}")
        if self.drop_mode not in DROP_MODES:
            raise ValueError(f"unknown drop mode {self.drop_mode!r}; choose from {', '.join(DROP_MODES)}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {self.rounding!r}; choose from {', '.join(ROUNDINGS)}")
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"repr.gain must be finite and > 0, got {self.gain}")
        if not (math.isfinite(self.outgoing_scale) and self.outgoing_scale >= 0):
            raise ValueError(f"repr.outgoing_scale must be finite and >= 0, got {self.outgoing_scale}")
        if self.outgoing not in OUTGOING:
            raise ValueError(f"unknown repr.outgoing {self.outgoing!r}; choose from {', '.join(OUTGOING)}")
        if self.outgoing != "keep" and self.outgoing_scale != 1.0:
            raise ValueError(f"repr.outgoing_scale applies to repr.outgoing=keep only, got outgoing="
                             f"{self.outgoing} with outgoing_scale={self.outgoing_scale}")
        if self.probe_batches < 0:
            raise ValueError(f"repr.probe_batches must be >= 0, got {self.probe_batches}")
        if self.criterion_batches < 1:
            raise ValueError(f"criterion batches must be >= 1, got {self.criterion_batches}")
        if self.s1 < 1 or self.s2 < 1 or self.iterations < 0:
            raise ValueError(f"RePr schedule needs S1 >= 1, S2 >= 1, N >= 0; got "
                             f"S1={self.s1}, S2={self.s2}, N={self.iterations}")
        if not (math.isfinite(self.drop_fraction) and 0.0 <= self.drop_fraction < 1.0):
            raise ValueError(f"--repr-drop must be in [0, 1), got {self.drop_fraction}")
        if self.min_keep < 0:
            raise ValueError(f"--repr-min-keep must be >= 0, got {self.min_keep}")
        if run is not None and run.epochs < self.iterations * (self.s1 + self.s2):
            raise ValueError(f"RePr schedule needs at least N·(S1+S2) = "
                             f"{self.iterations * (self.s1 + self.s2)} epochs, got --epochs {run.epochs}")


@dataclasses.dataclass(frozen=True)
class ReprPhase:
    name: str          # "full" or "sub"
    round: int         # 0-based RePr round; N for the final full-network stretch
    drop: bool         # drop filters before this epoch
    reinit: bool       # re-initialise dropped filters after this epoch


@dataclasses.dataclass(frozen=True)
class ReprSchedule:
    """Epoch ``e`` (0-based) of round ``r`` is full-network while ``e − r(S1+S2) < S1``; the
    drop comes before the first sub-network epoch, the re-initialisation after the last."""
    s1: int = 20
    s2: int = 10
    iterations: int = 3

    def __post_init__(self):
        if self.s1 < 1 or self.s2 < 1 or self.iterations < 0:
            raise ValueError(f"RePr schedule needs S1 >= 1, S2 >= 1, N >= 0; got "
                             f"S1={self.s1}, S2={self.s2}, N={self.iterations}")

    @property
    def period(self) -> int:
        return self.s1 + self.s2

    @property
    def min_epochs(self) -> int:
        """Epochs needed to complete every round (the last re-initialisation included)."""
        return self.iterations * self.period

    def phase(self, epoch: int) -> ReprPhase:
        r, offset = divmod(epoch, self.period)
        if r >= self.iterations:
            return ReprPhase("full", self.iterations, False, False)
        if offset < self.s1:
            return ReprPhase("full", r, False, False)
        return ReprPhase("sub", r, offset == self.s1, offset == self.period - 1)


def conv_kernels(params, layers):
    """The prunable convs' kernels as a params-shaped sub-tree (RePr's snapshot)."""
    tree: dict = {}
    for layer in layers:
        path = layer.path + ("kernel",)
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = get_path(params, path)
    return tree


def warn_low_dimensional(layers) -> None:
    """A ``UserWarning`` per conv whose filters have fewer weights than it has filters (a first
    conv on RGB, a depthwise conv): Eq. 3 compares them in a low-dimensional space, where they
    overlap more, so a global ranking drops most of them first — and their re-initialised
    filters cannot all be orthogonal (:mod:`repr_jax.reinit`'s fallback)."""
    import warnings
    for layer in layers:
        if layer.fan_in < layer.num_filters:
            warnings.warn(
                f"repr: {layer.name} has {layer.fan_in} weights per filter for {layer.num_filters} filters: "
                "a global ranking tends to drop most of its filters first (28-29 of C3's 32 first-conv filters) "
                "and their re-initialisation cannot keep them all orthogonal (the fallback in docs/methods.md); "
                "repr.per_layer=true ranks within layers, repr.exclude_first=true spares the first conv",
                UserWarning, stacklevel=3)


@register
class RePr(Method):
    """RePr: rank by ``config.criterion``, drop, train the sub-network, re-initialise."""
    name = "repr"
    config_class = ReprConfig
    summary = "RePr: drop the worst filters, train the sub-network, re-initialise them (Prakash et al. 2019)"

    def __init__(self, config: ReprConfig, context):
        config.validate()
        super().__init__(config, context)
        self.schedule = ReprSchedule(config.s1, config.s2, config.iterations)
        self.criterion = check_applicable(config.criterion, context.layers)
        eligible = context.layers[1:] if config.exclude_first else context.layers
        if eligible and all(layer.num_filters <= config.min_keep for layer in eligible):
            raise ValueError(f"--repr-min-keep {config.min_keep} leaves nothing to drop: no prunable "
                             f"layer has more than {max(l.num_filters for l in eligible)} filters")
        if not config.per_layer and config.drop_fraction > 0:
            warn_low_dimensional(eligible)
        self.score_data, self.probe_data = (None, None), None
        images, labels = context.scoring_data()
        if self.criterion.needs_data and images is not None:
            x, y = scoring_batches(images, labels, config.criterion_batches, context.batch_size,
                                   seed=context.seed + 1)
            self.score_data = (context.model_inputs(x), jnp.asarray(y))
        probe = 0 if images is None else min(config.probe_batches, len(labels) // context.batch_size)
        if probe:
            x, y = scoring_batches(images, labels, probe, context.batch_size, seed=context.seed + _PROBE_SEED)
            self.probe_data = (context.model_inputs(x), jnp.asarray(y))
        changes_outgoing = config.outgoing != "keep" or config.outgoing_scale != 1.0
        self.outgoing = outgoing_map(context) if changes_outgoing else ()
        if changes_outgoing and not self.outgoing:
            import warnings
            warnings.warn(f"repr.outgoing={config.outgoing}: the channel graph finds no weight that reads a "
                          "prunable conv's filters (every consumer is a residual sum or an operation it cannot "
                          "follow), so re-introductions change no outgoing weight", UserWarning, stacklevel=2)
        if config.reinit == "random" or config.outgoing == "redraw":
            zeros = context.example_input()
            self._init_params = lambda key: context.model.init(key, zeros, train=False)["params"]
        self._drop_jit = jax.jit(self._drop)
        self._reinit_jit = jax.jit(self._reinit)

    def init_method_state(self, params, key):
        layers = self.context.layers
        state = {"snapshot": jax.tree_util.tree_map(jnp.zeros_like, conv_kernels(params, layers))}
        if self.config.drop_mode == "freeze":   # output gates of the dropped filters
            state["gates"] = {l.name: jnp.ones((l.num_filters,), jnp.float32) for l in layers}
        return state

    def channel_gates(self, method_params, method_state, train: bool):
        return method_state.get("gates")

    def phase(self, epoch: int) -> Phase:
        p = self.schedule.phase(epoch)
        return Phase(p.name, p.round)

    # ------------------------------------------------------------------ transitions
    def _probe(self, state, probe):
        return None if probe is None else probe_metrics(state, self, *probe)

    def _drop(self, state, round_, images, labels, probe=None):
        cfg, layers = self.config, state.layers
        before = self._probe(state, probe)
        live = live_filters(state.masks, layers)
        exclude = (layers[0].name,) if cfg.exclude_first else ()
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), _DROP_STREAM + round_)
        scores = score_filters(cfg.criterion, state, layers, key=key, images=images, labels=labels)
        def select(criterion, criterion_scores):
            return select_drops(drop_priority(criterion, criterion_scores), live, cfg.drop_fraction,
                                per_layer=cfg.per_layer, exclude=exclude, min_keep=cfg.min_keep,
                                rounding=cfg.rounding)
        new_live = select(cfg.criterion, scores)
        shadow = {name: select(name, score_filters(name, state, layers, key=key))
                  for name in SHADOW_CRITERIA if name != cfg.criterion}
        snapshot = conv_kernels(state.params, layers)
        if cfg.drop_mode in ("zero", "kernel"):
            state = drop_filters(state, layers, new_live, kernel_only=cfg.drop_mode == "kernel")
            method_state = {**state.method_state, "snapshot": snapshot}
        else:   # freeze: parameters stay, their updates are masked, their outputs gated to 0
            state = state.replace(masks=with_live_filters(state.masks, layers, new_live))
            method_state = {**state.method_state, "snapshot": snapshot, "gates": dict(new_live)}
        state = state.replace(method_state=method_state)
        arrays = {"live_before": live, "live_after": new_live, "scores": scores, "shadow": shadow}
        if probe is not None:
            arrays |= {"probe_before": before, "probe_after": self._probe(state, probe)}
        return state, arrays

    def _reinit(self, state, round_, probe=None):
        cfg, layers = self.config, state.layers
        before = self._probe(state, probe)
        live = live_filters(state.masks, layers)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), _REINIT_STREAM + round_)
        snapshot = state.method_state["snapshot"]
        fresh = self._init_params(key) if cfg.reinit == "random" or cfg.outgoing == "redraw" else None
        if cfg.reinit in ("orthogonal", "reimpl"):
            new_params = reinit_layers(key, state.params, snapshot, live, layers,
                                       style="paper" if cfg.reinit == "orthogonal" else "reimpl")
        elif cfg.reinit == "random":   # a fresh draw of the model's own initialiser
            new_params = fresh
        elif cfg.reinit == "official":  # QR of the layer's kernel, dropped filters at their drop-time values
            dropped = {name: m <= 0 for name, m in live.items()}
            with_saved = state.params
            for layer in layers:
                path = layer.path + ("kernel",)
                with_saved = replace_path(with_saved, path, lambda k, d=dropped[layer.name], s=get_path(
                    snapshot, path): jnp.where(d, s, k))
            new_params = official_reinit_layers(with_saved, dropped, layers, self.config.gain)
        else:   # "zero": dropped kernels are already 0; training may regrow them (DSD-like).
            # Without BatchNorm a zero filter feeding a ReLU never does: ReLU'(0) = 0.
            new_params = state.params
        revived = {name: 1.0 - m for name, m in live.items()}
        freeze = cfg.drop_mode == "freeze"
        state = revive_filters(state, layers, revived, new_params, reset_bias=cfg.drop_mode == "zero")
        if freeze:
            state = state.replace(method_state={**state.method_state, "gates": jax.tree_util.tree_map(
                jnp.ones_like, state.method_state["gates"])})
        if self.outgoing:
            state = state.replace(params=set_outgoing(state.params, self.outgoing, revived, cfg.outgoing,
                                                      scale=cfg.outgoing_scale, fresh_params=fresh))
        arrays = {"keep": live, **reinit_diagnostics(state.params, snapshot, live, layers)}
        if probe is not None:
            arrays |= {"probe_before": before, "probe_after": self._probe(state, probe)}
        return state, arrays

    def run_inputs(self):
        """``{"score": (images, labels), "probe": (images, labels) or None}``: the fixed
        scoring batches of a data-driven criterion (``(None, None)`` otherwise) and the probe
        sample (``probe_batches``; None when off or without data)."""
        return {"score": self.score_data, "probe": self.probe_data}

    def _inputs(self, inputs):
        inputs = self.run_inputs() if inputs is None else inputs
        if isinstance(inputs, tuple):   # (images, labels), as before the probe existed
            return inputs, None
        return inputs["score"], inputs["probe"]

    def before_epoch(self, state, epoch: int, inputs=None):
        phase = self.schedule.phase(epoch)
        if not phase.drop:
            return state, []
        (images, labels), probe = self._inputs(inputs)
        if self.criterion.needs_data and images is None:
            raise ValueError(f"criterion {self.config.criterion!r} needs training images "
                             "(MethodContext.train_images)")
        new_state, arrays = self._drop_jit(state, phase.round, images, labels, probe)
        return new_state, [Event("drop", epoch + 1, phase.round, arrays)]

    def after_epoch(self, state, epoch: int, inputs=None):
        phase = self.schedule.phase(epoch)
        if not phase.reinit:
            return state, []
        _, probe = self._inputs(inputs)
        state, arrays = self._reinit_jit(state, phase.round, probe)
        return state, [Event("reinit", epoch + 1, phase.round, arrays)]

    def check_event(self, event: Event) -> None:
        if event.kind == "drop":
            require_finite(self.config.criterion, event.arrays["scores"], event.arrays["live_before"],
                           f"before epoch {event.epoch}")

    def record(self, event: Event) -> dict:
        if event.kind == "drop":
            return drop_record(event, self.context.layers, self.criterion)
        return reinit_record(event, self.context.layers, self.config.reinit, self.config.outgoing)

    def describe(self, record: dict) -> list[str]:
        return describe_record(record, "per-layer" if self.config.per_layer else "global")


__all__ = ["DROP_MODES", "REINITS", "RePr", "ReprConfig", "ReprPhase", "ReprSchedule", "conv_kernels",
           "outgoing_map", "scale_outgoing"]   # the last two live in repr_jax.methods.reintroduce
