"""Export a train state and report on it: the method's export (the default removes dead
filters along the channel graph), max |logit difference| between the masked big model — as
the method evaluates it — and the exported one on a batch, both models' inference speed
timed in turn, and ``architecture.json``, ``export.json`` and ``checkpoint/`` written. A run
directory's or a finished session's export: :mod:`repr_jax.export_runs`.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from repr_jax.compress.export import eval_apply, logits, save_exported


def _forward(architecture: dict, variables: dict):
    apply = eval_apply(architecture)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
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
    # one program with the model's options (op by op, MobileNetV2 compiled hundreds of programs)
    big, _ = jax.jit(lambda s, p, x: forward(s, p, x, train=False, method=method),
                     compiler_options=dict(state.compiler_options) or None)(state, params, images)
    small = logits(exported.architecture, exported.variables, images)
    speed = inference_speedup((architecture, {"params": params, "batch_stats": state.batch_stats}),
                              (exported.architecture, exported.variables), speed_batch)
    report = {**info, **exported.report(),
              "max_abs_logit_difference": float(jnp.max(jnp.abs(big - small))),
              **speed, "inference_batch": speed_batch,
              "inference_device": str(jax.devices()[0].device_kind),
              **({"warnings": exported.warnings()} if exported.warnings() else {})}
    save_exported(exported, out, report)
    return report


__all__ = ["export_and_report", "inference_speed", "inference_speedup", "interleaved_times"]
