"""RePr (Prakash et al., CVPR 2019, Alg. 1) on the method interface.

Repeat N times: train the full network S1 epochs → rank filters by a criterion (default the
inter-filter orthogonality O_f, Eq. 3; any of :mod:`repr_jax.criteria`) and drop the worst
p → train the sub-network S2 epochs → re-initialise the dropped filters (default in the
null space of the kept filters and of their own saved values, §5 "Reinitialization"; or
from the model's initialiser; or left at zero) with their BatchNorm and optimizer moments
reset; then train the full network to the last epoch.

Both transitions are pure jitted functions of the train state returning event arrays; the
dropped filters' kernels at drop time live in ``method_state["snapshot"]`` (checkpointed),
because the re-initialisation is orthogonal to them too. :mod:`repr_jax.methods.repr_records`
turns the events into ``pruning.jsonl`` lines.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from repr_jax.criteria import check_applicable, drop_priority, get_criterion, score_filters, scoring_batches
from repr_jax.layers import get_path
from repr_jax.masks import drop_filters, live_filters, revive_filters
from repr_jax.methods.base import Event, Method, MethodConfig, Phase, register
from repr_jax.methods.repr_records import drop_record, reinit_diagnostics, reinit_record
from repr_jax.ranking import select_drops
from repr_jax.reinit import reinit_layers

REINITS = ("orthogonal", "random", "zero")
_DROP_STREAM, _REINIT_STREAM = 2_000_000, 1_000_000   # key = fold_in(run key, stream + round)


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
        "help": "orthogonal (null space, the paper's), random (the layer's initialiser) or zero"})
    criterion_batches: int = dataclasses.field(default=4, metadata={
        "help": "batches of training images a data-driven criterion scores on"})

    def validate(self, run=None) -> None:
        get_criterion(self.criterion)  # ValueError listing the valid names
        if self.reinit not in REINITS:
            raise ValueError(f"unknown re-initialisation {self.reinit!r}; choose from {', '.join(REINITS)}")
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
        self.score_data = (None, None)
        if self.criterion.needs_data and context.train_images is not None:
            x, y = scoring_batches(context.train_images, context.train_labels,
                                   config.criterion_batches, context.batch_size, seed=context.seed + 1)
            self.score_data = (jnp.asarray(x), jnp.asarray(y))
        if config.reinit == "random":
            zeros = jnp.zeros((1, 32, 32, 3), jnp.float32)
            self._init_params = lambda key: context.model.init(key, zeros, train=False)["params"]
        self._drop_jit = jax.jit(self._drop)
        self._reinit_jit = jax.jit(self._reinit)

    def init_method_state(self, params, key):
        layers = self.context.layers
        return {"snapshot": jax.tree_util.tree_map(jnp.zeros_like, conv_kernels(params, layers))}

    def phase(self, epoch: int) -> Phase:
        p = self.schedule.phase(epoch)
        return Phase(p.name, p.round)

    # ------------------------------------------------------------------ transitions
    def _drop(self, state, round_, images, labels):
        cfg, layers = self.config, state.layers
        live = live_filters(state.masks, layers)
        exclude = (layers[0].name,) if cfg.exclude_first else ()
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), _DROP_STREAM + round_)
        scores = score_filters(cfg.criterion, state, layers, key=key, images=images, labels=labels)
        new_live = select_drops(drop_priority(cfg.criterion, scores), live, cfg.drop_fraction,
                                per_layer=cfg.per_layer, exclude=exclude, min_keep=cfg.min_keep)
        snapshot = conv_kernels(state.params, layers)
        state = drop_filters(state, layers, new_live)
        state = state.replace(method_state={**state.method_state, "snapshot": snapshot})
        return state, {"live_before": live, "live_after": new_live, "scores": scores}

    def _reinit(self, state, round_):
        layers = state.layers
        live = live_filters(state.masks, layers)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), _REINIT_STREAM + round_)
        snapshot = state.method_state["snapshot"]
        if self.config.reinit == "orthogonal":
            new_params = reinit_layers(key, state.params, snapshot, live, layers)
        elif self.config.reinit == "random":   # a fresh draw of the model's own initialiser
            new_params = self._init_params(key)
        else:   # "zero": dropped kernels are already 0; training may regrow them (DSD-like).
            # Without BatchNorm a zero filter feeding a ReLU never does: ReLU'(0) = 0.
            new_params = state.params
        revived = {name: 1.0 - m for name, m in live.items()}
        state = revive_filters(state, layers, revived, new_params)
        return state, {"keep": live, **reinit_diagnostics(state.params, snapshot, live, layers)}

    def before_epoch(self, state, epoch: int):
        phase = self.schedule.phase(epoch)
        if not phase.drop:
            return state, []
        if self.criterion.needs_data and self.score_data[0] is None:
            raise ValueError(f"criterion {self.config.criterion!r} needs training images "
                             "(MethodContext.train_images)")
        state, arrays = self._drop_jit(state, phase.round, *self.score_data)
        return state, [Event("drop", epoch + 1, phase.round, arrays)]

    def after_epoch(self, state, epoch: int):
        phase = self.schedule.phase(epoch)
        if not phase.reinit:
            return state, []
        state, arrays = self._reinit_jit(state, phase.round)
        return state, [Event("reinit", epoch + 1, phase.round, arrays)]

    def record(self, event: Event) -> dict:
        if event.kind == "drop":
            return drop_record(event, self.context.layers, self.criterion)
        return reinit_record(event, self.context.layers, self.config.reinit)


__all__ = ["REINITS", "RePr", "ReprConfig", "ReprPhase", "ReprSchedule", "conv_kernels"]
