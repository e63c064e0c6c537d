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

Multi-host: call ``jax.distributed.initialize()`` in every process before anything else
touches JAX (coordinator address, process count and id from the arguments or the cluster's
environment), then run the same command everywhere; :func:`data_mesh` spans
``jax.devices()`` — every process's devices — and :func:`replicate` builds global arrays
from each process's identical host copy. (Written to the JAX multi-process API, exercised
only single-process here.)
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


__all__ = ["DATA_AXIS", "batch_sharding", "data_mesh", "replicate", "stack", "unstack"]
