"""Shared fixtures: tiny CIFAR copies in real file formats, and the shared JPEG copy."""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from repr_jax._xla_flags import enable_cpu_fusion
from repr_jax import data

enable_cpu_fusion()  # test what the CLI runs (before any test starts JAX's backend)
# The suite is compile-bound (hundreds of small programs, few steps each): XLA:CPU's LLVM
# backend at optimisation level 0 compiles them ~4x faster (with smaller jit-shape sets and
# ResNet-8 in the notebook: suite 18:41 → 13:24 on 2 cores).
# Every comparison in the tests is between programs built the same way. REPR_JAX_TEST_FULL_OPT=1
# runs the suite with the default level, as the CLI compiles.
FAST_COMPILE = "" if os.environ.get("REPR_JAX_TEST_FULL_OPT") else "--xla_backend_optimization_level=0"
if FAST_COMPILE and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def load_script(relative: str):
    """An entry-point script (e.g. ``experiments/cifar.py``) loaded as a module, to call its main."""
    import importlib.util
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """One decode cache for the test session, never the user's ~/.cache (keys are per source);
    no persistent XLA compilation cache, in this process or the processes tests start.

    The suite used one (programs compiled once per session, subprocesses included); without it
    a clean-clone run took the same time (24:09 against 23:58 on a 2-core Zen 4 EPYC), and JAX
    writes its entries without a lock when eviction is off, so none is used."""
    import jax
    keys = ("REPR_JAX_CACHE", "REPR_JAX_DATA_DIR", "JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["REPR_JAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("REPR_JAX_DATA_DIR", None)
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class SimulatedKill(BaseException):
    """Stands for the process being killed: no handler of the code under test catches it
    (the CLI turns a ``KeyboardInterrupt`` into exit code 130)."""


@contextlib.contextmanager
def interrupted_at_checkpoint(epoch: int, *, before: bool = False, where: str | None = None):
    """Run the body as if killed between epochs: the checkpoint writer raises
    :class:`SimulatedKill` right after writing the checkpoint of ``epoch`` (instead of writing
    it, with ``before``), in a checkpoint directory whose path contains ``where`` when given.
    Expects the interruption; the real writer is back afterwards."""
    from repr_jax.checkpoint import Checkpointer
    real = Checkpointer.save

    def save(self, e, *args, **kwargs):
        hit = e == epoch and (where is None or where in str(self.directory))
        if hit and before:
            raise SimulatedKill
        real(self, e, *args, **kwargs)
        if hit:
            raise SimulatedKill

    Checkpointer.save = save
    try:
        with pytest.raises(SimulatedKill):
            yield
    finally:
        Checkpointer.save = real


def synthetic_cifar(n_train: int, n_test: int, num_classes: int = 10, seed: int = 0):
    """``(train_x, train_y, test_x, test_y)`` of :func:`repr_jax.data.synthetic_cifar`."""
    d = data.synthetic_cifar(n_train, n_test, num_classes, seed)
    return d.train_x, d.train_y, d.test_x, d.test_y


def covering_cifar(n_train: int, n_test: int, num_classes: int = 10, seed: int = 0):
    """Like :func:`synthetic_cifar`, with labels covering every class in both splits (the
    loader refuses a split without some class)."""
    n_train, n_test = max(n_train, num_classes), max(n_test, num_classes)
    tx, _, vx, _ = synthetic_cifar(n_train, n_test, num_classes, seed)
    rng = np.random.default_rng(seed)
    label = lambda n: rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    return tx, label(n_train), vx, label(n_test)


def write_cifar10_pickles(root: Path, tx, ty, vx, vy) -> Path:
    """The python layout ``cifar-10-batches-py/`` (5 train batches, test batch, meta)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rows = lambda x: x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    for i, (xs, ys) in enumerate(zip(np.array_split(tx, 5), np.array_split(ty, 5)), start=1):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": rows(xs), "labels": ys.tolist()}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": rows(vx), "labels": vy.tolist()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, f)
    return d


@pytest.fixture(scope="session")
def tiny_cifar_dir(tmp_path_factory):
    """A small learnable CIFAR-10 copy in the pickle layout: 512 train / 128 test images."""
    root = tmp_path_factory.mktemp("tiny_cifar")
    write_cifar10_pickles(root, *synthetic_cifar(512, 128))
    return root


def requires_shared_cifar():
    return pytest.mark.skipif(not SHARED_CIFAR.exists(),
                              reason=f"shared CIFAR-10 JPEG copy not found at {SHARED_CIFAR}")


def free_port() -> int:
    """A TCP port free on this machine now (a multi-process run's coordinator)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(**extra) -> dict:
    """The environment of a process of a multi-process test run: the same XLA:CPU programs in
    every run (no YNN fusion, no inherited ``XLA_FLAGS``), plus ``extra``; compiled at the
    tests' optimisation level (:data:`FAST_COMPILE`) like every program of the suite."""
    env = dict(os.environ, REPR_JAX_NO_YNN="1")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    flags = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    if flags:
        env["XLA_FLAGS"] = flags
    return env


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """After each test file, drop JAX's caches of compiled programs (and collect garbage) so
    their executables, and the memory mappings of their code, are freed.

    Without it a worker keeps every program it compiled: six test files left one process with
    13,400 memory mappings and 4.3 GB resident, so late in a full run a worker reaches the
    kernel's ``vm.max_map_count`` (65,530), where XLA:CPU's compiler segfaults instead of
    failing: four clean-clone runs on 2026-12-07 lost a worker late in the run, in whichever test
    was compiling; with the limit lowered to 8,000 the same six files segfault the same way, and
    pass with this fixture (peaks near 5,000; 12,411 in a whole clean-clone run)."""
    yield
    import gc
    import jax
    jax.clear_caches()
    gc.collect()
