"""Two ways to fill an accelerator: a population of seeds on a leading axis, and the batch
split over a device mesh.

**Seeds.** K runs of one configuration are one pytree whose every leaf has a leading axis of
size K (:func:`stack`); the train step, evaluation and the method's transitions are
``vmap``-ped over it (:mod:`repr_jax.population`), so K small networks train as one program.

**Data parallel.** :func:`data_mesh` is a 1-D :class:`jax.sharding.Mesh` named ``"data"`` over
the local devices (all of them, or the first N); :func:`replicate` puts the train state and
the data set on every device, and the train step constrains each gathered batch to
:func:`batch_sharding` (``P("data")``). The step is one global program (``jax.jit`` with
sharding propagation, no ``pmap``): XLA all-reduces gradients and the BatchNorm batch
statistics over the whole batch, so N devices compute what one device computes for the same
global batch (to float32 round-off: sums are reduced in another order).

**Processes.** :func:`start_processes` joins a multi-process run (``jax.distributed``; CPU
collectives over gloo) before anything else touches JAX; every process then runs the same
command: :func:`data_mesh` spans ``jax.devices()`` — every process's devices — and
:func:`replicate` builds global arrays from each process's identical host copy, so the step
is one global program over all of them. A streamed data set is read in parts: each process
decodes the rows of every batch its devices hold (:func:`process_rows`) and
:func:`put_batch` assembles the global batch from the processes' parts. Only the main
process (:func:`is_main_process`) writes the run directory's files — and computes an export
from its own copy of the replicated final state (:func:`local_copy`); checkpoints are
written and read by all of them together (orbax), and :func:`sync_processes` is a barrier.
Tested with two processes on one machine (``tests/test_distributed.py``,
``tests/test_distributed_methods.py``).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices: int = 0) -> Mesh:
    """A 1-D mesh over ``devices`` devices (0: every device of every process)."""
    available = jax.devices()
    if devices < 0 or devices > len(available):
        raise ValueError(f"--devices {devices}: this machine has {len(available)} "
                         f"{available[0].platform.upper()} device(s)")
    # each process's devices side by side: its rows of a batch are one span (process_rows)
    available = sorted(available, key=lambda d: (d.process_index, d.id))
    chosen = available if devices == 0 else available[:devices]
    return Mesh(np.array(chosen), (DATA_AXIS,))


def batch_sharding(mesh: Mesh | None, batch_size: int | None = None) -> NamedSharding | None:
    """``P("data")``: the batch axis split over the mesh (None without a mesh, a one-device
    mesh, or a batch the devices do not divide)."""
    if mesh is None or mesh.size == 1:
        return None
    if batch_size is not None and batch_size % mesh.size:
        return None
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh | None):
    """Every array leaf of ``tree`` copied onto every device of ``mesh`` (unchanged without one)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P())

    def put(x):
        if not hasattr(x, "shape"):
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def process_rows(sharding: NamedSharding | None, batch_size: int) -> slice | None:
    """The rows of a global batch of ``batch_size`` that this process's devices hold under
    ``sharding`` (``P("data")`` over every process's devices): what this process reads of each
    batch when every process reads its own part. None — every row — without a sharding or
    when all of its devices are this process's."""
    if sharding is None or sharding.is_fully_addressable:
        return None
    spans = sorted((s.start or 0, batch_size if s.stop is None else s.stop)
                   for s, *_ in sharding.addressable_devices_indices_map((batch_size,)).values())
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise ValueError(f"this process's devices hold rows {spans} of each batch, not one contiguous span")
    return slice(spans[0][0], spans[-1][1])


def put_batch(batch, sharding: NamedSharding | None, batch_size: int):
    """A host batch (arrays with a leading batch axis) onto the device(s): with a sharding
    that spans several processes, ``batch`` is this process's rows (:func:`process_rows`) and
    the result is the global ``batch_size`` batch they form together
    (:func:`jax.make_array_from_process_local_data`); otherwise :func:`jax.device_put`."""
    if sharding is None:
        return jax.device_put(batch)
    if sharding.is_fully_addressable:
        return jax.device_put(batch, sharding)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(
        sharding, np.asarray(x), (batch_size, *np.shape(x)[1:])), batch)


def local_copy(tree):
    """``tree`` with every array that spans several processes replaced by this process's copy
    of it on one of its own devices (:meth:`jax.Array.addressable_data`), so that one process
    alone can compute with it — the export and final report that process 0 writes at the end
    of a multi-process run. Every such array must be replicated (the train state is); a
    sharded one is an error, since no process holds all of it."""
    def own(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if not x.is_fully_replicated:
            raise ValueError(f"an array of shape {x.shape} is split over processes; no process holds all of it")
        return x.addressable_data(0)
    return jax.tree_util.tree_map(own, tree)


def stack(trees):
    """One pytree with a leading axis: ``stack([t₀, …, t_{K−1}])[leaf][k] = t_k[leaf]``, in
    the structure of ``t₀`` (static fields such as a train state's optimizer are taken from
    it: the members' are equal in meaning, not identical objects)."""
    leaves, treedef = jax.tree_util.tree_flatten(trees[0])
    others = [jax.tree_util.tree_leaves(t) for t in trees[1:]]
    if any(len(o) != len(leaves) for o in others):
        raise ValueError("stack: the trees differ in structure")
    return jax.tree_util.tree_unflatten(
        treedef, [jax.numpy.stack(group) for group in zip(leaves, *others)])


def unstack(tree, index: int):
    """Member ``index`` of a stacked pytree."""
    return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


JOIN_TIMEOUT = 120        # s a process waits for the others to join (REPR_JAX_JOIN_TIMEOUT)
HEARTBEAT_TIMEOUT = 30    # s without a peer's heartbeat before JAX stops a process (REPR_JAX_HEARTBEAT_TIMEOUT)


def _seconds(name: str, default: int) -> int:
    import os
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def _exit_now(line: str) -> None:
    """Print ``line`` and end the process at once (exit 2): what a watchdog does when JAX's
    own wait would otherwise run on or end in a crash dump."""
    import os
    import sys
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    os._exit(2)


def start_processes(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a run of ``num_processes`` processes coordinated at ``coordinator``
    (``HOST:PORT``, served by process 0): ``jax.distributed.initialize``, with CPU
    collectives over gloo. Call it before anything else touches JAX.

    Bounded: a process that has not joined the others within :data:`JOIN_TIMEOUT` seconds
    says so in one line and exits 2 (a watchdog ahead of JAX's own deadline, which ends in a
    crash dump); a peer that stops is detected within :data:`HEARTBEAT_TIMEOUT` seconds; and
    SIGTERM interrupts this process as Ctrl-C does (JAX's preemption notifier would
    otherwise swallow it and train on)."""
    import inspect
    import signal
    import threading
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:   # pragma: no cover - a jax without the option
        pass
    join, heartbeat = _seconds("REPR_JAX_JOIN_TIMEOUT", JOIN_TIMEOUT), _seconds("REPR_JAX_HEARTBEAT_TIMEOUT",
                                                                                 HEARTBEAT_TIMEOUT)
    options = {"initialization_timeout": join + 60, "heartbeat_timeout_seconds": heartbeat,
               "shutdown_timeout_seconds": heartbeat}
    known = inspect.signature(jax.distributed.initialize).parameters
    watchdog = threading.Timer(join, _exit_now, (
        f"error: process {process_id} of {num_processes} could not join the run at {coordinator} within {join} s: "
        f"start all {num_processes} processes with the same --coordinator and --num-processes "
        "(REPR_JAX_JOIN_TIMEOUT sets the wait)",))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, **{k: v for k, v in options.items() if k in known})
    except Exception as err:   # refused at once (an address in use, a bad host)
        from repr_jax.errors import RunError
        raise RunError(f"process {process_id} of {num_processes} could not join the run at {coordinator}: "
                       f"{(str(err).splitlines() or [type(err).__name__])[0][:200]}") from None
    finally:
        watchdog.cancel()

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def agree_settings(settings: dict) -> None:
    """``RunError`` (one line, in every process) unless every process of a multi-process run
    has the same ``settings`` (a hash compared across processes): different flags would
    otherwise deadlock (one process waiting in a collective the others never reach)."""
    if jax.process_count() < 2:
        return
    import hashlib
    import json

    from jax.experimental import multihost_utils

    from repr_jax.errors import RunError
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).digest()
    mine = np.frombuffer(digest, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))
    differ = [i for i, row in enumerate(every) if not np.array_equal(row, every[0])]
    if differ:
        raise RunError(f"the processes of this run have different settings (process {', '.join(map(str, differ))} "
                       "differ from process 0): start every process with the same flags")


def is_main_process() -> bool:
    """Whether this process writes the run directory (process 0; the only one alone)."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """Wait until every process of a multi-process run has reached ``name`` (nothing alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


__all__ = ["DATA_AXIS", "HEARTBEAT_TIMEOUT", "JOIN_TIMEOUT", "agree_settings", "batch_sharding", "data_mesh",
           "is_main_process", "local_copy", "process_rows", "put_batch", "replicate", "stack", "start_processes",
           "sync_processes", "unstack"]
