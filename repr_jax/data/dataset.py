"""Image-classification data as uint8 arrays: CIFAR-10/100 from local copies or a checked
download, and any image folder, ``.npz`` file or TFDS dataset (:func:`load_data`).

``data.dataset`` (:data:`DATASETS`): ``cifar10`` | ``cifar100`` (below), ``folder`` (an image
folder of any size at ``data_dir``), ``npz`` (the arrays ``x_train``, ``y_train``,
``x_test``, ``y_test`` of the file ``data_dir``), ``tfds:NAME`` (a TFDS dataset prepared in
``data_dir``, or ``tfds:image_folder``) — :mod:`repr_jax.data.sources` reads the last three.
Images come out ``(N, H, W, C)`` with C = 1 or 3 at the source's size, or resized and
centre-cropped to ``image_size``; each :class:`Dataset` carries its training split's
per-channel mean and standard deviation (:func:`channel_stats`, kept in the decode cache).

CIFAR's sources, tried in order by :func:`load_cifar`:

1. ``data_dir`` (or ``$REPR_JAX_DATA_DIR``): a directory or a ``.tar.gz``/``.tgz``/``.tar``
   holding any standard layout — the python pickle batches (``cifar-10-batches-py/``,
   ``cifar-100-python/``), the binary batches (``cifar-10-batches-bin/``,
   ``cifar-100-binary/``) or an image-folder tree (``train/<class>/*.jpg|png``,
   ``test/<class>/…``).
2. A download when no local copy is named: TFDS when TensorFlow is installed (it needs
   TensorFlow to *prepare* CIFAR), otherwise the official python archive, checked against
   its published MD5 and then read by the offline loader of step 1.
3. Otherwise :class:`DataError` with one line saying how to get the data.

Every source is read completely or refused with one line (:mod:`repr_jax.data.formats`:
archives read to their end, labels and counts checked; pickles can build numpy arrays and
nothing else; file sizes capped). Decoded arrays are cached as ``.npz`` in
``$REPR_JAX_CACHE`` (default ``~/.cache/repr_jax``), keyed by the *content* of the source
(:func:`source_digest`: SHA-256 of an archive's bytes, or of a directory's layout files with
their names), so a second run skips decoding 60,000 JPEGs, a moved copy hits the same
cache, and an edited source — whatever its size and modification time — never does; a
cache that cannot be written is skipped with a warning, and an interrupted write leaves no
temporary file. Each data set carries a *fingerprint* — a SHA-256 of the decoded arrays —
which a resumed run (and ``repr_jax.evaluate``) compares with the one its ``config.json``
recorded: the data's path may change, the data may not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np

from repr_jax.data.formats import (ARCHIVES, CIFAR10_CLASSES, NUM_CLASSES, DataError, check_splits,
                                   claimed_dataset, parse, read_files)
from repr_jax.data.sources import check_arrays, checked_labels, read_npz, read_tfds, resize_all

DATASETS = ("cifar10", "cifar100", "folder", "npz")   # and tfds:NAME
NORMALIZATIONS = ("auto", "train", "none", "pytorch-cifar")            # data.normalization (repr_jax.run_state.preprocessing)

_CACHE_VERSION = 3   # 2: archives read to the end, labels and counts checked; 3: keyed by content


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 (hex) of the arrays' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.data)
    return digest.hexdigest()


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 ``(N, H, W, C)`` images on the 0–1
    scale, over every pixel (float64 sums, ``chunk`` images at a time): the statistics
    ``(x / 255 − mean) / std`` standardises with."""
    c = images.shape[-1]
    total, squares, count = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, c).astype(np.float64) / 255.0
        total += x.sum(0)
        squares += np.square(x).sum(0)
        count += len(x)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification data set: images uint8 (N, H, W, C), C = 1 or 3, labels int32 (N,).

    ``stream``: when the training split is read from disk every epoch
    (:func:`repr_jax.data.streaming.load_streamed_folder`), ``train_x``/``train_y`` hold a fixed
    sample of it (scoring images for data-driven methods) and :attr:`train_count` its size.

    ``fingerprint`` identifies the *source* arrays (before any validation split or slice,
    which the run's settings record); empty when the arrays were built in memory —
    :meth:`source_fingerprint` then computes it. ``channel_mean``/``channel_std``: the
    source's training split's statistics (:func:`channel_stats`; :meth:`stats` computes
    them when empty), kept through splits and slices.
    """
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    source: str
    fingerprint: str = ""
    held_x: np.ndarray | None = None   # held-out training images (never trained on), see hold_out
    held_y: np.ndarray | None = None
    channel_mean: tuple = ()
    channel_std: tuple = ()
    stream: object = None   # a repr_jax.data.streaming.BatchStream of the training split (train_x/y: a sample)
    # streamed data: the fingerprint with some files' sizes overridden (fingerprint_with(sizes=...))
    fingerprint_with: object = None

    @property
    def train_count(self) -> int:
        """Training images per epoch: the streamed split's, or ``len(train_y)``."""
        return self.stream.num_examples if self.stream is not None else len(self.train_y)

    def _refuse_streamed(self, what: str) -> None:
        if self.stream is not None:
            raise DataError(f"{what} slices the training split in memory; a streamed split cannot be sliced")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image's (H, W, C)."""
        return tuple(int(d) for d in self.train_x.shape[1:])

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The training split's per-channel (mean, std) (:func:`channel_stats`)."""
        if self.channel_mean:
            return tuple(self.channel_mean), tuple(self.channel_std)
        return channel_stats(self.train_x)

    def with_stats(self) -> "Dataset":
        """This data set with its statistics computed (before any split or slice)."""
        mean, std = self.stats()
        return dataclasses.replace(self, channel_mean=mean, channel_std=std)

    def source_fingerprint(self) -> str:
        return self.fingerprint or fingerprint(self.train_x, self.train_y, self.test_x, self.test_y)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_validation(self, size: int) -> "Dataset":
        """Hold out the last ``size`` training images as the evaluation set (45k/5k)."""
        self._refuse_streamed("a validation split")
        if not 0 < size < len(self.train_y):
            raise DataError(f"validation size {size} must be in 1..{len(self.train_y) - 1}")
        return dataclasses.replace(
            self, train_x=self.train_x[:-size], train_y=self.train_y[:-size],
            test_x=self.train_x[-size:], test_y=self.train_y[-size:],
            source=self.source + f" (validation: last {size} train images)")

    def hold_out(self, size: int) -> "Dataset":
        """Set the last ``size`` training images aside (``held_x/held_y``): not trained on,
        not evaluated each epoch — data-driven criteria and the oracle score on them (the
        official RePr code's 45k/5k split)."""
        self._refuse_streamed("a held-out split")
        if not 0 < size < len(self.train_y):
            raise DataError(f"held-out size {size} must be in 1..{len(self.train_y) - 1}")
        return dataclasses.replace(
            self, train_x=self.train_x[:-size], train_y=self.train_y[:-size],
            held_x=self.train_x[-size:], held_y=self.train_y[-size:],
            source=self.source + f" (held out: last {size} train images)")

    def subset(self, train: int | None = None, test: int | None = None,
               seed: int = 0) -> "Dataset":
        """A fixed-seed random slice (class-mixed even when the source is class-sorted)."""
        if train is not None:
            self._refuse_streamed("a training slice")
        rng = np.random.default_rng(seed)

        def pick(x, y, n):
            if n is None or n >= len(y):
                return x, y
            idx = np.sort(rng.permutation(len(y))[:n])
            return x[idx], y[idx]

        tx, ty = pick(self.train_x, self.train_y, train)
        vx, vy = pick(self.test_x, self.test_y, test)
        return dataclasses.replace(self, train_x=tx, train_y=ty, test_x=vx, test_y=vy)


def synthetic_cifar(n_train: int, n_test: int, num_classes: int = 10, seed: int = 0,
                    image_shape: tuple[int, int, int] = (32, 32, 3)) -> Dataset:
    """A learnable stand-in for CIFAR (tests, benchmarks, notebooks): each class has its own
    mean colour, plus Gaussian noise (σ = 25) per pixel; uint8 images of ``image_shape``
    (H, W, C), int32 labels."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, (num_classes, image_shape[-1]))

    def make(n):
        y = rng.integers(0, num_classes, n).astype(np.int32)
        noise = rng.normal(0, 25, (n, *image_shape))
        return np.clip(colours[y][:, None, None, :] + noise, 0, 255).astype(np.uint8), y

    (tx, ty), (vx, vy) = make(n_train), make(n_test)
    return Dataset(tx, ty, vx, vy, tuple(f"class_{i}" for i in range(num_classes)),
                   f"synthetic (seed {seed})")


# ----------------------------------------------------------------------------- caching
def cache_dir() -> Path:
    return Path(os.environ.get("REPR_JAX_CACHE", Path.home() / ".cache" / "repr_jax"))


def source_digest(source: Path, files: dict[str, bytes] | None = None) -> str:
    """SHA-256 (hex) of what ``source`` holds: an archive's bytes, or a directory's layout
    files (:func:`repr_jax.data.formats.read_files`, or ``files`` already read) with their
    relative names. Equal digests mean equal data, wherever it lies."""
    digest = hashlib.sha256()
    if source.is_dir():
        for name, blob in sorted((files if files is not None else read_files(source)).items()):
            digest.update(f"{name}\0{len(blob)}\0".encode())
            digest.update(blob)
    else:
        try:
            with open(source, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as err:
            raise DataError(f"cannot read {source}: {err.strerror or err}") from None
    return digest.hexdigest()


def _read_cache(cache: Path, source: Path, digest: str) -> Dataset | None:
    try:
        with np.load(cache, allow_pickle=False) as z:
            arrays = [z[k] for k in ("train_x", "train_y", "test_x", "test_y")]
            names, fp = tuple(str(c) for c in z["class_names"]), str(z["fingerprint"])
            cached_source = str(z["source_digest"]) if "source_digest" in z else ""
            mean, std = (tuple(z[k].tolist()) if k in z else () for k in ("channel_mean", "channel_std"))
    except Exception:  # unreadable or damaged cache (npz members are CRC-checked): rebuild
        return None
    if cached_source != digest or fingerprint(*arrays) != fp:
        return None
    return Dataset(*arrays, names, f"{source} (cached)", fp, channel_mean=mean, channel_std=std).with_stats()


def _remove_orphans(directory: Path) -> None:
    """Delete temporary cache files whose writing process no longer exists."""
    for tmp in directory.glob("*.tmp*.npz"):
        pid = tmp.suffixes[-2][len(".tmp"):] if len(tmp.suffixes) >= 2 else ""
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # exists, owned by someone else
        return True
    return True


def _write_cache(cache: Path, data: Dataset, digest: str) -> None:
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(cache.parent)
        np.savez(tmp, train_x=data.train_x, train_y=data.train_y, test_x=data.test_x,
                 test_y=data.test_y, class_names=np.array(data.class_names),
                 fingerprint=np.array(data.fingerprint), source_digest=np.array(digest),
                 channel_mean=np.array(data.channel_mean), channel_std=np.array(data.channel_std))
        os.replace(tmp, cache)
    except OSError as err:   # read-only or full cache: carry on without it
        print(f"warning: decode cache not written ({cache.parent}: {err.strerror or err}); "
              "set REPR_JAX_CACHE to a writable directory", file=sys.stderr)
    finally:   # also after Ctrl-C: no temporary file is left behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _cache_name(dataset: str, image_size, digest: str) -> str:
    size = f"-{image_size[0]}x{image_size[1]}" if image_size else ""
    return f"{dataset}{size}-v{_CACHE_VERSION}-{digest[:32]}.npz"


def _load_local(source: Path, dataset: str, use_cache: bool, image_size=None) -> Dataset:
    if not source.exists():
        raise DataError(f"data path {source} does not exist")
    folder = dataset == "folder"
    files = read_files(source, folder) if source.is_dir() else None   # a directory is hashed as it is read
    digest = source_digest(source, files) if use_cache else ""
    cache = cache_dir() / _cache_name(dataset, image_size, digest)
    if use_cache and cache.exists():
        cached = _read_cache(cache, source, digest)
        if cached is not None:
            return cached
    tx, ty, vx, vy, names = parse(files if files is not None else read_files(source, folder), dataset, source,
                                  image_size)
    if dataset in NUM_CLASSES:
        check_splits(tx, ty, vx, vy, names, dataset, source, complete=claimed_dataset(source) == dataset)
    check_arrays(tx, ty, vx, vy, names, source)
    data = Dataset(tx, ty, vx, vy, tuple(names), str(source), fingerprint(tx, ty, vx, vy)).with_stats()
    if use_cache:
        _write_cache(cache, data, digest)
    return data


# ----------------------------------------------------------------------------- download
def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_archive(dataset: str, dest: Path | None = None, url: str | None = None,
                     md5: str | None = None) -> Path:
    """Fetch the official archive (once) and verify its MD5; returns the archive path."""
    default_url, default_md5 = ARCHIVES[dataset]
    url, md5 = url or default_url, md5 or default_md5
    dest = dest or cache_dir() / "downloads" / url.rsplit("/", 1)[-1]
    if dest.exists() and _md5(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed ({err})") from None
    if _md5(tmp) != md5:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} is corrupt (MD5 mismatch)")
    os.replace(tmp, dest)
    return dest


def _load_tfds_cifar(dataset: str) -> Dataset:
    import tensorflow_datasets as tfds  # TensorFlow needed to prepare CIFAR
    splits = tfds.as_numpy(tfds.load(dataset, split=["train", "test"], batch_size=-1))
    (tr, te) = splits
    names = tuple(tfds.builder(dataset).info.features["label"].names)
    tx, ty, vx, vy = (tr["image"], checked_labels(np.asarray(tr["label"]), len(tr["image"]), f"tfds:{dataset} train"),
                      te["image"], checked_labels(np.asarray(te["label"]), len(te["image"]), f"tfds:{dataset} test"))
    check_splits(tx, ty, vx, vy, names, dataset, Path(f"tfds:{dataset}"), complete=True)
    return Dataset(tx, ty, vx, vy, names, f"tfds:{dataset}", fingerprint(tx, ty, vx, vy)).with_stats()


def load_cifar(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None,
               use_cache: bool = True, image_size: tuple[int, int] | None = None) -> Dataset:
    """Load CIFAR-10/100 from the first source that works (see module docstring), resized
    to ``image_size`` (H, W) if given."""
    if dataset not in NUM_CLASSES:
        raise DataError(f"unknown dataset {dataset!r}; choose from {sorted(NUM_CLASSES)}")
    data_dir = data_dir or os.environ.get("REPR_JAX_DATA_DIR")
    if data_dir:
        return _load_local(Path(data_dir).expanduser(), dataset, use_cache, image_size)
    errors = []
    try:
        import tensorflow  # noqa: F401  (only then can TFDS prepare CIFAR)
        data = _load_tfds_cifar(dataset)
        return resized(data, image_size)
    except ImportError:
        errors.append("TensorFlow / tensorflow-datasets not installed (pip install -e '.[tfds]')")
    except Exception as err:  # TFDS prepare failed (offline, ...)
        errors.append(f"TFDS failed: {err}")
    try:
        return _load_local(download_archive(dataset), dataset, use_cache, image_size)
    except DataError as err:
        errors.append(str(err))
    raise DataError(f"no {dataset} data: pass --data-dir (or set REPR_JAX_DATA_DIR) to a local "
                    f"copy, or run with internet access ({'; '.join(errors)})")


def resized(data: Dataset, image_size) -> Dataset:
    """``data`` with every image resized and centre-cropped to ``image_size`` (statistics
    recomputed), or as it is."""
    if image_size is None or data.image_shape[:2] == tuple(image_size):
        return data
    tx, vx = resize_all(data.train_x, image_size), resize_all(data.test_x, image_size)
    return Dataset(tx, data.train_y, vx, data.test_y, data.class_names, data.source,
                   fingerprint(tx, data.train_y, vx, data.test_y)).with_stats()


def load_data(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None,
              image_size: tuple[int, int] | None = None, use_cache: bool = True) -> Dataset:
    """The data set ``dataset`` (:data:`DATASETS` or ``tfds:NAME``; module docstring) from
    ``data_dir``, resized and centre-cropped to ``image_size`` (H, W) if given; every check
    of its source applied, its statistics computed. ``DataError`` (one line) otherwise."""
    if dataset in NUM_CLASSES:
        return load_cifar(dataset, data_dir, use_cache, image_size)
    if dataset.startswith("tfds:") and len(dataset) > 5:
        tx, ty, vx, vy, names = read_tfds(dataset[5:], str(Path(data_dir).expanduser()) if data_dir else None,
                                          image_size)
        check_arrays(tx, ty, vx, vy, names, dataset)
        return Dataset(tx, ty, vx, vy, names, dataset, fingerprint(tx, ty, vx, vy)).with_stats()
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)} or tfds:NAME")
    if not data_dir:
        raise DataError(f"data.dataset={dataset} reads --data-dir: "
                        + ("a folder (or tar) holding train/<class>/<image> and test/<class>/<image>"
                           if dataset == "folder" else "an .npz file with x_train, y_train, x_test, y_test"))
    source = Path(data_dir).expanduser()
    if dataset == "folder":
        return _load_local(source, dataset, use_cache, image_size)
    if not source.is_file():
        raise DataError(f"data path {source} is not a file (data.dataset=npz reads one .npz file)")
    tx, ty, vx, vy, names = read_npz(source)
    tx, vx = resize_all(tx, image_size), resize_all(vx, image_size)
    check_arrays(tx, ty, vx, vy, names, source)
    return Dataset(tx, ty, vx, vy, names, str(source), fingerprint(tx, ty, vx, vy)).with_stats()


Cifar = Dataset   # the name before other sources existed


__all__ = ["ARCHIVES", "CIFAR10_CLASSES", "DATASETS", "NORMALIZATIONS", "NUM_CLASSES", "Cifar", "DataError", "Dataset",
           "cache_dir", "channel_stats", "download_archive", "fingerprint", "load_cifar", "load_data", "resized", "source_digest",
           "synthetic_cifar"]
