"""Data parallel over a device mesh, on 4 host CPU devices in a subprocess: 4-device training
equals 1-device training for the same global batch (to float32 round-off), the compiled step
really splits the batch and all-reduces, checkpoints restore onto the mesh, and a population
of seeds runs on the mesh too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_COMPILE, load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe():
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}".strip(),
           "PYTHONPATH": str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "mesh_probe.py")], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _close(a, b, rtol):
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        np.testing.assert_allclose(x["train_loss"], y["train_loss"], rtol=rtol)
        np.testing.assert_allclose(x["test_loss"], y["test_loss"], rtol=rtol)
        assert x["live_filters"] == y["live_filters"]


def test_four_devices_equal_one_device(probe):
    assert probe["devices"] == 4
    one, four = probe["metrics_1"], probe["metrics_4"]
    np.testing.assert_allclose(one[0]["train_loss"], four[0]["train_loss"], rtol=1e-5)
    _close(one, four, rtol=2e-3)
    assert [r["live_filters"] for r in four] == [8, 6]    # the drop happened (re-init after epoch 2)


def test_the_step_is_split_over_the_mesh(probe):
    assert probe["mesh_size"] == 4 and probe["state_sharding_devices"] == 4
    assert probe["all_reduce"], "no all-reduce: gradients/batch statistics are not reduced over devices"
    assert probe["per_device_batch"], "each device should hold 32 / 4 = 8 images"


def test_checkpoints_restore_onto_the_mesh_and_resume_exactly(probe):
    assert probe["restored_sharding_devices"] == 4
    key = lambda rows: [(r["epoch"], r["train_loss"], r["test_loss"]) for r in rows]
    assert key(probe["metrics_resumed"]) == key(probe["metrics_4"])


def test_population_on_the_mesh(probe):
    """Seed 0 of a 2-seed population on 4 devices = the single seed-0 run on 4 devices."""
    _close(probe["population_seed0"], probe["metrics_4"], rtol=2e-3)


def test_device_errors(probe, tmp_path, tiny_cifar_dir, capsys):
    assert probe["too_many"] == "--devices 8: this machine has 4 CPU device(s)"
    cli = load_script("experiments/cifar.py")
    base = ["--data-dir", str(tiny_cifar_dir), "--quiet", "--epochs", "1"]
    assert cli.main([*base, "--out", str(tmp_path / "a"), "--devices", "-1"]) == 2
    assert "--devices must be >= 0" in capsys.readouterr().err
    import jax
    n = jax.device_count()
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--devices", str(n + 1)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --devices {n + 1}: this machine has {n} CPU device(s)"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
