"""Li et al. 2017, "Pruning Filters for Efficient ConvNets" (ICLR), as method ``li-l1``.

Score of filter j of layer i (§3.1): s_j = Σ_l Σ |K_l| over its kernels K_l (one per input
channel) — the L1 norm of ``kernel[..., j]``. In each layer the m filters with the smallest
s_j are pruned, m set by the layer's ratio p_i (keep ⌊F_i (1 − p_i)⌋). Multi-layer
strategies (§3.3): ``independent`` scores every layer on its own weights; ``greedy`` drops,
from layer i's sums, the kernels whose input channel was produced by a filter already pruned
in an earlier layer (in this round's left-to-right pass or before), so s_j = Σ over live
input channels only. Ratios per layer come from ``fraction`` (uniform), ``ratios``
(``PATTERN=RATIO``), ``skip`` (sensitive layers, ratio 0), or a ``preset`` for the paper's
settings (Table 1, §4.1–4.2; layer numbers are the paper's 1-based conv indices):

* ``vgg16-a``: prune 50 % of layers 1 and 8–13 (``conv0``, ``conv7`` … ``conv12``);
* ``resnet56-a``: 10 % of the first conv of every block, skipping layers 16, 20, 38, 54;
* ``resnet56-b``: 60 % / 30 % / 10 % in stages 1 / 2 / 3, skipping 16, 18, 20, 34, 38, 54;
* ``resnet110-a``: 50 % of the first conv of stage-1 blocks, skipping layer 36 (§4.2: "prune
  50 % of the filters in the first stage, skipping layer 36");
* ``resnet110-b``: 50 % / 40 % / 30 % in stages 1 / 2 / 3, skipping 36, 38, 74.
* ``resnet34-a`` / ``resnet34-b`` (ImageNet ResNet-34, §4.4, Table 1): 30 / 30 / 30 / 0 % and
  50 / 60 / 40 / 0 % of the first conv of the blocks of stages 1–4, skipping the sensitive
  layers 2, 8, 14, 16, 26, 28, 30, 32 (their 3×3 convs numbered 1-based, the stem first, as in
  their Fig. 7; the first and last block of each stage). The per-stage ratios are not printed
  in the paper; they are those of the pruned models Liu et al. 2019 ("Rethinking the Value of
  Network Pruning") rebuilt, and they give the paper's reductions (below).

Their Table 1 — parameter and FLOP reductions of VGG-16-A (with Li's own head,
``model.variant=li``: 14,987,722 → 5,397,034 parameters), ResNet-56-A/B and ResNet-110-A/B
(1,727,962 → 1,688,522 / 1,168,424 parameters, −15.9 % / −38.7 % FLOPs) — is checked
exactly in ``tests/test_structured.py`` and ``tests/test_fidelity.py``; so are ResNet-34-A/B's
(−7.6 % / −10.8 % parameters, −15.5 % / −24.2 % FLOPs at 224×224, 1000 classes) when the
three 1×1 projection shortcuts are left out of the totals as the paper's counts do (its 2.16e7
parameters and 3.64e9 FLOPs are ours, 21,797,672 and 3.664e9, less the shortcuts; with them
counted the reductions read −7.55 / −10.68 % and −15.38 / −24.06 %).

Deviations from the paper: none known in the scoring, the ratios or the presets. The
retraining schedule is the run's (``StructuredConfig``), not their 40 epochs at lr 0.001.

For ResNets only the first conv of each block is pruned (derived from the channel graph,
:mod:`.structured`) — their rule. ``prune_groups=true`` also prunes every coupled group the
export can shrink (:func:`.structured.coupled_groups`: a residual stream with projection, not
zero-padded, shortcuts — ImageNet-style ResNets, MobileNetV2 — and a depthwise conv with the
conv feeding it) Torch-Pruning's way (Fang et al. 2023): channel c goes from every member at
once, scored by the sum of the members' L1 norms (unnormalised: a larger kernel weighs more),
keeping ⌊C(1 − p)⌋ with p the members' common ratio. Groups are decided before the other
layers, on every input channel (so ``greedy`` applies to the layers outside the groups). This
is an extension, not the paper's: its ResNet-34-pruned-C pruned the blocks' second layers
with the selection of the projection shortcut (§3.4). ``rounds > 1`` prunes the ratio in
equal steps with retraining between them (iterative prune–retrain, §3.5); ``rounds = 1`` is
their one-shot prune then retrain.
Sensitivity analysis (§3.2, Fig. 2b) is :mod:`repr_jax.studies.sensitivity`.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from repr_jax.layers import get_path
from repr_jax.masks import live_filters
from repr_jax.methods.base import register
from repr_jax.methods.structured import (StructuredConfig, StructuredMethod, check_fraction, coupled_groups,
                                         input_live, input_sources, keep_counts, keep_highest, match_layers,
                                         parse_ratios)

STRATEGIES = ("independent", "greedy")


def _resnet_conv1(depth: int, paper_layer: int) -> str:
    """The paper's 1-based conv index (1 = stem, block k holds 2 + 2k and 3 + 2k) of a block's
    first conv, as our layer name."""
    n = (depth - 2) // 6
    k, odd = divmod(paper_layer - 2, 2)
    if odd or not 0 <= k < 3 * n:
        raise ValueError(f"layer {paper_layer} is not the first conv of a ResNet-{depth} block")
    return f"stage{k // n + 1}_block{k % n}/conv1"


def _resnet_preset(depth: int, stage_ratios, skip_layers) -> tuple[str, str]:
    ratios = ",".join(f"stage{s + 1}_block*/conv1={r}" for s, r in enumerate(stage_ratios))
    return ratios, ",".join(_resnet_conv1(depth, k) for k in skip_layers)


def _resnet34_conv1(paper_layer: int) -> str:
    """Li et al.'s ResNet-34 layer number (3×3 convs, 1 = stem, block k holds 2 + 2k and
    3 + 2k) of a block's first conv, as our ``resnet34`` layer name."""
    k, odd = divmod(paper_layer - 2, 2)
    if odd or not 0 <= k < 16:
        raise ValueError(f"layer {paper_layer} is not the first conv of a ResNet-34 block")
    for stage, n in enumerate((3, 4, 6, 3)):
        if k < n:
            return f"layer{stage + 1}_block{k}/conv1"
        k -= n


def _resnet34_preset(stage_ratios) -> tuple[str, str]:
    ratios = ",".join(f"layer{s + 1}_block*/conv1={r}" for s, r in enumerate(stage_ratios))
    return ratios, ",".join(_resnet34_conv1(k) for k in (2, 8, 14, 16, 26, 28, 30, 32))


PRESETS = {   # name → (model, ratios, skip)
    "vgg16-a": ("vgg16", "conv0=0.5,conv7=0.5,conv8=0.5,conv9=0.5,conv10=0.5,conv11=0.5,conv12=0.5", ""),
    "resnet56-a": ("resnet56", *_resnet_preset(56, (0.1, 0.1, 0.1), (16, 20, 38, 54))),
    "resnet56-b": ("resnet56", *_resnet_preset(56, (0.6, 0.3, 0.1), (16, 18, 20, 34, 38, 54))),
    "resnet110-a": ("resnet110", *_resnet_preset(110, (0.5, 0.0, 0.0), (36,))),
    "resnet110-b": ("resnet110", *_resnet_preset(110, (0.5, 0.4, 0.3), (36, 38, 74))),
    "resnet34-a": ("resnet34", *_resnet34_preset((0.3, 0.3, 0.3, 0.0))),
    "resnet34-b": ("resnet34", *_resnet34_preset((0.5, 0.6, 0.4, 0.0))),
}


def l1_scores(kernel: jnp.ndarray, input_alive: jnp.ndarray | None = None) -> jnp.ndarray:
    """s_j = Σ_{h,w,c} |K[h, w, c, j]| over input channels c with ``input_alive[c] > 0``
    (all of them when None): Li et al. 2017, §3.1 (independent) and §3.3 (greedy)."""
    a = jnp.abs(kernel.astype(jnp.float32))
    if input_alive is not None:
        a = a * (input_alive > 0).astype(jnp.float32)[None, None, :, None]
    return jnp.sum(a, axis=(0, 1, 2))


@dataclasses.dataclass(frozen=True)
class LiL1Config(StructuredConfig):
    name = "li-l1"
    fraction: float = dataclasses.field(default=0.5, metadata={
        "help": "ratio of filters pruned in every eligible layer (unless ratios/skip/preset say otherwise)"})
    ratios: str = dataclasses.field(default="", metadata={
        "help": "per-layer ratios PATTERN=RATIO,… (fnmatch on layer names; e.g. from experiments/sensitivity.py)"})
    skip: str = dataclasses.field(default="", metadata={"help": "layers never pruned (sensitive), patterns"})
    preset: str = dataclasses.field(default="", metadata={
        "help": f"the paper's setting: {', '.join(PRESETS)} (overrides fraction/ratios/skip)"})
    strategy: str = dataclasses.field(default="independent", metadata={"help": "independent or greedy (§3.3)"})
    prune_groups: bool = dataclasses.field(default=False, metadata={
        "help": "also prune coupled groups (a residual stream's writers, a depthwise conv and its input conv) "
                "as one, by summed L1"})

    def validate(self, run=None) -> None:
        super().validate(run)
        check_fraction("li-l1.fraction", self.fraction)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown li-l1.strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.prune_groups and self.prune_tied:
            raise ValueError("li-l1.prune_groups and li-l1.prune_tied exclude each other (a group is removed "
                             "from every member; prune_tied masks members one by one)")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown li-l1.preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.preset and run is not None and run.model.name != PRESETS[self.preset][0]:
            raise ValueError(f"li-l1.preset {self.preset} is for --model {PRESETS[self.preset][0]}, "
                             f"not {run.model.name}")


@register
class LiL1(StructuredMethod):
    """Prune the smallest-L1 filters of each layer at per-layer ratios, retrain."""
    name = "li-l1"
    config_class = LiL1Config
    summary = "L1-norm filter pruning with per-layer ratios (Li et al. 2017), exported and fine-tuned"

    def __init__(self, config: LiL1Config, context):
        super().__init__(config, context)
        self.groups = coupled_groups(self.graph) if config.prune_groups else ()
        if config.prune_groups:
            if not self.groups:
                raise ValueError("li-l1.prune_groups: this model has no coupled group the export can shrink "
                                 "(a zero-padded shortcut ties the CIFAR ResNets' streams to fixed channels)")
            grouped = {n for g in self.groups for n in g}
            self.eligible = tuple(l.name for l in context.layers if l.name in grouped or l.name in self.eligible)
        if config.preset:
            _, ratios, skip = PRESETS[config.preset]
            default = 0.0
        else:
            ratios, skip, default = config.ratios, config.skip, config.fraction
        self.ratios = parse_ratios(ratios, self.eligible, default, "li-l1.ratios")
        for name in match_layers(skip, self.eligible, "li-l1.skip"):
            self.ratios[name] = 0.0
        for group in self.groups:
            if len({self.ratios[n] for n in group}) > 1:
                raise ValueError(f"li-l1.ratios give the coupled group {', '.join(group)} different ratios "
                                 f"({', '.join(str(self.ratios[n]) for n in group)}); give its members one")
        self.sources = {l.name: input_sources(self.graph, l) for l in context.layers}
        rank = {name: i for i, name in enumerate(self.graph.layers)}   # the forward pass's order
        self.order = tuple(sorted(range(len(context.layers)), key=lambda i: rank[context.layers[i].name]))

    def select(self, state, round_, inputs, key):
        del inputs, key
        cfg = self.config
        keep = keep_counts({n: self.sizes[n] for n in self.eligible}, self.ratios,
                           (round_ + 1) / cfg.rounds, cfg.min_keep)
        live = dict(live_filters(state.masks, state.layers))
        scores = {}
        layers = state.layers
        by_name = {l.name: l for l in layers}
        for group in self.groups:   # one decision for every member: Σ of their L1 norms
            for name in group:
                scores[name] = l1_scores(get_path(state.params, by_name[name].path + ("kernel",)))
            alive = live[group[0]]
            for name in group[1:]:
                alive = jnp.minimum(alive, live[name])
            kept = keep_highest(sum(scores[n] for n in group), alive, keep[group[0]])
            live.update({name: kept for name in group})
        grouped = {n for g in self.groups for n in g}
        for layer in (layers[i] for i in self.order if layers[i].name not in grouped):   # greedy sees earlier prunes
            kernel = get_path(state.params, layer.path + ("kernel",))
            alive = input_live(self.sources[layer.name], live) if cfg.strategy == "greedy" else None
            scores[layer.name] = l1_scores(kernel, alive)
            if layer.name in keep:
                live[layer.name] = keep_highest(scores[layer.name], live[layer.name], keep[layer.name])
        return live, {"scores": scores}


__all__ = ["LiL1", "LiL1Config", "PRESETS", "STRATEGIES", "l1_scores"]
