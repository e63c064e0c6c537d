"""Training splits streamed batch by batch through Grain: image folders too large for memory
read from disk, and arrays kept in host memory instead of on the device.

The in-memory path (:func:`repr_jax.data.load_data`) decodes a data set once and keeps it on
the device. An ImageNet-sized folder does not fit, so here the images stay on disk:

* :func:`index_folder` lists ``<root>/<split>/<class>/<image>`` (PNG, JPEG, BMP, WebP) without
  opening an image; class names are the sorted folder names of the training split and the
  evaluation split together, images in the in-memory reader's order (so the labels and, read
  in order, the arrays are :func:`repr_jax.data.load_data`'s).
* :class:`BatchStream` yields uint8 ``(B, H, W, C)`` batches and int32 labels for one epoch:
  a permutation drawn from ``(seed, epoch)`` (the same order wherever it runs), read through
  Grain (``grain.MapDataset`` of the epoch's batches of indices, each read on one of
  ``workers`` threads of ``to_iter_dataset`` — PIL releases the GIL while it decodes and
  resizes — at most ``prefetch`` batches ahead): memory is bounded by about
  ``(prefetch + 1) · B · H · W · C`` bytes beyond the source; in a multi-process run each
  process reads only its rows of every batch. :class:`FolderStream` decodes a folder's
  images from disk, resized to ``image_size`` (cover + centre crop,
  :func:`repr_jax.data.sources.cover_and_crop`) or all of the first image's size (one-line
  error naming the file otherwise); :class:`ArrayStream` gathers them from arrays in host
  memory (any other source: ``.npz``, CIFAR, TFDS — :func:`stream_from_memory`).
* :func:`prefetch_to_device` keeps ``size`` batches already transferred to the device, so the
  next step's input is there when the step before it ends.
* :func:`sample_stats` estimates the per-channel mean and std from a fixed sample (the
  in-memory path uses every pixel; a stream cannot afford a pass over the data).
* :func:`load_streamed_folder` is the run's data with ``data.stream=true`` and
  ``data.dataset=folder``: a :class:`repr_jax.data.Dataset` whose ``stream`` is the training
  split, with a fixed sample in memory for data-driven methods and the test split decoded;
  its fingerprint is :func:`index_fingerprint` (names, labels and file sizes, not every
  byte). With another source, :func:`stream_from_memory`.

Train with :func:`repr_jax.train.run_epoch_batches` and evaluate with
:func:`repr_jax.train.evaluate_batches`; ``benchmarks/run.py --only streaming`` measures the
reader against the in-memory path. A ``.tar`` must be extracted first (a tar has no index:
random access would re-read it).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from repr_jax.data.dataset import Dataset, channel_stats
from repr_jax.data.sources import IMAGE_EXTENSIONS, checked_name, cover_and_crop, image_sort_key, to_array
from repr_jax.errors import DataError, UnreadableImage
from repr_jax.parallel import put_batch

SPLITS = ("train", "test", "val")


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """The images of one split: paths relative to ``root``, their labels, the class names."""
    root: Path
    split: str
    files: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)


def _classes(root: Path, split: str) -> dict[str, list[str]]:
    out = {}
    base = root / split
    if not base.is_dir():
        return out
    for cls in sorted(p.name for p in base.iterdir() if p.is_dir()):
        names = [checked_name(f"{split}/{cls}/{f.name}", root) for f in (base / cls).iterdir()
                 if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS)]
        if names:
            out[cls] = sorted(names, key=image_sort_key)
    return out


def index_folder(root, split: str = "train") -> FolderIndex:
    """The ``split`` (``train``, ``test`` or ``val``; ``test`` falls back to ``val``) of the
    image folder ``root``; no image is opened."""
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (a streamed folder must be extracted)")
    train = _classes(root, "train")
    evaluation = "test" if _classes(root, "test") else "val"
    held_out = _classes(root, evaluation)
    if split == "test":
        split = evaluation
    found = train if split == "train" else held_out
    if not found:
        raise DataError(f"{root}: no {split}/<class>/<image> files ({', '.join(IMAGE_EXTENSIONS)})")
    classes = tuple(sorted(set(train) | set(held_out)))
    files, labels = [], []
    for label, cls in enumerate(classes):
        files += found.get(cls, [])
        labels += [label] * len(found.get(cls, []))
    return FolderIndex(root, split, tuple(files), np.asarray(labels, np.int32), classes)


def decode(path: Path, name: str, image_size, channels: int, shape: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 ``(H, W, channels)``: resized to ``image_size`` if given, else
    checked to be ``shape`` (H, W)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("L")) if channels == 1 and img.mode not in ("L", "1", "LA") \
                else to_array(img, name)
    except DataError:
        raise
    except Exception as err:
        raise UnreadableImage(f"cannot decode image {name}: {(str(err).splitlines() or [''])[0]}", name) from None
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] != channels:
        array = np.repeat(array, channels, axis=-1)
    if image_size is not None:
        return cover_and_crop(array, image_size)
    if shape is not None and array.shape[:2] != tuple(shape):
        raise DataError(f"image {name} is {array.shape[0]}x{array.shape[1]} pixels, the folder's first "
                        f"{shape[0]}x{shape[1]}; stream with image_size=(H, W) to resize them all")
    return array


class BatchStream:
    """Batches of one split, read through Grain while the device trains: the order and the
    Grain pipeline that :class:`FolderStream` (decoded from disk) and :class:`ArrayStream`
    (arrays in host memory) share; a subclass says how ``num_examples`` examples are read
    (:meth:`read` one, :meth:`load` several).

    ``shuffle`` (default True): each epoch a permutation from ``(seed, epoch)`` and, unless
    ``drop_last=False``, no partial last batch (a fixed step shape); without shuffling the
    examples come in index order and the last batch may be short (evaluation).
    """
    shape: tuple[int, int, int]   # one example's (H, W, C)
    channels: int

    def __init__(self, num_examples: int, batch_size: int, *, shuffle: bool = True, drop_last: bool | None = None,
                 seed: int = 0, workers: int | None = None, prefetch: int = 4):
        if batch_size < 1 or prefetch < 1 or (workers is not None and workers < 1):
            raise ValueError(f"batch_size, prefetch and workers must be >= 1, got {batch_size}, {prefetch}, {workers}")
        self.num_examples, self.batch_size, self.shuffle, self.seed = int(num_examples), int(batch_size), shuffle, int(seed)
        self.drop_last = shuffle if drop_last is None else drop_last
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.prefetch = int(prefetch)

    def __len__(self) -> int:
        n = self.num_examples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int, seed: int | None = None) -> np.ndarray:
        """The example order of ``epoch`` (a permutation from ``(seed, epoch)`` when shuffling;
        ``seed``: the stream's own unless given — each seed of ``--seeds K`` reads its own)."""
        n = self.num_examples
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed if seed is None else int(seed), int(epoch)]).permutation(n)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Example ``i`` of the split and its label (read now, in the calling thread)."""
        raise NotImplementedError

    def load(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels at ``indices``, read now (in the calling thread)."""
        images, labels = zip(*(self.read(int(i)) for i in indices))
        return np.stack(images), np.asarray(labels, np.int32)

    def dataset(self, epoch: int = 0, rows: slice | None = None, seed: int | None = None):
        """This epoch's batches as a ``grain.IterDataset``: the indices of :meth:`order`
        ``(epoch, seed)`` cut into batches (``rows`` of each: a process's part of each global
        batch in a multi-process run, :func:`repr_jax.parallel.process_rows`), each batch
        read by :meth:`load` on one of ``workers`` Grain threads, at most ``prefetch``
        batches ahead of the consumer (a batch per element: Grain's per-element cost, paid
        once per image, made the reader 0.71× as fast — ``benchmarks/RESULTS.md`` §7b). Its
        iterator's ``get_state()`` / ``set_state()`` is the position inside the epoch
        (:mod:`repr_jax.epoch_position`)."""
        import grain
        order, b = self.order(epoch, seed), self.batch_size
        picked = [order[i:i + b][rows if rows is not None else slice(None)] for i in range(0, len(self) * b, b)]
        if rows is not None and len({len(p) for p in picked}) > 1:
            raise ValueError("rows of a stream's batches need batches of one size (drop_last=True), "
                             f"got sizes {sorted({len(p) for p in picked})}")
        ahead = grain.ReadOptions(num_threads=self.workers, prefetch_buffer_size=self.prefetch)
        return grain.MapDataset.source(picked).map(self.load).to_iter_dataset(ahead)

    def epoch(self, epoch: int = 0, rows: slice | None = None, seed: int | None = None):
        """This epoch's batches, uint8 ``(B, H, W, C)`` images and int32 labels
        (:meth:`dataset`'s iterator)."""
        return iter(self.dataset(epoch, rows, seed))


class FolderStream(BatchStream):
    """Batches of one split of an image folder, decoded from disk while the device trains.

    ``index``: :func:`index_folder`'s; ``image_size``: (H, W) to resize every image to (cover
    + centre crop), or None to require the first image's size; ``channels``: 1 or 3
    (default: the first image's — grayscale stays one channel). ``shuffle``, ``drop_last``,
    ``seed``, ``workers`` (reading threads, default ``min(8, CPUs)``) and ``prefetch``
    (batches read ahead): :class:`BatchStream`'s order and batching.
    """

    def __init__(self, index: FolderIndex, batch_size: int, *, image_size=None, channels: int | None = None,
                 shuffle: bool = True, drop_last: bool | None = None, seed: int = 0,
                 workers: int | None = None, prefetch: int = 4):
        super().__init__(len(index), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, workers=workers,
                         prefetch=prefetch)
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.index = index
        self.image_size = tuple(image_size) if image_size is not None else None
        if channels is None:
            from PIL import Image
            with Image.open(index.root / index.files[0]) as img:
                channels = 1 if img.mode in ("L", "1", "LA") else 3
        self.channels = channels
        first = decode(index.root / index.files[0], index.files[0], self.image_size, channels, None)
        self.shape = (*first.shape[:2], channels)   # one example's (H, W, C)
        if len(self) < 1:
            raise DataError(f"{index.root}/{index.split}: {len(index)} images, fewer than one batch of {batch_size}")

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i`` of the split (decoded now, in the calling thread) and its label."""
        ix = self.index
        image = decode(ix.root / ix.files[i], ix.files[i], self.image_size, self.channels, self.shape[:2])
        return image, ix.labels[i]


class ArrayStream(BatchStream):
    """Batches of uint8 ``images`` ``(N, H, W, C)`` and their ``labels`` held in host memory,
    gathered by Grain and put on the device batch by batch — for a split that fits in the
    host's memory but not on the accelerator beside the model (an ``.npz``, CIFAR, a TFDS
    dataset), with the order and batching of :class:`BatchStream` (a folder streamed from disk
    with the same images in the same order gives the same batches).

    ``shuffle`` (default True: a permutation of ``(seed, epoch)`` each epoch), ``drop_last``
    (default: ``shuffle``; no partial last batch), ``seed``, ``workers`` (Grain threads that
    gather batches, default ``min(8, CPUs)``), ``prefetch`` (batches gathered ahead, default 4)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool | None = None, seed: int = 0, workers: int | None = None, prefetch: int = 4):
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(f"images must be uint8 (N, H, W, C) with one label each, got {images.dtype} "
                             f"{images.shape} and {len(labels)} labels")
        super().__init__(len(images), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, workers=workers,
                         prefetch=prefetch)
        self.images, self.labels = images, np.asarray(labels, np.int32)
        self.shape, self.channels = tuple(int(d) for d in images.shape[1:]), int(images.shape[-1])
        if len(self) < 1:
            raise DataError(f"{len(images)} training images, fewer than one batch of {batch_size}")

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.labels[i]

    def load(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices)
        return self.images[indices], self.labels[indices]


def prefetch_to_device(batches, size: int = 2, sharding=None, batch_size: int | None = None):
    """``batches`` put on the device ``size`` ahead (asynchronous), so a step's input is already
    transferred when the step before it finishes. With a ``sharding`` over several processes'
    devices each of ``batches`` is this process's rows of a global ``batch_size`` batch
    (:func:`repr_jax.parallel.put_batch`)."""
    queue = collections.deque()
    for batch in batches:
        queue.append(put_batch(batch, sharding, batch_size or len(batch[0])))
        if len(queue) >= size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def sample(stream: BatchStream, images: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``images`` training images and labels drawn without replacement by ``seed`` (all of
    them when fewer), in index order, decoded as the stream decodes."""
    n = stream.num_examples
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:min(images, n)])
    parts = [stream.load(pick[i:i + 512]) for i in range(0, len(pick), 512)]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def sample_stats(stream: BatchStream, images: int = 10_000, seed: int = 0):
    """Per-channel mean and std (0–1 scale) of a :func:`sample` of ``images`` training images
    (:func:`repr_jax.data.channel_stats`)."""
    return channel_stats(sample(stream, images, seed)[0])


def index_fingerprint(*indexes: FolderIndex, sizes: dict[str, int] | None = None) -> str:
    """SHA-256 of the splits' file names, labels and byte sizes — what a resume compares
    (hashing every byte of a folder larger than memory would read it all). ``sizes``
    overrides the size of the files it names (a file's size when a run stopped at it)."""
    digest = hashlib.sha256()
    sizes = sizes or {}
    for ix in indexes:
        digest.update(f"{ix.split}|{','.join(ix.class_names)}\n".encode())
        for name, label in zip(ix.files, ix.labels):
            size = sizes[name] if name in sizes else (ix.root / name).stat().st_size
            digest.update(f"{name}|{int(label)}|{size}\n".encode())
    return digest.hexdigest()


def load_streamed_folder(root, batch_size: int, *, image_size=None, seed: int = 0, workers: int | None = None,
                         sample_size: int = 10_000) -> Dataset:
    """A :class:`repr_jax.data.Dataset` whose training split streams from ``root`` (its
    ``stream``, batches of ``batch_size``, epochs shuffled by ``seed``): ``train_x``/``train_y``
    hold a fixed sample of ``sample_size`` training images (scoring images; its statistics are
    the data set's), the test split (``val/`` without ``test/``) is decoded into memory."""
    train_index, test_index = index_folder(root, "train"), index_folder(root, "test")
    stream = FolderStream(train_index, batch_size, image_size=image_size, seed=seed, workers=workers)
    sample_x, sample_y = sample(stream, sample_size)
    test = FolderStream(test_index, 512, image_size=image_size, channels=stream.channels, shuffle=False,
                        workers=workers)
    if test.shape != stream.shape:
        raise DataError(f"{root}: train images are {stream.shape}, {test_index.split} images {test.shape} "
                        "(height, width, channels); set data.image_size=H,W to resize both")
    parts = list(test.epoch())
    mean, std = channel_stats(sample_x)
    return Dataset(sample_x, sample_y, np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]),
                   train_index.class_names, f"{root} (training split streamed)",
                   index_fingerprint(train_index, test_index), channel_mean=mean, channel_std=std, stream=stream,
                   fingerprint_with=functools.partial(index_fingerprint, train_index, test_index))


def stream_from_memory(data: Dataset, batch_size: int, *, seed: int = 0, workers: int | None = None,
                       sample_size: int = 10_000) -> Dataset:
    """``data`` (in memory: an ``.npz``, CIFAR, TFDS, after any split or slice) with its
    training split as an :class:`ArrayStream` (batches of ``batch_size``, epochs shuffled by
    ``seed``) kept in host memory: ``train_x``/``train_y`` become a fixed :func:`sample` of
    ``sample_size`` images (the scoring images of data-driven methods, as for a streamed
    folder); fingerprint and statistics stay those of the whole split."""
    stream = ArrayStream(data.train_x, data.train_y, batch_size, seed=seed, workers=workers)
    sample_x, sample_y = sample(stream, sample_size)
    return dataclasses.replace(data, train_x=sample_x, train_y=sample_y, stream=stream,
                               source=f"{data.source} (training split streamed from host memory)")


__all__ = ["ArrayStream", "BatchStream", "FolderIndex", "FolderStream", "decode", "index_fingerprint", "index_folder",
           "load_streamed_folder", "prefetch_to_device", "sample", "sample_stats", "stream_from_memory"]
