"""Evaluate a run's checkpoint on its test set: ``python -m repr_jax.evaluate RUN_DIR
[--step latest|best|finite|EPOCH] [--data-dir PATH] [--json FILE]``.

The state is restored into the run's own model and method (masks and a method's channel
gates apply, as in training's evaluation), the test set is the run's (its ``data`` settings:
dataset, ``test_limit``), read from ``--data-dir`` when the data moved — the data must be
the run's own (its fingerprint in ``config.json``), so other data is refused, not reported
as the run's accuracy. Prints one line;
``--json`` also writes ``{run, epoch, step, test_loss, test_accuracy, test_images}``.
Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def evaluate_run(run_dir, step: str = "latest", data_dir=None, batch_size: int | None = None) -> dict:
    """``{run, epoch, step, test_loss, test_accuracy, test_images}`` of checkpoint ``step``."""
    import dataclasses

    import jax.numpy as jnp

    from repr_jax.config import RunError
    from repr_jax.experiment import load_run_data, restore_run
    from repr_jax.run_state import preprocessing
    from repr_jax.run_dir import check_data
    from repr_jax.train import evaluate
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} holds no repr-jax run (no config.json)")
    epoch: int | str = step
    if step not in ("latest", "best", "finite"):
        try:
            epoch = int(step)
        except ValueError:
            raise RunError(f"--step must be latest, best, finite or an epoch number, got {step!r}") from None
    config, _, method, state = restore_run(run_dir, epoch)
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dir=str(data_dir)))
    data = load_run_data(config)
    check_data(run_dir, data.fingerprint, data.fingerprint_with)
    metrics = evaluate(state, jnp.asarray(data.test_x), jnp.asarray(data.test_y),
                       batch_size or config.eval_batch_size, method=method,
                       preprocess=preprocessing(config, data))
    return {"run": str(run_dir), "epoch": int(state.step) // max(1, data.train_count // config.batch_size),
            "step": int(state.step), "test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"],
            "test_images": int(len(data.test_y))}


def main(argv=None) -> int:
    from repr_jax._xla_flags import enable_cpu_fusion
    enable_cpu_fusion()
    from repr_jax.cli import DefaultsHelpFormatter, fail
    from repr_jax.models.user import trust
    from repr_jax.config import RunError
    from repr_jax.data import DataError

    p = argparse.ArgumentParser(prog="python -m repr_jax.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("run_dir", help="a run directory written by experiments/cifar.py")
    p.add_argument("--model", default=None, metavar="FILE.py:FACTORY",
                   help="the run's own model code, named again so that it may be imported (a run directory "
                        "never imports code by itself)")
    p.add_argument("--trust-model", action="store_true", help="import the model code the run directory names")
    p.add_argument("--step", default="latest", help="checkpoint: latest, best, finite or an epoch number")
    p.add_argument("--data-dir", default=None, help="the run's data, if it moved")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch (default: the run's)")
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")
    args = p.parse_args(argv)
    try:
        if args.batch_size is not None and args.batch_size < 1:
            raise RunError(f"--batch-size must be >= 1, got {args.batch_size}")
        trust(args.model, everything=args.trust_model)
        result = evaluate_run(args.run_dir, args.step, args.data_dir, args.batch_size)
    except (RunError, DataError) as err:
        return fail(err)
    print(f"{result['run']} step {result['step']} (epoch {result['epoch']}): test accuracy "
          f"{100 * result['test_accuracy']:.2f}% loss {result['test_loss']:.4f} on {result['test_images']} images")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["evaluate_run", "main"]
