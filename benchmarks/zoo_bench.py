"""The ``zoo`` and ``zoo_memory`` benchmarks of ``benchmarks/run.py``: every zoo model's train
step against PyTorch eager, and every zoo model's first-step compile time and peak memory.

``zoo``: per model, ``rounds`` rounds; in each round every implementation trains ``steps``
steps of a ``batch`` (one after the other, interleaved round by round, so a busy machine
slows all alike): ``repr_jax`` (the zoo model, :func:`repr_jax.train.train_step`), for
MobileNetV2 also ``repr_jax_lax_depthwise`` (the same model with its depthwise convs through
``lax.conv_general_dilated``, the grouped convolution), and ``torch_eager`` (the PyTorch twin
of ``benchmarks/reference_impls.py``, channels-last, SGD with momentum). Images/s, min and
median over rounds; ``repr_jax/torch_eager`` is the median of the per-round ratios (> 1:
repr-jax is faster).

``zoo_processes``: the same step, each implementation in a process of its own, started once
and kept; round by round each process times its ``steps`` steps while the others wait, blocked
on a pipe (so no thread pool — PyTorch's OpenMP workers, XLA's — spins beside another's step
on a small machine). ``repr_jax`` runs with the allocator the CLI uses (tcmalloc when the
system has it, :mod:`repr_jax._allocator`), ``repr_jax_system`` with the system's, and
``torch_eager`` as installed; ``repr_jax/torch_eager`` is what a user of the CLI gets against
PyTorch, ``repr_jax_system/torch_eager`` like for like.

``zoo_memory``: per model and image size, a fresh process builds the model and its train
state (``init_s``), compiles and runs one train step (``first_step_s``: compile + run), runs
three more, and reports the allocator it ran with (the environment's: run the harness under
``LD_PRELOAD`` to measure tcmalloc) and its peak
resident memory (``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` would carry the parent's
peak across ``exec`` on Linux) — what a run of that model needs before its data.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import reference_impls as ref
from repr_jax.layers import reference_convs
from repr_jax.models import create_model
from repr_jax.optim import OptimConfig, make_optimizer
from repr_jax.state import create_train_state
from repr_jax.train import train_step

ZOO = ("convnet", "resnet20", "vgg16", "resnet18", "mobilenetv2", "lenet5")


def jax_step(name: str, batch: int, size: int = 32, depthwise: str = "auto"):
    """``(step, compile_seconds)``: one call trains one step of zoo model ``name`` (SGD with
    momentum, augmentation off); ``depthwise="lax"`` compiles it with the grouped convolution."""
    cfg = OptimConfig(learning_rate=0.01, schedule="constant")
    state = create_train_state(create_model(name), make_optimizer(cfg, optax.constant_schedule(0.01)), 0,
                               input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 255, (batch, size, size, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    compiled = jax.jit(lambda s, k: train_step(s, x, y, k, layers=s.layers, augmentation=False),
                       compiler_options=dict(state.compiler_options) or None)   # what the model declares
    holder = {"state": state, "i": 0}
    started = time.perf_counter()
    if depthwise == "lax":
        with reference_convs():
            holder["state"], metrics = compiled(state, jax.random.key(0))
    else:
        holder["state"], metrics = compiled(state, jax.random.key(0))
    jax.block_until_ready(metrics)
    first = time.perf_counter() - started

    def step():
        holder["i"] += 1
        holder["state"], metrics = compiled(holder["state"], jax.random.key(holder["i"]))
        return metrics
    return step, first


def torch_step(name: str, batch: int):
    import torch
    model = ref.torch_models()[name]().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()
    step()
    return step


def _timed(fn, steps: int) -> float:
    started = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    if hasattr(out, "block_until_ready") or isinstance(out, dict):
        jax.block_until_ready(out)
    return time.perf_counter() - started


def bench_zoo(models=ZOO, rounds: int = 5, batch: int = 128, steps: int = 3, torch_available: bool = True) -> list:
    rows = []
    for name in models:
        impls = {}
        compile_s = {}
        impls["repr_jax"], compile_s["repr_jax"] = jax_step(name, batch)
        if name == "mobilenetv2":
            impls["repr_jax_lax_depthwise"], compile_s["repr_jax_lax_depthwise"] = jax_step(name, batch,
                                                                                              depthwise="lax")
        if torch_available and name in ref.torch_models():
            impls["torch_eager"] = torch_step(name, batch)
        seconds = {k: [] for k in impls}
        for _ in range(rounds):
            for key, fn in impls.items():
                seconds[key].append(_timed(fn, steps))
        rows.append(_row(name, batch, steps, rounds, seconds, compile_s,
                         [("repr_jax", other) for other in ("torch_eager", "repr_jax_lax_depthwise")]))
    return rows


def _row(name, batch, steps, rounds, seconds, first, pairs) -> dict:
    """A ``zoo``/``zoo_processes`` row: images/s min and median per implementation, and for each
    ``(ours, other)`` of ``pairs`` present the median of the per-round ratios other's time / ours
    (> 1: repr-jax's step is faster)."""
    ips = {k: sorted(batch * steps / t for t in v) for k, v in seconds.items()}
    return {"model": name, "batch": batch, "steps_per_round": steps, "rounds": rounds, "first_step_s": first,
            "images_per_second": {k: {"min": v[0], "median": statistics.median(v)} for k, v in ips.items()},
            "ratios": {f"{ours}/{other}": statistics.median(o / m for o, m in zip(seconds[other], seconds[ours]))
                       for ours, other in pairs if other in seconds}}


_PROBE = r"""
import json, sys, time
from repr_jax._xla_flags import enable_cpu_fusion
enable_cpu_fusion()
sys.path.insert(0, sys.argv[4])
from zoo_bench import jax_step
started = time.perf_counter()
step, first = jax_step(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
init = time.perf_counter() - started - first
started = time.perf_counter()
for _ in range(3):
    out = step()
import jax; jax.block_until_ready(out)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
from repr_jax._allocator import allocator_in_use
print(json.dumps({"init_s": init, "first_step_s": first, "step_s": (time.perf_counter() - started) / 3,
                  "peak_rss_gib": hwm / 2**20, "allocator": allocator_in_use()}))
"""


def bench_zoo_memory(cases) -> list:
    """``cases``: ``(model, image size, batch)``; each measured in a fresh process."""
    rows = []
    for name, size, batch in cases:
        proc = subprocess.run([sys.executable, "-c", _PROBE, name, str(batch), str(size), str(Path(__file__).parent)],
                              capture_output=True, text=True, timeout=3600)
        row = {"model": name, "image": f"{size}x{size}", "batch": batch}
        if proc.returncode == 0:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            row["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]
        rows.append(row)
    return rows


_WORKER = r"""
import json, sys, time
impl, name, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, sys.argv[5])
if impl == "torch_eager":
    from zoo_bench import torch_step
    started = time.perf_counter()
    step = torch_step(name, batch)
    first, done = time.perf_counter() - started, lambda out: None
else:
    from repr_jax._xla_flags import enable_cpu_fusion
    enable_cpu_fusion()
    import jax
    from zoo_bench import jax_step
    step, first = jax_step(name, batch)
    done = jax.block_until_ready
from repr_jax._allocator import allocator_in_use
print(json.dumps({"first_step_s": first, "allocator": allocator_in_use()}), flush=True)
for line in sys.stdin:
    if line.strip() != "go":
        break
    started = time.perf_counter()
    for _ in range(steps):
        out = step()
    done(out)
    print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
"""


def bench_zoo_processes(models=ZOO, rounds: int = 5, batch: int = 128, steps: int = 3,
                        torch_available: bool = True, pause: float = 0.5) -> list:
    """``zoo_processes`` (module docstring): ``pause`` seconds between two processes' turns, for
    the previous one's threads to go to sleep."""
    from repr_jax._allocator import tcmalloc_library
    library = tcmalloc_library()
    rows = []
    for name in models:
        impls = ["repr_jax", "repr_jax_system"] + (["torch_eager"] if torch_available and name in ref.torch_models()
                                                   else [])
        workers, first, allocator = {}, {}, {}
        try:
            for impl in impls:   # started (and compiled) one at a time
                env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
                env["REPR_JAX_NO_TCMALLOC"] = "1"
                if impl == "repr_jax" and library:
                    env["LD_PRELOAD"] = library
                workers[impl] = subprocess.Popen(
                    [sys.executable, "-c", _WORKER, impl, name, str(batch), str(steps), str(Path(__file__).parent)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                hello = json.loads(workers[impl].stdout.readline())
                first[impl], allocator[impl] = hello["first_step_s"], hello["allocator"]
            seconds = {k: [] for k in impls}
            for _ in range(rounds):
                for impl in impls:
                    time.sleep(pause)
                    workers[impl].stdin.write("go\n")
                    workers[impl].stdin.flush()
                    seconds[impl].append(json.loads(workers[impl].stdout.readline())["seconds"])
        finally:
            for w in workers.values():
                if w.stdin:
                    w.stdin.close()
                w.wait(timeout=60)
        row = _row(name, batch, steps, rounds, seconds, first,
                   [(ours, "torch_eager") for ours in ("repr_jax", "repr_jax_system")])
        rows.append({**row, "allocator": allocator})
    return rows


def zoo_markdown(name: str, rows: list) -> list[str]:
    """The markdown lines of a ``zoo``, ``zoo_processes`` or ``zoo_memory`` result."""
    if name == "zoo_memory":
        allocator = next((r["allocator"] for r in rows if "allocator" in r), "?")
        lines = [f"**{name}** (a fresh process per row, allocator: {allocator}; init = creating the train "
                 "state; first step = compile + run; peak = VmHWM)", "",
                 "| model | image | batch | init (s) | first step (s) | step (s) | peak RSS (GiB) |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['image']} | {r['batch']} | failed: {r['error']} | | | |")
            else:
                lines.append(f"| {r['model']} | {r['image']} | {r['batch']} | {r.get('init_s', float('nan')):.1f} | "
                             f"{r['first_step_s']:.1f} | {r['step_s']:.2f} | {r['peak_rss_gib']:.2f} |")
        return lines + [""]
    impls = sorted({k for r in rows for k in r["images_per_second"]})
    where = ("a process per implementation, taking turns; repr_jax with the CLI's allocator "
             f"({rows[0]['allocator']['repr_jax']}), repr_jax_system with the system's; "
             if name == "zoo_processes" and rows else "")
    lines = [f"**{name}** (train step, {where}images/s median (min) over interleaved rounds; ratios: median of "
             "per-round time ratios, > 1 = repr-jax faster)", "",
             "| model | batch | " + " | ".join(impls) + " | ratios | first step (s) |",
             "| --- | --- |" + " --- |" * len(impls) + " --- | --- |"]
    for r in rows:
        cells = [f"{r['images_per_second'][i]['median']:.1f} ({r['images_per_second'][i]['min']:.1f})"
                 if i in r["images_per_second"] else "—" for i in impls]
        ratios = ", ".join(f"{k} = {v:.2f}×" for k, v in r["ratios"].items())
        first = ", ".join(f"{k} {v:.1f}" for k, v in r["first_step_s"].items())
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) + f" | {ratios} | {first} |")
    return lines + [""]


__all__ = ["ZOO", "bench_zoo", "bench_zoo_memory", "bench_zoo_processes", "jax_step", "torch_step", "zoo_markdown"]
