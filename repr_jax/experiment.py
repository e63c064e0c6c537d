"""Train as configured: :func:`run` — one run (:mod:`repr_jax.session`) or, with
``seeds > 1``, K seeds in one process, vmapped or looped (:mod:`repr_jax.population`).

The names of :mod:`repr_jax.session` and :mod:`repr_jax.run_state` are re-exported here:
``repr_jax.experiment`` was where they lived before the runner was split (and scripts and
notebooks import them from here).
"""
from __future__ import annotations

from repr_jax.config import RunConfig
from repr_jax.data import Dataset, DataError
from repr_jax.errors import Diverged, Interrupted, RunError
from repr_jax.run_state import (all_finite, build_method, build_model, initial_state, load_run_data,
                                load_run_state, restore_run, state_is_finite, warm_start)
from repr_jax.epoch_loop import log_epoch
from repr_jax.parallel import sync_processes
from repr_jax.session import Session, close, device_mesh, discard_unstarted, finish, start, train_epochs


def run(config: RunConfig, data: Dataset | None = None) -> dict:
    """Train as configured; returns the summary dict (also written to ``summary.json``) —
    with ``config.seeds > 1``, :func:`repr_jax.population.run_population`'s summary of every
    seed's run.

    ``data`` replaces loading from ``config.data.dir`` (benchmarks, notebooks); the
    validation split and slices of ``config`` still apply.
    """
    if config.seeds > 1:
        from repr_jax.population import run_population
        return run_population(config, data)
    session = start(config, data)
    try:
        try:
            train_epochs(session)
        except KeyboardInterrupt:
            raise Interrupted.during(session) from None
        except BaseException:
            discard_unstarted(session)   # failed before its first epoch was recorded: nothing to keep
            raise
        summary = finish(session)
        # the others wait while process 0 exports and writes alone: a process that exited
        # instead would wait at JAX's shutdown barrier, whose deadline can end process 0's export
        sync_processes("repr_jax: run written")
        return summary
    finally:
        close(session)


__all__ = ["DataError", "Diverged", "RunConfig", "RunError", "Session", "all_finite", "build_method", "build_model",
           "close", "device_mesh", "finish", "initial_state", "load_run_data", "load_run_state", "log_epoch",
           "restore_run", "run", "start", "state_is_finite", "train_epochs", "warm_start"]
