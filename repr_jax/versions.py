"""What ran a result: library versions and the machine (one definition for runs, the
ablation report and the benchmark harness)."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = ("repr-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "torch")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def package_versions(packages=PACKAGES) -> dict:
    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def machine() -> dict:
    """Platform, CPU, cores, JAX backend and devices, XLA flags and package versions."""
    import jax
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu_name(), "cores": os.cpu_count(), "jax_backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()],
            "xla_flags": os.environ.get("XLA_FLAGS", ""), **package_versions()}


__all__ = ["PACKAGES", "cpu_name", "machine", "package_versions"]
