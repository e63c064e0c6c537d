"""What every structured (filter-removing) method shares: the prune → retrain → fine-tune
schedule, which layers may lose filters, per-layer ratio specs, and the pure selections.

Schedule (epochs 0-based): ``prune_epoch`` epochs of training (0 when the run starts from a
trained network, ``--set init_from=RUN``); then ``rounds`` prunes, one before epoch
``prune_epoch + r · retrain_epochs`` (r = 0 … rounds−1), each followed by retraining with the
surviving weights (iterative prune–retrain; ``rounds = 1`` is one-shot prune then retrain,
Li et al. 2017's default); after the last prune the network is fine-tuned to the last
epoch. ``finetune_lr > 0`` restarts the learning rate at every prune (a cosine, linear or
constant stretch from that peak); 0 keeps the run's schedule. A prune is a pure jitted
transition that zeroes the chosen filters and their optimizer moments (:mod:`repr_jax.masks`),
so the whole run compiles its train step once; at the end the run exports the physically
smaller model (``<run>/export/``, :mod:`repr_jax.compress.run_export`).

Which layers may lose filters: by default only those whose filters the export can
physically remove — found from the model's channel graph (:mod:`repr_jax.compress.graph`):
a layer qualifies when all its filters being dead lets the export drop them. For CIFAR
ResNets that is the first conv of each residual block, the rule Li et al. (2017, §4.3)
state ("we only prune the first layer of each residual block"); for C^n and VGG every conv.
``prune_tied=True`` also masks the others (they stay in the export as zero filters).

Per-layer ratio specs (``ratios``, ``skip``): comma-separated ``PATTERN=RATIO`` /
``PATTERN`` entries matched with :mod:`fnmatch` against layer names (``stage1_*=0.6``);
later entries win; a pattern that matches no eligible layer is an error.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.compress.graph import FIXED as FIXED_SOURCE
from repr_jax.masks import drop_filters, live_filters
from repr_jax.methods.base import Event, Method, MethodConfig, Phase

RESTARTS = ("cosine", "linear", "constant")
PRUNE_STREAM = 4_000_000


@dataclasses.dataclass(frozen=True)
class StructuredConfig(MethodConfig):
    """Schedule fields every structured method has (see the module docstring)."""
    prune_epoch: int = dataclasses.field(default=0, metadata={
        "help": "epochs trained before the first prune (0: prune the starting weights, e.g. of --set init_from=RUN)"})
    rounds: int = dataclasses.field(default=1, metadata={"help": "prune-retrain rounds (1: one-shot)"})
    retrain_epochs: int = dataclasses.field(default=0, metadata={
        "help": "epochs of retraining after each prune but the last (rounds > 1)"})
    finetune_lr: float = dataclasses.field(default=0.0, metadata={
        "help": "peak learning rate restarted at each prune (0: keep the run's schedule)"})
    finetune_schedule: str = dataclasses.field(default="cosine", metadata={
        "help": "shape of each restarted stretch: cosine, linear or constant"})
    min_keep: int = dataclasses.field(default=1, metadata={
        "help": "filters every pruned layer keeps (>= 1: the run ends in an exported model)"})
    prune_tied: bool = dataclasses.field(default=False, metadata={
        "help": "also prune layers tied to a residual sum (kept as zero filters by the export)"})

    def prune_epochs(self) -> tuple[int, ...]:
        return tuple(self.prune_epoch + r * self.retrain_epochs for r in range(self.rounds))

    def validate(self, run=None) -> None:
        prefix = self.name
        if self.prune_epoch < 0 or self.rounds < 1 or self.retrain_epochs < 0:
            raise ValueError(f"{prefix}: prune_epoch >= 0, rounds >= 1 and retrain_epochs >= 0 needed; got "
                             f"{self.prune_epoch}, {self.rounds}, {self.retrain_epochs}")
        if self.min_keep < 1:   # these methods end in an exported model: an emptied layer has none
            raise ValueError(f"{prefix}.min_keep must be >= 1 (a layer left without filters cannot be "
                             f"exported), got {self.min_keep}")
        if self.rounds > 1 and self.retrain_epochs < 1:
            raise ValueError(f"{prefix}.rounds={self.rounds} needs {prefix}.retrain_epochs >= 1")
        if self.finetune_schedule not in RESTARTS:
            raise ValueError(f"unknown {prefix}.finetune_schedule {self.finetune_schedule!r}; "
                             f"choose from {', '.join(RESTARTS)}")
        if not (math.isfinite(self.finetune_lr) and self.finetune_lr >= 0):
            raise ValueError(f"{prefix}.finetune_lr must be finite and >= 0, got {self.finetune_lr}")
        last = self.prune_epochs()[-1]
        if run is not None and run.epochs <= last:
            raise ValueError(f"{prefix}: the last prune comes before epoch {last + 1}, so --epochs must be "
                             f"at least {last + 1} (one fine-tune epoch), got {run.epochs}")


def check_fraction(name: str, value: float, upper_inclusive: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not (math.isfinite(value) and ok):
        raise ValueError(f"{name} must be in [0, 1), got {value}")


# ----------------------------------------------------------------------------- layer specs
def parse_ratios(text: str, names, default: float, what: str) -> dict[str, float]:
    """``{layer: ratio}`` for ``names`` from ``default`` and ``PATTERN=RATIO`` entries."""
    out = {n: float(default) for n in names}
    for item in filter(None, (t.strip() for t in text.split(","))):
        pattern, sep, value = item.partition("=")
        try:
            ratio = float(value)
        except ValueError:
            raise ValueError(f"{what} entry {item!r} is not PATTERN=RATIO") from None
        check_fraction(f"{what} entry {item!r}", ratio)
        hits = fnmatch.filter(list(names), pattern.strip())
        if not sep or not hits:
            raise ValueError(f"{what} entry {item!r} matches no prunable layer (layers: "
                             f"{', '.join(list(names)[:6])}{', …' if len(names) > 6 else ''})")
        out.update({n: ratio for n in hits})
    return out


def match_layers(text: str, names, what: str) -> set[str]:
    """Layer names matched by comma-separated fnmatch patterns (error for a pattern matching none)."""
    found: set[str] = set()
    for pattern in filter(None, (t.strip() for t in text.split(","))):
        hits = fnmatch.filter(list(names), pattern)
        if not hits:
            raise ValueError(f"{what} pattern {pattern!r} matches no prunable layer")
        found.update(hits)
    return found


def model_graph(context):
    """The channel graph of the context's model on its input shape (cached)."""
    return context.graph()


def removable_layers(graph) -> tuple[str, ...]:
    """Layers whose filters the export can physically remove (see the module docstring)."""
    from repr_jax.compress.export import removable
    out = []
    for name, n in graph.layers.items():
        live = {other: np.ones(m) for other, m in graph.layers.items()}
        live[name] = np.zeros(n)
        if removable(graph, live)[name].all():
            out.append(name)
    return tuple(out)


def coupled_groups(graph) -> tuple[tuple[str, ...], ...]:
    """The coupled groups of the graph (Torch-Pruning's groups, Fang et al. 2023): convs whose
    channel c meets in one index — the writers of a residual stream (stem or projection
    shortcut and every block's last conv, summed), a depthwise conv and the conv feeding it
    (filter c filters channel c) — which the export removes when channel c is dead in every
    member. Groups with a fixed member (the image, a zero-padded option-A shortcut) cannot
    lose channels and are left out. Members in the model's definition order."""
    parent = {name: name for name in graph.layers}

    def root(name):
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for use in graph.uses:
        for srcs in use.sources:
            names = sorted({src[0] for src in srcs if src != FIXED_SOURCE})
            for other in names[1:]:
                parent[root(other)] = root(names[0])
    members: dict[str, list[str]] = {}
    for name in graph.layers:
        members.setdefault(root(name), []).append(name)
    from repr_jax.compress.export import removable
    out = []
    for group in (tuple(g) for g in members.values() if len(g) > 1):
        live = {name: np.ones(n) for name, n in graph.layers.items()}
        live.update({name: np.zeros(graph.layers[name]) for name in group})
        gone = removable(graph, live)
        if len({graph.layers[n] for n in group}) == 1 and all(gone[n].all() for n in group):
            out.append(group)
    return tuple(out)


def input_sources(graph, layer) -> tuple:
    """For ``layer``'s kernel input axis: ``(fixed, ((producer, in_idx, out_idx), …))`` —
    ``fixed`` marks input channels fed by something never pruned (the image, a residual
    stream with a fixed source); producer filter ``out_idx[k]`` feeds input ``in_idx[k]``."""
    use = next((u for u in graph.uses if u.collection == "params"
                and u.path == layer.path + ("kernel",) and u.axis == 2), None)
    if use is None:
        return np.ones(layer.shape[2], bool), ()
    fixed = np.array([FIXED_SOURCE in srcs or not srcs for srcs in use.sources])
    pairs: dict[str, list] = {}
    for i, srcs in enumerate(use.sources):
        for src in srcs:
            if src != FIXED_SOURCE:
                pairs.setdefault(src[0], []).append((i, src[1]))
    return fixed, tuple((p, np.array([a for a, _ in v]), np.array([b for _, b in v])) for p, v in pairs.items())


def input_live(sources, live: dict) -> jax.Array:
    """``(C_in,)`` 1 where an input channel still carries signal: a fixed source or any live
    producer filter (pure; ``sources`` from :func:`input_sources`)."""
    fixed, pairs = sources
    alive = jnp.asarray(fixed, jnp.float32)
    for producer, in_idx, out_idx in pairs:
        if producer in live:
            alive = alive.at[in_idx].max(live[producer][out_idx])
        else:
            alive = alive.at[in_idx].set(1.0)
    return alive


# ----------------------------------------------------------------------------- selections
def keep_counts(sizes: dict[str, int], ratios: dict[str, float], fraction_done: float,
                min_keep: int) -> dict[str, int]:
    """Filters each layer keeps after pruning ``fraction_done`` of its ratio:
    keep = ⌊F · (1 − r·fraction_done)⌋ (+1e-6 against float error), at least ``min_keep``."""
    return {n: max(min(int(math.floor(f * (1.0 - ratios.get(n, 0.0) * fraction_done) + 1e-6)), f),
                   min(min_keep, f)) for n, f in sizes.items()}


def keep_highest(scores: jax.Array, live: jax.Array, keep: int) -> jax.Array:
    """``(F,)`` 0/1: the ``keep`` highest-scoring live filters (dead ones rank last; pure).
    Ties break towards the lower index."""
    s = jnp.where(live > 0, scores.astype(jnp.float32), -jnp.inf)
    order = jnp.argsort(-s, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(s.shape[0]))
    return ((rank < keep) & (live > 0)).astype(jnp.float32)


# ----------------------------------------------------------------------------- the method
class StructuredMethod(Method):
    """Base of ``li-l1``, ``slimming``, ``trimming`` and ``channel-pruning``: the schedule,
    eligible layers and the prune transition; subclasses implement :meth:`select`."""
    exports_at_end = True

    def __init__(self, config: StructuredConfig, context):
        config.validate()
        super().__init__(config, context)
        self.graph = model_graph(context)
        names = [l.name for l in context.layers]
        allowed = set(names) if config.prune_tied else set(removable_layers(self.graph))
        self.eligible = tuple(n for n in names if n in allowed)
        if not self.eligible:
            raise ValueError(f"{config.name}: no layer of this model can lose filters")
        self.sizes = {l.name: l.num_filters for l in context.layers}
        self._prune_jit = jax.jit(self._prune, static_argnums=(1,), compiler_options=self.compiler_options())

    def compiler_options(self) -> dict | None:
        """XLA options of the prune transition's compilation (default: none)."""
        return None

    def phase(self, epoch: int) -> Phase:
        cfg = self.config
        starts = cfg.prune_epochs()
        if epoch < starts[0]:
            return Phase("train", 0)
        r = max(i for i, s in enumerate(starts) if s <= epoch)
        restart = (cfg.finetune_schedule, cfg.finetune_lr) if cfg.finetune_lr > 0 else None
        return Phase("finetune" if r == cfg.rounds - 1 else "retrain", r + 1, lr_restart=restart)

    def select(self, state, round_: int, inputs, key) -> tuple[dict, dict]:
        """``({layer: (F,) new live}, event arrays)`` for prune round ``round_`` (pure). An
        entry ``"method_state"`` of the arrays is merged into the state's method state; an entry
        ``"params"`` replaces the parameters (e.g. re-fitted kernels) before the prune."""
        raise NotImplementedError

    def _prune(self, state, round_, inputs):
        layers = state.layers
        live = live_filters(state.masks, layers)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), PRUNE_STREAM + round_)
        new_live, arrays = self.select(state, round_, inputs, key)
        updates = arrays.pop("method_state", {})
        params = arrays.pop("params", None)
        new_live = {n: jnp.minimum(new_live.get(n, live[n]), live[n]) if n in self.eligible else live[n]
                    for n in live}
        state = drop_filters(state if params is None else state.replace(params=params), layers, new_live)
        if updates:
            state = state.replace(method_state={**state.method_state, **updates})
        return state, {"live_before": live, "live_after": new_live, **arrays}

    def before_epoch(self, state, epoch: int, inputs=None):
        starts = self.config.prune_epochs()
        if epoch not in starts:
            return state, []
        round_ = starts.index(epoch)
        state, arrays = self._prune_jit(state, round_, self.run_inputs() if inputs is None else inputs)
        return state, [Event("prune", epoch + 1, round_ + 1, arrays)]

    def record(self, event: Event) -> dict:
        a = jax.tree_util.tree_map(np.asarray, event.arrays)
        layers = {}
        for name in a["live_before"]:
            before, after = a["live_before"][name] > 0, a["live_after"][name] > 0
            layers[name] = {"live": int(after.sum()), "pruned": int((before & ~after).sum()),
                            "pruned_indices": np.flatnonzero(before & ~after).tolist()}
            if name in a.get("scores", {}):
                s = a["scores"][name]
                layers[name]["score_min"], layers[name]["score_max"] = float(s.min()), float(s.max())
        extra = {}
        for k, v in a.items():
            if k in ("live_before", "live_after", "scores"):
                continue
            if isinstance(v, dict):   # per-layer values (e.g. a reconstruction error)
                for name, value in v.items():
                    layers.setdefault(name, {})[k] = np.asarray(value).tolist()
            else:
                extra[k] = np.asarray(v).tolist()
        return {"event": event.kind, "epoch": event.epoch, "round": event.round, "method": self.name,
                "live": int(sum(v["live"] for v in layers.values())),
                "pruned": int(sum(v["pruned"] for v in layers.values())), **extra, "layers": layers}


    def describe(self, record: dict) -> list[str]:
        if record.get("event") != "prune":
            return []
        counts = ", ".join(f"{n} {v['pruned']}" for n, v in record["layers"].items() if v["pruned"])
        lines = [f"{self.name} prune round {record['round']} (before epoch {record['epoch']}): {record['pruned']} "
                 f"filters pruned, {record['live']} live — {counts or 'none'}"]
        fixed = [name for name in self.sizes if name not in self.eligible]
        if fixed and record["round"] == 1:
            lines.append(f"not pruned (tied to a residual sum or another fixed channel, so the export could not "
                         f"remove them; prune_tied=true masks them anyway): {', '.join(fixed)}")
        for name, v in record["layers"].items():
            if v.get("pruned") and v["live"] <= max(1, self.sizes.get(name, 0) // 8):
                lines.append(f"warning: {self.name} leaves {name} with {v['live']} of {self.sizes[name]} filters "
                             f"(min_keep={self.config.min_keep} is the floor)")
        return lines


__all__ = ["PRUNE_STREAM", "RESTARTS", "StructuredConfig", "StructuredMethod", "check_fraction", "input_live",
           "input_sources", "keep_counts", "keep_highest", "match_layers", "model_graph",
           "parse_ratios", "removable_layers", "coupled_groups"]
