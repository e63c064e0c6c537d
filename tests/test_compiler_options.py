"""A model's declared XLA:CPU options reach its train and evaluation programs, and only those."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import repr_jax as rj
from repr_jax.xla_options import compiler_options, jit_with_state_options
from repr_jax.models import MobileNetV2
from repr_jax.state import create_train_state
from repr_jax.train import eval_step, train_step_indexed, zero_totals

MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


class Tiny(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class TinyMemoryScheduled(Tiny):
    cpu_compiler_options = MEMORY_SCHEDULER


class TinyUnknownOption(Tiny):
    cpu_compiler_options = {"xla_cpu_no_such_option_for_this_test": "1"}


class TinyBadDeclaration(Tiny):
    cpu_compiler_options = {"xla_cpu_scheduler_type": 3}


def _state(model):
    return create_train_state(model, optax.sgd(0.1, momentum=0.9), 0, input_shape=(8, 8, 3))


def _train(model, steps=3):
    state = _state(model)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 255, (12, 8, 8, 3), np.uint8))
    labels = jnp.asarray(rng.integers(0, 3, 12).astype(np.int32))
    totals = zero_totals((), like=state)
    for i in range(steps):
        state, totals = train_step_indexed(state, totals, images, labels, jnp.arange(4 * (i % 3), 4 * (i % 3) + 4),
                                           jax.random.key(1), layers=state.layers, augmentation=False)
    return state, totals


def test_declared_options_are_read_sorted_and_only_on_the_cpu():
    assert compiler_options(Tiny()) == ()
    assert compiler_options(TinyMemoryScheduled()) == tuple(MEMORY_SCHEDULER.items())
    assert dict(rj.compiler_options(MobileNetV2())) == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
        "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    with pytest.raises(TypeError, match="TinyBadDeclaration.cpu_compiler_options must map option names to strings"):
        compiler_options(TinyBadDeclaration())


def test_the_train_state_carries_the_model_options_and_the_pruner_state_too():
    assert _state(TinyMemoryScheduled()).compiler_options == tuple(MEMORY_SCHEDULER.items())
    assert _state(Tiny()).compiler_options == ()
    pruner = rj.Pruner("standard", TinyMemoryScheduled(), jnp.zeros((1, 8, 8, 3)), epochs=1, steps_per_epoch=1)
    pruner.wrap(optax.sgd(0.1))
    variables = TinyMemoryScheduled().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    ps = pruner.init(variables["params"])
    state = pruner.train_state(variables, pruner.tx.init(variables["params"]), ps)
    assert state.compiler_options == tuple(MEMORY_SCHEDULER.items())


def test_the_options_reach_the_compiler():
    # an option XLA does not know fails the compile: the declaration is not dropped on the way
    with pytest.raises(Exception, match="xla_cpu_no_such_option_for_this_test"):
        _train(TinyUnknownOption(), steps=1)


def test_a_model_with_options_trains_to_the_same_numbers_in_its_own_program():
    before = train_step_indexed._cache_size()
    plain, plain_totals = _train(Tiny())
    scheduled, scheduled_totals = _train(TinyMemoryScheduled())
    # the scheduler changes the order of work, not the maths
    for a, b in zip(jax.tree_util.tree_leaves(plain.params), jax.tree_util.tree_leaves(scheduled.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(plain_totals["loss"], scheduled_totals["loss"], rtol=1e-6)
    assert train_step_indexed._cache_size() - before == 2          # one program each, none shared
    assert tuple(MEMORY_SCHEDULER.items()) in train_step_indexed._jitted
    totals = {"loss": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
    out = eval_step(scheduled, totals, jnp.zeros((4, 8, 8, 3), jnp.uint8), jnp.zeros(4, jnp.int32),
                    jnp.arange(4), jnp.ones(4))
    assert float(out["count"]) == 4 and tuple(MEMORY_SCHEDULER.items()) in eval_step._jitted


def test_jit_with_state_options_keeps_the_wrapped_function_s_name_and_doc():
    def step(state, x):
        """doc"""
        return x + 1
    wrapped = jit_with_state_options(step)
    assert wrapped.__name__ == "step" and wrapped.__doc__ == "doc"
    assert int(wrapped(_state(Tiny()), jnp.ones((), jnp.int32))) == 2 and wrapped._cache_size() == 1


def test_the_export_check_and_inference_timing_compile_with_the_model_options(monkeypatch):
    # the export's logit check and inference timing run the model as its training did: with
    # its declared options (MobileNetV2's eval forward at 64×64, batch 64: 0.45 GiB of
    # temporaries instead of 1.43 GiB with the process's flags)
    import importlib
    import repr_jax.models as models
    export_module = importlib.import_module("repr_jax.compress.export")   # (the package's export() shadows it)
    from repr_jax.compress.run_export import inference_speed
    monkeypatch.setattr(export_module, "from_architecture", lambda arch: TinyUnknownOption())
    monkeypatch.setattr(models, "from_architecture", lambda arch: TinyUnknownOption())
    monkeypatch.setattr(models, "input_shape_of", lambda arch: (8, 8, 3))
    variables = Tiny().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(Exception, match="xla_cpu_no_such_option_for_this_test"):
        export_module.logits({}, variables, jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(Exception, match="xla_cpu_no_such_option_for_this_test"):
        inference_speed({}, variables, batch=2, repeats=1)
