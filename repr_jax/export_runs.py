"""Export a run directory's checkpoint (``experiments/export.py``) or a finished run
(structured methods end in ``<run>/export/``) as a smaller dense model, through
:func:`repr_jax.compress.run_export.export_and_report`."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp

from repr_jax.compress.run_export import export_and_report
from repr_jax.config import RunError
from repr_jax.data import DataError
from repr_jax.models import input_shape_of


def _check_batch(config, run_dir, data_dir, batch: int):
    """Normalised test images of the run (or N(0, 1) images if its data cannot be read);
    ``RunError`` when the data found is not the run's (its fingerprint)."""
    import dataclasses

    from repr_jax.run_state import load_run_data, preprocessing
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dir=str(data_dir)))
    from repr_jax.run_dir import check_data
    try:
        data = load_run_data(config)
    except (DataError, OSError):
        data = None
    if data is not None:
        # the run's own data, or one line (never other data)
        check_data(run_dir, data.fingerprint, data.fingerprint_with)
        images = preprocessing(config, data)(jnp.asarray(data.test_x[:batch]))
        return images, f"{min(batch, len(data.test_y))} test images"
    shape = (batch,) + input_shape_of(config.architecture())
    return jax.random.normal(jax.random.key(0), shape), f"{batch} N(0, 1) images (run data not found)"


def export_run(run_dir, out, *, step: str = "latest", data_dir=None, batch: int = 64) -> dict:
    """Write the exported model of ``run_dir`` (checkpoint ``step``: latest, best or an epoch)
    into ``out``; returns ``export.json``'s content."""
    from repr_jax.checkpoint import Checkpointer
    from repr_jax.run_state import restore_run
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
    images, source = _check_batch(config, run_dir, data_dir, batch)
    return export_and_report(state, arch, method, images, out, {
        "run": str(run_dir), "epoch": int(epoch), "method": config.method.name,
        "model": config.model.name, "logit_check_batch": source}, speed_batch=speed_batch(input_shape_of(arch)))


def speed_batch(image_shape) -> int:
    """The inference-timing batch for images of ``image_shape``: 256 at CIFAR's 32×32, the
    same pixel count otherwise (64 at 64×64, 5 at 224×224; at least 4)."""
    h, w = image_shape[:2]
    return max(4, round(256 * 32 * 32 / (h * w)))


def export_session(session, batch: int = 64) -> dict:
    """At the end of a run whose method exports (structured methods): ``<run>/export/`` from
    the final state, the logit check on the run's first ``batch`` test images, inference timed
    on :func:`speed_batch` images."""
    s = session
    images = s.preprocess(jnp.asarray(s.data.test_x[:batch]))
    out = s.out / "export"
    if out.exists():   # a resumed run that had exported before being killed: export again
        import shutil
        shutil.rmtree(out)
    arch = json.loads((s.out / "architecture.json").read_text())
    return export_and_report(s.state, arch, s.method, images, out, {
        "run": str(s.out), "epoch": int(s.config.epochs), "method": s.config.method.name,
        "model": s.config.model.name, "logit_check_batch": f"{min(batch, len(s.data.test_y))} test images"},
        speed_batch=speed_batch(s.data.image_shape))


__all__ = ["export_run", "export_session", "speed_batch"]
