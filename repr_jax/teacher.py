"""The distillation teacher of a run (``--set kd.teacher=RUN_DIR``): checked before any data is
read, then restored from its run directory into the student's train state
(:class:`repr_jax.distill.Distiller`; the teacher's variables are never checkpointed)."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from repr_jax.distill import Distiller
from repr_jax.run_state import build_model, restore_run


def check_teacher(config) -> None:
    """``RunError`` (one line) unless ``config.kd.teacher`` names a run directory of a model
    with this run's classes (no data read, nothing restored)."""
    from repr_jax.errors import RunError
    from repr_jax.run_dir import read_config
    source = config.kd.teacher_dir(config.seed)
    if not source:
        return
    if not (Path(source) / "config.json").exists():
        raise RunError(f"--set kd.teacher={source}: no repr-jax run there (no config.json)")
    classes = read_config(Path(source)).num_classes
    unread = config.data.num_classes is None and config.data.dataset not in ("cifar10", "cifar100")
    if not unread and classes != config.num_classes:   # checked again once the data is read
        raise RunError(f"--set kd.teacher={source}: it predicts {classes} classes, this run {config.num_classes}")


def attach_teacher(config, state):
    """``state`` with the teacher of ``config.kd`` (none: unchanged). ``RunError`` if the teacher
    cannot be restored or does not take this data set's images."""
    from repr_jax.errors import RunError
    from repr_jax.masks import apply_masks
    source = config.kd.teacher_dir(config.seed)
    if not source:
        return state
    check_teacher(config)
    try:
        t_config, arch, _, t_state = restore_run(source, "latest")
    except (RunError, ValueError, OSError) as err:
        raise RunError(f"--set kd.teacher={source}: cannot restore it: {err}") from None
    model = build_model(t_config, arch)
    variables = {"params": apply_masks(t_state.params, t_state.masks), "batch_stats": t_state.batch_stats}
    variables = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), variables)
    return state.replace(teacher=variables,
                         distill=Distiller(model.apply, config.kd.temperature, config.kd.alpha))


__all__ = ["attach_teacher", "check_teacher"]
