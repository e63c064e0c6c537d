#!/usr/bin/env python
"""Benchmark harness: repr-jax against NumPy and PyTorch, measured side by side in one run.

    python benchmarks/run.py [--quick] [--only NAME ...] [--json PATH] [--markdown PATH]

Benchmarks: ``metric`` (RePr metric + global ranking over every prunable conv),
``reinit`` (null-space re-initialisation of 30 % of the filters), ``train_step``
(images/s of one train step, batch 128), ``repr_overhead`` (a short RePr run vs a standard
run of the same length, and compilations across it), ``seeds`` (train-step throughput of K
seeds of C³(32): one vmapped population vs K runs one after another vs K processes at once),
``seeds_run`` (whole runs: ``--seeds 2`` in each layout vs 2 runs one after another, C³(32)
and ResNet-20), ``export`` (physical export of Li et al.'s pruned models vs Torch-Pruning),
``streaming`` (a 64×64 JPEG folder streamed from disk vs the same images on the device:
``--stream-npz`` names real images, e.g. ``.data/derived/cifar10-64.npz``). Every time is
the median (with min and max) over repeats after warm-up, synchronised with ``block_until_ready`` (JAX) or
``torch.cuda.synchronize`` (PyTorch on a GPU); compile time is reported separately.
PyTorch is optional (``pip install -e ".[bench]"``): without it its columns are skipped
and the JSON says so.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from repr_jax._xla_flags import enable_cpu_fusion

enable_cpu_fusion()  # the CLI's CPU setting; REPR_JAX_NO_YNN=1 measures without it
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import reference_impls as ref  # noqa: E402  (benchmarks/ is the script's directory)
from streaming_bench import bench_streaming  # noqa: E402
from zoo_bench import ZOO, bench_zoo, bench_zoo_memory, bench_zoo_processes, zoo_markdown  # noqa: E402
from repr_jax import create_model, reinit_layers  # noqa: E402
from repr_jax.ranking import rank_by_orthogonality  # noqa: E402
from repr_jax.layers import get_path, prunable_convs  # noqa: E402
from repr_jax import versions  # noqa: E402
from repr_jax.cli import fail  # noqa: E402
from repr_jax.masks import init_masks  # noqa: E402

BENCHMARKS = ("metric", "reinit", "train_step", "repr_overhead", "seeds", "seeds_run", "export", "streaming",
              "zoo", "zoo_processes", "zoo_memory")


# --------------------------------------------------------------------------- timing helpers
def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _sync(out):
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
    return jax.block_until_ready(out)


def measure(fn, repeats: int, warmup: int = 1, budget_s: float = 30.0) -> dict:
    """First call timed as compile/warm-up; then timed calls → median/min/max.

    ``repeats`` is lowered (never below 3) when one call is so slow that the repeats would
    exceed ``budget_s``; the JSON records the count actually used.
    """
    t0 = time.perf_counter()
    _sync(fn())
    first = time.perf_counter() - t0
    for _ in range(max(warmup, 2) - 1):  # at least one warm call, timed as the probe
        t0 = time.perf_counter()
        _sync(fn())
        probe = time.perf_counter() - t0
    repeats = max(3, min(repeats, int(budget_s / max(probe, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _sync(fn())
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats, "first_call_s": first}


def machine() -> dict:
    torch = _torch()
    return {**versions.machine(), "device_kind": jax.devices()[0].device_kind,
            "torch_device": ("cuda" if torch.cuda.is_available() else "cpu") if torch is not None else None}


def _model_kernels(name):
    """Initialised params of ``name``, its prunable convs, their kernels as NumPy arrays and
    as PyTorch ``(F, c_in, kh, kw)`` tensors on the PyTorch device (None without PyTorch)."""
    params = create_model(name).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    layers = prunable_convs(params)
    kernels = [np.asarray(get_path(params, l.path + ("kernel",))) for l in layers]
    torch = _torch()
    torch_kernels = None
    if torch is not None:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        torch_kernels = [torch.tensor(k).permute(3, 2, 0, 1).contiguous().to(dev) for k in kernels]
    return params, layers, kernels, torch_kernels


def _ratio(row, slow, fast="repr_jax"):
    if slow in row["impls"] and fast in row["impls"]:
        row["ratios"][f"{slow}/{fast}"] = row["impls"][slow]["median_s"] / row["impls"][fast]["median_s"]


# --------------------------------------------------------------------------- benchmarks
def bench_metric(models, repeats):
    rows = []
    for name in models:
        params, layers, kernels, tk = _model_kernels(name)
        masks = init_masks(params, layers)

        def ours():  # the drop step RePr runs: scores + global ranking, one jitted program
            return rank_by_orthogonality(params, masks, 0.3, layers=layers)

        row = {"model": name, "layers": len(layers), "impls": {}, "ratios": {}}
        row["impls"]["repr_jax"] = measure(ours, repeats)
        row["impls"]["numpy_loop"] = measure(lambda: ref.numpy_rank(kernels, 0.3), repeats)
        if tk is not None:
            row["impls"]["torch_loop"] = measure(lambda: ref.torch_rank(tk, 0.3), repeats)
        _ratio(row, "numpy_loop")
        _ratio(row, "torch_loop")
        rows.append(row)
    return rows


def bench_reinit(models, repeats):
    rows = []
    for name in models:
        params, layers, kernels, tk = _model_kernels(name)
        rng = np.random.default_rng(0)
        keep = {l.name: rng.random(l.num_filters) >= 0.3 for l in layers}
        keep_j = {k: jnp.asarray(v) for k, v in keep.items()}
        key = jax.random.key(0)
        row = {"model": name, "layers": len(layers), "impls": {}, "ratios": {}}
        row["impls"]["repr_jax"] = measure(lambda: reinit_layers(key, params, params, keep_j, layers), repeats)
        keeps = [keep[l.name] for l in layers]
        row["impls"]["numpy_loop"] = measure(lambda: ref.numpy_reinit(kernels, keeps, kernels), repeats)
        if tk is not None:
            tkeep = [_torch().tensor(k).to(tk[0].device) for k in keeps]
            row["impls"]["torch_loop"] = measure(lambda: ref.torch_reinit(tk, tkeep, tk), repeats)
        _ratio(row, "numpy_loop")
        _ratio(row, "torch_loop")
        rows.append(row)
    return rows


def _jax_step_fn(name, batch):
    from repr_jax import OptimConfig, create_train_state, make_optimizer
    from repr_jax.train import train_step_indexed, zero_totals
    import optax
    cfg = OptimConfig(learning_rate=0.01, schedule="constant")
    state = create_train_state(create_model(name), make_optimizer(cfg, optax.constant_schedule(0.01)), 0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 255, (batch * 4, 32, 32, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 10, batch * 4).astype(np.int32))
    holder = {"state": state, "i": 0}
    layers = state.layers

    def step():
        idx = jnp.arange(batch) + batch * (holder["i"] % 4)
        holder["state"], t = train_step_indexed(holder["state"], zero_totals(), x, y, idx,
                                                jax.random.key(holder["i"]), layers=layers)
        holder["i"] += 1
        return t
    return step


def _plain_flax_step_fn(name, batch):
    """The same model and SGD chain with plain optax and no masks: the cost of masking."""
    import optax
    from repr_jax.data.pipeline import augment, normalize
    model = create_model(name)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
    carry = {"v": variables, "o": tx.init(variables["params"]), "i": 0}
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 255, (batch, 32, 32, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))

    @jax.jit
    def step(variables, opt_state, key):
        def loss_fn(params):
            logits, upd = model.apply({**variables, "params": params}, normalize(augment(key, x)),
                                      train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        u, opt_state = tx.update(g, opt_state, variables["params"])
        return {**variables, **upd, "params": optax.apply_updates(variables["params"], u)}, opt_state, loss

    def run_one():
        carry["v"], carry["o"], loss = step(carry["v"], carry["o"], jax.random.key(carry["i"]))
        carry["i"] += 1
        return loss
    return run_one


def _torch_step_fn(name, batch, compiled):
    torch = _torch()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = ref.torch_models()[name]().to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step_impl():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step_impl) if compiled else step_impl

    def step():
        return fn().detach()
    return step


def bench_train_step(models, repeats, batch=128, steps=5, quick=False):
    torch = _torch()
    rows = []
    for name in models:
        row = {"model": name, "batch": batch, "steps_per_repeat": steps, "impls": {}, "ratios": {},
               "images_per_second": {}}
        jax_step = _jax_step_fn(name, batch)
        row["impls"]["repr_jax"] = measure(lambda: [jax_step() for _ in range(steps)][-1], repeats, warmup=2)
        plain = _plain_flax_step_fn(name, batch)
        row["impls"]["flax_plain"] = measure(lambda: [plain() for _ in range(steps)][-1], repeats, warmup=2)
        if torch is not None:
            t_step = _torch_step_fn(name, batch, compiled=False)
            row["impls"]["torch_eager"] = measure(lambda: [t_step() for _ in range(steps)][-1], repeats, warmup=2)
            try:
                if quick:
                    raise RuntimeError("not measured in --quick runs (compilation takes minutes)")
                c_step = _torch_step_fn(name, batch, compiled=True)
                row["impls"]["torch_compile"] = measure(lambda: [c_step() for _ in range(steps)][-1],
                                                        repeats, warmup=2)
            except Exception as err:  # torch.compile needs a working C++ toolchain
                row["torch_compile_skipped"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        for impl, t in row["impls"].items():
            row["images_per_second"][impl] = batch * steps / t["median_s"]
        for other in ("flax_plain", "torch_eager", "torch_compile"):
            if other in row["impls"]:  # > 1 means repr-jax is faster
                row["ratios"][f"repr_jax_speed/{other}"] = (row["impls"][other]["median_s"]
                                                            / row["impls"]["repr_jax"]["median_s"])
        rows.append(row)
    return rows


def bench_repr_overhead(train_images, epochs_cfg, repeats, warmup=True):
    from repr_jax.config import RunConfig
    from repr_jax.data import synthetic_cifar
    from repr_jax.experiment import run
    from repr_jax.methods import method_config
    from repr_jax.optim import OptimConfig
    from repr_jax.train import train_step_indexed
    from repr_jax import reinit as reinit_mod, ranking as ranking_mod
    data = synthetic_cifar(train_images, 500)
    s1, s2, n = epochs_cfg
    epochs = n * (s1 + s2)
    row = {"model": "convnet", "train_images": train_images, "epochs": epochs,
           "schedule": {"s1": s1, "s2": s2, "iterations": n}, "impls": {}, "ratios": {},
           "compile_included": not warmup}
    walls = {"standard": [], "repr": []}
    compiles = {}
    with tempfile.TemporaryDirectory() as tmp:
        first = 1 if warmup else 0
        for r in range(repeats + first):  # with warmup, the first pair only fills the caches
            for method in ("standard", "repr"):
                before = train_step_indexed._cache_size()
                settings = dict(s1=s1, s2=s2, iterations=n) if method == "repr" else {}
                cfg = RunConfig(out=f"{tmp}/{method}{r}", epochs=epochs, seed=0,
                                optim=OptimConfig(learning_rate=0.002),
                                method=method_config(method, **settings), quiet=True)
                t0 = time.perf_counter()
                run(cfg, data=data)
                if r >= first:
                    walls[method].append(time.perf_counter() - t0)
                compiles[f"{method}_run{r}_new_train_step_compilations"] = train_step_indexed._cache_size() - before
    for method, times in walls.items():
        row["impls"][method] = {"median_s": statistics.median(times), "min_s": min(times),
                                "max_s": max(times), "repeats": len(times)}
    row["ratios"]["repr/standard"] = row["impls"]["repr"]["median_s"] / row["impls"]["standard"]["median_s"]
    row["compilations"] = compiles  # per run: 1 = compiled once, none added by drops/reinits
    row["compilations"]["rank_by_orthogonality_cache"] = ranking_mod.rank_by_orthogonality._cache_size()
    row["compilations"]["reinit_layers_cache"] = reinit_mod.reinit_layers._cache_size()
    return [row]


def _population_step_fn(name, batch, seeds):
    """One step of ``seeds`` vmapped C³(32)/ResNet runs (K = 1: the ordinary jitted step)."""
    if seeds == 1:
        return _jax_step_fn(name, batch)
    import optax
    from repr_jax import OptimConfig, create_train_state, make_optimizer
    from repr_jax.parallel import stack
    from repr_jax.train import population_step_indexed, zero_totals
    tx = make_optimizer(OptimConfig(learning_rate=0.01, schedule="constant"), optax.constant_schedule(0.01))
    model = create_model(name)
    states = [create_train_state(model, tx, seed) for seed in range(seeds)]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 255, (batch * 4, 32, 32, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 10, batch * 4).astype(np.int32))
    layers = states[0].layers
    holder = {"state": stack(states), "i": 0}

    def step():
        i = holder["i"]
        idx = jnp.arange(batch) + batch * (i % 4)
        totals = jax.tree_util.tree_map(lambda z: jnp.zeros((seeds,)), zero_totals())
        keys = jax.random.split(jax.random.key(i), seeds)
        holder["state"], t = population_step_indexed(holder["state"], totals, x, y,
                                                     jnp.broadcast_to(idx, (seeds, batch)), keys,
                                                     layers=layers)
        holder["i"] += 1
        return t
    return step


def _process_worker(name, batch, steps, go, results):
    """One of K processes: build and compile, wait for the common start, time ``steps`` steps."""
    step = _population_step_fn(name, batch, 1)
    for _ in range(2):
        _sync(step())
    go.wait()
    t0 = time.time()
    for _ in range(steps - 1):
        step()
    _sync(step())
    results.put((t0, time.time()))


def _processes(name, batch, steps, k) -> dict:
    """K processes, each one run's steps, started together: wall time from the first start to
    the last finish (spawned; on a GPU each process allocates memory as it needs it)."""
    import multiprocessing as mp
    import os
    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    old = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    procs = [ctx.Process(target=_process_worker, args=(name, batch, steps, go, results)) for _ in range(k)]
    try:
        for p in procs:
            p.start()
        time.sleep(1.0)
        go.set()   # a process still compiling starts late: the span below includes that
        spans = [results.get(timeout=1800) for _ in procs]
        for p in procs:
            p.join()
    finally:
        if old is None:
            os.environ.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
        else:
            os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = old
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return {"median_s": wall, "min_s": wall, "max_s": wall, "repeats": 1}


def bench_seeds(name, ks, repeats, batch=128, steps=5, processes=True):
    """Train-step throughput of K seeds: vmapped (one program), sequential (K runs one after
    another: K × one run's time) and K processes at once. Figures are seconds per K·steps
    images; images/s in ``images_per_second``."""
    rows = []
    single = _population_step_fn(name, batch, 1)
    one = measure(lambda: [single() for _ in range(steps)][-1], repeats, warmup=2)
    for k in ks:
        row = {"model": name, "seeds": k, "batch": batch, "steps_per_repeat": steps, "impls": {},
               "ratios": {}, "images_per_second": {}}
        step = _population_step_fn(name, batch, k)
        row["impls"]["vmapped"] = measure(lambda: [step() for _ in range(steps)][-1], repeats, warmup=2)
        row["impls"]["sequential"] = {key: k * v if key.endswith("_s") else v for key, v in one.items()}
        if processes and k > 1:
            row["impls"]["processes"] = _processes(name, batch, steps * 4, k)
            row["impls"]["processes"] = {key: v / 4 if key.endswith("_s") else v
                                         for key, v in row["impls"]["processes"].items()}
        for impl, t in row["impls"].items():
            row["images_per_second"][impl] = k * batch * steps / t["median_s"]
        for other in ("sequential", "processes"):
            if other in row["impls"]:   # > 1: the vmapped population is faster
                row["ratios"][f"vmapped_speed/{other}"] = row["impls"][other]["median_s"] / row["impls"]["vmapped"]["median_s"]
        rows.append(row)
    return rows


EXPORT_CASES = (("resnet56", "resnet56-b"), ("vgg16", "vgg16-a"), ("resnet110", "resnet110-b"))


def _one_more_dead(state, exported, i):
    """``state`` with one more filter dropped in the ``i``-th (cyclically) layer the export
    shrank: a differently pruned model of the same architecture."""
    from repr_jax.masks import drop_filters, live_filters
    shrunk = [n for n, idx in exported.removed.items() if idx]
    name = shrunk[i % len(shrunk)]
    live = {n: np.asarray(v) for n, v in live_filters(state.masks, state.layers).items()}
    alive = np.flatnonzero(live[name] > 0)
    keep = dict(live)
    keep[name] = live[name].copy()
    keep[name][alive[i // len(shrunk) % len(alive)]] = 0.0
    return drop_filters(state, state.layers, {n: jnp.asarray(v) for n, v in keep.items()})


def _torch_pruning():
    """Torch-Pruning when installed (``pip install -e '.[bench]'``), else None: the export
    benchmark then measures repr-jax alone."""
    try:
        import torch_pruning
    except ImportError:
        return None
    return torch_pruning


def bench_export(cases, repeats):
    """Physical export of Li et al.'s pruned models: repr-jax's ``export_state`` (channel graph
    from one traced call, slicing, the smaller module shape-checked) against Torch-Pruning's
    DependencyGraph build + pruning of the same filters on the same architecture in PyTorch.
    ``first_call_s``: repr-jax's first export in the process (the graph traced; caches emptied
    first); ``repr_jax``: the same export again (graph and smaller module's shapes reused, as a
    second export of a run would); ``repr_jax_new_structure``: each call another pruning of
    the same model (one filter more), so the smaller module is traced anew. The parameter
    counts of the repr-jax and Torch-Pruning exports are checked equal."""
    from repr_jax.compress.export import export_state
    from repr_jax.compress.structure import forget_graphs
    from repr_jax.methods.base import MethodContext
    from repr_jax.methods.li_l1 import LiL1, LiL1Config
    from repr_jax.models import architecture, create_model
    from repr_jax.state import create_train_state
    import optax
    torch = _torch()
    rows = []
    for name, preset in cases:
        arch = architecture(name)
        model = create_model(name)
        method = LiL1(LiL1Config(preset=preset), MethodContext.for_model(model, architecture=arch, train_size=128,
                                                                          batch_size=128))
        state, _ = method.before_epoch(create_train_state(model, optax.sgd(0.1), 0, method=method), 0)
        forget_graphs()
        row = {"model": name, "preset": preset, "impls": {}, "ratios": {}}
        row["impls"]["repr_jax"] = measure(lambda: export_state(state, arch), repeats, warmup=1)
        exported = export_state(state, arch)
        # the same model pruned another way each call: the smaller module is traced anew
        variants = iter(_one_more_dead(state, exported, i) for i in range(repeats + 3))
        row["impls"]["repr_jax_new_structure"] = measure(lambda: export_state(next(variants), arch), repeats, warmup=1)
        row["params"] = {"before": exported.params_before, "after": exported.params_after}
        tp = _torch_pruning() if torch is not None else None
        if tp is not None and name in ("resnet56", "resnet110", "vgg16"):
            import copy
            tmodel = ref.torch_models()["vgg16" if name == "vgg16" else "resnet20"](
                *(() if name == "vgg16" else (int(name[len("resnet"):]),))).eval()
            convs = ref.torch_convs_in_order(tmodel)
            natural = lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]  # noqa: E731
            removed = dict(zip(sorted(exported.channels, key=natural), convs))   # conv10 after conv9
            plan = [(removed[n], idx) for n, idx in exported.removed.items() if idx]
            example = torch.zeros(1, 3, 32, 32)

            def prune(fresh):
                dg = tp.DependencyGraph().build_dependency(fresh, example_inputs=example)
                by_id = dict(zip(map(id, ref.torch_convs_in_order(tmodel)), ref.torch_convs_in_order(fresh)))
                for conv, idx in plan:
                    dg.get_pruning_group(by_id[id(conv)], tp.prune_conv_out_channels, idxs=list(idx)).prune()
                return fresh

            copies = [copy.deepcopy(tmodel) for _ in range(repeats + 3)]
            row["impls"]["torch_pruning"] = measure(lambda: prune(copies.pop()), repeats, warmup=1)
            pruned = prune(copy.deepcopy(tmodel))
            row["params"]["torch_pruning_after"] = sum(p.numel() for p in pruned.parameters())
            row["params"]["equal"] = row["params"]["torch_pruning_after"] == exported.params_after
            tp_s = row["impls"]["torch_pruning"]["median_s"]
            row["ratios"]["repr_jax/torch_pruning (warm)"] = row["impls"]["repr_jax"]["median_s"] / tp_s
            row["ratios"]["repr_jax_new_structure/torch_pruning"] = row["impls"]["repr_jax_new_structure"]["median_s"] / tp_s
        row["ratios"]["repr_jax_first_call_s"] = row["impls"]["repr_jax"]["first_call_s"]
        rows.append(row)
    return rows


def bench_seeds_run(models, k=2, repeats=3, train=2048, epochs=1):
    """Whole runs: ``--seeds k`` (each layout) against the same ``k`` seeds as ``k`` runs one
    after another, in one process on the same synthetic data (so the sequential runs share
    its compilations: the comparison favours them). Each repeat trains every variant once,
    interleaved; times are wall seconds of the whole run (start, epochs, checkpoints, finish)."""
    import tempfile
    from repr_jax.config import ModelConfig, RunConfig
    from repr_jax.data import synthetic_cifar
    from repr_jax.experiment import run
    data = synthetic_cifar(train, 256)
    rows = []
    for name in models:
        def config(out, seeds, seed=0, layout="auto"):
            return RunConfig(out=out, seed=seed, seeds=seeds, seeds_layout=layout, epochs=epochs, batch_size=128,
                             eval_batch_size=256, model=ModelConfig(name=name), keep_checkpoints=1, quiet=True)
        variants = {
            "sequential": lambda root: [run(config(f"{root}/seq{i}", 1, seed=i), data=data) for i in range(k)],
            "population_loop": lambda root: run(config(f"{root}/loop", k, layout="loop"), data=data),
            "population_vmap": lambda root: run(config(f"{root}/vmap", k, layout="vmap"), data=data)}
        times = {v: [] for v in variants}
        for r in range(repeats + 1):           # the first round compiles: not counted
            for v, fn in variants.items():
                with tempfile.TemporaryDirectory() as root:
                    t0 = time.perf_counter()
                    fn(root)
                    if r:
                        times[v].append(time.perf_counter() - t0)
        row = {"model": name, "seeds": k, "train_images": train, "epochs": epochs, "impls": {}, "ratios": {}}
        for v, ts in times.items():
            row["impls"][v] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "repeats": len(ts)}
        for v in ("population_loop", "population_vmap"):   # > 1: the population is faster than its runs
            row["ratios"][f"{v}_speed/sequential"] = row["impls"]["sequential"]["median_s"] / row["impls"][v]["median_s"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- reporting
def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"### {m['device_kind']} — {m['cpu']} ({m['cores']} cores), jax {m['jax']}, "
             f"torch {m['torch']} ({'quick run: a smoke test, ratios not comparable' if results['quick'] else 'full run'})", ""]
    for name, rows in results["benchmarks"].items():
        if name in ("zoo", "zoo_processes", "zoo_memory"):
            lines += zoo_markdown(name, rows)
            continue
        lines += [f"**{name}**", "", "| model | ratios | " + " | ".join(
            sorted({k for r in rows for k in r["impls"]})) + " |"]
        impls = sorted({k for r in rows for k in r["impls"]})
        lines.append("| --- | --- |" + " --- |" * len(impls))
        for r in rows:
            ratios = ", ".join(f"{k} = {v:.2f} s" if k.endswith("_s") else f"{k} = {v:.2f}×"
                               for k, v in r["ratios"].items())
            cells = [f"{1e3 * r['impls'][i]['median_s']:.2f} ms ({1e3 * r['impls'][i]['min_s']:.2f}–"
                     f"{1e3 * r['impls'][i]['max_s']:.2f})" if i in r["impls"] else "—" for i in impls]
            label = r["model"] + (f" K={r['seeds']}" if "seeds" in r else "")
            lines.append(f"| {label} | {ratios} | " + " | ".join(cells) + " |")
        lines.append("")
    if results.get("skipped"):
        lines.append("Skipped: " + "; ".join(results["skipped"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: the smallest size of every benchmark (C^3(32) for the metric and "
                        "re-init rows), few repeats, RePr overhead with compilation included; its ratios are "
                        "not comparable with a full run's (default output: runs/benchmarks/, not committed)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    p.add_argument("--json", default=None, help="write results here (default: benchmarks/results/<machine>.json)")
    p.add_argument("--models", nargs="+", choices=ZOO, default=None,
                   help="zoo / zoo_processes / zoo_memory: only these zoo models (default: all)")
    p.add_argument("--markdown", default=None, help="also write a markdown table here")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    p.add_argument("--stream-npz", default=None,
                   help="streaming: real 64x64x3 images from this .npz's x_train (default: synthetic images)")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        return fail(ValueError("--repeats must be >= 1"))
    quick = args.quick
    repeats = args.repeats or (3 if quick else 20)
    models = ["convnet"] if quick else ["resnet20", "resnet56", "resnet110", "vgg16"]
    results = {"machine": machine(), "quick": quick, "benchmarks": {}, "skipped": []}
    if _torch() is None:
        results["skipped"].append("PyTorch not installed: torch_* columns skipped (pip install -e '.[bench]')")
    todo = args.only or BENCHMARKS
    if "metric" in todo:
        results["benchmarks"]["metric"] = bench_metric(models, repeats)
    if "reinit" in todo:
        results["benchmarks"]["reinit"] = bench_reinit(models, max(repeats // 2, 2) if not quick else repeats)
    if "train_step" in todo:
        results["benchmarks"]["train_step"] = bench_train_step(
            ["convnet"] if quick else ["convnet", "resnet20"], repeats=3 if quick else 5,
            batch=32 if quick else 128, steps=1 if quick else 5, quick=quick)
    if "repr_overhead" in todo:
        results["benchmarks"]["repr_overhead"] = bench_repr_overhead(
            256 if quick else 2000, (1, 1, 1) if quick else (2, 1, 2), repeats=1 if quick else 3,
            warmup=not quick)
    if "seeds" in todo:
        gpu = jax.devices()[0].platform == "gpu"
        results["benchmarks"]["seeds"] = bench_seeds(
            "convnet", (2,) if quick else ((1, 4, 8, 16) if gpu else (1, 4, 8)),
            repeats=3 if quick else 5, batch=32 if quick else 128, steps=1 if quick else 5,
            processes=not quick)
    if "seeds_run" in todo:
        results["benchmarks"]["seeds_run"] = bench_seeds_run(
            ["convnet"] if quick else ["convnet", "resnet20"], k=2, repeats=1 if quick else 3,
            train=256 if quick else 2048)
    if "export" in todo:
        results["benchmarks"]["export"] = bench_export(EXPORT_CASES[:1] if quick else EXPORT_CASES,
                                                       repeats=3 if quick else 10)
    if "streaming" in todo:
        results["benchmarks"]["streaming"] = bench_streaming(
            measure, ["convnet"] if quick else ["convnet", "resnet20"], repeats=3 if quick else 5,
            npz=args.stream_npz, images=512 if quick else 4096, batch=32 if quick else 128,
            batches=4 if quick else 8)
    if "zoo" in todo:
        results["benchmarks"]["zoo"] = bench_zoo(
            ("convnet",) if quick else tuple(args.models or ZOO), rounds=2 if quick else (args.repeats or 5),
            batch=16 if quick else 128, steps=1 if quick else 2, torch_available=_torch() is not None)
    if "zoo_processes" in todo:
        results["benchmarks"]["zoo_processes"] = bench_zoo_processes(
            ("convnet",) if quick else tuple(args.models or ZOO), rounds=2 if quick else (args.repeats or 5),
            batch=16 if quick else 128, steps=1 if quick else 2, torch_available=_torch() is not None,
            pause=0.1 if quick else 0.5)
    if "zoo_memory" in todo:
        sizes = ((32, 128), (64, 50))
        results["benchmarks"]["zoo_memory"] = bench_zoo_memory(
            [("convnet", 32, 16)] if quick else
            [(m, s, b) for m in (args.models or ZOO) for s, b in sizes if not (m == "convnet" and s == 64)])
    kind = results["machine"]["device_kind"].lower().replace(" ", "-")
    default = Path("runs") / "benchmarks" / f"{kind}-quick.json" if quick else Path(__file__).parent / "results" / f"{kind}.json"
    path = Path(args.json or default)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    table = to_markdown(results)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
