"""Run by tests/test_parallel.py in a subprocess with 4 host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``); prints one JSON object."""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from repr_jax.checkpoint import Checkpointer
from repr_jax.config import ModelConfig, RunConfig
from repr_jax.data import synthetic_cifar
from repr_jax.experiment import close, run, start
from repr_jax.methods import method_config
from repr_jax.optim import OptimConfig
from repr_jax.parallel import batch_sharding, data_mesh, replicate
from repr_jax.train import train_step_indexed, zero_totals

DATA = synthetic_cifar(128, 64)


def config(out, devices, seeds=1, **kw):
    return RunConfig(out=str(out), seed=0, seeds=seeds, devices=devices, epochs=2, batch_size=32,
                     eval_batch_size=32, model=ModelConfig(depth=2, width=4, batch_norm=True),
                     optim=OptimConfig(learning_rate=0.02, schedule="constant"),
                     method=method_config("repr", s1=1, s2=1, iterations=1, reinit="zero"), quiet=True, **kw)


def rows(path):
    return [json.loads(line) for line in Path(path, "metrics.jsonl").read_text().splitlines()]


def main(tmp: Path) -> dict:
    out = {"devices": jax.device_count()}
    for devices in (1, 4):
        run(config(tmp / f"d{devices}", devices), data=DATA)
        out[f"metrics_{devices}"] = rows(tmp / f"d{devices}")
    # the compiled step splits the batch and all-reduces over the 4 devices
    session = start(config(tmp / "probe", 4), data=DATA)
    mesh = session.mesh
    out["mesh_size"] = mesh.size
    out["state_sharding_devices"] = len(session.state.params["head"]["kernel"].sharding.device_set)
    x, y = session.arrays[0], session.arrays[1]
    hlo = train_step_indexed.lower(
        session.state, replicate(zero_totals(), mesh), x, y, replicate(jnp.arange(32), mesh),
        replicate(jax.random.key(0), mesh), layers=session.state.layers,
        method=session.method, batch_sharding=batch_sharding(mesh, 32)).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    out["per_device_batch"] = "f32[8,32,32,3]" in hlo
    close(session)
    # interrupted after the epoch-1 checkpoint, resumed under the mesh: bit-identical
    real_save = Checkpointer.save

    def save(self, epoch, state, metrics, extra):
        real_save(self, epoch, state, metrics, extra)
        if epoch == 1:
            raise KeyboardInterrupt

    Checkpointer.save = save
    try:
        run(config(tmp / "resumed", 4), data=DATA)
    except KeyboardInterrupt:
        pass
    Checkpointer.save = real_save
    resumed = start(dataclasses.replace(config(tmp / "resumed", 4), resume=True), data=DATA)
    out["restored_sharding_devices"] = len(resumed.state.params["head"]["kernel"].sharding.device_set)
    close(resumed)
    run(dataclasses.replace(config(tmp / "resumed", 4), resume=True), data=DATA)
    out["metrics_resumed"] = rows(tmp / "resumed")
    # a population of 2 seeds, each batch split over the 4 devices
    run(config(tmp / "pop", 4, seeds=2), data=DATA)
    out["population_seed0"] = rows(tmp / "pop-seed0")
    try:
        data_mesh(8)
    except ValueError as err:
        out["too_many"] = str(err)
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(main(Path(tmp))))
    sys.exit(0)
