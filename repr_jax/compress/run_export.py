"""Export any run directory's checkpoint as a smaller dense model (``experiments/export.py``).

Restores the run's train state (its ``config.json`` and ``architecture.json`` rebuild the
template), asks the run's method for the export (the default removes dead filters along
the channel graph), measures max |logit difference| between the masked big model — as the
method evaluates it — and the exported model on a batch, and writes ``architecture.json``,
``export.json`` and ``checkpoint/`` into the output directory.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

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
        return jax.random.normal(jax.random.key(0), (batch, 32, 32, 3)), f"{batch} N(0, 1) images (run data not found)"


def export_run(run_dir, out, *, step: str = "latest", data_dir=None, batch: int = 64) -> dict:
    """Write the exported model of ``run_dir`` (checkpoint ``step``: latest, best or an epoch)
    into ``out``; returns ``export.json``'s content."""
    from repr_jax.checkpoint import Checkpointer
    from repr_jax.experiment import restore_run
    from repr_jax.masks import apply_masks
    from repr_jax.run_dir import read_config
    from repr_jax.train import forward

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} holds no repr-jax run (no config.json)")
    if out.exists() and any(out.iterdir()):
        raise RunError(f"--out {out} is not empty; choose a new directory")
    config = read_config(run_dir)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=config.keep_checkpoints)
    try:
        epoch = {"latest": ckpt.latest_epoch(), "best": ckpt.best_epoch()}.get(step)
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
    exported = method.export(state, arch)
    images, source = _check_batch(config, data_dir, batch)
    big, _ = forward(state, apply_masks(state.params, state.masks), images, train=False, method=method)
    small = logits(exported.architecture, exported.variables, images)
    report = {"run": str(run_dir), "epoch": int(epoch), "method": config.method.name,
              "model": config.model.name, **exported.report(),
              "max_abs_logit_difference": float(jnp.max(jnp.abs(big - small))),
              "logit_check_batch": source}
    save_exported(exported, out, report)
    return report


__all__ = ["export_run"]
