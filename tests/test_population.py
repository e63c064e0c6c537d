"""--seeds K, in both layouts: a vmapped population equals K sequential runs to float32
round-off, a looped one bit for bit; both resume bit-identically after an interruption
between two seeds' checkpoints and let one seed diverge alone."""
from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from repr_jax import data as data_mod
from repr_jax.checkpoint import Checkpointer
from repr_jax.config import DataConfig, ModelConfig, RunConfig
from repr_jax.errors import Diverged, RunError
from repr_jax.experiment import load_run_state, run
from repr_jax.methods import method_config
from repr_jax.methods.base import Event, Method, MethodConfig, register
from repr_jax.optim import OptimConfig
from repr_jax.parallel import stack, unstack
from repr_jax.population import member_configs

from conftest import interrupted_at_checkpoint, load_script

DATA = data_mod.synthetic_cifar(160, 64)


def _config(out, seeds=2, method="repr", train_limit=128, layout="auto", **settings):
    settings = settings or (dict(s1=1, s2=1, iterations=1, criterion="taylor", criterion_batches=1)
                            if method == "repr" else {})
    return RunConfig(out=str(out), seed=3, seeds=seeds, seeds_layout=layout, epochs=2, batch_size=32,
                     eval_batch_size=32,
                     model=ModelConfig(depth=2, width=4, batch_norm=True),
                     data=DataConfig(train_limit=train_limit),
                     optim=OptimConfig(learning_rate=0.02, schedule="constant"),
                     method=method_config(method, **settings), quiet=True)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """Seeds 3 and 4 run one after the other, each alone."""
    root = tmp_path_factory.mktemp("sequential")
    for seed in (3, 4):
        run(dataclasses.replace(_config(root / f"seq-seed{seed}", seeds=1), seed=seed), data=DATA)
    return root


@pytest.fixture(scope="module", params=["vmap", "loop"])
def population(request, tmp_path_factory, sequential):
    """A 2-seed RePr population (data-driven criterion: per-seed scoring batches; per-seed
    training slices) in one layout, beside the sequential runs (copied into its root)."""
    import shutil
    root = tmp_path_factory.mktemp(f"population-{request.param}")
    summary = run(_config(root / "pop", layout=request.param), data=DATA)
    for seed in (3, 4):
        shutil.copytree(sequential / f"seq-seed{seed}", root / f"seq-seed{seed}")
    return root, summary, request.param


def test_auto_layout_loops_on_a_cpu_and_vmaps_elsewhere(monkeypatch):
    from repr_jax import population as pop_mod
    assert pop_mod.seeds_layout(_config("x")) == "loop"              # the tests run on a CPU
    monkeypatch.setattr(pop_mod.jax, "default_backend", lambda: "gpu")
    assert pop_mod.seeds_layout(_config("x")) == "vmap"
    assert pop_mod.seeds_layout(_config("x", layout="loop")) == "loop"
    with pytest.raises(RunError, match="seeds_layout must be one of auto, vmap, loop, got 'scan'"):
        _config("x", layout="scan").validate()


def test_population_equals_sequential_runs(population):
    root, summary, layout = population
    assert summary["seeds"] == [3, 4] and set(summary["runs"]) == {"3", "4"}
    for seed in (3, 4):
        pop, seq = root / f"pop-seed{seed}", root / f"seq-seed{seed}"
        config = json.loads((pop / "config.json").read_text())["config"]
        assert config["seed"] == seed and config["seeds"] == 1 and config["out"] == str(pop)
        a, b = _lines(pop / "metrics.jsonl"), _lines(seq / "metrics.jsonl")
        assert len(a) == len(b) == 2
        if layout == "loop":      # the single run's own compiled step: bit for bit
            quantities = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "live_filters")
            assert [[r[k] for k in quantities] for r in a] == [[r[k] for k in quantities] for r in b]
        # the first epoch is the same program up to the batched convolutions
        np.testing.assert_allclose(a[0]["train_loss"], b[0]["train_loss"], rtol=1e-5)
        for x, y in zip(a, b):     # round-off grows through training, stays far below a real change
            np.testing.assert_allclose(x["train_loss"], y["train_loss"], rtol=2e-3)
            assert abs(x["test_accuracy"] - y["test_accuracy"]) <= 1 / 64 + 1e-9
            assert x["live_filters"] == y["live_filters"] and x["learning_rate"] == y["learning_rate"]
        drops = [(e["event"], [layer.get("dropped_indices") for layer in e["layers"]])
                 for e in _lines(pop / "pruning.jsonl")]
        assert drops == [(e["event"], [layer.get("dropped_indices") for layer in e["layers"]])
                         for e in _lines(seq / "pruning.jsonl")]
        assert drops[0][0] == "drop" and any(drops[0][1])
    # the two members really are different runs
    m3, m4 = _lines(root / "pop-seed3" / "metrics.jsonl"), _lines(root / "pop-seed4" / "metrics.jsonl")
    assert m3[0]["train_loss"] != m4[0]["train_loss"]


def test_population_members_are_ordinary_runs(population):
    root, _, layout = population
    pop_summary = json.loads((root / "pop-seed4" / "summary.json").read_text())
    assert pop_summary["status"] == "completed"
    assert pop_summary["population"] == {"seeds": [3, 4], "trained_together": [3, 4], "layout": layout}
    assert pop_summary["train_step_compilations_this_process"] >= 1
    config, state = load_run_state(root / "pop-seed4")
    _, seq_state = load_run_state(root / "seq-seed4")
    assert config.seed == 4
    np.testing.assert_allclose(np.asarray(state.params["head"]["kernel"]),
                               np.asarray(seq_state.params["head"]["kernel"]), atol=2e-3)


def test_interrupted_population_resumes_bit_identically(population, tmp_path):
    """A kill between seed 3's and seed 4's checkpoint of epoch 2 (the last): on --resume
    seed 3 is rewound to epoch 1 and the finished population equals the uninterrupted one
    exactly."""
    root, _, layout = population
    with interrupted_at_checkpoint(2, before=True, where="seed4"):   # seed 3 wrote epoch 2, seed 4 not
        run(_config(tmp_path / "pop", layout=layout), data=DATA)
    assert Checkpointer(tmp_path / "pop-seed3" / "checkpoints").epochs() == [1, 2]
    run(dataclasses.replace(_config(tmp_path / "pop", layout=layout), resume=True), data=DATA)
    for seed in (3, 4):
        resumed = _lines(tmp_path / f"pop-seed{seed}" / "metrics.jsonl")
        straight = _lines(root / f"pop-seed{seed}" / "metrics.jsonl")
        key = lambda rows: [(r["epoch"], r["train_loss"], r["test_loss"], r["live_filters"]) for r in rows]
        assert key(resumed) == key(straight)
    with pytest.raises(RunError, match="every seed of the population .* has already ended"):
        run(dataclasses.replace(_config(tmp_path / "pop", layout=layout), resume=True), data=DATA)


@dataclasses.dataclass(frozen=True)
class PoisonConfig(MethodConfig):
    name = "poison_seed"
    seed: int = 0


@register
class PoisonSeed(Method):
    """Test method: after epoch 1, the parameters of the run whose seed is ``config.seed``
    become NaN (the seed reaches the transition through ``run_inputs``)."""
    name = "poison_seed"
    config_class = PoisonConfig

    def run_inputs(self):
        return jnp.float32(self.context.seed == self.config.seed)

    def after_epoch(self, state, epoch, inputs=None):
        if epoch != 0:
            return state, []
        flag = self.run_inputs() if inputs is None else inputs
        params = {**state.params, "head": {**state.params["head"], "kernel": jnp.where(
            flag > 0, jnp.nan, state.params["head"]["kernel"])}}
        return state.replace(params=params), [Event("poison", epoch + 1, 0, {"flag": flag})]


@pytest.mark.parametrize("layout", ["vmap", "loop"])
def test_one_seed_diverges_alone(tmp_path, layout):
    config = _config(tmp_path / "pop", method="poison_seed", train_limit=None, layout=layout, seed=4)
    with pytest.raises(Diverged, match="1 of 2 seeds diverged .*seed 4: .*epoch 1") as err:
        run(config, data=DATA)
    assert set(err.value.summary["runs"]) == {"3", "4"}
    ok = json.loads((tmp_path / "pop-seed3" / "summary.json").read_text())
    bad = json.loads((tmp_path / "pop-seed4" / "summary.json").read_text())
    assert ok["status"] == "completed" and len(_lines(tmp_path / "pop-seed3" / "metrics.jsonl")) == 2
    assert bad["status"] == "diverged" and bad["diverged_epoch"] == 1 and bad["last_finite_checkpoint"] is None
    assert not (tmp_path / "pop-seed4" / "checkpoints" / "1").exists()
    assert [e["flag"] for e in _lines(tmp_path / "pop-seed3" / "pruning.jsonl")] == [0.0]


def test_stack_and_unstack_round_trip():
    trees = [{"a": jnp.full((2,), float(i)), "b": (jnp.int32(i),)} for i in range(3)]
    stacked = stack(trees)
    assert stacked["a"].shape == (3, 2) and stacked["b"][0].shape == (3,)
    for i, tree in enumerate(trees):
        np.testing.assert_array_equal(unstack(stacked, i)["a"], tree["a"])
    with pytest.raises(ValueError, match="differ in structure"):
        stack([{"a": 1}, {"a": 1, "b": 2}])


def test_member_configs_and_bad_seeds_flag(tmp_path, tiny_cifar_dir, capsys):
    members = member_configs(dataclasses.replace(_config(tmp_path / "x", seeds=3), keep_checkpoints=1))
    assert [(c.seed, c.out, c.seeds, c.keep_checkpoints) for c in members] == [
        (3, f"{tmp_path}/x-seed3", 1, 2), (4, f"{tmp_path}/x-seed4", 1, 2), (5, f"{tmp_path}/x-seed5", 1, 2)]
    cli = load_script("experiments/cifar.py")
    assert cli.main(["--data-dir", str(tiny_cifar_dir), "--out", str(tmp_path / "bad"), "--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds must be in 1..4096, got 0"
    assert not list(tmp_path.glob("bad*"))


def test_a_transition_that_makes_parameters_non_finite_is_not_checkpointed(tmp_path):
    """One run (no population): the NaN comes from the method's after-epoch transition, not
    from training; the epoch's checkpoint is not written."""
    config = dataclasses.replace(_config(tmp_path / "one", seeds=1, method="poison_seed", seed=3))
    with pytest.raises(Diverged, match="epoch 1: parameters not finite"):
        run(config, data=DATA)
    assert Checkpointer(tmp_path / "one" / "checkpoints").epochs() == []
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["last_finite_checkpoint"] is None


def test_a_population_of_a_structured_method_exports_every_member(tmp_path):
    """finish() of each member sees its own final state: the export and the method's report."""
    summary = run(_config(tmp_path / "li", method="li-l1", fraction=0.5), data=DATA)
    for seed in (3, 4):
        member = tmp_path / f"li-seed{seed}"
        assert summary["runs"][str(seed)]["export"]["params_after"] < summary["runs"][str(seed)]["export"]["params_before"]
        report = json.loads((member / "export" / "export.json").read_text())
        _, state = load_run_state(member)
        from repr_jax.masks import live_filters
        live = {n: int(v.sum()) for n, v in live_filters(state.masks, state.layers).items()}
        assert report["channels"] == live and report["max_abs_logit_difference"] < 1e-4
