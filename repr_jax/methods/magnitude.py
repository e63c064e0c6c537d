"""Han et al. (NIPS 2015), "Learning both Weights and Connections for Efficient Neural
Networks": iterative magnitude pruning of connections, as method ``han``.

Schedule (epochs 0-based): ``train_epochs`` of dense training (0 when the run starts from a
trained network, ``--set init_from=RUN``); then one prune per entry of ``quality`` (q_0, q_1,
…, raised from one iteration to the next, §3.3 "iterative pruning"), the i-th before epoch
``train_epochs + i · retrain_epochs``; after each prune the surviving weights are retrained
— not re-initialised (§3.2) — with the learning rate scaled by ``retrain_lr_scale`` (their
LeNet ×1/10, AlexNet ×1/100); the last retraining runs to the end of the run.

A prune keeps connection w of a kernel while ``|w| ≥ q · std(W)`` (``std`` of the layer's
kernel as it stands), conv and dense layers alike (``kinds``). With ``alternate`` the
iterations prune conv and dense kernels in turn and the retraining that follows freezes the
kind not just pruned (§4: "pruning the FC and CONV layers alternately"; the frozen layers'
updates are masked, :meth:`Method.update_mask`). ``remove_dead`` (§3.4) then drops filters and
hidden dense units left with no input connections (all their kernel weights pruned) and those
with no output connections (every kernel that reads them has pruned all weights on them), and
cuts the weights that read dropped ones — found along the channel graph traced with dense
units as sources (a LeNet-300-100's 300 + 100 hidden neurons as a conv's filters).
Regularisation (§3.1): L2 is the optimizer's ``optim.weight_decay``; ``l1 = λ > 0`` adds ``λ Σ|w|`` over the pruned kernels (set
``optim.weight_decay=0`` to train with L1 only — their finding: L1 is better right after
pruning, L2 after retraining). Han et al.'s dropout rule ``D_r = D_o·sqrt(C_ir/C_io)`` is not
applied: none of this package's models has dropout.

At the end the run writes ``storage.json`` / ``storage.md``: every kernel in CSR with
relative indices (8-bit conv, 5-bit dense; :mod:`repr_jax.compress.csr`), bytes and
compression ratios per layer and in total.

Deviations from the paper (Han et al. 2015): the threshold is q · std(W) with q a quality
parameter per iteration (their §4 "quality parameter multiplied by the standard deviation
of a layer's weights", q set per layer; here one q per iteration for every layer); the dropout-ratio rule is not applied (no model here has dropout); CSR uses
their relative-index scheme with filler zeros (8 / 5 bits) but no weight sharing or
Huffman coding (those are Deep Compression, a later paper).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.layers import get_path, replace_path
from repr_jax.masks import filter_live, live_filters, with_live_filters, with_masks
from repr_jax.methods.base import Event, Method, MethodConfig, Phase, register
from repr_jax.shapes import model_graph as shapes_graph
from repr_jax.methods.weights import (KINDS, channel_links, cut_dead_inputs, density_record,
                                      magnitude_threshold_mask, model_kernels, output_alive,
                                      write_storage_report)


@dataclasses.dataclass(frozen=True)
class HanConfig(MethodConfig):
    name = "han"
    train_epochs: int = dataclasses.field(default=0, metadata={
        "help": "dense epochs before the first prune (0: prune the starting weights, e.g. of --set init_from=RUN)"})
    quality: tuple[float, ...] = dataclasses.field(default=(0.5, 0.8, 1.1), metadata={
        "help": "quality parameter q of each iteration: prune |w| < q·std(W) (raise it per iteration)"})
    retrain_epochs: int = dataclasses.field(default=1, metadata={
        "help": "epochs of retraining after each prune but the last (the last runs to the end)"})
    retrain_lr_scale: float = dataclasses.field(default=0.1, metadata={
        "help": "learning-rate scale while retraining (Han et al.: 0.1 LeNet, 0.01 AlexNet)"})
    kinds: str = dataclasses.field(default="all", metadata={"help": "kernels pruned: all, conv or dense"})
    alternate: bool = dataclasses.field(default=False, metadata={
        "help": "prune conv and dense kernels in alternate iterations, freezing the other kind while retraining"})
    remove_dead: bool = dataclasses.field(default=True, metadata={
        "help": "drop filters left with no input or no output connections"})
    l1: float = dataclasses.field(default=0.0, metadata={"help": "λ of an L1 penalty λ·Σ|w| on the pruned kernels"})

    def prune_epochs(self) -> tuple[int, ...]:
        return tuple(self.train_epochs + i * self.retrain_epochs for i in range(len(self.quality)))

    def validate(self, run=None) -> None:
        if not self.quality or not all(math.isfinite(q) and q > 0 for q in self.quality):
            raise ValueError(f"han.quality needs one or more finite values > 0, got {self.quality}")
        if self.train_epochs < 0 or self.retrain_epochs < 0:
            raise ValueError("han.train_epochs and han.retrain_epochs must be >= 0")
        if len(self.quality) > 1 and self.retrain_epochs < 1:
            raise ValueError(f"han: {len(self.quality)} iterations need han.retrain_epochs >= 1")
        if not (math.isfinite(self.retrain_lr_scale) and self.retrain_lr_scale > 0):
            raise ValueError(f"han.retrain_lr_scale must be finite and > 0, got {self.retrain_lr_scale}")
        if self.kinds not in KINDS:
            raise ValueError(f"unknown han.kinds {self.kinds!r}; choose from {', '.join(KINDS)}")
        if self.alternate and self.kinds != "all":
            raise ValueError("han.alternate needs han.kinds=all (it alternates conv and dense)")
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise ValueError(f"han.l1 must be finite and >= 0, got {self.l1}")
        last = self.prune_epochs()[-1]
        if run is not None and run.epochs <= last:
            raise ValueError(f"han: the last prune comes before epoch {last + 1}, so --epochs must be at "
                             f"least {last + 1} (one retraining epoch), got {run.epochs}")


@register
class Han(Method):
    """Prune connections below q·std per layer, retrain, raise q, repeat; CSR report at the end."""
    name = "han"
    config_class = HanConfig
    summary = "Han et al. 2015: iterative magnitude pruning of connections (|w| < q·std), CSR storage report"

    def __init__(self, config: HanConfig, context):
        config.validate()
        super().__init__(config, context)
        self.paths = model_kernels(context, config.kinds, "han")
        # dense layers' units are graph sources here, so dead hidden units (an MLP's) are found too
        graph = shapes_graph(context.model, tuple(context.input_shape), dense_units=True) if config.remove_dead else None
        self.links = channel_links(graph) if graph is not None else ()
        read = {p for _, _, _, pairs, _ in self.links for p, _, _ in pairs}
        self.units = tuple((path, "/".join(path[:-1])) for path, kind in self.paths
                           if kind == "dense" and "/".join(path[:-1]) in read)   # hidden dense layers
        self.prune_steps = tuple(e * context.steps_per_epoch for e in config.prune_epochs())
        self._prune_jit = jax.jit(self._prune, static_argnums=(1,))

    def element_masks(self, params):
        return tuple(p for p, _ in self.paths)

    def phase(self, epoch: int) -> Phase:
        starts = self.config.prune_epochs()
        if epoch < starts[0]:
            return Phase("train", 0)
        done = sum(s <= epoch for s in starts)
        return Phase("retrain", done, lr_scale=self.config.retrain_lr_scale)

    def pruned_kind(self, iteration: int) -> str:
        """The kernels iteration ``iteration`` (0-based) prunes: ``kinds``, or conv / dense in
        turn with ``alternate`` (conv first)."""
        if not self.config.alternate:
            return self.config.kinds
        return "conv" if iteration % 2 == 0 else "dense"

    # ---------------------------------------------------------------- inside jit
    def loss_terms(self, inputs):
        if not self.config.l1:
            return {}
        total = sum(jnp.sum(jnp.abs(get_path(inputs.params, p))) for p, _ in self.paths)
        return {"l1": self.config.l1 * total}

    def update_mask(self, state):
        if not self.config.alternate:
            return None
        done = sum((state.step >= s).astype(jnp.int32) for s in self.prune_steps)
        frozen_kind_is_dense = (done % 2 == 1)      # after a conv prune (odd count) dense is frozen
        kinds = dict(self.paths)

        def scale(path, leaf):
            keys = tuple(str(getattr(p, "key", p)) for p in path)
            kind = kinds.get(keys[:-1] + ("kernel",))
            if kind is None:
                return jnp.ones((), jnp.float32)
            frozen = (done > 0) & (frozen_kind_is_dense == (kind == "dense"))
            return jnp.where(frozen, 0.0, 1.0).astype(jnp.float32)
        return jax.tree_util.tree_map_with_path(scale, state.params)

    # ---------------------------------------------------------------- the prune
    def _prune(self, state, iteration: int):
        q = self.config.quality[iteration]
        kind = self.pruned_kind(iteration)
        layers = state.layers
        masks, thresholds = state.masks, {}
        before = density_record(masks, self.paths)
        live_before = live_filters(masks, layers)
        for path, k in self.paths:
            if kind not in ("all", k):
                continue
            new, thresholds["/".join(path[:-1])] = magnitude_threshold_mask(
                get_path(state.params, path), get_path(masks, path), q)
            masks = replace_path(masks, path, lambda _, n=new: n)
        dead = {}
        dead_units = {}
        if self.config.remove_dead:
            live = {l.name: filter_live(get_path(masks, l.path + ("kernel",))) for l in layers}  # no input
            units_before = {n: filter_live(get_path(state.masks, p)) for p, n in self.units}
            live.update({n: filter_live(get_path(masks, p)) for p, n in self.units})
            alive_out = output_alive(masks, self.links, live)                                   # no output
            live = {n: live[n] * alive_out[n] for n in live}
            masks = with_live_filters(masks, layers, live)
            for path, name in self.units:   # a dead unit's kernel column (its bias no longer reaches anything)
                masks = replace_path(masks, path, lambda m, v=live[name]: m * v[None, :].astype(m.dtype))
            masks = cut_dead_inputs(masks, self.links, live)
            dead = {l.name: jnp.sum((live_before[l.name] > 0) & (live[l.name] <= 0)) for l in layers}
            dead_units = {n: jnp.sum((units_before[n] > 0) & (live[n] <= 0)) for n in units_before}
        state = with_masks(state, masks)
        return state, {"density_before": before,
                       "density_after": density_record(masks, self.paths), "threshold": thresholds,
                       "dead_filters": dead, "dead_units": dead_units}

    def before_epoch(self, state, epoch: int, inputs=None):
        starts = self.config.prune_epochs()
        if epoch not in starts:
            return state, []
        iteration = starts.index(epoch)
        state, arrays = self._prune_jit(state, iteration)
        return state, [Event("prune", epoch + 1, iteration + 1, arrays)]

    def record(self, event: Event) -> dict:
        a = jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), event.arrays)
        sizes = {"/".join(p[:-1]): None for p, _ in self.paths}
        layers = {name: {"density": a["density_after"][name], "density_before": a["density_before"][name],
                         **({"threshold": a["threshold"][name]} if name in a["threshold"] else {})}
                  for name in sizes}
        for name, n in a["dead_filters"].items():
            layers.setdefault(name, {})["dead_filters"] = n
        for name, n in a.get("dead_units", {}).items():
            layers.setdefault(name, {})["dead_units"] = n
        return {"event": event.kind, "epoch": event.epoch, "round": event.round, "method": self.name,
                "quality": self.config.quality[event.round - 1], "pruned_kind": self.pruned_kind(event.round - 1), "layers": layers}

    def describe(self, record: dict) -> list[str]:
        """One line per prune: the quality q, the kind pruned, each kernel's kept fraction."""
        if record.get("event") != "prune":
            return []
        kept = ", ".join(f"{name} {100 * v['density']:.0f} %" for name, v in record["layers"].items() if "density" in v)
        return [f"han prune {record['round']} (before epoch {record['epoch']}, |w| >= {record['quality']:g} std, "
                f"{record['pruned_kind']} kernels): kept {kept}"]

    # ---------------------------------------------------------------- end of run
    def final_report(self, state, out) -> dict:
        return {"storage": write_storage_report(state, out)}


__all__ = ["Han", "HanConfig"]
