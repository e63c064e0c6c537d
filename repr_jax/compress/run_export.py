"""Export any run directory's checkpoint as a smaller dense model (``experiments/export.py``).

Restores the run's train state (its ``config.json`` and ``architecture.json`` rebuild the
template), asks the run's method for the export (the default removes dead filters along
the channel graph), measures max |logit difference| between the masked big model — as the
method evaluates it — and the exported model on a batch, and writes ``architecture.json``,
``export.json`` and ``checkpoint/`` into the output directory.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.compress.export import logits, save_exported
from repr_jax.config import RunError
from repr_jax.data import DataError


def _check_batch(config, data_dir, batch: int):
    """Normalised test images of the run (or N(0, 1) images if its data cannot be read)."""
    import dataclasses

    from repr_jax.experiment import load_run_data
    from repr_jax.pipeline import normalize
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dir=str(data_dir)))
    try:
        data = load_run_data(config)
        return normalize(jnp.asarray(data.test_x[:batch])), f"{min(batch, len(data.test_y))} test images"
    except (DataError, OSError):
        from repr_jax.models import input_shape_of
        shape = (batch,) + input_shape_of(config.architecture())
        return jax.random.normal(jax.random.key(0), shape), f"{batch} N(0, 1) images (run data not found)"


def _forward(architecture: dict, variables: dict):
    from repr_jax.models import from_architecture
    model = from_architecture(architecture)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return lambda images: apply(variables, images).block_until_ready()


def interleaved_times(forwards, images, repeats: int) -> np.ndarray:
    """Seconds of each of ``forwards`` (callables on ``images``) over ``repeats`` rounds, as a
    ``(repeats, len(forwards))`` array. Every callable runs once first (compiling); each round
    then takes them one after another, so a change in machine load between rounds falls on all
    of them alike, and times each one's second consecutive call (the first warms the caches the
    previous model's run evicted)."""
    for f in forwards:
        f(images)
    times = np.empty((repeats, len(forwards)))
    for r in range(repeats):
        for i, f in enumerate(forwards):
            f(images)
            start = time.perf_counter()
            f(images)
            times[r, i] = time.perf_counter() - start
    return times


def inference_speed(architecture: dict, variables: dict, batch: int = 256, repeats: int = 5) -> float:
    """Median images/s of the jitted eval-mode forward pass of a model on ``batch`` N(0, 1)
    images on the default device, timed as :func:`interleaved_times` times one model (after a
    compiling call; each timed call preceded by an untimed one)."""
    from repr_jax.models import input_shape_of
    images = jax.random.normal(jax.random.key(1), (batch,) + input_shape_of(architecture))
    times = interleaved_times([_forward(architecture, variables)], images, repeats)
    return batch / float(np.median(times[:, 0]))


def inference_speedup(before: tuple[dict, dict], after: tuple[dict, dict], batch: int = 256,
                      repeats: int = 11) -> dict:
    """Inference speed of two models, each ``(architecture, variables)``, timed interleaved
    (:func:`interleaved_times`): median images/s of each and the speed-up as the median over
    rounds of t_before / t_after — a ratio within each round, as ``benchmarks/`` measures."""
    from repr_jax.models import input_shape_of
    images = jax.random.normal(jax.random.key(1), (batch,) + input_shape_of(before[0]))
    times = interleaved_times([_forward(*before), _forward(*after)], images, repeats)
    return {"inference_images_per_second_before": batch / float(np.median(times[:, 0])),
            "inference_images_per_second_after": batch / float(np.median(times[:, 1])),
            "inference_speedup": float(np.median(times[:, 0] / times[:, 1])),
            "inference_repeats": repeats}


def export_and_report(state, architecture: dict, method, images, out, info: dict,
                      speed_batch: int = 256) -> dict:
    """Export ``state`` with the method's rule, compare its logits with the masked model's on
    ``images``, time both models' inference in this process (interleaved), and write ``out/``
    (``architecture.json``, ``export.json``, ``checkpoint/``); returns ``export.json``."""
    from repr_jax.masks import apply_masks
    from repr_jax.train import forward
    exported = method.export(state, architecture)
    params = apply_masks(state.params, state.masks)
    big, _ = forward(state, params, images, train=False, method=method)
    small = logits(exported.architecture, exported.variables, images)
    speed = inference_speedup((architecture, {"params": params, "batch_stats": state.batch_stats}),
                              (exported.architecture, exported.variables), speed_batch)
    report = {**info, **exported.report(),
              "max_abs_logit_difference": float(jnp.max(jnp.abs(big - small))),
              **speed, "inference_batch": speed_batch,
              "inference_device": str(jax.devices()[0].device_kind)}
    save_exported(exported, out, report)
    return report


def export_run(run_dir, out, *, step: str = "latest", data_dir=None, batch: int = 64) -> dict:
    """Write the exported model of ``run_dir`` (checkpoint ``step``: latest, best or an epoch)
    into ``out``; returns ``export.json``'s content."""
    from repr_jax.checkpoint import Checkpointer
    from repr_jax.experiment import restore_run
    from repr_jax.run_dir import read_config, read_jsonl

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} holds no repr-jax run (no config.json)")
    if out.exists() and any(out.iterdir()):
        raise RunError(f"--out {out} is not empty; choose a new directory")
    config = read_config(run_dir)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=config.keep_checkpoints, writer=False)
    try:
        epoch = (ckpt.latest_epoch() if step == "latest" else
                 ckpt.best_epoch(read_jsonl(run_dir / "metrics.jsonl")) if step == "best" else None)
        if epoch is None and step not in ("latest", "best"):
            try:
                epoch = int(step)
            except ValueError:
                raise RunError(f"--step must be latest, best or an epoch number, got {step!r}") from None
        if epoch is None or epoch not in ckpt.manager.all_steps():
            raise RunError(f"{run_dir} has no checkpoint for --step {step} (kept: {sorted(ckpt.manager.all_steps())})")
    finally:
        ckpt.close()
    config, arch, method, state = restore_run(run_dir, epoch)
    images, source = _check_batch(config, data_dir, batch)
    return export_and_report(state, arch, method, images, out, {
        "run": str(run_dir), "epoch": int(epoch), "method": config.method.name,
        "model": config.model.name, "logit_check_batch": source})


def export_session(session, batch: int = 64) -> dict:
    """At the end of a run whose method exports (structured methods): ``<run>/export/`` from
    the final state, the logit check on the run's first ``batch`` test images."""
    from repr_jax.pipeline import normalize
    s = session
    images = normalize(jnp.asarray(s.data.test_x[:batch]))
    out = s.out / "export"
    if out.exists():   # a resumed run that had exported before being killed: export again
        import shutil
        shutil.rmtree(out)
    arch = json.loads((s.out / "architecture.json").read_text())
    return export_and_report(s.state, arch, s.method, images, out, {
        "run": str(s.out), "epoch": int(s.config.epochs), "method": s.config.method.name,
        "model": s.config.model.name, "logit_check_batch": f"{min(batch, len(s.data.test_y))} test images"})


__all__ = ["export_and_report", "export_run", "export_session", "inference_speed", "inference_speedup",
           "interleaved_times"]
