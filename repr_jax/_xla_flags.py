"""Opt-in CPU speed-up: XLA's YNNPACK fusion for dot/elementwise/reduce ops (jaxlib 0.10.x).

Measured on a 2-core x86 CPU with jaxlib 0.10.2: a C^3(32) train step 390 → 610 img/s and
ResNet-20 144 → 201 img/s, losses equal to float32 round-off. It is *not* switched on by
``import repr_jax``: with the flag, a batched ``a.T @ a`` feeding ``jnp.linalg.cholesky``
or a triangular solve failed to run ("Instruction with unsupported layout in YNN
fusion"), and a ``vmap`` over Hessian-vector products of a conv net returned NaN
(see :func:`repr_jax.criteria.obd_saliency`, which unrolls its probes instead), and a
vmapped population of seeds split over several host devices
(``--xla_force_host_platform_device_count``, the CPU stand-in for a mesh) failed the same
way, so it stays off in that setting; only
entry points whose whole program is tested with it call
:func:`enable_cpu_fusion` — ``experiments/cifar.py``, ``benchmarks/run.py`` and the tests.
The flag is appended to ``XLA_FLAGS`` only if JAX's backend has not started, the user has
not set it, the jaxlib version is one it was checked on, and ``REPR_JAX_NO_YNN`` is unset.
It only affects XLA:CPU.
"""
from __future__ import annotations

import os
import sys
from importlib import metadata

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
CHECKED_JAXLIB = ("0.10.",)


def jaxlib_checked() -> bool:
    """Whether the installed jaxlib is one the CPU options here were checked on."""
    try:
        return metadata.version("jaxlib").startswith(CHECKED_JAXLIB)
    except metadata.PackageNotFoundError:
        return False


def enable_cpu_fusion() -> bool:
    """Append :data:`YNN_FLAG` to ``XLA_FLAGS`` when safe; returns whether it is in effect."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return YNN_FLAG in flags
    if os.environ.get("REPR_JAX_NO_YNN") or "xla_force_host_platform_device_count" in flags:
        return False
    if not jaxlib_checked():
        return False
    xb = sys.modules.get("jax._src.xla_bridge")
    if xb is not None and getattr(xb, "_backends", None):
        return False  # backend already initialised: too late to change flags
    os.environ["XLA_FLAGS"] = (flags + " " + YNN_FLAG).strip()
    return True



def without_cpu_fusion() -> dict:
    """``compiler_options`` for :func:`jax.jit` that switch the YNN fusion off for one program
    (empty when it is not on). XLA:CPU 0.10.2 refuses some linear-algebra programs under it
    ("Instruction with unsupported layout in YNN fusion": the least-squares re-fit of
    :mod:`repr_jax.compress.reconstruct`)."""
    if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
        return {}
    import jax
    return {"xla_cpu_experimental_ynn_fusion_type": ""} if jax.default_backend() == "cpu" else {}
