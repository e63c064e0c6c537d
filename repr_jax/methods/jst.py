"""Joint Search-and-Training (Lu, Huang, Dong, Li & Shi, IJCAI 2020), as method ``jst``.

No pre-trained model: the backbone itself is the search space. Every filter c of a searchable
conv l has an architecture weight α_c^l; the layer's response is gated by α̂^l = softmax(α^l)
(Eq. 6; :mod:`repr_jax.methods.jst_search`). The run has three stretches (epochs 0-based):

1. **Coarse training**, epochs [0, ``coarse_epochs``): the whole backbone with CE + λ‖α‖₂
   (Eq. 1, λ = ``alpha_l2``; ‖α‖₂ is the norm of all architecture weights together). W
   follows the run's optimizer; α its own Adam (``alpha_lr``) on the same batches. The paper
   uses 100 epochs for CIFAR.
2. **Search**, ``search_steps`` search steps of ``step_epochs`` epochs each. A search step:
   the training batches of its epochs are shared out among T = ``subnets`` sub-networks in
   turn (sub-network t trains the ``P = step_epochs · steps_per_epoch // T`` steps from
   t·P; the last one also the remainder), so **M = step_epochs / T epochs** per sub-network
   (Eq. 8). Each is sampled by Alg. 1 at its first step (inside the jitted step: noise
   ε ~ N(0, ``noise_std``²) on α, thresholds from ThresNet, cumulative-threshold selection).
   While a sub-network trains, its unselected filters are gated to 0 and frozen (no update,
   no weight decay), its selected ones are trained in the backbone directly: **mapping back
   is in place** (the weights are shared; nothing is copied). α is not trained on training
   batches here. At the step's end (a jitted transition over the held-out split,
   ``--set data.holdout=N``):
   * each sub-network's reward R_t = −(loss_t + γ · params(S_t) / params(backbone))
     (Eq. 3; ``gamma``), loss_t its mean cross-entropy on ``reward_batches`` validation
     batches (the same batches for all T, common random numbers), measured on the backbone
     as it stands after the search step, with BatchNorm in training mode (batch statistics:
     the running ones mix sub-networks);
   * ThresNet takes one Adam step (``policy_lr``) along the REINFORCE estimate with the
     baseline b (a running mean of the rewards, ``baseline_decay``): Eqs. 3–4;
   * α takes N = ``alpha_steps`` Adam steps on validation batches (Eq. 9): in each, every
     sub-network t sees its own batch and the gradient is the mean over the T sub-networks
     of CE + λ‖α‖₂ (mapping their α updates back by averaging);
   * the sub-network with the highest reward so far is kept as the best (``pruning.jsonl``
     records every step's sampled widths, thresholds, rewards and the chosen one).
   The T sub-networks are evaluated together under ``vmap``, ``subnet_chunk`` at a time
   (``jax.lax.map``), so memory stays bounded.
3. **Fine-tune**, the remaining epochs: the gates are folded into the parameters
   (:func:`~repr_jax.methods.jst_search.fold_gates`), the best sub-network's unselected
   filters are dropped (masks, zeroed moments) and the network is trained to the end
   (``finetune_lr > 0`` restarts the learning rate). The run exports the physically smaller
   network (``<run>/export/``), whose logits equal the masked backbone's.

Searchable layers are those the export can physically shrink (for CIFAR ResNets the first
conv of each block; every conv of C^n and VGG), as for the structured methods. Choices the
paper leaves open (noise, M/N, mapping back, the policy's distribution, BatchNorm in the
reward, the gate scale) are the fields below; ``gate_scale="width"`` multiplies α̂ by the
layer width so that uniform α leaves the network as it is (``"softmax"``: the paper's form,
whose 1/C factor the next BatchNorm absorbs but the head does not).

Deviations from the paper (Lu et al. 2020), besides those open choices: the frozen
(unselected) filters' optimizer state stands still during search as their weights do
(:func:`repr_jax.optim.frozen_where_masked`; before 2026-12-03 their momentum decayed and
collected weight decay); the reward's loss is measured on the backbone in BatchNorm
training mode (the paper's setting is not stated; exact per-sub-network statistics would
need switchable BatchNorm); searchable layers are those the export can shrink (ResNets:
the first conv of each block).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from repr_jax.layers import channel_leaves, replace_path
from repr_jax.masks import drop_filters
from repr_jax.methods.base import Event, Method, MethodConfig, Phase, register
from repr_jax.methods.jst_search import (GATE_SCALES, SubnetCost, alpha_hat, fold_gates, init_thresnet,
                                         policy_loss, sample_keep, sample_thresholds, threshold_policy)
from repr_jax.methods.structured import RESTARTS, model_graph, removable_layers

SEARCH_STREAM = 5_000_000
COARSE, SEARCH, FINETUNE = 0, 1, 2


def _help(default, text):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class JstConfig(MethodConfig):
    name = "jst"
    coarse_epochs: int = _help(2, "epochs of coarse training of the gated backbone (paper: 100 for CIFAR)")
    search_steps: int = _help(2, "search steps (each: T sub-networks trained, rewarded, ThresNet and α updated)")
    step_epochs: int = _help(1, "epochs of training batches per search step, shared among its T sub-networks")
    subnets: int = _help(30, "T: sub-networks sampled per search step (paper: 30 for CIFAR)")
    alpha_l2: float = _help(5e-4, "λ of λ‖α‖₂ (Eq. 1)")
    alpha_lr: float = _help(1e-3, "Adam learning rate of the architecture weights α")
    alpha_steps: int = _help(1, "N: Adam steps of α on validation batches per search step (Eq. 9)")
    noise_std: float = _help(0.1, "σ of the Gaussian noise added to α before sampling (Alg. 1)")
    gate_scale: str = _help("width", "gates C·softmax(α) ('width': uniform α is the identity) or softmax(α)")
    gamma: float = _help(0.5, "γ of the reward R = −(loss + γ · params(S)/params(backbone))")
    policy_lr: float = _help(1e-3, "Adam learning rate of ThresNet")
    baseline_decay: float = _help(0.9, "the reward baseline b ← d·b + (1−d)·mean R")
    hidden: int = _help(128, "ThresNet width (encoders project to it)")
    init_threshold: float = _help(0.8, "mean of every layer's threshold policy at the start")
    concentration: float = _help(20.0, "a + b of every layer's Beta threshold policy at the start")
    val_batches: int = _help(8, "validation batches held on the device (from data.holdout)")
    reward_batches: int = _help(2, "validation batches each sub-network's reward is measured on")
    subnet_chunk: int = _help(8, "sub-networks evaluated at once under vmap (memory bound)")
    min_keep: int = _help(1, "filters every searchable layer keeps")
    finetune_lr: float = _help(0.0, "peak learning rate restarted at fine-tuning (0: keep the run's schedule)")
    finetune_schedule: str = _help("cosine", "shape of the restarted stretch: cosine, linear or constant")

    def search_epochs(self) -> tuple[int, int]:
        """``(first, end)`` epochs of the search."""
        return self.coarse_epochs, self.coarse_epochs + self.search_steps * self.step_epochs

    def validate(self, run=None) -> None:
        ints = {"coarse_epochs": (self.coarse_epochs, 0), "search_steps": (self.search_steps, 1),
                "step_epochs": (self.step_epochs, 1), "subnets": (self.subnets, 1),
                "alpha_steps": (self.alpha_steps, 0), "hidden": (self.hidden, 1),
                "val_batches": (self.val_batches, 1), "reward_batches": (self.reward_batches, 1),
                "subnet_chunk": (self.subnet_chunk, 1), "min_keep": (self.min_keep, 1)}
        for field, (value, low) in ints.items():
            if value < low:
                raise ValueError(f"jst.{field} must be >= {low}, got {value}")
        if self.reward_batches > self.val_batches:
            raise ValueError(f"jst.reward_batches ({self.reward_batches}) exceeds jst.val_batches ({self.val_batches})")
        for field in ("alpha_l2", "alpha_lr", "noise_std", "gamma", "policy_lr", "finetune_lr"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"jst.{field} must be finite and >= 0, got {value}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"jst.baseline_decay must be in [0, 1), got {self.baseline_decay}")
        if not 0.0 < self.init_threshold < 1.0:
            raise ValueError(f"jst.init_threshold must be in (0, 1), got {self.init_threshold}")
        a, b = self.init_threshold * self.concentration, (1 - self.init_threshold) * self.concentration
        if a <= 1.0 or b <= 1.0:
            raise ValueError(f"jst.init_threshold {self.init_threshold} with jst.concentration "
                             f"{self.concentration} gives Beta({a:.3g}, {b:.3g}); both must exceed 1")
        if self.gate_scale not in GATE_SCALES:
            raise ValueError(f"unknown jst.gate_scale {self.gate_scale!r}; choose from {', '.join(GATE_SCALES)}")
        if self.finetune_schedule not in RESTARTS:
            raise ValueError(f"unknown jst.finetune_schedule {self.finetune_schedule!r}; "
                             f"choose from {', '.join(RESTARTS)}")
        if run is None:
            return
        end = self.search_epochs()[1]
        if run.epochs <= end:
            raise ValueError(f"jst: coarse training and search take {end} epochs, so --epochs must be at "
                             f"least {end + 1} (one fine-tune epoch), got {run.epochs}")
        if run.data.holdout <= 0:
            raise ValueError("jst measures rewards and trains α on a held-out validation split: "
                             "add --set data.holdout=N (e.g. 5000)")
        if self.val_batches * run.batch_size > run.data.holdout:
            raise ValueError(f"jst.val_batches={self.val_batches} batches of {run.batch_size} need "
                             f"data.holdout >= {self.val_batches * run.batch_size}, got {run.data.holdout}")


@register
class JointSearchTraining(Method):
    """Gated backbone → sampled sub-networks trained in place, rewarded, ThresNet by
    REINFORCE → the best sub-network fine-tuned and exported."""
    name = "jst"
    config_class = JstConfig
    summary = "Joint Search-and-Training (Lu et al. 2020): search sub-networks while training, export the best"
    exports_at_end = True

    def __init__(self, config: JstConfig, context):
        config.validate()
        super().__init__(config, context)
        self.graph = model_graph(context)
        removable = set(removable_layers(self.graph))
        self.searched = tuple(l for l in context.layers if l.name in removable)
        if not self.searched:
            raise ValueError("jst: no layer of this model can lose filters")
        self.names = tuple(l.name for l in self.searched)
        shapes = context.variable_shapes()["params"]
        self.cost = SubnetCost(self.graph, shapes)
        self.coarse_steps = config.coarse_epochs * context.steps_per_epoch
        self.period = config.step_epochs * context.steps_per_epoch // config.subnets
        if self.period < 1:
            raise ValueError(f"jst: {config.subnets} sub-networks need at least that many steps per search "
                             f"step; a search step has {config.step_epochs * context.steps_per_epoch}")
        self.validation = (None, None)
        images, labels = context.heldout_images, context.heldout_labels
        if images is not None:
            from repr_jax.criteria import scoring_batches
            x, y = scoring_batches(images, labels, config.val_batches, context.batch_size, seed=context.seed + 2)
            self.validation = (context.model_inputs(x), jnp.asarray(y))
        self.policy_tx = optax.adam(config.policy_lr)
        self.alpha_tx = optax.adam(config.alpha_lr)
        self._search_jit = jax.jit(self._search_update)
        self._select_jit = jax.jit(self._select)

    # ---------------------------------------------------------------- setup
    def init_method_params(self, params, key):
        keys = jax.random.split(key, len(self.searched))
        return {"alpha": {l.name: math.sqrt(2.0 / l.num_filters) * jax.random.normal(k, (l.num_filters,))
                          for l, k in zip(self.searched, keys)}}

    def method_optimizer(self):
        lr, coarse = self.config.alpha_lr, self.coarse_steps
        return optax.adam(lambda count: jnp.where(count < coarse, lr, 0.0))

    def init_method_state(self, params, key):
        cfg = self.config
        policy = init_thresnet(key, tuple(l.num_filters for l in self.searched), cfg.hidden,
                               cfg.init_threshold, cfg.concentration)
        alpha0 = {n: jnp.zeros((l.num_filters,)) for n, l in zip(self.names, self.searched)}
        T = cfg.subnets
        return {"mode": jnp.zeros((), jnp.int32), "search_start": jnp.zeros((), jnp.int32),
                "sub_mask": {n: jnp.ones_like(a) for n, a in alpha0.items()},
                "samples": {n: jnp.ones((T,) + a.shape) for n, a in alpha0.items()},
                "thresholds": jnp.zeros((T, len(self.names))),
                "policy": policy, "policy_opt": self.policy_tx.init(policy),
                "alpha_opt": self.alpha_tx.init({"alpha": alpha0}),
                "baseline": jnp.zeros(()), "baseline_set": jnp.zeros(()),
                "best_reward": jnp.full((), -jnp.inf, jnp.float32), "best_mask": {n: jnp.ones_like(a) for n, a in alpha0.items()}}

    def run_inputs(self):
        return self.validation

    # ---------------------------------------------------------------- schedule
    def phase(self, epoch: int) -> Phase:
        cfg = self.config
        first, end = cfg.search_epochs()
        if epoch < first:
            return Phase("coarse", 0)
        if epoch < end:
            return Phase("search", 1 + (epoch - first) // cfg.step_epochs)
        restart = (cfg.finetune_schedule, cfg.finetune_lr) if cfg.finetune_lr > 0 else None
        return Phase("finetune", cfg.search_steps + 1, lr_restart=restart)

    # ---------------------------------------------------------------- inside jit
    def gates(self, alpha: dict) -> dict:
        return {n: alpha_hat(alpha[n], self.config.gate_scale) for n in self.names}

    def channel_gates(self, method_params, method_state, train):
        mode = method_state["mode"]
        out = {}
        for name, g in self.gates(method_params["alpha"]).items():
            if train:
                g = jnp.where(mode == SEARCH, g * method_state["sub_mask"][name], g)
            out[name] = jnp.where(mode == FINETUNE, jnp.ones_like(g), g)
        return out

    def loss_terms(self, inputs):
        if not self.config.alpha_l2 or not self.coarse_steps:
            return {}
        on = (inputs.state.step < self.coarse_steps).astype(jnp.float32)
        return {"alpha_l2": on * self.config.alpha_l2 * self._alpha_norm(inputs.method_params["alpha"])}

    @staticmethod
    def _alpha_norm(alpha: dict) -> jax.Array:
        """‖α‖₂ over every layer's architecture weights (ε inside the root: a finite gradient at 0)."""
        return jnp.sqrt(sum(jnp.sum(a ** 2) for a in alpha.values()) + 1e-12)

    def sample(self, policy, alpha: dict, key) -> tuple[dict, jax.Array]:
        """One sub-network (Alg. 1): ``({layer: (F,) kept}, thresholds (L,))``."""
        k_threshold, k_noise = jax.random.split(key)
        alphas = [alpha[n] for n in self.names]
        a, b = threshold_policy(policy, alphas)
        beta = sample_thresholds(k_threshold, a, b)
        noise_keys = jax.random.split(k_noise, len(self.names))
        keep = {n: sample_keep(alpha[n] + self.config.noise_std * jax.random.normal(k, alpha[n].shape),
                               beta[i], self.config.min_keep)
                for i, (n, k) in enumerate(zip(self.names, noise_keys))}
        return keep, beta

    def step_hook(self, state, key):
        ms = state.method_state
        T = self.config.subnets
        offset = state.step - ms["search_start"]
        t = jnp.clip(offset // self.period, 0, T - 1)
        boundary = (ms["mode"] == SEARCH) & (offset % self.period == 0) & (offset < T * self.period)

        def draw(ms):
            keep, beta = self.sample(ms["policy"], state.method_params["alpha"], key)
            return {**ms, "samples": {n: ms["samples"][n].at[t].set(keep[n]) for n in self.names},
                    "thresholds": ms["thresholds"].at[t].set(beta)}

        ms = jax.lax.cond(boundary, draw, lambda ms: ms, ms)
        ms = {**ms, "sub_mask": {n: ms["samples"][n][t] for n in self.names}}
        return state.replace(method_state=ms)

    def update_mask(self, state):
        """While searching, only the current sub-network's filters are updated."""
        ms = state.method_state
        searching = (ms["mode"] == SEARCH).astype(jnp.float32)
        frozen = jax.tree_util.tree_map(lambda _: jnp.ones((), jnp.float32), state.params)
        for layer in self.searched:
            factor = 1.0 - searching * (1.0 - ms["sub_mask"][layer.name])
            for _, path in channel_leaves(layer):
                frozen = replace_path(frozen, path, lambda _, f=factor: f)
        return frozen

    # ---------------------------------------------------------------- between epochs
    def _subnet_loss(self, state, alpha: dict, mask: dict, images, labels) -> jax.Array:
        """Mean cross-entropy of one sub-network (``mask``: {layer: (F,)}) on model-ready
        ``images`` (any leading batch axes), BatchNorm in training mode (batch statistics,
        discarded)."""
        from repr_jax.train import RNG_STREAMS, cross_entropy, forward
        x = images.reshape((-1,) + images.shape[-3:])
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), SEARCH_STREAM)
        st = state.replace(method_state={**state.method_state, "mode": jnp.asarray(SEARCH, jnp.int32),
                                         "sub_mask": mask})
        logits, _ = forward(st, state.params, x, train=True, method=self, method_params={"alpha": alpha},
                            rngs={name: jax.random.fold_in(key, i) for i, name in enumerate(RNG_STREAMS)})
        return jnp.mean(cross_entropy(logits, labels.reshape(-1)))

    def _search_update(self, state, step_index, inputs):
        cfg = self.config
        images, labels = inputs
        ms = state.method_state
        alpha = state.method_params["alpha"]
        masks = ms["samples"]
        chunk = min(cfg.subnet_chunk, cfg.subnets)
        r_x, r_y = images[:cfg.reward_batches], labels[:cfg.reward_batches]
        losses = jax.lax.map(lambda m: self._subnet_loss(state, alpha, m, r_x, r_y), masks, batch_size=chunk)
        params_fraction = jax.vmap(self.cost)(masks) / self.cost.total
        rewards = -(losses + cfg.gamma * params_fraction)
        mean_reward = jnp.mean(rewards)
        baseline = jnp.where(ms["baseline_set"] > 0, ms["baseline"], mean_reward)
        advantages = rewards - baseline
        alphas = [alpha[n] for n in self.names]
        grads = jax.grad(policy_loss)(ms["policy"], alphas, ms["thresholds"], advantages)
        updates, policy_opt = self.policy_tx.update(grads, ms["policy_opt"], ms["policy"])
        policy = optax.apply_updates(ms["policy"], updates)
        alpha_tree, alpha_opt = {"alpha": alpha}, ms["alpha_opt"]
        for n in range(cfg.alpha_steps):   # Eq. 9: sub-network t on validation batch (first + t) mod nb
            first = (step_index * cfg.alpha_steps + n) * cfg.subnets
            batch = (first + jnp.arange(cfg.subnets)) % images.shape[0]

            def val_loss(tree, batch=batch):
                ce = jax.lax.map(lambda pair: self._subnet_loss(state, tree["alpha"], pair[0], images[pair[1]],
                                                                labels[pair[1]]), (masks, batch), batch_size=chunk)
                return jnp.mean(ce) + cfg.alpha_l2 * self._alpha_norm(tree["alpha"])

            upd, alpha_opt = self.alpha_tx.update(jax.grad(val_loss)(alpha_tree), alpha_opt, alpha_tree)
            alpha_tree = optax.apply_updates(alpha_tree, upd)
        chosen = jnp.argmax(rewards)
        better = rewards[chosen] > ms["best_reward"]
        best_mask = {n: jnp.where(better, masks[n][chosen], ms["best_mask"][n]) for n in self.names}
        new_ms = {**ms, "policy": policy, "policy_opt": policy_opt, "alpha_opt": alpha_opt,
                  "baseline": cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean_reward,
                  "baseline_set": jnp.ones(()), "best_reward": jnp.maximum(rewards[chosen], ms["best_reward"]),
                  "best_mask": best_mask}
        state = state.replace(method_state=new_ms, method_params={**state.method_params, **alpha_tree})
        a, b = threshold_policy(policy, [alpha_tree["alpha"][n] for n in self.names])
        return state, {"widths": {n: jnp.sum(masks[n], axis=1) for n in self.names},
                       "thresholds": {n: ms["thresholds"][:, i] for i, n in enumerate(self.names)},
                       "val_loss": losses, "params_fraction": params_fraction,
                       "rewards": rewards, "baseline": baseline, "chosen": chosen, "improved": better,
                       "best_reward": new_ms["best_reward"],
                       "best_widths": {n: jnp.sum(best_mask[n]) for n in self.names},
                       "policy_mean": {n: (a / (a + b))[i] for i, n in enumerate(self.names)}}

    def _select(self, state):
        ms = state.method_state
        gates = self.gates(state.method_params["alpha"])
        params = fold_gates(state.params, self.searched, gates)
        state = state.replace(params=params)
        live = {l.name: jnp.ones((l.num_filters,)) for l in state.layers}
        live.update(ms["best_mask"])
        state = drop_filters(state, state.layers, live)
        state = state.replace(method_state={**ms, "mode": jnp.asarray(FINETUNE, jnp.int32)})
        return state, {"best_widths": {n: jnp.sum(ms["best_mask"][n]) for n in self.names},
                       "best_reward": ms["best_reward"],
                       "params_fraction": self.cost(ms["best_mask"]) / self.cost.total,
                       "live_after": ms["best_mask"]}

    def before_epoch(self, state, epoch: int, inputs=None):
        cfg = self.config
        first, end = cfg.search_epochs()
        if first <= epoch < end and (epoch - first) % cfg.step_epochs == 0:
            ms = {**state.method_state, "mode": jnp.asarray(SEARCH, jnp.int32),
                  "search_start": jnp.array(state.step, jnp.int32, copy=True)}
            return state.replace(method_state=ms), []
        if epoch == end:
            state, arrays = self._select_jit(state)
            return state, [Event("select", epoch + 1, cfg.search_steps + 1, arrays)]
        return state, []

    def after_epoch(self, state, epoch: int, inputs=None):
        cfg = self.config
        first, end = cfg.search_epochs()
        if not (first <= epoch < end) or (epoch - first + 1) % cfg.step_epochs:
            return state, []
        step_index = (epoch - first) // cfg.step_epochs
        inputs = self.run_inputs() if inputs is None else inputs
        if inputs[0] is None:
            raise ValueError("jst needs validation images (MethodContext.heldout_images; --set data.holdout=N)")
        state, arrays = self._search_jit(state, jnp.asarray(step_index, jnp.int32), inputs)
        return state, [Event("search", epoch + 1, step_index + 1, arrays)]

    # ---------------------------------------------------------------- host side
    def check_event(self, event: Event) -> None:
        if event.kind == "search" and not np.all(np.isfinite(np.asarray(event.arrays["rewards"]))):
            from repr_jax.errors import NonFiniteError
            raise NonFiniteError(f"jst: a sub-network's reward is not finite at search step {event.round}")

    def record(self, event: Event) -> dict:
        a = jax.tree_util.tree_map(lambda v: np.asarray(v).tolist(), event.arrays)
        a.pop("live_after", None)
        return {"event": event.kind, "epoch": event.epoch, "round": event.round, "method": self.name, **a}

    def describe(self, record: dict) -> list[str]:
        from repr_jax.methods.jst_report import describe_record
        return describe_record(record)

    def final_report(self, state, out) -> dict:
        from repr_jax.methods.jst_report import search_summary
        return {"jst": search_summary(out)}


__all__ = ["JointSearchTraining", "JstConfig"]
