"""The training CLI's memory allocator on Linux: tcmalloc when the system has it.

XLA:CPU allocates each step's temporaries afresh and frees them after the step. glibc's
malloc serves every allocation above its mmap threshold (at most 32 MiB on 64-bit Linux,
``M_MMAP_THRESHOLD``) with a fresh ``mmap`` and returns it with ``munmap``, so every step
first-touches its large buffers again: page faults at ~0.3–0.6 ms per MB, a 75 MB ReLU6 of
MobileNetV2 costing 25 ms where the arithmetic takes a few (``benchmarks/RESULTS.md`` §8b,
§8d). tcmalloc keeps freed memory for reuse. Measured (§8d, a 2-core AMD EPYC, one process
per row, batch 128, 32×32): a train step of MobileNetV2 1.43× faster, C³(32) 1.33×,
ResNet-20 1.10×; results are bit-identical (an allocator does not change arithmetic). It
costs memory (§8f): XLA:CPU allocates a step's temporaries as one block; tcmalloc keeps it
for the next step, but once a small allocation lands inside the freed block the next step
takes a fresh one, so peak resident memory was up to 1.5× higher (MobileNetV2 at 64×64,
batch 50: 5.26 vs 3.74 GiB; ResNet-18 5.29 vs 3.36). ``REPR_JAX_NO_TCMALLOC=1`` where memory
is the bound.

:func:`use_tcmalloc` re-executes the running script once with ``LD_PRELOAD`` naming the
system's tcmalloc (``libtcmalloc_minimal``, Debian/Ubuntu package ``libtcmalloc-minimal4``;
``google-perftools`` elsewhere; ``REPR_JAX_TCMALLOC=/path/libtcmalloc.so`` names another);
nothing happens when there is none, when it is already
preloaded, off Linux, or with ``REPR_JAX_NO_TCMALLOC=1``. Only ``experiments/cifar.py``,
run as a program, calls it — before anything else is imported; importing ``repr_jax``
changes no process. :func:`allocator_in_use` names what a run used (``summary.json``).
"""
from __future__ import annotations

import os
import sys

OPT_OUT = "REPR_JAX_NO_TCMALLOC"
LIBRARY = "REPR_JAX_TCMALLOC"
_TRIED = "REPR_JAX_TCMALLOC_TRIED"   # set across the re-execution: never twice


def tcmalloc_library() -> str | None:
    """The tcmalloc shared library to preload: ``$REPR_JAX_TCMALLOC`` (a path, for one outside
    the loader's search path), else the system's (a name the dynamic loader finds), or None."""
    given = os.environ.get(LIBRARY)
    if given:
        return given if os.path.isfile(given) else None
    import ctypes.util
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def allocator_in_use() -> str:
    """``"tcmalloc"`` when this process runs with tcmalloc preloaded, else ``"system"``."""
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def use_tcmalloc() -> None:
    """Re-execute this program (same PID, arguments, environment) with tcmalloc preloaded,
    when it helps and is possible (module docstring); otherwise return."""
    if (sys.platform != "linux" or os.environ.get(OPT_OUT) or os.environ.get(_TRIED)
            or allocator_in_use() == "tcmalloc" or not getattr(sys, "orig_argv", None)):
        return
    library = tcmalloc_library()
    if library is None:
        return
    preload = " ".join(p for p in (library, os.environ.get("LD_PRELOAD", "")) if p)
    env = dict(os.environ, LD_PRELOAD=preload, **{_TRIED: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:   # cannot re-execute (a restricted sandbox): run with the system's allocator
        return


__all__ = ["LIBRARY", "OPT_OUT", "allocator_in_use", "tcmalloc_library", "use_tcmalloc"]
