"""The ``streaming`` benchmark of ``benchmarks/run.py``: a folder streamed from disk
(:mod:`repr_jax.data.streaming`) against the same images held on the device.

For ``batches`` batches of ``batch`` 64×64 images (JPEG, quality 95, like ImageNet's files) it
times, median over repeats: ``reader`` — decoding alone (``workers`` threads, ``prefetch``
batches ahead); per model, ``in_memory`` — training on the device-resident arrays
(:func:`repr_jax.train.run_epoch`) and ``streamed`` — training on the reader's batches
(:func:`repr_jax.train.run_epoch_batches` after :func:`repr_jax.data.streaming.prefetch_to_device`);
``host_memory`` — the same images as arrays in host memory gathered batch by batch through
Grain (:class:`repr_jax.data.streaming.ArrayStream`, what ``data.stream=true`` does for a source
that is not a folder). ``streamed/in_memory`` is 1.0 when the reader keeps the device busy. The files are read
through the OS page cache after the first pass: disk throughput is not what is measured.
"""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax

from repr_jax.models import create_model
from repr_jax.data.pipeline import Preprocessing, crop_padding
from repr_jax.state import create_train_state
from repr_jax.data.streaming import ArrayStream, FolderStream, index_folder, prefetch_to_device, sample_stats
from repr_jax.train import run_epoch, run_epoch_batches


def write_jpeg_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """``images`` as ``root/train/<label>/<i>.jpg`` (quality 95)."""
    from PIL import Image
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / "train" / f"c{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=95)
    return root


def source_images(npz: str | None, count: int, seed: int = 0):
    """``count`` 64×64×3 training images: the first of ``npz``'s ``x_train`` (real ones, e.g.
    ``experiments/derive_datasets.py``'s CIFAR-10 at 64×64) or synthetic ones."""
    if npz:
        with np.load(npz, allow_pickle=False) as f:
            x, y = np.asarray(f["x_train"][:count]), np.asarray(f["y_train"][:count])
            return x, y, f"{Path(npz).name} (first {count})"
    from repr_jax.data import synthetic_cifar
    data = synthetic_cifar(count, 10, seed=seed, image_shape=(64, 64, 3))
    return data.train_x, data.train_y, f"synthetic ({count})"


def bench_streaming(measure, models, repeats, npz=None, images=4096, batch=128, batches=8,
                    workers=None, prefetch=4):
    """Rows in the harness's format; ``measure`` is its timing helper."""
    x_all, y_all, what = source_images(npz, images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpeg_folder(Path(tmp), x_all, y_all)
        stream = FolderStream(index_folder(folder), batch, seed=0, workers=workers, prefetch=prefetch)
        epochs = itertools.count()
        n = batch * batches
        reader = measure(lambda: [b for b in itertools.islice(stream.epoch(next(epochs)), batches)], repeats)
        mean, std = sample_stats(stream, images=2048)
        h, w, c = stream.shape
        prep = Preprocessing(mean, std, crop_padding(h, w), True)
        x, y = stream.load(np.arange(n))
        x_dev, y_dev = jax.device_put(x), jax.device_put(y)
        arrays = ArrayStream(*stream.load(np.arange(stream.num_examples)), batch, seed=0, workers=workers,
                             prefetch=prefetch)
        for name in models:
            model = create_model(name, int(y_all.max()) + 1)
            holder = [create_train_state(model, optax.sgd(0.05, momentum=0.9), 0, input_shape=(h, w, c))]
            key = jax.random.key(0)

            def in_memory():
                holder[0], _ = run_epoch(holder[0], x_dev, y_dev, key, batch_size=batch,
                                         layers=holder[0].layers, preprocess=prep)
                return holder[0].params

            def streamed():
                batches_ = prefetch_to_device(itertools.islice(stream.epoch(next(epochs)), batches))
                holder[0], _ = run_epoch_batches(holder[0], batches_, key, layers=holder[0].layers, preprocess=prep)
                return holder[0].params

            def host_memory():
                batches_ = prefetch_to_device(itertools.islice(arrays.epoch(next(epochs)), batches))
                holder[0], _ = run_epoch_batches(holder[0], batches_, key, layers=holder[0].layers, preprocess=prep)
                return holder[0].params

            impls = {"reader": reader, "in_memory": measure(in_memory, repeats), "streamed": measure(streamed, repeats),
                     "host_memory": measure(host_memory, repeats)}
            rows.append({
                "model": f"{name} 64×64, {n} images/call", "data": what, "workers": stream.workers,
                "prefetch": prefetch, "batch": batch, "impls": impls,
                "images_per_s": {k: n / v["median_s"] for k, v in impls.items()},
                "ratios": {"streamed/in_memory": impls["streamed"]["median_s"] / impls["in_memory"]["median_s"],
                           "host_memory/in_memory": impls["host_memory"]["median_s"] / impls["in_memory"]["median_s"],
                           "reader/in_memory": impls["reader"]["median_s"] / impls["in_memory"]["median_s"]}})
    return rows
