"""The data path, in the order data travels: sources → loader → device.

* **sources** — :mod:`repr_jax.data.formats` (CIFAR's file layouts, read completely or refused;
  the numpy-only unpickler; size caps) and :mod:`repr_jax.data.sources` (image folders of any
  size, ``.npz`` with ``allow_pickle=False``, TFDS; the checks every source shares).
* **loader** — :mod:`repr_jax.data.dataset` (:class:`Dataset`, :func:`load_data`: a source
  decoded once, checked, fingerprinted and cached, splits and slices) and
  :mod:`repr_jax.data.streaming` (``data.stream=true``: the training split batch by batch
  through Grain — a folder decoded from disk, or arrays in host memory; per-process rows; the
  iterator's position for mid-epoch checkpoints).
* **device** — :mod:`repr_jax.data.pipeline` (the device-resident epoch: permutation,
  augmentation and normalisation inside the jitted step) and
  :func:`repr_jax.data.streaming.prefetch_to_device`.

A run's settings reach this package once (:func:`repr_jax.run_state.load_run_data`); nothing
here reads a run's configuration. The names below are re-exported; the former flat modules
(``repr_jax.data_formats``, ``repr_jax.data_sources``, ``repr_jax.streaming``,
``repr_jax.pipeline``) still import, as aliases of these.
"""
from repr_jax.data.sources import *  # noqa: F401,F403
from repr_jax.data.formats import *  # noqa: F401,F403
from repr_jax.data.dataset import *  # noqa: F401,F403
from repr_jax.data.streaming import *  # noqa: F401,F403
from repr_jax.data.pipeline import *  # noqa: F401,F403
from repr_jax.data import dataset, formats, pipeline, sources, streaming

# every public name the former module repr_jax/data.py had (``__all__`` or not) still imports
globals().update({name: value for name, value in vars(dataset).items()
                  if not name.startswith("_") and name not in globals()})

__all__ = sorted({*sources.__all__, *formats.__all__, *dataset.__all__, *streaming.__all__, *pipeline.__all__})
