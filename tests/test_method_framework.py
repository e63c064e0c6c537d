"""The method framework: a test-only method that uses every hook, registered here (no edit to
the runner or the CLI), trained through the CLI, checkpointed, resumed and exported."""
from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_script
from repr_jax.compress import load_exported, logits
from repr_jax.experiment import initial_state, load_run_state
from repr_jax.masks import apply_masks, live_filters, with_element_mask, with_masks
from repr_jax.methods import Event, Method, MethodConfig, Phase, get_method, register
from repr_jax.optim import phased_schedule
from repr_jax.data.pipeline import normalize

cli = load_script("experiments/cifar.py")
export_cli = load_script("experiments/export.py")


@dataclasses.dataclass(frozen=True)
class ProbeConfig(MethodConfig):
    name = "probe"
    head_l1: float = 0.0          # λ of the loss term Σ|head kernel| (model parameters)
    alpha_l2: float = 0.01        # λ of the loss term Σ α² (the method's own parameters)
    keep: float = 0.75            # per-step Bernoulli keep probability of conv0's channels
    drop_after: int = 0           # after this epoch: drop conv1's filter 0, prune half the head
    finetune_scale: float = 0.1   # learning-rate scale of the last epoch

    def validate(self, run=None):
        if run is not None and run.epochs < self.drop_after + 2:
            raise ValueError(f"probe needs at least {self.drop_after + 2} epochs")


@register
class Probe(Method):
    """Every hook: element masks, method state and parameters, an lr phase, a per-step hook
    with the step's RNG, channel gates, loss terms, a transition with events, the export."""
    name = "probe"
    config_class = ProbeConfig
    summary = "test-only method using every hook"

    def element_masks(self, params):
        return (("head", "kernel"),)

    def init_method_state(self, params, key):
        f = params["conv0"]["kernel"].shape[-1]
        return {"steps": jnp.zeros((), jnp.int32), "gate": jnp.ones((f,)),
                "gate_changes": jnp.zeros((), jnp.int32)}

    def init_method_params(self, params, key):
        return {"alpha": 0.1 * jax.random.normal(key, (params["conv0"]["kernel"].shape[-1],))}

    def method_optimizer(self):
        return optax.sgd(0.05, momentum=0.9)

    def phase(self, epoch):
        if epoch == self.context.epochs - 1:
            return Phase("finetune", 1, lr_scale=self.config.finetune_scale)
        return Phase("full", 0)

    def step_hook(self, state, key):
        ms = state.method_state
        gate = jax.random.bernoulli(key, self.config.keep, ms["gate"].shape).astype(jnp.float32)
        return state.replace(method_state={
            "steps": ms["steps"] + 1, "gate": gate,
            "gate_changes": ms["gate_changes"] + jnp.any(gate != ms["gate"]).astype(jnp.int32)})

    def channel_gates(self, method_params, method_state, train):
        if not train:
            return None
        return {"conv0": method_state["gate"] * (1.0 + method_params["alpha"])}

    def loss_terms(self, inputs):
        terms = {"alpha_l2": self.config.alpha_l2 * jnp.sum(inputs.method_params["alpha"] ** 2)}
        if self.config.head_l1:
            terms["head_l1"] = self.config.head_l1 * jnp.sum(jnp.abs(inputs.params["head"]["kernel"]))
        return terms

    def _prune(self, state):
        layers = state.layers
        live = live_filters(state.masks, layers)
        state = with_masks(state, with_element_mask(
            state.masks, ("head", "kernel"),
            (jnp.abs(state.params["head"]["kernel"]) > jnp.median(jnp.abs(state.params["head"]["kernel"])))
            * state.masks["head"]["kernel"]))
        from repr_jax.masks import drop_filters
        state = drop_filters(state, layers, {**live, "conv1": live["conv1"].at[0].set(0.0)})
        return state, {"head_pruned": jnp.sum(state.masks["head"]["kernel"] == 0),
                       "conv1_live": jnp.sum(live_filters(state.masks, layers)["conv1"])}

    def after_epoch(self, state, epoch, inputs=None):
        if epoch != self.config.drop_after:
            return state, []
        state, arrays = jax.jit(self._prune)(state)
        return state, [Event("prune", epoch + 1, 0, arrays)]


def _args(data, out, *extra):
    return ["--data-dir", str(data), "--out", str(out), "--quiet", "--width", "8", "--batch-size", "64",
            "--lr", "0.01", "--schedule", "constant", "--epochs", "3", "--method", "probe", *extra]


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, tiny_cifar_dir):
    out = tmp_path_factory.mktemp("probe") / "run"
    assert cli.main(_args(tiny_cifar_dir, out, "--set", "probe.head_l1=0.01")) == 0
    return out


def test_registered_from_outside_the_package_and_in_help(capsys):
    assert get_method("probe") is Probe
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "probe: test-only method using every hook" in text and "probe.head_l1 (float" in text


def test_every_hook_ran(probe_run):
    rows = [json.loads(l) for l in (probe_run / "metrics.jsonl").read_text().splitlines()]
    # lr phase: the last epoch is "finetune" at 0.1 × the constant rate
    assert [r["phase"] for r in rows] == ["full", "full", "finetune"]
    assert rows[0]["learning_rate"] == pytest.approx(0.01) and rows[-1]["learning_rate"] == pytest.approx(0.001)
    # loss terms: logged per epoch, finite, the L1 one positive
    assert all(set(r["loss_terms"]) == {"alpha_l2", "head_l1"} for r in rows)
    assert all(math.isfinite(v) for r in rows for v in r["loss_terms"].values())
    assert rows[0]["loss_terms"]["head_l1"] > 0
    # transition → events → pruning.jsonl (the base class's generic record)
    (event,) = [json.loads(l) for l in (probe_run / "pruning.jsonl").read_text().splitlines()]
    assert event["event"] == "prune" and event["epoch"] == 1 and event["conv1_live"] == 7
    head_elements = 8 * 32 * 32 * 10
    assert head_elements // 2 - 1 <= event["head_pruned"] <= head_elements // 2 + 1

    config, state = load_run_state(probe_run)
    steps = 3 * (512 // 64)
    # per-step hook with the step's RNG, inside jit, carried in checkpointed method state
    assert int(state.method_state["steps"]) == steps
    assert 0 < int(state.method_state["gate_changes"]) <= steps
    # method parameters were trained (gradient through the gates and the α loss term)
    _, _, fresh = initial_state(config, 512)
    assert not np.allclose(state.method_params["alpha"], fresh.method_params["alpha"])
    assert jax.tree_util.tree_leaves(state.method_opt_state)   # momentum of α, checkpointed
    # element mask: half the head pruned and still exactly 0 after two more epochs
    mask = np.asarray(state.masks["head"]["kernel"])
    assert mask.shape == state.params["head"]["kernel"].shape
    assert np.all(np.asarray(state.params["head"]["kernel"])[mask == 0] == 0)
    # filter drop by the transition persists
    assert np.all(np.asarray(state.params["conv1"]["kernel"])[..., 0] == 0)
    assert float(live_filters(state.masks, state.layers)["conv1"][0]) == 0


def test_loss_term_changes_training(tmp_path, tiny_cifar_dir, probe_run):
    out = tmp_path / "no-l1"
    assert cli.main(_args(tiny_cifar_dir, out)) == 0
    _, with_l1 = load_run_state(probe_run)
    _, without = load_run_state(out)
    l1 = lambda s: float(jnp.sum(jnp.abs(s.params["head"]["kernel"])))
    assert l1(with_l1) < 0.9 * l1(without)


def test_export_of_the_run(tmp_path, probe_run):
    out = tmp_path / "small"
    assert export_cli.main([str(probe_run), "--out", str(out)]) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["channels"]["conv1"] == 7 and report["channels"]["conv0"] == 8
    assert report["params_after"] < report["params_before"]
    assert report["flops_after"] < report["flops_before"]
    assert report["max_abs_logit_difference"] < 1e-4
    assert "test images" in report["logit_check_batch"]
    model, variables, arch = load_exported(out)
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 8, 7)
    _, state = load_run_state(probe_run)
    x = normalize(jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), np.uint8)))
    big = state.apply_fn({"params": apply_masks(state.params, state.masks), "batch_stats": state.batch_stats},
                         x, train=False)
    np.testing.assert_allclose(logits(arch, variables, x), big, atol=1e-4)
    assert export_cli.main([str(probe_run), "--out", str(out)]) == 2      # never overwrites


def test_phased_schedule_matches_a_numpy_reference():
    base = optax.cosine_decay_schedule(0.1, 100)       # 10 epochs × 10 steps
    phases = [Phase()] * 4 + [Phase("sub", 0, lr_scale=0.5)] * 3 + [Phase("ft", 1, lr_restart=("cosine", 0.01))] * 3
    schedule = phased_schedule(base, phases, 10)
    t = np.arange(100)
    cosine = 0.1 * 0.5 * (1 + np.cos(np.pi * t / 100))
    expect = np.where(t < 40, cosine, np.where(t < 70, 0.5 * cosine, 0.01 * 0.5 * (1 + np.cos(np.pi * (t - 70) / 30))))
    np.testing.assert_allclose([float(schedule(i)) for i in t], expect, rtol=1e-5, atol=1e-8)
    linear = phased_schedule(base, [Phase()] * 8 + [Phase("redense", 2, lr_restart=("linear", 0.02))] * 2, 10)
    np.testing.assert_allclose([float(linear(i)) for i in (80, 85, 99)], [0.02, 0.015, 0.001], rtol=1e-5)
    assert phased_schedule(base, [Phase()] * 10, 10) is base       # no phase → the same schedule
    with pytest.raises(ValueError, match="unknown learning-rate restart"):
        phased_schedule(base, [Phase(lr_restart=("exp", 0.1))], 10)
